"""A shared object store for immutable directories (model versions) on any pyarrow filesystem
URL: ``s3://bucket/prefix`` (``?endpoint_override=host:port&scheme=http`` for an S3-compatible
server; credentials from the usual AWS_* variables), ``gs://...``, or a local/mounted path.

A directory is committed by its marker object (``manifest.json``), written after every other
file: the store's single-object PUT is atomic, so a reader that finds the marker finds every file
the marker lists, and an interrupted upload leaves no marker (an invisible, overwritable prefix).
Readers copy a committed directory into a local cache and memory-map it from there.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from scalerec.data.catalog.urls import redact_url
from scalerec.errors import ConfigError, StorageError

__all__ = ["ObjectStore"]

_CHUNK = 8 << 20


#: s3:// URL query options passed to pyarrow's S3FileSystem (credentials come from AWS_* variables).
_S3_OPTIONS = {"endpoint_override": str, "scheme": str, "region": str, "connect_timeout": float,
               "request_timeout": float, "force_virtual_addressing": lambda v: v.lower() == "true"}


def _s3(url: str) -> tuple[pafs.FileSystem, str]:
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    opts: dict = {}
    for key, value in parse_qsl(parts.query):
        if key not in _S3_OPTIONS:
            raise ValueError(f"unknown s3 URL option {key!r}; known: {', '.join(sorted(_S3_OPTIONS))}")
        opts[key] = _S3_OPTIONS[key](value)
    # delayed open: an object below one part (10 MiB) is one PutObject; larger ones are multipart
    # uploads, visible only once CompleteMultipartUpload succeeds (still before the marker)
    fs = pafs.S3FileSystem(allow_delayed_open=True, **opts)
    return fs, f"{parts.netloc}{parts.path}"


class ObjectStore:
    """Directories under one URL prefix; ``marker`` is the name of each directory's commit object."""

    def __init__(self, url: str, *, marker: str = "manifest.json") -> None:
        self.url, self.shown, self.marker = str(url), redact_url(str(url)), marker
        try:
            if self.url.lower().startswith("s3://"):
                self.fs, root = _s3(self.url)
            elif "://" in self.url:
                self.fs, root = pafs.FileSystem.from_uri(self.url)
            else:
                self.fs, root = pafs.LocalFileSystem(), os.path.abspath(self.url)
        except (pa.ArrowInvalid, ValueError, OSError) as exc:
            raise ConfigError(
                f"cannot use the object store URL {self.shown}: {exc}; use s3://BUCKET/PREFIX "
                "(?endpoint_override=HOST:PORT&scheme=http for an S3-compatible server) or a local path"
            ) from None
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"ObjectStore({self.shown!r})"

    def _failed(self, exc: BaseException, what: str) -> StorageError:
        return StorageError(
            f"{what} in the object store {self.shown}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}; "
            "check [data] store_url (SCALEREC_DATA__STORE_URL), that the server is reachable (endpoint_override) "
            "and the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        )

    def _key(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def check(self) -> None:
        """Reach the store (create a local root); StorageError naming the URL (no secrets) and the fix."""
        try:
            if self.local:
                self.fs.create_dir(self.root, recursive=True)
            info = self.fs.get_file_info(self.root)
            if info.type == pafs.FileType.File:
                raise OSError(f"{self.root} is a file, not a prefix")
        except (OSError, pa.ArrowException) as exc:
            raise self._failed(exc, "cannot reach the store root") from None

    def committed(self, name: str) -> bool:
        """Whether directory ``name`` was committed (its marker exists)."""
        try:
            return self.fs.get_file_info(self._key(name, self.marker)).type == pafs.FileType.File
        except (OSError, pa.ArrowException) as exc:
            raise self._failed(exc, f"cannot look up {name}") from None

    def publish(self, local_dir: Path, name: str) -> int:
        """Upload every file of ``local_dir`` under ``name/``, the marker last; returns the bytes."""
        files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
        marker = Path(local_dir) / self.marker
        if marker not in files:
            raise StorageError(f"{local_dir} has no {self.marker}; nothing to commit")
        files.remove(marker)
        total = 0
        try:
            self.fs.create_dir(self._key(name), recursive=True)
            for path in [*files, marker]:
                rel = path.relative_to(local_dir).as_posix()
                if "/" in rel:
                    self.fs.create_dir(self._key(name, rel.rsplit("/", 1)[0]), recursive=True)
                with open(path, "rb") as src, self.fs.open_output_stream(self._key(name, rel)) as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        total += len(chunk)
        except (OSError, pa.ArrowException) as exc:
            raise self._failed(exc, f"cannot publish {name}") from None
        return total

    def fetch(self, name: str, dest: Path) -> Path:
        """Copy committed directory ``name`` to ``dest`` (via a hidden sibling, renamed in whole);
        returns ``dest``. A concurrent fetch of the same directory is harmless."""
        if dest.is_dir():
            return dest
        if not self.committed(name):
            raise StorageError(f"{name} is not in the object store {self.shown} (no {self.marker})")
        tmp = dest.parent / f".fetch-{uuid.uuid4().hex}"
        prefix = self._key(name)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
            for info in infos:
                if info.type != pafs.FileType.File:
                    continue
                target = tmp / info.path[len(prefix) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not dest.is_dir():
                    raise
        except (OSError, pa.ArrowException) as exc:
            raise self._failed(exc, f"cannot fetch {name}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def delete(self, name: str) -> None:
        """Remove directory ``name``: the marker first, so it stops being committed at once."""
        try:
            if self.committed(name):
                self.fs.delete_file(self._key(name, self.marker))
            info = self.fs.get_file_info(self._key(name))
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(self._key(name))
        except (OSError, pa.ArrowException) as exc:
            raise self._failed(exc, f"cannot delete {name}") from None
