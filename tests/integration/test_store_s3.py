"""Publishing a set of files to S3 (moto) is all-or-nothing, the completeness marker arrives last, and a failed
publish never deletes what was published before under the same name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import create_bucket, make_settings

from healthpredict.store import ArtifactStore, StoreError

pytestmark = pytest.mark.integration

MARKER = "manifest.json"


def staged_dir(root: Path, version: str) -> Path:
    root.mkdir(parents=True)
    for name in ("batch_01.parquet", "test.parquet", "train.parquet"):
        (root / name).write_bytes(f"{name} {version}".encode() * 100)
    (root / MARKER).write_text(f'{{"version": "{version}"}}')
    return root


@pytest.fixture
def store(aws_env: dict[str, str], tmp_path: Path) -> ArtifactStore:
    bucket = f"hp-store-{tmp_path.name.lower().replace('_', '-')[-20:]}"
    create_bucket(aws_env["AWS_ENDPOINT_URL"], bucket)
    return ArtifactStore(f"s3://{bucket}/prefix", make_settings(tmp_path / "home", **aws_env))


def fail_on_call(store: ArtifactStore, method: str, call: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``store.fs.<method>`` raise on its ``call``-th use; returns the targets of every call made."""
    real = getattr(store.fs, method)
    seen: list[str] = []

    def failing(source: str, target: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(target)
        if len(seen) == call:
            raise ConnectionError("connection reset by peer")
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(store.fs, method, failing)
    return seen


def listing(store: ArtifactStore) -> list[str]:
    return sorted(store.fs.find(store.path()))


def test_marker_is_published_last_and_staging_is_removed(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = fail_on_call(store, "copy", call=0, monkeypatch=monkeypatch)  # records, never fails
    store.publish_directory(staged_dir(tmp_path / "v1", "v1"), "split", "abc", marker=MARKER)
    assert [c.rsplit("/", 1)[1] for c in copies][-1] == MARKER and len(copies) == 4
    assert store.read_bytes("split", "abc", MARKER) == b'{"version": "v1"}'
    assert not [key for key in listing(store) if ".staging-" in key]


def test_a_failed_republish_keeps_the_published_split(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish_directory(staged_dir(tmp_path / "v1", "v1"), "split", "abc", marker=MARKER)
    before = {key: store.fs.cat_file(key) for key in listing(store)}
    fail_on_call(store, "put_file", call=2, monkeypatch=monkeypatch)  # between two parts of the upload
    with pytest.raises(StoreError, match=r"s3://.*/prefix/split/abc: upload failed, nothing published"):
        store.publish_directory(staged_dir(tmp_path / "v2", "v2"), "split", "abc", marker=MARKER)
    after = {key: store.fs.cat_file(key) for key in listing(store)}
    assert after == before  # nothing deleted, nothing half-replaced, no staging left


def test_a_publish_that_fails_while_copying_into_place_is_not_complete(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_on_call(store, "copy", call=3, monkeypatch=monkeypatch)  # two parts in place, then the failure
    with pytest.raises(StoreError, match="upload failed"):
        store.publish_directory(staged_dir(tmp_path / "v1", "v1"), "split", "new", marker=MARKER)
    assert not store.exists("split", "new", MARKER)  # readers treat it as absent
    assert not [key for key in listing(store) if ".staging-" in key]
