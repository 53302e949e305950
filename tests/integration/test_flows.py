"""Flow logic under a Prefect test harness; task logic through ``.fn()``; broken inputs fail loudly."""

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from conftest import (
    StubRequest,
    StubServer,
    create_bucket,
    free_port,
    make_settings,
    raw_frame,
    register_logreg,
    training_env,
    write_raw_csv,
)
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.testing.utilities import prefect_test_harness

import healthpredict.deploy as deploy
from flows.promote import promote
from flows.split import fetch_raw, split, split_data
from flows.train import train
from healthpredict.deploy import DeploymentError
from healthpredict.registry import CHAMPION, configure_tracking, version_by_alias
from healthpredict.settings import Settings
from healthpredict.split import SplitError, SplitReader

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


async def _artifact(key: str) -> str:
    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
        return next(a.data for a in artifact if a.key == key)


def test_task_logic_through_fn(real_data: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", HEALTHPREDICT_RAW_DATA=str(real_data))
    raw = fetch_raw.fn(settings, None)
    manifest = split.fn(settings, raw)
    assert manifest["cleaning"]["output_rows"] == 99_340
    assert SplitReader(settings).split_id == manifest["split_id"]


def test_split_flow_writes_manifest_artifact(real_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    _set_env(monkeypatch, {"HEALTHPREDICT_HOME": str(tmp_path / "home"), "HEALTHPREDICT_RAW_DATA": str(real_data)})
    manifest = split_data()
    assert manifest["parts"]["train"]["rows"] == 13_865
    markdown = asyncio.run(_artifact("split-manifest"))
    assert f"Split `{manifest['split_id']}`" in markdown and "| batch_08 | 9934 |" in markdown


def test_missing_raw_file_fails_the_flow_with_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "dataset.zip"
    _set_env(monkeypatch, {"HEALTHPREDICT_HOME": str(tmp_path / "home"), "HEALTHPREDICT_RAW_DATA": str(missing)})
    state = split_data(return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=rf"{missing}: no such file"):
        state.result()
    assert not (tmp_path / "home" / "artifacts").exists()


@flow(name="fetch-raw-data")
def fetch_raw_data_once() -> tuple[bool, str]:
    """The split flow's real ``fetch_raw`` task on the environment's source: whether it ended completed, and its id."""
    state = fetch_raw(Settings.from_env(), None, return_state=True)
    return state.is_completed(), str(state.state_details.task_run_id)


async def _task_run_count(task_run_id: str) -> int:
    async with get_client() as client:
        return (await client.read_task_run(UUID(task_run_id))).run_count


def test_a_missing_raw_file_is_tried_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing local file fails the task on its first try: no retry (5 s, then 20 s, 60 s) can heal it."""
    import asyncio

    missing = tmp_path / "nope.zip"
    _set_env(monkeypatch, {"HEALTHPREDICT_HOME": str(tmp_path / "home"), "HEALTHPREDICT_RAW_DATA": str(missing)})
    completed, task_run_id = fetch_raw_data_once()
    assert not completed
    assert asyncio.run(_task_run_count(task_run_id)) == 1


def test_a_download_that_fails_once_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers 503 once, then the file: the task tries again (after 5 s) and gets it."""
    import asyncio

    body = write_raw_csv(raw_frame(8), tmp_path / "diabetic_data.csv").read_bytes()
    hits: list[int] = []

    def flaky(request: StubRequest) -> tuple[int, bytes]:
        hits.append(1)
        return (503, b"busy") if len(hits) == 1 else (200, body)

    server = StubServer(flaky)
    try:
        _set_env(monkeypatch, {
            "HEALTHPREDICT_HOME": str(tmp_path / "home"), "HEALTHPREDICT_RAW_SHA256": "none",
            "HEALTHPREDICT_RAW_DATA": f"{server.url}/dataset.zip",
        })  # fmt: skip
        completed, task_run_id = fetch_raw_data_once()
    finally:
        server.close()
    assert completed and len(hits) == 2
    assert asyncio.run(_task_run_count(task_run_id)) == 2


def test_corrupt_parquet_fails_the_train_flow(
    real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "split-copy"
    shutil.copytree(real_split_home / "artifacts", copy / "artifacts")
    reader = SplitReader(make_settings(copy))
    train_file = copy / "artifacts" / "split" / reader.split_id / "train.parquet"
    train_file.write_bytes(b"PAR1 this is not parquet PAR1")
    _set_env(monkeypatch, training_env(tmp_path / "home", copy))
    state = train(trials_per_family=1, time_budget_s=30, families=["logreg"], return_state=True)
    assert state.is_failed()
    with pytest.raises(SplitError, match=r"train\.parquet: corrupt"):
        state.result()


def test_s3_artifact_store_uses_the_prefect_aws_blocks(
    real_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_env: dict[str, str]
) -> None:
    import boto3

    from flows.blocks import RESULTS_FOLDER, create_aws_blocks
    from healthpredict.settings import Settings

    create_bucket(aws_env["AWS_ENDPOINT_URL"], "hp-flows")
    env = {
        **aws_env, "HEALTHPREDICT_HOME": str(tmp_path / "home"), "HEALTHPREDICT_RAW_DATA": str(real_data),
        "HEALTHPREDICT_ARTIFACT_URI": "s3://hp-flows/data",
    }  # fmt: skip
    _set_env(monkeypatch, env)
    slugs = create_aws_blocks(Settings.from_env(), "hp-flows")
    assert slugs == {"credentials": "aws-credentials/healthpredict-aws", "bucket": "s3-bucket/healthpredict-artifacts"}
    manifest = split_data()
    s3 = boto3.client("s3", endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="hp-flows")["Contents"]]
    assert f"data/split/{manifest['split_id']}/manifest.json" in keys
    assert any(key.startswith(f"{RESULTS_FOLDER}/") for key in keys), keys  # the persisted split result


def test_s3_artifact_store_without_blocks_says_how_to_create_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.blocks import result_storage
    from healthpredict.settings import Settings

    async def delete_block() -> None:
        async with get_client() as client:
            try:
                block = await client.read_block_document_by_name("healthpredict-artifacts", "s3-bucket")
            except ObjectNotFound:
                return  # not saved in this server: nothing to delete
            await client.delete_block_document(block.id)

    import asyncio

    asyncio.run(delete_block())
    _set_env(monkeypatch, {"HEALTHPREDICT_HOME": str(tmp_path), "HEALTHPREDICT_ARTIFACT_URI": "s3://x/y"})
    with pytest.raises(RuntimeError, match="healthpredict blocks create --bucket"):
        result_storage(Settings.from_env())


def test_a_failed_deployment_is_not_retried_when_its_undo_and_its_record_fail_too(
    real_split_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The promote flow's gate passes and the local target verifies a real candidate, then switching the running
    service fails (nothing listens at HEALTHPREDICT_SERVICE_URL), so does switching it back, and the registry refuses
    to record the failure. The run reports the DeploymentError, once: the task is not retried."""
    closed = f"http://127.0.0.1:{free_port()}"
    _set_env(monkeypatch, training_env(
        tmp_path / "home", real_split_home, HEALTHPREDICT_SERVICE_URL=closed, HEALTHPREDICT_RELOAD_TOKEN="t",
        HEALTHPREDICT_AUDIT_BOOTSTRAP_ROUNDS="20", HEALTHPREDICT_DEPLOY_TARGET="local",
    ))  # fmt: skip
    settings = Settings.from_env()
    configure_tracking(settings)
    first = register_logreg(settings, tags={"family": "logreg"})
    MlflowClient().set_registered_model_alias(settings.tracking.model_name, CHAMPION, first)
    second = register_logreg(settings, tags={"family": "logreg"})
    recorded: list[dict[str, str]] = []
    real = deploy.tag_version

    def tag_version(settings: Settings, version: str, tags: dict[str, str]) -> None:
        recorded.append(tags)
        if tags.get("deployment") == "failed":
            raise MlflowException("RESOURCE_EXHAUSTED: the tracking server is overloaded")
        real(settings, version, tags)

    monkeypatch.setattr(deploy, "tag_version", tag_version)
    with caplog.at_level(logging.ERROR, logger="healthpredict.deploy"):
        state = promote(return_state=True)

    assert state.is_failed()
    with pytest.raises(DeploymentError, match=f"deployment of version {second} failed: .*undo incomplete"):
        state.result()
    assert [tags["deployment"] for tags in recorded] == ["failed"]  # one attempt: no retry rolled it out again
    assert str(version_by_alias(settings, CHAMPION).version) == first  # type: ignore[union-attr]
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("healthpredict.deploy")]
    assert any("the tracking server is overloaded" in m for m in logged), logged
    assert any("undo failed: rolling the local target back failed" in m for m in logged), logged
