"""Prediction service benchmark: fast path vs pipeline in process, then the HTTP service vs its floor.

    python -m benchmarks.bench_service                 # XGBoost over HTTP, all families in process
    python -m benchmarks.bench_service --http-families xgboost logreg random_forest --seconds 10

Steps: split the real UCI file into a temporary home; fit one pipeline per family on the real train split
(tuned-size configurations); log and register the HTTP family as ``champion`` in a temporary sqlite MLflow
registry; measure per-row and 10,000-row latency of ``pipeline.predict_proba`` vs the compiled predictor;
start ``healthpredict serve`` and the floor (``benchmarks/floor_app.py``: same server, same strict msgspec
decode, constant answer), each one uvicorn worker on 127.0.0.1; drive each in alternating rounds with ``wrk``
(8 connections; a bundled asyncio load generator when ``wrk`` is absent), then time 10,000-record batches.
Servers are stopped by PID. Results are printed as JSON and written into docs/PERFORMANCE.md between the
``bench_service`` markers (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from healthpredict.fast_inference import compile_pipeline, max_difference, runtimes_for
from healthpredict.features import MODEL_INPUT_COLUMNS
from healthpredict.modeling import build_pipeline
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import ALL_FAMILIES, Family, Settings
from service.schemas import RECORD_DECODER

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RAW = PROJECT_ROOT.parent / "shared/data/dataset_diabetes.zip"
DOC = PROJECT_ROOT / "docs/PERFORMANCE.md"
BEGIN, END = "<!-- bench_service:begin -->", "<!-- bench_service:end -->"
CONNECTIONS = 8
MACHINE = "2-core x86_64 sandbox"

TUNED_SIZE_PARAMS: dict[str, dict[str, Any]] = {
    "logreg": {"C": 0.1},
    "random_forest": {
        "n_estimators": 200, "max_depth": 16, "max_leaf_nodes": 1024, "min_samples_leaf": 10,
        "max_features": 0.15, "max_samples": 0.6,
    },
    "xgboost": {
        "n_estimators": 300, "max_depth": 6, "learning_rate": 0.05, "subsample": 0.8, "colsample_bytree": 0.6,
        "min_child_weight": 5.0, "reg_lambda": 1.0, "reg_alpha": 0.01,
    },
}  # fmt: skip


# -- data and models ------------------------------------------------------------------------------------------


def settings_for(home: Path, **env: str) -> Settings:
    return Settings.from_env({"HEALTHPREDICT_HOME": str(home), **env})


def real_split(home: Path, raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from healthpredict.split import SplitReader, run_split

    settings = settings_for(home, HEALTHPREDICT_RAW_DATA=str(raw))
    run_split(settings)
    reader = SplitReader(settings)
    return reader.read("train"), reader.read("test")


def register_champion(home: Path, pipeline: Any, family: str, train: pd.DataFrame) -> str:
    import mlflow

    from healthpredict.registry import (
        configure_tracking,
        ensure_experiment,
        log_pipeline,
        register_challenger,
        set_champion,
    )

    settings = settings_for(home)
    configure_tracking(settings)
    mlflow.set_experiment(experiment_id=ensure_experiment(settings, settings.tracking.experiment))
    with mlflow.start_run():
        info = log_pipeline(pipeline, train.head(50), {"threshold": 0.5, "family": family, "metrics": {}})
    version = str(register_challenger(settings, info.model_uri, tags={}).version)
    set_champion(settings, version)
    return version


def json_bodies(frame: pd.DataFrame) -> list[bytes]:
    inputs = frame[list(MODEL_INPUT_COLUMNS)].astype(object)
    inputs = inputs.where(inputs.notna(), None)
    return [json.dumps(r, default=int).encode() for r in inputs.to_dict(orient="records")]


def batch_body(bodies: list[bytes], n: int) -> bytes:
    return b'{"records": [' + b",".join(bodies[i % len(bodies)] for i in range(n)) + b"]}"


# -- in-process latency ---------------------------------------------------------------------------------------


def median_seconds(
    fn: Callable[[], Any], repeats: int, budget_s: float = 20.0, between: Callable[[], Any] | None = None
) -> float:
    """Median time of ``fn`` over ``repeats`` calls (fewer once ``budget_s`` has passed); ``between`` runs,
    untimed, before each call."""
    fn()
    times = []
    deadline = time.monotonic() + budget_s
    for _ in range(repeats):
        if between is not None:
            between()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if time.monotonic() > deadline:
            break
    return statistics.median(times)


INTERLEAVED_ROUNDS = 12


def interleaved_ms(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[float, float, int]:
    """Medians of ``first`` and ``second`` timed in alternation, and in how many rounds ``first`` was faster."""
    first()
    second()
    a: list[float] = []
    b: list[float] = []
    for _ in range(INTERLEAVED_ROUNDS):
        for fn, times in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3, sum(x < y for x, y in zip(a, b, strict=True))


def runtime_rows(pipeline: Any, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """One encoded row through each runtime the family can use, side by side."""
    evict = np.zeros(4_000_000)  # 32 MB, larger than the CPU's L2: written between calls, as the rest of a request

    def evict_caches() -> None:
        np.add(evict, 1.0, out=evict)

    results = []
    for name in runtimes_for(pipeline):
        predictor = compile_pipeline(pipeline, runtime=name)
        call = functools.partial(predictor.runtime, predictor.encoder.encode_rows(rows[:1]))
        results.append(
            {
                "runtime": name,
                "row_us": median_seconds(call, 2000, budget_s=5.0) * 1e6,
                "row_evicted_us": median_seconds(call, 200, between=evict_caches) * 1e6,
            }
        )
    return results


def in_process(family: Family, pipeline: Any, test: pd.DataFrame) -> dict[str, Any]:
    start = time.perf_counter()
    predictor = compile_pipeline(pipeline)
    compile_s = time.perf_counter() - start
    inputs = test[list(MODEL_INPUT_COLUMNS)]
    # Rows as the service has them: request bodies through the strict decoder, as record tuples.
    rows = [msgspec.structs.astuple(RECORD_DECODER.decode(body)) for body in json_bodies(test)]
    big_rows = [rows[i % len(rows)] for i in range(10_000)]
    big_frame = inputs.iloc[np.arange(10_000) % len(inputs)]
    one = inputs.iloc[[0]]
    # The served path (chunked above BATCH_CHUNK_ROWS where the predictor overlaps chunks) against the same rows
    # encoded whole, then evaluated. A family whose batches are not chunked runs the same code twice: the noise
    # control.
    chunked_ms, whole_ms, wins = interleaved_ms(
        lambda: predictor.predict_rows(big_rows),
        lambda: (predictor.batch_runtime or predictor.runtime)(predictor.encoder.encode_rows(big_rows)),
    )
    return {
        "family": family,
        "runtime": predictor.description,
        "compile_s": round(compile_s, 3),
        "max_abs_difference_test_split": max_difference(predictor, pipeline, test),
        "test_rows": len(test),
        "pipeline_row_us": median_seconds(lambda: pipeline.predict_proba(one), 50) * 1e6,
        "fast_row_us": median_seconds(lambda: predictor.predict_rows(rows[:1]), 2000) * 1e6,
        "pipeline_10k_ms": median_seconds(lambda: pipeline.predict_proba(big_frame), 5) * 1e3,
        "fast_10k_ms": chunked_ms,
        "fast_10k_encode_ms": median_seconds(lambda: predictor.encoder.encode_rows(big_rows), 10) * 1e3,
        "fast_10k_unchunked_ms": whole_ms,
        "fast_10k_chunked_wins": wins,
        "chunked": predictor.overlap_chunks,
        "interleaved_rounds": INTERLEAVED_ROUNDS,
        "runtimes_one_row": runtime_rows(pipeline, rows),
    }


# -- servers --------------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready within {timeout} s")


@contextmanager
def server(code: str, port: int, env: dict[str, str], ready_path: str, log: Path) -> Iterator[str]:
    """Run a Python server snippet from the project root on 127.0.0.1; stop it by PID."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base + ready_path, process)
            yield base
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(20)


