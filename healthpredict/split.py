"""Leakage-free, chronological split.

Encounters are ordered by ``encounter_id`` (time). The first ``initial_fraction`` is split by
**patient** into train/validation/test, so no patient's encounters straddle two parts. The rest becomes
ordered future batches that arrive one at a time for drift monitoring and retraining. Every cleaned row is
in exactly one part. The parts and a manifest are written to the artifact store, manifest last.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from healthpredict.data import RawData, fetch_raw_data, load_raw, sha256_file
from healthpredict.features import CleaningReport, clean_encounters
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import DataSettings, Settings
from healthpredict.store import ArtifactStore, StoreError

SPLIT_DIR = "split"
CURRENT_POINTER = "CURRENT"
MANIFEST_NAME = "manifest.json"
INITIAL_PARTS: tuple[str, ...] = ("train", "val", "test")


class SplitError(RuntimeError):
    """A split is missing, incomplete or corrupt; the message names the file."""


@dataclass(frozen=True)
class SplitFrames:
    """The in-memory result of :func:`split_dataset`, parts in order."""

    parts: dict[str, pd.DataFrame]

    @property
    def batch_names(self) -> list[str]:
        return [name for name in self.parts if name.startswith("batch_")]


def batch_name(index: int) -> str:
    """Future batches are numbered from 1 in time order."""
    return f"batch_{index:02d}"


def patient_disjoint_split(
    frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """Assign whole patients to train/val/test (≈ fractions of patients), rows kept in time order."""
    patients = np.sort(frame["patient_nbr"].unique())
    shuffled = np.random.default_rng(seed).permutation(patients)
    n_test = round(len(shuffled) * test_fraction)
    n_val = round(len(shuffled) * val_fraction)
    groups = {
        "test": shuffled[:n_test],
        "val": shuffled[n_test : n_test + n_val],
        "train": shuffled[n_test + n_val :],
    }
    return {name: frame.loc[frame["patient_nbr"].isin(groups[name])].reset_index(drop=True) for name in INITIAL_PARTS}


def split_dataset(clean: pd.DataFrame, data: DataSettings) -> SplitFrames:
    """Order by time, split the initial window by patient, cut the rest into ordered batches."""
    if data.val_fraction + data.test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must be < 1")
    ordered = clean.sort_values("encounter_id", kind="stable").reset_index(drop=True)
    n_initial = int(np.ceil(len(ordered) * data.initial_fraction))
    initial, future = ordered.iloc[:n_initial], ordered.iloc[n_initial:]
    parts = patient_disjoint_split(initial, data.val_fraction, data.test_fraction, data.seed)
    if len(future):
        bounds = np.linspace(0, len(future), data.n_batches + 1).round().astype(int)
        for index in range(data.n_batches):
            parts[batch_name(index + 1)] = future.iloc[bounds[index] : bounds[index + 1]].reset_index(drop=True)
    return SplitFrames(parts=parts)


def describe_part(frame: pd.DataFrame) -> dict[str, Any]:
    """Rows, positives, prevalence, patients and time range of one part."""
    rows = len(frame)
    positives = int(frame[TARGET_COLUMN].sum()) if rows else 0
    return {
        "rows": rows,
        "positives": positives,
        "prevalence": round(positives / rows, 6) if rows else None,
        "patients": int(frame["patient_nbr"].nunique()),
        "first_encounter_id": int(frame["encounter_id"].min()) if rows else None,
        "last_encounter_id": int(frame["encounter_id"].max()) if rows else None,
    }


def split_id_for(source_sha256: str, data: DataSettings) -> str:
    """Content address of a split: same source and settings, same id (and same bytes)."""
    payload = json.dumps({"source": source_sha256, "settings": _split_settings(data)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _split_settings(data: DataSettings) -> dict[str, Any]:
    keys = ("target", "seed", "initial_fraction", "val_fraction", "test_fraction", "n_batches")
    return {key: asdict(data)[key] for key in keys}


def write_split(
    frames: SplitFrames,
    cleaning: CleaningReport,
    source: RawData,
    settings: Settings,
) -> dict[str, Any]:
    """Write all parts and the manifest; the ``CURRENT`` pointer moves only after everything is in place."""
    store = ArtifactStore(settings.data.artifact_uri, settings)
    split_id = split_id_for(source.sha256, settings.data)
    files: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="healthpredict-split-") as tmp:
        staged = Path(tmp)
        for name, frame in tqdm(frames.parts.items(), desc="write split", unit="part", disable=None):
            path = staged / f"{name}.parquet"
            frame.to_parquet(path, index=False, engine="pyarrow", compression="zstd")
            files[name] = {"file": path.name, "sha256": sha256_file(path), **describe_part(frame)}
        manifest = {
            "split_id": split_id,
            "source": {"sha256": source.sha256, "name": Path(source.source).name},
            "settings": _split_settings(settings.data),
            "cleaning": asdict(cleaning),
            "parts": files,
            "batches": frames.batch_names,
        }
        (staged / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        store.publish_directory(staged, SPLIT_DIR, split_id, marker=MANIFEST_NAME)
    store.write_bytes(split_id.encode(), SPLIT_DIR, CURRENT_POINTER)
    return manifest


def split_raw_data(raw: RawData, settings: Settings) -> dict[str, Any]:
    """Validate → clean → split → write a fetched raw file; returns the manifest."""
    clean, report = clean_encounters(load_raw(raw), settings.data.target)
    return write_split(split_dataset(clean, settings.data), report, raw, settings)


def split_exists(settings: Settings, split_id: str) -> bool:
    """Whether a complete split (its manifest) is in the artifact store."""
    return ArtifactStore(settings.data.artifact_uri, settings).exists(SPLIT_DIR, split_id, MANIFEST_NAME)


def run_split(settings: Settings, source: str | None = None) -> dict[str, Any]:
    """Fetch → validate → clean → split → write: the ``healthpredict split`` command."""
    return split_raw_data(fetch_raw_data(settings, source), settings)


class SplitReader:
    """Reads the current split from the artifact store, verifying each file's checksum."""

    def __init__(self, settings: Settings, split_id: str | None = None) -> None:
        self.store = ArtifactStore(settings.data.artifact_uri, settings)
        try:
            self.split_id = split_id or self.store.read_bytes(SPLIT_DIR, CURRENT_POINTER).decode().strip()
            self.manifest: dict[str, Any] = json.loads(self.store.read_bytes(SPLIT_DIR, self.split_id, MANIFEST_NAME))
        except StoreError as exc:
            raise SplitError(f"no split found in {self.store.root} ({exc}); run `healthpredict split` first") from exc

    @property
    def batch_names(self) -> list[str]:
        return list(self.manifest["batches"])

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()

    def uri(self, name: str) -> str:
        return self.store.uri(SPLIT_DIR, self.split_id, f"{name}.parquet")

    def read(self, name: str) -> pd.DataFrame:
        entry = self.manifest["parts"].get(name)
        if entry is None:
            raise SplitError(f"split {self.split_id} has no part {name!r} (has: {', '.join(self.manifest['parts'])})")
        with self.store.open_local_copy(SPLIT_DIR, self.split_id, entry["file"]) as local:
            if not local.exists():
                raise SplitError(f"{self.uri(name)}: file is missing")
            digest = sha256_file(local)
            if digest != entry["sha256"]:
                raise SplitError(f"{self.uri(name)}: corrupt (sha256 {digest}, manifest says {entry['sha256']})")
            return pd.read_parquet(local)
