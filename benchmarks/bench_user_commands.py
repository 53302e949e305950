"""What a user waits for: the README's commands, timed whole, from a fresh clone with a fresh HOME.

Steps, each a separate process as a user would type it:

1. the README's main-job command with the quick flags (``--trials-per-family 3 --time-budget-s 60
   --exit-after-sample``) in a fresh clone with an empty HOME: no uv cache, no Prefect or MLflow state, so the
   install downloads every wheel;
2. the same in a second fresh clone, with the uv cache the first one left (a user's second checkout);
3. ``healthpredict pipeline`` alone with the default budget (20 trials per family, 330 s) on a new home
   (with ``--full``);
4. ``healthpredict drift --batch 1`` three times, with and without ``--report``, with Python writing bytecode
   (the first run compiles, later runs read the cache, as on a user's machine) and without
   (``PYTHONDONTWRITEBYTECODE=1``, every run compiles);
5. the README's test command (with ``--tests``; about 20 minutes).

Usage (from the repository root, the UCI zip at ../shared/data):

    python benchmarks/bench_user_commands.py [--full] [--tests] [--record]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _record import record_section

REPO = Path(__file__).resolve().parents[1]
QUICK = "--trials-per-family 3 --time-budget-s 60 --exit-after-sample"


def readme_command(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- readme-command: {re.escape(name)} -->\s*```bash\n(.*?)```", text, re.S)
    if match is None:
        raise SystemExit(f"README.md has no command block {name!r}")
    return match.group(1).strip()


def fresh_clone(root: Path, name: str) -> Path:
    """A clone of this repository's HEAD with ``../shared`` beside it, as CI and a new user have it."""
    shared = root / "shared"
    if not shared.exists():
        shared.symlink_to((REPO.parent / "shared").resolve())
    clone = root / name
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    return clone


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: no Prefect, MLflow, Ray or HealthPredict settings, a HOME of their own."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HEALTHPREDICT_", "MLFLOW_", "RAY_"))}
    keep.pop("PYTHONDONTWRITEBYTECODE", None)
    return {**keep, "HOME": str(home), **extra}


def timed(command: str, cwd: Path, env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env, stdout=out, stderr=out)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"`{command}` failed ({done.returncode}); see {log}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also time the pipeline with the default budget")
    parser.add_argument("--tests", action="store_true", help="also time the README's test command")
    parser.add_argument("--record", action="store_true", help="write the figures into docs/PERFORMANCE.md")
    args = parser.parse_args()
    main_job, tests = readme_command("main-job"), readme_command("tests")
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-user-") as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir()
        first = fresh_clone(root, "first")
        seconds = timed(f"{main_job} {QUICK}", first, user_env(home), root / "first.log")
        rows.append(
            (
                "README main job, quick flags: fresh clone, empty HOME (downloads every wheel)",
                f"{seconds:.0f} s",
                "whole command",
            )
        )
        print(rows[-1], flush=True)

        second = fresh_clone(root, "second")
        seconds = timed(f"{main_job} {QUICK}", second, user_env(home), root / "second.log")
        rows.append(("README main job, quick flags: fresh clone, uv cache warm", f"{seconds:.0f} s", "whole command"))
        print(rows[-1], flush=True)

        pipeline = f".venv/bin/healthpredict pipeline {QUICK}"
        env = user_env(home, HEALTHPREDICT_RAW_DATA="../shared/data/dataset_diabetes.zip",
                       HEALTHPREDICT_HOME=str(root / "quick-home"))  # fmt: skip
        seconds = timed(pipeline, second, env, root / "pipeline-quick.log")
        rows.append(
            ("`healthpredict pipeline`, quick flags, new home (installed)", f"{seconds:.0f} s", "pipeline only")
        )
        print(rows[-1], flush=True)

        if args.full:
            env = user_env(home, HEALTHPREDICT_RAW_DATA="../shared/data/dataset_diabetes.zip",
                           HEALTHPREDICT_HOME=str(root / "full-home"))  # fmt: skip
            command = ".venv/bin/healthpredict pipeline --exit-after-sample"
            seconds = timed(command, second, env, root / "pipeline-full.log")
            rows.append(("`healthpredict pipeline`, default budget (20 trials per family, 330 s)", f"{seconds:.0f} s",
                         "pipeline only"))  # fmt: skip
            print(rows[-1], flush=True)

        drift_home = str(second / ".healthpredict")  # the champion the second main job left
        for report in ("", " --report"):
            for bytecode in (True, False):
                for cache in (second / ".venv").rglob("__pycache__"):
                    shutil.rmtree(cache, ignore_errors=True)
                for cache in (second / "healthpredict").rglob("__pycache__"):
                    shutil.rmtree(cache, ignore_errors=True)
                extra = {} if bytecode else {"PYTHONDONTWRITEBYTECODE": "1"}
                env = user_env(home, HEALTHPREDICT_HOME=drift_home, **extra)
                runs = [
                    timed(f".venv/bin/healthpredict drift --batch 1{report}", second, env, root / f"drift-{i}.log")
                    for i in range(3)
                ]
                how = "bytecode cached after the 1st run" if bytecode else "PYTHONDONTWRITEBYTECODE=1"
                rows.append((
                    f"`healthpredict drift --batch 1{report}` ({how})",
                    " / ".join(f"{s:.1f}" for s in runs) + " s",
                    f"1st / 2nd / 3rd run; median {statistics.median(runs):.1f} s",
                ))  # fmt: skip
                print(rows[-1], flush=True)

        if args.tests:
            seconds = timed(tests, second, user_env(home), root / "tests.log")
            summary = [ln for ln in (root / "tests.log").read_text().splitlines() if re.search(r"\d+ passed", ln)]
            rows.append(("README test command", f"{seconds / 60:.1f} min", summary[-1].strip("= ") if summary else ""))
            print(rows[-1], flush=True)

    table = "| command | time | covers |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    print(table)
    if args.record:
        record_section(
            "user-commands",
            "## What a user waits for\n\nMeasured by `benchmarks/bench_user_commands.py`: each command as the README "
            "writes it, timed whole (install, imports, Prefect start-up, everything) from a fresh clone.\n\n" + table,
        )


if __name__ == "__main__":
    main()
