"""``split-data``: fetch the raw data, validate, clean and split it into the artifact store."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext

from flows.blocks import result_storage
from flows.common import flow_settings, retry_unless_permanent
from healthpredict.data import RawData, fetch_raw_data
from healthpredict.reporting import split_summary_markdown
from healthpredict.settings import Settings
from healthpredict.split import split_exists, split_id_for, split_raw_data


@task(retries=3, retry_delay_seconds=[5, 20, 60], timeout_seconds=900, retry_condition_fn=retry_unless_permanent)
def fetch_raw(settings: Settings, source: str | None) -> RawData:
    return fetch_raw_data(settings, source)


def _split_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The split is a pure function of the source checksum and split settings, while its files exist."""
    settings: Settings = parameters["settings"]
    split_id = split_id_for(parameters["raw"].sha256, settings.data)
    present = "present" if split_exists(settings, split_id) else "absent"
    return f"split-{split_id}-{settings.data.artifact_uri}-{present}"


@task(
    cache_key_fn=_split_cache_key, persist_result=True, retries=2, retry_delay_seconds=10, timeout_seconds=900,
    retry_condition_fn=retry_unless_permanent,
)  # fmt: skip
def split(settings: Settings, raw: RawData) -> dict[str, Any]:
    return split_raw_data(raw, settings)


@flow(name="split-data", log_prints=True)
def split_data(source: str | None = None) -> dict[str, Any]:
    """Raw data (``source`` or ``HEALTHPREDICT_RAW_DATA``) → validated, patient-disjoint split + manifest."""
    settings = flow_settings()
    storage = result_storage(settings)
    split_task = split.with_options(result_storage=storage) if storage is not None else split
    raw = fetch_raw(settings, source)
    manifest = split_task(settings, raw)
    create_markdown_artifact(split_summary_markdown(manifest), key="split-manifest", description="Split manifest")
    return manifest