def service_code(port: int) -> str:
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    return f"from cli.main import main; raise SystemExit(main({args!r}))"


def floor_code(port: int) -> str:
    # The same uvicorn options as `healthpredict serve` (one worker, no access log, info logging).
    return (
        "import uvicorn; uvicorn.run('benchmarks.floor_app:create_floor_app', factory=True, host='127.0.0.1', "
        f"port={port}, workers=1, access_log=False, log_level='info')"
    )


# -- load generation ------------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk_run(url: str, body: bytes, seconds: int, workdir: Path) -> dict[str, float]:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "90", "99"):
        result[f"p{pct}_ms"] = _ms(re.search(rf"\s{pct}%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*", out)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    result["socket_errors"] = 0.0 if socket_errors is None else 1.0
    return result


async def _asyncio_load(
    host: str, port: int, path: str, body: bytes, seconds: float, max_requests: int
) -> dict[str, float]:
    """Keep-alive HTTP/1.1 over raw asyncio streams (no client library overhead); bounded in time and count."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline and len(latencies) < max_requests:
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / elapsed,
        "p50_ms": ordered[len(ordered) // 2] * 1e3,
        "p90_ms": ordered[int(len(ordered) * 0.90)] * 1e3,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1e3,
        "non_2xx": float(failures),
        "socket_errors": 0.0,
    }


def load_run(url: str, body: bytes, seconds: int, workdir: Path, use_wrk: bool) -> dict[str, float]:
    if use_wrk:
        return wrk_run(url, body, seconds, workdir)
    match = re.fullmatch(r"http://([\d.]+):(\d+)(/.*)", url)
    assert match is not None
    return asyncio.run(_asyncio_load(match.group(1), int(match.group(2)), match.group(3), body, seconds, 200_000))


def time_batches(url: str, body: bytes, repeats: int, expected: int) -> list[float]:
    import httpx

    times = []
    with httpx.Client(timeout=60) as client:
        client.post(url, content=body)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            response = client.post(url, content=body, headers={"content-type": "application/json"})
            times.append((time.perf_counter() - start) * 1e3)
            if response.status_code != 200 or len(response.json()["predictions"]) != expected:
                raise RuntimeError(f"batch failed: {response.status_code} {response.text[:200]}")
    return times


def http_benchmark(
    family: str, home: Path, bodies: list[bytes], seconds: int, rounds: int, workdir: Path, use_wrk: bool
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HEALTHPREDICT_"))}
    env.update(HEALTHPREDICT_HOME=str(home), HEALTHPREDICT_MODEL_POLL_SECONDS="0")
    service_port, floor_port = free_port(), free_port()
    body = bodies[0]
    floor_runs: list[dict[str, float]] = []
    service_runs: list[dict[str, float]] = []
    with (
        server(service_code(service_port), service_port, env, "/health/ready", workdir / "service.log") as service,
        server(floor_code(floor_port), floor_port, env, "/schema/openapi.json", workdir / "floor.log") as floor,
    ):
        load_run(f"{floor}/v1/predict", body, 2, workdir, use_wrk)  # warm-up both
        load_run(f"{service}/v1/predict", body, 2, workdir, use_wrk)
        for _ in range(rounds):  # alternate so drift in machine load hits both alike
            floor_runs.append(load_run(f"{floor}/v1/predict", body, seconds, workdir, use_wrk))
            service_runs.append(load_run(f"{service}/v1/predict", body, seconds, workdir, use_wrk))
        batch_ms = time_batches(f"{service}/v1/predict/batch", batch_body(bodies, 10_000), 7, 10_000)
        with urllib.request.urlopen(f"{service}/v1/model") as response:
            described = json.loads(response.read())

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    floor_rps, service_rps = med(floor_runs, "rps"), med(service_runs, "rps")
    return {
        "family": family,
        "runtime": described["runtime"],
        "floor": {k: med(floor_runs, k) for k in ("rps", "p50_ms", "p90_ms", "p99_ms")},
        "service": {k: med(service_runs, k) for k in ("rps", "p50_ms", "p90_ms", "p99_ms")},
        "ratio": service_rps / floor_rps,
        "non_2xx": sum(r["non_2xx"] for r in service_runs + floor_runs),
        "batch_10k_ms_median": statistics.median(batch_ms),
        "batch_10k_ms_all": [round(t, 1) for t in batch_ms],
        "rounds": rounds,
        "seconds_per_round": seconds,
    }


# -- report ---------------------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        f"Measured {results['date']} on a {MACHINE} ({results['python']}, {results['cpu']}); load generator: "
        f"{results['load_generator']}, {CONNECTIONS} connections, one uvicorn worker per server, server and load "
        "generator sharing the 2 cores. Reproduce: `python -m benchmarks.bench_service`.",
        "",
        "### In process: `pipeline.predict_proba` vs the compiled fast path (real test split)",
        "",
        "| family | runtime | max abs diff (test split) | pipeline 1 row | fast 1 row | speed-up | pipeline 10k | "
        "fast 10k (encode) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["in_process"]:
        lines.append(
            f"| {r['family']} | {r['runtime']} | {r['max_abs_difference_test_split']:.1e} "
            f"({r['test_rows']} rows) | {r['pipeline_row_us'] / 1e3:.1f} ms | {r['fast_row_us']:.0f} µs | "
            f"{r['pipeline_row_us'] / r['fast_row_us']:.0f}× | {r['pipeline_10k_ms']:.0f} ms | "
            f"{r['fast_10k_ms']:.0f} ms ({r['fast_10k_encode_ms']:.0f} ms) |"
        )
    lines += [
        "",
        "### In process: one encoded row through each runtime (median; *evicted*: 32 MB written between calls)",
        "",
        "| family | runtime | 1 row | 1 row, caches evicted |",
        "|---|---|---|---|",
    ]
    for r in results["in_process"]:
        for rt in r["runtimes_one_row"]:
            lines.append(f"| {r['family']} | {rt['runtime']} | {rt['row_us']:.1f} µs | {rt['row_evicted_us']:.1f} µs |")
    lines += [
        "",
        "Batches of 10k rows, chunked (encode chunk k + 1 while chunk k is evaluated) vs encoded whole, "
        f"{INTERLEAVED_ROUNDS} alternating rounds (medians; rounds the chunked path was faster): "
        + ", ".join(
            f"{r['family']} {r['fast_10k_ms']:.0f} ms vs {r['fast_10k_unchunked_ms']:.0f} ms "
            f"({r['fast_10k_chunked_wins']}/{INTERLEAVED_ROUNDS}"
            + ("" if r["chunked"] else "; not chunked: the same code twice, the noise control")
            + ")"
            for r in results["in_process"]
        )
        + ".",
    ]
    lines += [
        "",
        "### HTTP: service vs floor (constant answer after the same strict decode), medians of alternating rounds",
        "",
        "| model | floor req/s | service req/s | ratio (target ≥ 0.50) | service p50 | service p99 (target ≤ 5 ms) | "
        "floor p99 | 10k batch median (target ≤ 150 ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["http"]:
        lines.append(
            f"| {r['family']} ({r['runtime']}) | {r['floor']['rps']:.0f} | {r['service']['rps']:.0f} | "
            f"{r['ratio']:.2f} | {r['service']['p50_ms']:.2f} ms | {r['service']['p99_ms']:.2f} ms | "
            f"{r['floor']['p99_ms']:.2f} ms | {r['batch_10k_ms_median']:.0f} ms |"
        )
    lines += ["", "Raw numbers:", "", "```json", json.dumps(results, indent=1, default=float), "```", END]
    return "\n".join(lines)


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        heading = "## Prediction service"
        if heading not in text:
            text = text.rstrip() + f"\n\n{heading}\n\n"
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-data", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--families", nargs="+", choices=ALL_FAMILIES, default=list(ALL_FAMILIES))
    parser.add_argument("--http-families", nargs="+", choices=ALL_FAMILIES, default=["xgboost"])
    parser.add_argument("--seconds", type=int, default=8, help="seconds per load round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating floor/service rounds")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/PERFORMANCE.md alone")
    args = parser.parse_args(argv)
    use_wrk = shutil.which("wrk") is not None
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        workdir = Path(tmp)
        train, test = real_split(workdir / "split", args.raw_data)
        pipelines = {}
        for family in sorted(set(args.families) | set(args.http_families)):
            pipelines[family] = build_pipeline(family, TUNED_SIZE_PARAMS[family], seed=0).fit(
                train[list(MODEL_INPUT_COLUMNS)], train[TARGET_COLUMN]
            )
        results: dict[str, Any] = {
            "date": dt.date.today().isoformat(),
            "machine": MACHINE,
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_generator": "wrk (Debian package)" if use_wrk else "bundled asyncio keep-alive generator",
            "in_process": [in_process(f, pipelines[f], test) for f in args.families],
            "http": [],
        }
        bodies = json_bodies(test)
        for family in args.http_families:
            home = workdir / f"serve-{family}"
            register_champion(home, pipelines[family], family, train)
            results["http"].append(http_benchmark(family, home, bodies, args.seconds, args.rounds, workdir, use_wrk))
    print(json.dumps(results, indent=1, default=float))
    if not args.no_write:
        write_doc(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
