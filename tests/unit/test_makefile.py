"""The Makefile's targets: `run` and `test` are the README's two commands, and `up` / `minikube` refuse to start
without the files they need, naming them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require_executable

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def readme_command(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- readme-command: {re.escape(name)} -->\s*```bash\n(.*?)```", text, re.S)
    assert match, name
    return " ".join(match.group(1).replace("\\\n", " ").split())


def make(*args: str, cwd: Path = REPO, **variables: str) -> subprocess.CompletedProcess[str]:
    command = [require_executable("make", "apt-get install make"), "--no-print-directory", "-C", str(cwd), *args]
    command += [f"{k}={v}" for k, v in variables.items()]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def dry_run(target: str, **variables: str) -> str:
    """The commands `make TARGET` would run, joined as the README joins them."""
    proc = make("-n", "-B", target, **variables)
    assert proc.returncode == 0, proc.stderr
    return " && ".join(" ".join(line.split()) for line in proc.stdout.splitlines() if line.strip())


def test_run_is_the_readme_main_job() -> None:
    assert dry_run("run", RAW_DATA="../shared/data/dataset_diabetes.zip") == readme_command("main-job")


def test_test_is_the_readme_test_command() -> None:
    assert dry_run("test") == readme_command("tests")


def test_every_target_users_look_for_exists_and_is_listed() -> None:
    listed = make("help")
    assert listed.returncode == 0, listed.stderr
    for target in ("setup", "run", "test", "lint", "up", "down", "minikube"):
        assert re.search(rf"make {target}\s+\S", listed.stdout), target


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("Makefile", ".env.example"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_up_refuses_without_an_env_file(project: Path) -> None:
    proc = make("up", cwd=project, COMPOSE="echo compose")
    assert proc.returncode != 0 and "no .env: cp .env.example .env" in proc.stderr
    assert "compose up" not in proc.stdout


def test_up_refuses_the_example_placeholders(project: Path) -> None:
    shutil.copy(project / ".env.example", project / ".env")
    proc = make("up", cwd=project, COMPOSE="echo compose")
    assert proc.returncode != 0 and ".env still holds the placeholders" in proc.stderr
    assert "POSTGRES_PASSWORD=" in proc.stdout  # the lines to replace are shown
    assert "compose up" not in proc.stdout


def test_up_starts_compose_once_every_placeholder_is_replaced(project: Path) -> None:
    text = (project / ".env.example").read_text()
    (project / ".env").write_text(re.sub(r"example-[a-z-]*change-me", "s3cret-value", text))
    proc = make("up", cwd=project, COMPOSE="echo compose")
    assert proc.returncode == 0, proc.stderr
    assert "compose up -d --build" in proc.stdout


def test_minikube_refuses_without_the_overlay_secrets(project: Path) -> None:
    (project / "k8s" / "overlays" / "minikube").mkdir(parents=True)
    proc = make("minikube", cwd=project)
    assert proc.returncode != 0
    assert "no k8s/overlays/minikube/reload.env: copy reload.env.example" in proc.stderr
