"""The work-pool deployment files: prefect.docker.yaml and prefect.kubernetes.yaml with the Kubernetes pool's job
template (k8s/prefect/base-job-template.json).

No cluster runs here, so the Kubernetes path is checked as far as the worker's own code allows: prefect-kubernetes
renders the Job it would create for a flow run of each deployment, from our template and the deployment's job
variables, and the Job is validated against the Kubernetes 1.32 schema (strict: unknown fields refused).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect.utilities.templating import apply_values

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "k8s" / "prefect" / "base-job-template.json"
SECRET_KEYS = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")
ENV = {
    "HEALTHPREDICT_FLOWS_IMAGE": "111122223333.dkr.ecr.eu-west-1.amazonaws.com/healthpredict-flows:7-0123456789ab",
    "MLFLOW_TRACKING_URI": "http://mlflow.healthpredict.svc.cluster.local:5000",
    "HEALTHPREDICT_ARTIFACT_URI": "s3://healthpredict-bucket/data",
}


def deployments(path: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """The file's deployments with `{{ $VAR }}` filled from ``env`` as `prefect deploy` fills them."""
    config = yaml.safe_load(path.read_text())
    with mock.patch.dict(os.environ, env):  # `{{ $VAR }}` placeholders read the process environment
        return [apply_values(d, os.environ, remove_notset=False) for d in config["deployments"]]


def rendered_job(job_variables: dict[str, Any]) -> dict[str, Any]:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(TEMPLATE.read_text())
    configuration = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, job_variables))
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="quiet-otter"))
    return dict(configuration.job_manifest)


@pytest.mark.parametrize(
    "deployment", deployments(REPO / "prefect.kubernetes.yaml", ENV), ids=lambda d: d["entrypoint"]
)
def test_each_kubernetes_deployment_renders_a_valid_hardened_job(deployment: dict[str, Any]) -> None:
    import kubernetes_validate

    job = rendered_job(deployment["work_pool"]["job_variables"])
    kubernetes_validate.validate(job, "1.32", strict=True)
    assert job["metadata"]["namespace"] == "healthpredict" and job["spec"]["completions"] == 1
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    (container,) = pod["containers"]
    assert container["image"] == ENV["HEALTHPREDICT_FLOWS_IMAGE"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}
    }  # fmt: skip
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # the only writable path
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == ENV["MLFLOW_TRACKING_URI"]
    assert env["HEALTHPREDICT_ARTIFACT_URI"] == ENV["HEALTHPREDICT_ARTIFACT_URI"]
    assert env["PREFECT__FLOW_RUN_ID"]  # the worker's own variables are still there
    assert not [name for name in env if any(key in name for key in SECRET_KEYS)], "credentials belong in the Secret"
    assert container["envFrom"] == [{"secretRef": {"name": "healthpredict-flows-env", "optional": False}}]


def test_prefects_own_default_template_is_not_valid_against_the_schema() -> None:
    """Why the pool ships its own template: the default puts Job fields into the pod spec."""
    import kubernetes_validate
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    default = KubernetesWorker.get_default_base_job_template()
    configuration = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(default, {"image": ENV["HEALTHPREDICT_FLOWS_IMAGE"]})
    )
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="quiet-otter"))
    with pytest.raises(kubernetes_validate.ValidationError, match=r"completions|parallelism"):
        kubernetes_validate.validate(dict(configuration.job_manifest), "1.32", strict=True)


def test_docker_deployments_run_the_flows_image_with_their_environment() -> None:
    env = {"HEALTHPREDICT_FLOW_NETWORK": "healthpredict-control", "HEALTHPREDICT_RAW_DATA_DIR": "/srv/uci",
           "HEALTHPREDICT_RAW_FILE": "diabetic_data.csv", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
           "HEALTHPREDICT_ARTIFACT_URI": "s3://healthpredict/data"}  # fmt: skip
    found = deployments(REPO / "prefect.docker.yaml", env)
    assert {d["entrypoint"] for d in found} >= {"flows.split:split_data", "flows.train:train", "flows.promote:promote"}
    for deployment in found:
        variables = deployment["work_pool"]["job_variables"]
        assert deployment["work_pool"]["name"] == "healthpredict-docker"
        assert variables["image"] == "{{ build_image.image }}" and variables["image_pull_policy"] == "IfNotPresent"
        assert variables["network_mode"] == "healthpredict-control"
        assert variables["volumes"] == ["/srv/uci:/data/raw:ro"]  # the raw data only, read-only
        assert variables["env"]["HEALTHPREDICT_RAW_DATA"] == "/data/raw/diabetic_data.csv"
        assert variables["env"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert "parameters" not in deployment  # unset parameters fall back to the settings
    build = yaml.safe_load((REPO / "prefect.docker.yaml").read_text())["build"][0]
    step = build["prefect_docker.deployments.steps.build_docker_image"]
    assert step["dockerfile"] == "docker/worker/Dockerfile" and step["target"] == "worker" and step["pull"] is False
