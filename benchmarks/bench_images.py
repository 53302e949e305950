"""Build time and size of the service image and the flows (worker) image.

    python benchmarks/bench_images.py [--base-image local/python:3.11-bookworm] [--make-base] [--record]

For each image, on a copy of the repository's tracked files: a cold build (``nocache``: every layer rebuilt,
dependencies downloaded from the package index; the base image already present) and a warm build after a
code-only change (one line appended to ``healthpredict/__init__.py``: the dependency layers come from the
cache). Sizes are the engines' uncompressed image sizes. ``--make-base`` also times ``docker/base-image.sh``
(debootstrap of Debian bookworm) into a separate tag. Uses the engine of ``DOCKER_HOST``, or starts a private
``dockerd`` (root) and stops it by PID. ``--record`` writes the table into docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _record import record_section

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {  # name → (Dockerfile, target)
    "service": ("Dockerfile", "service"),
    "flows (worker)": ("docker/worker/Dockerfile", "worker"),
}


@contextmanager
def engine() -> Iterator[Any]:
    """A Docker client: the configured engine, or a private dockerd stopped by PID afterwards."""
    import docker

    try:
        configured = docker.from_env(timeout=1200)  # type: ignore[attr-defined]
        configured.ping()
    except Exception:
        configured = None
    if configured is not None:  # outside the try: an error in the caller's block must not start a dockerd
        yield configured
        return
    state = Path(tempfile.mkdtemp(prefix="bench-dockerd-"))
    socket = f"unix://{state / 'docker.sock'}"
    with (state / "dockerd.log").open("wb") as log:
        process = subprocess.Popen(
            ["dockerd", "--host", socket, "--pidfile", str(state / "docker.pid"), "--exec-root", str(state / "x")],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client = docker.DockerClient(base_url=socket, timeout=1200)  # type: ignore[attr-defined]
                    client.ping()
                    break
                except Exception:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log_text = (state / "dockerd.log").read_text()[-2000:]
                        raise RuntimeError(f"dockerd did not start: {log_text}") from None
                    time.sleep(0.5)
            os.environ["DOCKER_HOST"] = socket  # for docker/base-image.sh
            yield client
        finally:
            process.terminate()
            process.wait(timeout=60)
            shutil.rmtree(state, ignore_errors=True)


def context_copy(target: Path) -> Path:
    """The repository's tracked files (as in the working tree) under ``target``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def build(client: Any, context: Path, dockerfile: str, target: str, tag: str, base: str, nocache: bool) -> float:
    started = time.monotonic()
    client.images.build(
        path=str(context), dockerfile=dockerfile, target=target, tag=tag, nocache=nocache, rm=True,
        buildargs={"PYTHON_IMAGE": base}, network_mode="host",
    )  # fmt: skip
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-image", default="local/python:3.11-bookworm")
    parser.add_argument("--make-base", action="store_true", help="also time docker/base-image.sh")
    parser.add_argument("--record", action="store_true", help="write the table into docs/PERFORMANCE.md")
    args = parser.parse_args()
    rows = []
    with engine() as client, tempfile.TemporaryDirectory(prefix="bench-images-") as work:
        if args.make_base:
            started = time.monotonic()
            subprocess.run(["bash", str(ROOT / "docker/base-image.sh"), "local/python:bench-base"], check=True)
            base_seconds = time.monotonic() - started
            size = client.images.get("local/python:bench-base").attrs["Size"]
            rows.append(("base (debootstrap)", f"{base_seconds:.0f}", "", f"{size / 1e9:.2f}"))
            print(rows[-1], flush=True)
        client.images.get(args.base_image)  # present: cold builds measure our layers, not the base
        context = context_copy(Path(work))
        for name, (dockerfile, target) in IMAGES.items():
            tag = f"healthpredict-bench-{target}:latest"
            cold = build(client, context, dockerfile, target, tag, args.base_image, nocache=True)
            init = context / "healthpredict" / "__init__.py"
            init.write_text(init.read_text() + f"\n# bench {time.time()}\n")
            warm = build(client, context, dockerfile, target, tag, args.base_image, nocache=False)
            size = client.images.get(tag).attrs["Size"]
            rows.append((name, f"{cold:.0f}", f"{warm:.0f}", f"{size / 1e9:.2f}"))
            print(rows[-1], flush=True)
            client.images.remove(tag, force=True)
    from healthpredict.reporting import markdown_table

    table = markdown_table(("image", "cold build s (no cache, base present)", "after a code change s", "size GB"), rows)
    body = (
        f"Base image `{args.base_image}`; builds over the host network from the package index (uv, the lock's "
        "binary wheels). Reproduce: `python benchmarks/bench_images.py --record` (`--make-base` adds the "
        f"debootstrap of the base).\n\n{table}\n"
    )
    print(body)
    if args.record:
        record_section("images", "## Image builds\n\n" + body)


if __name__ == "__main__":
    main()
