"""Scale-out: a real two-node Ray cluster on 127.0.0.1 runs the search through RAY_ADDRESS."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import start_server, stop_process, training_env, wait_for_log

from healthpredict.settings import Settings
from healthpredict.split import SplitReader
from healthpredict.tune import encode_for_search, ray_session, run_search

pytestmark = pytest.mark.integration

# Ray rewrites "127.0.0.1"/"localhost" to the machine's outward address when it forms a multi-node cluster,
# so the nodes bind to other loopback addresses (127.0.0.2 head, 127.0.0.3 worker), which it keeps as given.
# Nothing leaves the loopback range.


RAY = str(Path(sys.executable).with_name("ray"))
# a multi-node cluster (see above)
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}


def _ray(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **RAY_ENV}
    return subprocess.Popen([RAY, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


HEAVIEST_FOREST = {
    "n_estimators": 250, "max_depth": 17, "max_leaf_nodes": 0,
    "min_samples_leaf": 2, "max_features": 0.25, "max_samples": 0.6,
}  # fmt: skip


def _wait_until_both_nodes_run_tasks(nodes: set[str], timeout_s: float = 90) -> None:
    """Block until two one-CPU tasks started together land one on each node.

    A node is listed alive before the cluster schedules onto it; this also starts the worker node's
    worker processes, so its first trial does not wait for them.
    """
    import ray

    @ray.remote(num_cpus=1)
    def where() -> str:
        time.sleep(1.0)
        return str(ray.get_runtime_context().get_node_id())

    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = set(ray.get([where.remote() for _ in nodes]))
        if seen == nodes:
            return
    raise AssertionError(f"two concurrent tasks never spread over both nodes: last ran on {seen}, nodes {nodes}")


def test_search_runs_on_a_two_node_cluster(real_split_home: Path, tmp_path: Path) -> None:
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's unix socket paths must stay short
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    head_log = tmp_path / "head.log"
    head, worker = None, None
    try:
        head, port = start_server(  # the head cannot report a GCS port it chose: a free port, retried
            lambda port: [RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                          "--temp-dir", temp_dir, "--node-ip-address", "127.0.0.2", *common],
            head_log, lambda port, process: wait_for_log(head_log, "Ray runtime started", process, timeout=90),
            env={**os.environ, **RAY_ENV},
        )  # fmt: skip
        address = f"127.0.0.2:{port}"
        worker = _ray(
            "start", "--address", address, "--node-ip-address", "127.0.0.3", *common,
            log=tmp_path / "worker.log",
        )  # fmt: skip
        settings = Settings.from_env(
            training_env(tmp_path, real_split_home, RAY_ADDRESS=address, HEALTHPREDICT_TRIALS_PER_FAMILY="2")
        )
        reader = SplitReader(settings)
        data = encode_for_search(reader.read("train"), reader.read("val"), "random_forest")
        with ray_session(settings):
            deadline = time.monotonic() + 90
            while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            alive = [n for n in ray.nodes() if n["Alive"]]
            nodes = {n["NodeID"] for n in alive}
            assert len(nodes) == 2, "the second node did not join"
            assert {n["NodeManagerAddress"] for n in alive} == {"127.0.0.2", "127.0.0.3"}
            assert ray.get_runtime_context().gcs_address == address
            _wait_until_both_nodes_run_tasks(nodes)
            # The first trial is the search space's heaviest configuration (seconds, not the fraction of a second
            # of the lightest), so it holds the head's CPU while the second trial is placed: that one must go to
            # the worker instead of waiting for the head's actor to be reused.
            result = run_search(
                "random_forest", data, settings, 300, tmp_path / "ray-results", start_from=HEAVIEST_FOREST
            )
        assert not ray.is_initialized()  # disconnected, cluster left running for its owner
        assert len(result.trials) == 2
        assert HEAVIEST_FOREST in [t.params for t in result.trials]
        used = {t.node_id for t in result.trials}
        # two concurrent trials, one CPU per node: one trial on each node, data shipped through the object store
        assert used == nodes, f"trials ran on {used}, cluster nodes {nodes}"
        assert head.poll() is None and worker.poll() is None
    finally:
        for process in (worker, head):
            if process is not None:
                stop_process(process, timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
