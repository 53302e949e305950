"""CI runs what the README says: the two README commands are read from the README by .ci/run, and the hosted
workflow's jobs together cover every test directory through .ci/run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def readme_command(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- readme-command: {name} -->\s*```bash\n(.*?)```", text, re.S)
    assert match, f"README.md has no command block {name!r}"
    return match.group(1).strip()


def test_ci_reads_both_commands_from_the_readme() -> None:
    script = (REPO / ".ci" / "run").read_text()
    assert "main_job=$(readme_command main-job)" in script and "tests=$(readme_command tests)" in script
    main_job, tests = readme_command("main-job"), readme_command("tests")
    assert main_job.endswith("healthpredict pipeline") and "uv sync --locked" in main_job
    assert tests.startswith(".venv/bin/uv sync --locked") and tests.endswith("python -m pytest")
    extracted = subprocess.run(
        ["bash", "-c", f"cd {REPO} && source <(sed -n '/^readme_command()/,/^}}/p' .ci/run) && readme_command tests"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert extracted == tests


def test_hosted_jobs_cover_every_test_directory() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    scopes = set()
    for job in workflow["jobs"].values():
        runs = [step for step in job["steps"] if step.get("run") == "bash .ci/run"]
        assert len(runs) == 1, "every job runs .ci/run once"
        scopes.add(runs[0]["env"]["CI_SCOPE"])
    script = (REPO / ".ci" / "run").read_text()
    covered = set()
    for scope in scopes:
        paths = re.search(rf"^\s*{scope}\) test_paths=\"([^\"]*)\"", script, re.M)
        assert paths, scope
        covered |= set(paths.group(1).split())
    directories = {f"tests/{p.parent.name}" for p in (REPO / "tests").glob("*/test_*.py")}
    assert directories == covered


def test_ci_runs_the_main_job_and_the_tests_with_bytecode_writing_on() -> None:
    """Users' Python writes bytecode wherever it imports from; CI machines may turn that off in their environment.
    .ci/run turns it back on at the top level, before either README command runs, so a load path that writes
    into a model's folder fails the tests here as it would fail users."""
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    unset = [i for i, line in enumerate(lines) if line == "unset PYTHONDONTWRITEBYTECODE"]
    main_job = [i for i, line in enumerate(lines) if 'bash -euo pipefail -c "$main_job' in line]
    tests = [i for i, line in enumerate(lines) if 'bash -euo pipefail -c "$tests' in line]
    assert unset and main_job and tests
    assert unset[0] < min(main_job + tests)
    assert not any("PYTHONDONTWRITEBYTECODE=" in line for line in lines if not line.lstrip().startswith("#"))
