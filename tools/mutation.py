"""Mutation testing of the core modules with mutmut: each module against the tests that own it, within a time bound.

For every module of :data:`MODULES` (or those named with ``--module``) this copies the tracked files of the
repository into a scratch folder, appends a ``[tool.mutmut]`` section that mutates that one module and selects its
own tests, runs ``mutmut run`` there with at most ``--max-children`` workers and ``--timeout-s`` seconds, and reads
mutmut's counts and the names of the surviving mutants. The repository itself is never written to, except the
report (``--report``, JSON). ``make mutation`` runs it; docs/MUTATION.md records a run and explains its survivors.

    .venv/bin/python tools/mutation.py --module healthpredict/gate.py --report mutation.json
    .venv/bin/mutmut show <mutant name>    # in the scratch folder the report names, to see one mutant's diff

A mutant is *killed* when a selected test fails on it, *survived* when all pass, *no tests* when no owning test
runs its function. mutmut maps tests to functions first; this script then selects, for every function an owning
test reaches, all the owning tests that reach the module (a module-scoped fixture runs during the first test that
uses it, and mutmut's own map would leave out the tests that check what the fixture did). The kill rate reported
is killed / (killed + survived + no tests + timeout): a function no owning test reaches counts against its
module, and so does a mutant that timed out (shown apart: a mutant that hangs its tests, or a run that hung
for another reason, such as a forked test process waiting on a lock; mutmut cannot tell them apart).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The module mutated, and the tests that own it (run by mutmut for the mutants of that module). Not here:
#: ``service/schemas.py``, whose functions run once, at import, to build the request types; mutmut maps mutants to
#: the tests that call a function, so it can measure none of them (docs/MUTATION.md). Owned by fast files of their own:
#: ``healthpredict/model_format.py`` (tests/unit/test_model_trust.py and test_model_routes.py check it through
#: registration and every load route in fresh processes, minutes a run) and ``service/limits.py``
#: (tests/unit/test_service_hardening.py runs it behind the whole service); those stay in the suite.
MODULES: dict[str, tuple[str, ...]] = {
    "healthpredict/split.py": ("tests/unit/test_split.py",),
    "healthpredict/gate.py": ("tests/unit/test_gate.py",),
    "healthpredict/audit.py": ("tests/unit/test_audit.py",),
    "healthpredict/improve/policy.py": ("tests/unit/test_improve.py",),
    "healthpredict/improve/loop.py": ("tests/unit/test_improve_loop.py",),
    "healthpredict/drift.py": ("tests/unit/test_drift.py",),
    "healthpredict/model_format.py": ("tests/unit/test_model_format.py",),
    "healthpredict/deploy/__init__.py": ("tests/unit/test_deploy.py",),
    "healthpredict/deploy/verify.py": ("tests/unit/test_deploy_verify.py",),
    "healthpredict/deploy/kubernetes.py": ("tests/unit/test_deploy_kubernetes.py",),
    "service/limits.py": ("tests/unit/test_request_limits.py",),
    "service/batch_scoring.py": ("tests/unit/test_batch_scoring.py",),
}

#: Folders every test run imports from besides the mutated package (copied next to the mutants).
ALSO_COPY = ("healthpredict/", "service/", "cli/", "flows/", "k8s/", "docker/", "monitoring/", "infra_pulumi/")
#: Seconds added to each mutant's estimated test time before mutmut's x15 time limit (its default is 1).
FIXTURE_ROOM_S = 10.0
COUNTS = ("killed", "survived", "no_tests", "timeout", "suspicious", "skipped", "segfault")


@dataclass
class ModuleResult:
    module: str
    tests: tuple[str, ...]
    seconds: float
    finished: bool  # False: stopped at the time bound, the counts are those reached
    counts: dict[str, int] = field(default_factory=dict)
    survivors: list[str] = field(default_factory=list)
    untested: list[str] = field(default_factory=list)  # functions with mutants no owning test runs
    workdir: str = ""

    @property
    def kill_rate(self) -> float | None:
        judged = sum(self.counts.get(k, 0) for k in ("killed", "survived", "no_tests", "timeout"))
        return self.counts.get("killed", 0) / judged if judged else None


def scratch_copy(module: str, tests: tuple[str, ...], root: Path) -> Path:
    """The tracked files in ``root`` with a mutmut section for ``module`` and ``tests``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    source_root = module.split("/", 1)[0] + "/"
    section = {
        "source_paths": [source_root],
        "only_mutate": [module],
        "also_copy": [p for p in ALSO_COPY if p != source_root],
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-W", "ignore"],
        "pytest_add_cli_args_test_selection": list(tests),
        # A mutant's time limit is (its tests' durations + this) x 15, and a test's duration leaves out its fixtures'
        # set-up (a module's model, a moto server): without room for it a run still setting up counts as timed out.
        "timeout_constant": FIXTURE_ROOM_S,
    }
    lines = ["", "[tool.mutmut]", *(f"{key} = {json.dumps(value)}" for key, value in section.items())]
    with open(root / "pyproject.toml", "a", encoding="utf-8") as pyproject:
        pyproject.write("\n".join(lines) + "\n")
    return root


