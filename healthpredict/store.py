"""The artifact store: a local folder or any fsspec URI (``s3://bucket/prefix``).

Writes are all-or-nothing: a set of files is staged locally, then published (a directory rename on a
local disk; on object stores, uploads to a staging prefix, then copies into place with the completeness
marker last), so readers never see a half-written set and a failed write never removes a published one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from healthpredict.data import fsspec_options
from healthpredict.settings import Settings


class StoreError(RuntimeError):
    """The artifact store cannot be read or written; the message names the URI."""


class ArtifactStore:
    """A root URI plus the filesystem that serves it."""

    def __init__(self, root: str, settings: Settings | None = None) -> None:
        self.root = root.rstrip("/")
        try:
            self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **fsspec_options(self.root, settings))
        except Exception as exc:
            raise StoreError(f"{root}: artifact store cannot be opened ({exc})") from exc

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def uri(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def path(self, *parts: str) -> str:
        return "/".join([self._root_path.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    def read_bytes(self, *parts: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(*parts)))
        except FileNotFoundError as exc:
            raise StoreError(f"{self.uri(*parts)}: not found") from exc
        except Exception as exc:
            raise StoreError(f"{self.uri(*parts)}: cannot be read ({exc})") from exc

    def write_bytes(self, payload: bytes, *parts: str) -> None:
        """Write one object atomically (temp file + rename locally; single PUT remotely)."""
        target = self.path(*parts)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=Path(target).parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, payload)

    @contextmanager
    def open_local_copy(self, *parts: str) -> Iterator[Path]:
        """A local path to read an object from (the object itself when the store is local)."""
        if self.is_local:
            yield Path(self.path(*parts))
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / parts[-1]
            try:
                self.fs.get_file(self.path(*parts), str(local))
            except FileNotFoundError as exc:
                raise StoreError(f"{self.uri(*parts)}: not found") from exc
            yield local

    def publish_directory(self, staged: Path, *parts: str, marker: str) -> None:
        """Make the staged local directory visible as ``parts`` in one step; ``marker`` names the file whose
        presence means "complete" (readers check it), so it is published last.

        Locally: a directory rename. On object stores: every file is uploaded under a private staging prefix
        first; only when all are there are they copied into place, the marker last. A failure removes the
        staging prefix and nothing else: a split already published under the same name is never deleted.
        """
        if not (staged / marker).is_file():
            raise StoreError(f"{self.uri(*parts)}: the staged directory has no {marker}")
        if self.is_local:
            self._publish_local(staged, self.path(*parts))
            return
        target = self.path(*parts)
        staging = self.path(*parts[:-1], f".staging-{parts[-1]}-{uuid.uuid4().hex}")
        names = [*sorted(file.name for file in staged.iterdir() if file.name != marker), marker]
        try:
            for name in names:
                self.fs.put_file(str(staged / name), f"{staging}/{name}")
            for name in names:  # the marker last: until it is in place the target is not complete
                self.fs.copy(f"{staging}/{name}", f"{target}/{name}")
        except Exception as exc:
            raise StoreError(f"{self.uri(*parts)}: upload failed, nothing published ({exc})") from exc
        finally:
            with contextlib.suppress(Exception):  # best effort: staging prefixes are never read
                self.fs.rm(staging, recursive=True)

    @staticmethod
    def _publish_local(staged: Path, target: str) -> None:
        final = Path(target)
        final.parent.mkdir(parents=True, exist_ok=True)
        incoming = final.parent / f".incoming-{uuid.uuid4().hex}"
        shutil.copytree(staged, incoming)
        os.chmod(incoming, 0o755)  # staging dirs are private; the published split is not
        old = final.parent / f".old-{uuid.uuid4().hex}"
        if final.exists():
            os.replace(final, old)
        os.replace(incoming, final)
        shutil.rmtree(old, ignore_errors=True)
