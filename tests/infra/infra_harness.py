"""Run the Pulumi program under mocks in a fresh interpreter and report what it declared.

Pulumi's mock runtime is process-global (settings, root stack, config), so each scenario runs in
its own subprocess: ``python infra_harness.py '<json config>'`` prints one JSON document with every
registered resource (type, name, inputs, parent URN, whether its type takes tags), every invoke,
the stack outputs and any error.
Test modules call :func:`run_program`.
"""

from __future__ import annotations

import inspect
import json
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAM_DIR = REPO_ROOT / "infra_pulumi"
STACK = "dev"
FAKE_AMI = "ami-0fa1ce0fa1ce0fa1c"
ACCOUNT = "111122223333"
FAKE_AZS = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
PYCACHE_DIR = Path(tempfile.gettempdir()) / "healthpredict-infra-pycache"


def run_program(config: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Run the program with ``config`` (keys like ``healthpredict:owner``) in a subprocess."""
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_") and k != "PYTHONDONTWRITEBYTECODE"}
    # pulumi-aws is large; without a bytecode cache every child recompiles it (seconds each).
    # The cache goes to a temp prefix so the virtualenv is never written to.
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR)
    # `-c` puts the working directory, this checkout, first on the child's sys.path (as `python -m pytest` does
    # here), so the program's `infra_pulumi` imports are this checkout's modules even where the environment's
    # editable install points at another checkout.
    launch = f"import runpy; runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"
    proc = subprocess.run(
        [sys.executable, "-c", launch, json.dumps(encoded)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    marker = "@@RESULT@@"
    if marker not in proc.stdout:
        raise AssertionError(f"harness produced no result (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.split(marker, 1)[1])


def run_programs(scenarios: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run several scenarios concurrently (each still in its own interpreter).

    The first one runs alone so it fills the bytecode cache the others then reuse.
    """
    names = list(scenarios)
    results = {names[0]: run_program(scenarios[names[0]])} if names else {}
    with ThreadPoolExecutor(max_workers=max(1, min(len(scenarios), os.cpu_count() or 4))) as pool:
        futures = {name: pool.submit(run_program, scenarios[name]) for name in names[1:]}
        results.update({name: future.result() for name, future in futures.items()})
    return results


def _is_taggable(token: str) -> bool:
    """True when the pulumi-aws class for ``token`` (e.g. ``aws:ec2/vpc:Vpc``) accepts ``tags``."""
    if not token.startswith("aws:"):
        return False
    import pulumi_aws

    module, _, rest = token.removeprefix("aws:").partition("/")
    cls = getattr(getattr(pulumi_aws, module), rest.split(":")[-1])
    return "tags" in inspect.signature(cls._internal_init).parameters


def _main(raw_config: str) -> None:
    import pulumi
    from pulumi.runtime import mocks as pulumi_mocks

    resources: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []

    class Mocks(pulumi.runtime.Mocks):
        """Record every resource and invoke; fill in the computed attributes the program reads."""

        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            resources.append({"type": args.typ, "name": args.name, "inputs": dict(args.inputs)})
            state = dict(args.inputs)
            name = args.name
            if args.typ == "aws:s3/bucket:Bucket":
                state["bucket"] = f"{name}-a1b2c3"
                state["arn"] = f"arn:aws:s3:::{name}-a1b2c3"
                return state["bucket"], state
            if args.typ == "aws:ecr/repository:Repository":
                state["name"] = f"{name}-d4e5"
                state["arn"] = f"arn:aws:ecr:eu-west-1:111122223333:repository/{name}-d4e5"
                state["repositoryUrl"] = f"111122223333.dkr.ecr.eu-west-1.amazonaws.com/{name}-d4e5"
                return state["name"], state
            if args.typ == "aws:ec2/instance:Instance":
                state["publicIp"] = "198.51.100.7"
                state["publicDns"] = "ec2-198-51-100-7.eu-west-1.compute.amazonaws.com"
                return "i-0123456789abcdef0", state
            if args.typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
                state["name"] = f"{name}-f6"
                state["arn"] = f"arn:aws:iam::111122223333:role/{name}-f6"
            return f"{name}-id", state

        def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
            calls.append({"token": args.token, "args": dict(args.args)})
            if args.token == "aws:ec2/getAmi:getAmi":
                return {"id": FAKE_AMI, "imageId": FAKE_AMI, "name": "ubuntu-noble-24.04"}, []
            if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
                return {
                    "id": "eu-west-1",
                    "names": FAKE_AZS,
                    "zoneIds": ["euw1-az1", "euw1-az2", "euw1-az3"],
                }, []
            if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
                identity = {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/ci", "id": ACCOUNT}
                return {**identity, "userId": "AIDAEXAMPLE"}, []
            return {}, []

    parents: dict[str, str] = {}

    class RecordingMonitor(pulumi_mocks.MockMonitor):
        """Also remember each resource's parent URN (the mock args do not carry it)."""

        def RegisterResource(self, request: Any) -> Any:
            parents[f"{request.type}::{request.name}"] = request.parent
            return super().RegisterResource(request)

    mocks = Mocks()
    pulumi.runtime.set_mocks(
        mocks, project="healthpredict", stack=STACK, preview=False, monitor=RecordingMonitor(mocks)
    )
    pulumi.runtime.set_all_config(json.loads(raw_config))

    outputs: dict[str, Any] = {}
    error: str | None = None

    @pulumi_mocks.test
    def run() -> pulumi.Output[Any]:
        # Same call the Pulumi CLI's Python host makes: run the program directory as __main__.
        runpy.run_path(str(PROGRAM_DIR), run_name="__main__")
        stack = pulumi.runtime.get_root_resource()
        exported = dict(stack.outputs) if stack is not None else {}  # type: ignore[attr-defined]
        return pulumi.Output.all(**exported).apply(outputs.update)

    try:
        run()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)

    for res in resources:
        res["parent"] = parents.get(f"{res['type']}::{res['name']}", "")
        res["taggable"] = _is_taggable(res["type"])
    result = {"resources": resources, "calls": calls, "outputs": outputs, "error": error}
    print("@@RESULT@@" + json.dumps(result, default=str))


if __name__ == "__main__":
    _main(sys.argv[1])
