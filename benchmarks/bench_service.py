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
import contextlib
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
EXPLAIN = "explain"  # the steady rounds' name for /v1/explain on the auto service
#: The cold window: load for this long from the moment a fresh server reports ready.
COLD_SECONDS = 5.0
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


def wrk_script(bodies: list[bytes], workdir: Path) -> Path:
    """A wrk script that sends real records in turn, each wrk thread from its own offset (never one body)."""
    script = workdir / f"rotate-{len(bodies)}.lua"
    if not script.exists():
        lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"', "local bodies = {"]
        lines += [f"  {json.dumps(body.decode())}," for body in bodies]  # ASCII JSON: a valid Lua string
        lines += [
            "}",
            "local threads = 0",
            "function setup(thread) threads = threads + 1; thread:set('offset', threads * 997) end",
            "function init(args) position = offset or 0 end",
            "function request() position = position % #bodies + 1; return wrk.format(nil, nil, nil, bodies[position]) end",
        ]
        script.write_text("\n".join(lines) + "\n")
    return script


def wrk_run(url: str, bodies: list[bytes], seconds: float, workdir: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", "-s", str(wrk_script(bodies, workdir)),
         url],
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
    host: str, port: int, path: str, bodies: list[bytes], seconds: float, max_requests: int
) -> dict[str, float]:
    """Keep-alive HTTP/1.1 over raw asyncio streams (no client library overhead); bounded in time and count;
    the bodies are sent in turn."""
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline and len(latencies) < max_requests:
                start = time.perf_counter()
                writer.write(requests[len(latencies) % len(requests)])
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


def load_run(url: str, bodies: list[bytes], seconds: float, workdir: Path, use_wrk: bool) -> dict[str, float]:
    if use_wrk:
        return wrk_run(url, bodies, seconds, workdir)
    match = re.fullmatch(r"http://([\d.]+):(\d+)(/.*)", url)
    assert match is not None
    return asyncio.run(_asyncio_load(match.group(1), int(match.group(2)), match.group(3), bodies, seconds, 200_000))


def time_batches(url: str, bodies: list[bytes], repeats: int, size: int) -> list[float]:
    """Median-ready times of ``size``-record batches, each made of different real records."""
    import httpx

    times = []
    with httpx.Client(timeout=60) as client:
        for attempt in range(repeats + 1):  # the first is a warm-up
            offset = attempt * 1009
            body = b'{"records": [' + b",".join(bodies[(offset + i) % len(bodies)] for i in range(size)) + b"]}"
            start = time.perf_counter()
            response = client.post(url, content=body, headers={"content-type": "application/json"})
            elapsed = (time.perf_counter() - start) * 1e3
            if response.status_code != 200 or len(response.json()["predictions"]) != size:
                raise RuntimeError(f"batch failed: {response.status_code} {response.text[:200]}")
            if attempt:
                times.append(elapsed)
    return times


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HEALTHPREDICT_"))}
    env.update(HEALTHPREDICT_HOME=str(home), HEALTHPREDICT_MODEL_POLL_SECONDS="0", **extra)
    return env


def cold_window(
    kind: str, env: dict[str, str], bodies: list[bytes], seconds: float, workdir: Path, use_wrk: bool
) -> dict[str, float]:
    """A fresh server process; load starts the moment it reports ready and lasts ``seconds``."""
    port = free_port()
    code, ready = (
        (service_code(port), "/health/ready") if kind == "service" else (floor_code(port), "/schema/openapi.json")
    )
    log = workdir / f"cold-{kind}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 180
            while True:  # poll fast: the window opens the moment readiness turns 200
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not become ready (log {log})")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.02)
            return load_run(f"http://127.0.0.1:{port}/v1/predict", bodies, seconds, workdir, use_wrk)
        finally:
            process.terminate()
            process.wait(30)