def mutmut(*args: str, cwd: Path, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """``mutmut *args`` in ``cwd``; at ``timeout`` its whole process group ends (its workers and a mutant that
    hangs included), and :class:`subprocess.TimeoutExpired` is raised."""
    executable = Path(sys.executable).with_name("mutmut")
    process = subprocess.Popen(
        [str(executable), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # workers left behind by a finished run
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


#: A mutant name no function has: ``mutmut run`` with it maps tests to functions and mutates nothing.
NO_MUTANT = "healthpredict-map-only*"


def every_owning_test_for_each_mutant(workdir: Path, max_children: int, timeout_s: float) -> None:
    """Map the owning tests to the module's functions (mutmut's first step), then give every function that any
    owning test reaches all the owning tests that reach the module.

    mutmut records which tests call a function while each test runs, fixtures included; a module-scoped fixture
    runs during the first test that uses it, so a later test that checks what the fixture did would never run for
    those functions' mutants. The next ``mutmut run`` loads this map instead of making its own.
    """
    mutmut("run", "--max-children", str(max_children), NO_MUTANT, cwd=workdir, timeout=timeout_s)
    stats_file = workdir / "mutants" / "mutmut-stats.json"
    stats = json.loads(stats_file.read_text())
    mapping: dict[str, list[str]] = stats["tests_by_mangled_function_name"]
    owning = sorted(set().union(*mapping.values()))
    stats["tests_by_mangled_function_name"] = {name: owning if tests else [] for name, tests in mapping.items()}
    stats_file.write_text(json.dumps(stats))


def run_module(module: str, tests: tuple[str, ...], max_children: int, timeout_s: float, keep: bool) -> ModuleResult:
    workdir = Path(tempfile.mkdtemp(prefix="healthpredict-mutation-"))
    scratch_copy(module, tests, workdir)
    started = time.monotonic()
    finished = True
    try:
        every_owning_test_for_each_mutant(workdir, max_children, timeout_s)
        left = max(1.0, timeout_s - (time.monotonic() - started))
        run = mutmut("run", "--max-children", str(max_children), cwd=workdir, timeout=left)
        if run.returncode not in (0, 1):
            print(run.stdout[-3000:], run.stderr[-3000:], sep="\n", file=sys.stderr)
    except subprocess.TimeoutExpired:
        finished = False
    seconds = time.monotonic() - started
    mutmut("export-cicd-stats", cwd=workdir, timeout=300)
    stats_file = workdir / "mutants" / "mutmut-cicd-stats.json"
    counts = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    listed = mutmut("results", "--all", "true", cwd=workdir, timeout=300).stdout
    survivors, untested = [], set()
    for line in listed.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if status == "survived":
            survivors.append(name)
        elif status == "no tests":
            untested.add(name.rsplit("__mutmut_", 1)[0])
    result = ModuleResult(
        module=module, tests=tests, seconds=round(seconds, 1), finished=finished,
        counts={k: int(counts.get(k, 0)) for k in (*COUNTS, "total")}, survivors=survivors,
        untested=sorted(untested), workdir=str(workdir) if keep else "",
    )  # fmt: skip
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="only these (repeatable)")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant runs (default 2)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="time bound per module (default 900)")
    parser.add_argument("--report", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep each scratch folder (to `mutmut show` mutants)")
    options = parser.parse_args(argv)
    results = []
    for module in options.module or list(MODULES):
        result = run_module(module, MODULES[module], options.max_children, options.timeout_s, options.keep)
        results.append(result)
        rate = "n/a" if result.kill_rate is None else f"{result.kill_rate:.0%}"
        c = result.counts
        print(
            f"{module}: {c.get('killed', 0)} killed, {c.get('survived', 0)} survived, {c.get('no_tests', 0)} without "
            f"a test, {c.get('timeout', 0)} timed out of {c.get('total', 0)} ({rate} killed) in {result.seconds:.0f} s"
            + ("" if result.finished else " (stopped at the time bound)")
            + (f"; kept in {result.workdir}" if result.workdir else ""),
            flush=True,
        )
        for name in result.survivors:
            print(f"  survived: {name}", flush=True)
    if options.report:
        payload = [{**asdict(r), "kill_rate": r.kill_rate} for r in results]
        options.report.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
