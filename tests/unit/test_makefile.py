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
MAKE = shutil.which("make") or "make"


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
    for target in ("setup", "run", "test", "lint", "up", "down", "stack-test", "minikube"):
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


def test_up_starts_compose_once_there_is_an_env_file(project: Path) -> None:
    # The placeholders are refused by the stack's own `preflight` service (tests/unit/test_compose.py), however
    # the stack is started; the Makefile only needs the file.
    shutil.copy(project / ".env.example", project / ".env")
    proc = make("up", cwd=project, COMPOSE="echo compose")
    assert proc.returncode == 0, proc.stderr
    assert "compose up -d --build" in proc.stdout


def _fake_tools(folder: Path, docker_compose_v2: bool, docker_compose_v1: bool) -> dict[str, str]:
    """A PATH where `docker compose version` works or fails, and `docker-compose` exists or not."""
    folder.mkdir()
    (folder / "docker").write_text(f'#!/bin/sh\n[ "$1" = compose ] && exit {0 if docker_compose_v2 else 1}\nexit 0\n')
    if docker_compose_v1:
        (folder / "docker-compose").write_text("#!/bin/sh\nexit 0\n")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return {"PATH": str(folder)}  # nothing else: the recipes run in /bin/bash, named by its path


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [(True, True, "docker compose up -d --build"), (False, True, "docker-compose up -d --build")],
)
def test_up_finds_compose_v2_or_v1(project: Path, v2: bool, v1: bool, expected: str) -> None:
    shutil.copy(project / ".env.example", project / ".env")
    env = _fake_tools(project / "bin", v2, v1)
    proc = subprocess.run([MAKE, "--no-print-directory", "-n", "-C", str(project), "up"], capture_output=True,
                          text=True, timeout=60, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout


def test_up_without_any_compose_says_so(project: Path) -> None:
    shutil.copy(project / ".env.example", project / ".env")
    env = _fake_tools(project / "bin", False, False)
    proc = subprocess.run([MAKE, "--no-print-directory", "-C", str(project), "up"], capture_output=True,
                          text=True, timeout=60, env=env)  # fmt: skip
    assert proc.returncode != 0
    assert "neither 'docker compose' nor 'docker-compose' is installed" in proc.stderr


def test_minikube_refuses_without_the_overlay_secrets(project: Path) -> None:
    (project / "k8s" / "overlays" / "minikube").mkdir(parents=True)
    proc = make("minikube", cwd=project)
    assert proc.returncode != 0
    assert "no k8s/overlays/minikube/reload.env: copy reload.env.example" in proc.stderr