def http_benchmark(
    family: str,
    home: Path,
    bodies: list[bytes],
    seconds: int,
    rounds: int,
    cold_starts: int,
    runtimes: list[str],
    workdir: Path,
    use_wrk: bool,
) -> dict[str, Any]:
    """Cold windows (fresh processes, floor and service in alternating order), then steady rounds over the floor
    and the service under each runtime in ``runtimes`` (``auto`` first), rotating the order every round."""
    env = server_env(home)
    cold: list[dict[str, Any]] = []
    for start in range(cold_starts):
        order = ("service", "floor") if start % 2 == 0 else ("floor", "service")
        window = {kind: cold_window(kind, env, bodies, COLD_SECONDS, workdir, use_wrk) for kind in order}
        cold.append({"order": "/".join(order), **window, "ratio": window["service"]["rps"] / window["floor"]["rps"]})

    ports = {name: free_port() for name in ["floor", *runtimes]}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
    with contextlib.ExitStack() as stack:
        urls = {"floor": stack.enter_context(
            server(floor_code(ports["floor"]), ports["floor"], env, "/schema/openapi.json", workdir / "floor.log")
        )}  # fmt: skip
        for runtime in runtimes:
            urls[runtime] = stack.enter_context(
                server(
                    service_code(ports[runtime]), ports[runtime], server_env(home, HEALTHPREDICT_RUNTIME=runtime),
                    "/health/ready", workdir / f"service-{runtime}.log",
                )
            )  # fmt: skip
        endpoints = {name: f"{url}/v1/predict" for name, url in urls.items()}
        endpoints[EXPLAIN] = f"{urls['auto']}/v1/explain"  # the same service, explaining each record
        runs[EXPLAIN] = []
        names = list(endpoints)
        for name in names:
            load_run(endpoints[name], bodies, 2, workdir, use_wrk)  # warm-up
        for round_index in range(rounds):  # rotate the order so drift in machine load hits every side alike
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(load_run(endpoints[name], bodies, seconds, workdir, use_wrk))
        batch_ms = time_batches(f"{urls['auto']}/v1/predict/batch", bodies, 7, 10_000)
        described = {}
        for runtime in runtimes:
            with urllib.request.urlopen(f"{urls[runtime]}/v1/model") as response:
                described[runtime] = json.loads(response.read())["runtime"]

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    steady = {name: {k: med(name, k) for k in ("rps", "p50_ms", "p90_ms", "p99_ms")} for name in runs}
    explain = steady.pop(EXPLAIN)
    return {
        "explain": explain,
        "family": family,
        "runtime": described["auto"],
        "runtimes": described,
        "floor": steady["floor"],
        "service": steady["auto"],
        "steady": steady,
        "ratio": steady["auto"]["rps"] / steady["floor"]["rps"],
        "cold": cold,
        "cold_ratio_median": statistics.median(c["ratio"] for c in cold) if cold else None,
        "cold_p99_ms_median": statistics.median(c["service"]["p99_ms"] for c in cold) if cold else None,
        "non_2xx": sum(r["non_2xx"] for name in runs for r in runs[name]),
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
        "### HTTP: service vs floor (constant answer after the same strict decode); real test records rotating",
        "",
        f"Cold: a fresh process each start, load for {COLD_SECONDS:.0f} s from the moment it reports ready (floor and "
        "service in alternating order). Warm: medians of steady rounds, the order of the servers rotating.",
        "",
        "| model | phase | floor req/s | service req/s | ratio | service p99 | floor p99 | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["http"]:
        for i, c in enumerate(r["cold"]):
            lines.append(
                f"| {r['family']} ({r['runtime']}) | cold start {i + 1} ({c['order']}) | {c['floor']['rps']:.0f} | "
                f"{c['service']['rps']:.0f} | {c['ratio']:.2f} | {c['service']['p99_ms']:.2f} ms | "
                f"{c['floor']['p99_ms']:.2f} ms | ratio ≥ 0.5, p99 ≤ 5 ms |"
            )
        lines.append(
            f"| {r['family']} ({r['runtime']}) | warm | {r['floor']['rps']:.0f} | {r['service']['rps']:.0f} | "
            f"{r['ratio']:.2f} | {r['service']['p99_ms']:.2f} ms | {r['floor']['p99_ms']:.2f} ms | ratio ≥ 0.6 |"
        )
        lines.append(
            f"| {r['family']} ({r['runtime']}) | warm, `/v1/explain` | {r['floor']['rps']:.0f} | "
            f"{r['explain']['rps']:.0f} | {r['explain']['rps'] / r['floor']['rps']:.2f} | "
            f"{r['explain']['p99_ms']:.2f} ms | {r['floor']['p99_ms']:.2f} ms | p99 ≤ 10 ms |"
        )
        lines.append(
            f"| {r['family']} ({r['runtime']}) | 10k-record batch, median of 7 | | "
            f"{r['batch_10k_ms_median']:.0f} ms | | | | ≤ 150 ms |"
        )
        if len(r["steady"]) > 2:
            lines += ["", f"Runtimes side by side over HTTP ({r['family']}, warm, same rounds):", ""]
            lines += ["| runtime | req/s | p50 | p99 | vs auto |", "|---|---|---|---|---|"]
            auto = r["steady"]["auto"]["rps"]
            for name, steady in r["steady"].items():
                if name == "floor":
                    continue
                label = f"{name} ({r['runtimes'][name]})"
                lines.append(
                    f"| {label} | {steady['rps']:.0f} | {steady['p50_ms']:.2f} ms | {steady['p99_ms']:.2f} ms | "
                    f"{steady['rps'] / auto:.2f} |"
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
    parser.add_argument("--rounds", type=int, default=3, help="steady rounds, the order rotating every round")
    parser.add_argument("--cold-starts", type=int, default=3, help="fresh starts measured in their first 5 s")
    parser.add_argument(
        "--runtimes", nargs="+", default=["auto"],
        help="service runtimes measured side by side over HTTP (auto = the default choice), e.g. auto xgboost-inplace sklearn",
    )  # fmt: skip
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
            runtimes = ["auto", *(r for r in args.runtimes if r != "auto")]
            results["http"].append(
                http_benchmark(
                    family, home, bodies, args.seconds, args.rounds, args.cold_starts, runtimes, workdir, use_wrk
                )
            )
    print(json.dumps(results, indent=1, default=float))
    if not args.no_write:
        write_doc(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
