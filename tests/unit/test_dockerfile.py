"""Static checks of the service Dockerfile and .dockerignore (no Docker daemon needed)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|build-essential|clang|make|cmake|python3-dev|libc6-dev)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Minimal Dockerfile parser: joins continuations, drops comments, splits stages."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        logical.append(buf)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, f"cannot parse FROM {rest!r}"
            stages.append(Stage(base=m.group(1), name=m.group(2)))
        elif not stages:
            if keyword == "ARG":
                name, _, default = rest.partition("=")
                global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(parsed: tuple[dict[str, str], list[Stage]]) -> Stage:
    return parsed[1][-1]


def _exec_form(arg: str) -> list[str]:
    assert arg.startswith("["), f"use the exec (JSON) form: {arg}"
    return json.loads(arg)


def test_parser_sees_stages_and_continuations() -> None:
    args, stages = parse("ARG B=x\nFROM $B AS a\nRUN apt-get install \\\n  gcc\nFROM a\nUSER 1\n")
    assert args == {"B": "x"}
    assert [s.name for s in stages] == ["a", None]
    assert [" ".join(r.split()) for r in stages[0].args("RUN")] == ["apt-get install gcc"]
    assert BUILD_TOOLS.search(stages[0].args("RUN")[0])


def test_multi_stage_with_substitutable_python_base(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = parsed
    assert len(stages) >= 2
    assert args.get("PYTHON_IMAGE") == "python:3.11.11-slim-bookworm"
    for stage in stages:
        assert stage.base in ("${PYTHON_IMAGE}", "$PYTHON_IMAGE"), f"stage {stage.name} ignores PYTHON_IMAGE"
    builder = stages[0]
    runs = builder.args("RUN")
    # the service dependency group at the versions the lock pins, binary wheels only, then the project alone
    assert any(re.search(r"\buv sync --frozen --no-build --no-install-project --only-group service\b", r) for r in runs)
    assert any(re.search(r"\bpip install\b.*--no-deps \.(\s|$)", r) for r in runs), "builder must install the project"
    assert "pyproject.toml uv.lock ./" in builder.args("COPY")
    assert "UV_PROJECT_ENVIRONMENT=/opt/venv" in " ".join(builder.args("ENV"))


def _requirements(lines: list[str]) -> dict[str, str]:
    """``name[extra]>=x,<y`` → {name: ">=x,<y"}, comments and blank lines dropped."""
    parsed = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)", line)
            assert match, line
            parsed[match.group(1).lower()] = match.group(3).replace(" ", "")
    return parsed


def test_service_requirements_are_project_dependencies_with_the_same_ranges() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = _requirements(pyproject["project"]["dependencies"])
    service = _requirements(pyproject["dependency-groups"]["service"])
    same_module = {"mlflow-skinny": "mlflow", "xgboost-cpu": "xgboost"}  # client half / no CUDA, same module
    for name, spec in service.items():
        declared = same_module.get(name, name)
        assert declared in project, f"{name} is not a project dependency"
        assert spec == project[declared], f"{name}{spec} differs from the project's {declared}{project[declared]}"
    training_stack = {"ray", "prefect", "prefect-aws", "prefect-docker", "evidently", "optuna", "kubernetes", "docker"}
    assert not training_stack & set(service), "the service image must not carry the training stack"


@pytest.mark.parametrize("path", ["docker/worker/Dockerfile", "docker/mlflow/Dockerfile"])
def test_other_images_are_non_root_from_the_same_base(path: str) -> None:
    args, stages = parse((REPO / path).read_text())
    assert args.get("PYTHON_IMAGE") == "python:3.11.11-slim-bookworm"
    assert all(stage.base in ("${PYTHON_IMAGE}", "$PYTHON_IMAGE", "${PYTHON_IMAGE:-python:3.11.11-slim-bookworm}")
               for stage in stages)  # fmt: skip
    final_stage = stages[-1]
    assert final_stage.args("USER") and final_stage.args("USER")[-1].split(":")[0] == "10001"
    assert final_stage.args("HEALTHCHECK")
    for stage in stages:
        assert not any(BUILD_TOOLS.search(run) for run in stage.args("RUN")), path


def test_worker_image_installs_the_locked_dependencies() -> None:
    _, stages = parse((REPO / "docker" / "worker" / "Dockerfile").read_text())
    builder = stages[0]
    runs = builder.args("RUN")
    assert "pyproject.toml uv.lock ./" in builder.args("COPY")
    assert any(re.search(r"\buv sync --frozen --no-build --no-install-project --compile-bytecode$", r) for r in runs)
    assert any(re.search(r"\bpip install\b.*--no-deps .*--compile-bytecode \.$", r) for r in runs)


def test_final_stage_copies_only_the_venv(parsed: tuple[dict[str, str], list[Stage]], final: Stage) -> None:
    builder = parsed[1][0].name
    copies = final.args("COPY") + final.args("ADD")
    assert copies, "final stage must copy the venv from the builder"
    for copy in copies:
        assert copy.startswith(f"--from={builder}"), f"final stage copies from the build context: {copy}"
        assert "/opt/venv" in copy


def test_no_build_tools_in_final_stage(final: Stage) -> None:
    for run in final.args("RUN"):
        assert not BUILD_TOOLS.search(run), f"build tool installed in final stage: {run}"


def test_final_stage_runs_as_fixed_non_root_user(final: Stage) -> None:
    users = final.args("USER")
    assert users, "final stage has no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "use a numeric UID so Kubernetes runAsNonRoot can verify it"
    assert int(user) >= 1000
    # The Kubernetes manifests pin the same UID.
    deployment = (REPO / "k8s" / "base" / "deployment.yaml").read_text()
    assert f"runAsUser: {user}" in deployment


def test_runtime_contract(final: Stage) -> None:
    assert "8000" in " ".join(final.args("EXPOSE")).split()
    env = " ".join(final.args("ENV"))
    assert re.search(r"HEALTHPREDICT_HOME=/tmp/healthpredict\b", env)
    assert "/opt/venv/bin" in env
    argv = _exec_form(final.args("ENTRYPOINT")[-1]) + (_exec_form(final.args("CMD")[-1]) if final.args("CMD") else [])
    assert argv == ["healthpredict", "serve", "--host", "0.0.0.0", "--port", "8000"]


def test_healthcheck_uses_python_on_liveness(final: Stage) -> None:
    checks = final.args("HEALTHCHECK")
    assert checks, "final stage has no HEALTHCHECK"
    check = checks[-1]
    assert "/health/live" in check
    _, _, cmd = check.partition("CMD")
    assert cmd, check
    first = _exec_form(cmd.strip())[0] if cmd.strip().startswith("[") else shlex.split(cmd)[0]
    assert first in ("python", "python3", "/opt/venv/bin/python"), "slim images have no curl/wget"


def test_no_secrets_or_whole_context_copied(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    for stage in parsed[1]:
        for copy in stage.args("COPY") + stage.args("ADD"):
            parts = [p for p in copy.split() if not p.startswith("--")]
            sources = parts[:-1]
            assert "." not in sources and "./" not in sources, f"whole build context copied: COPY {copy}"
            assert not any(".env" in s or s.endswith((".pem", ".key")) for s in sources), copy
        env = " ".join(stage.args("ENV") + stage.args("ARG"))
        assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)\w*=\S", env), f"secret baked in: {env}"


def _ignored(patterns: list[str], path: str) -> bool:
    result = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        candidates = [pat, pat.removeprefix("**/")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for c in candidates for p in [*prefixes, parts[-1]]):
            result = not negate
    return result


def test_dockerignore_excludes_secrets_state_and_data() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for path in (
        ".env",
        ".env.local",
        ".venv/bin/python",
        ".git/HEAD",
        ".healthpredict/state.db",
        "data/raw/diabetic_data.csv",
        "diabetic_data.csv",
        "splits/train.parquet",
        "tests/unit/test_x.py",
        "mlruns/0/meta.yaml",
        "k8s/overlays/minikube/reload.env",
    ):
        assert _ignored(patterns, path), f".dockerignore does not exclude {path}"
    for path in (
        "pyproject.toml",
        "README.md",
        "healthpredict/__init__.py",
        "service/__init__.py",
        "flows/__init__.py",
    ):
        assert not _ignored(patterns, path), f".dockerignore excludes {path}, which the build needs"


def test_mlflow_image_installs_its_locked_group() -> None:
    """The MLflow server comes from uv.lock (the `mlflow-server` group), the same MLflow as every client."""
    _, stages = parse((REPO / "docker" / "mlflow" / "Dockerfile").read_text())
    (server,) = stages
    assert "pyproject.toml uv.lock ./" in server.args("COPY")
    locked = "uv sync --frozen --no-build --no-install-project --only-group mlflow-server"
    assert any(locked in r for r in server.args("RUN"))
    assert not any(re.search(r"\bpip install\b(?!.*\buv==)", r) for r in server.args("RUN")), "no unlocked pip install"
    groups = tomllib.loads((REPO / "pyproject.toml").read_text())["dependency-groups"]
    assert any(spec.startswith("mlflow[auth]") for spec in groups["mlflow-server"])
