"""The event log on an object store: day-partitioned Parquet objects under any pyarrow filesystem
URL (``s3://bucket/prefix?endpoint_override=host:port&scheme=http``, ``gs://...`` or a local path),
shared by every machine that names the same URL (``[data] events_url``).

Object stores have no rename and no locks, so the log is built on what they do have: a write of a
new object under a fresh name, and an atomic single-object PUT. Layout under the URL::

    date=YYYY-MM-DD/part-<uuid>.parquet     data objects, immutable, written under unique names
    _manifests/g-<generation:012d>.json     the published state: every visible object with its
                                            day, rows, bytes, time bounds and transaction ids

Readers list ``_manifests/``, take the highest generation and read only the objects it lists, so
an object written by a transaction that never published (a crash, a failed upload) is invisible.
A commit uploads its objects, then publishes generation N+1 = N + its objects (one PUT: the
atomic switch point). Compaction and user deletion publish "these objects replace those" the
same way, so a reader sees the old files or the new one, never both and never neither.
Publishing is serialised by the catalogue's ``log-publish`` lease (every machine of the catalogue)
and refuses to overwrite an existing generation. Objects no retained manifest lists are garbage
(interrupted transactions, replaced files) and are collected by :meth:`SharedEventLog.recover`
after a grace period (readers of an older manifest may still read them); a user deletion removes
the objects that held the user's rows at once.

Each machine keeps the objects it reads in a local cache (``<data_dir>/cache/events``, immutable
names, so a cached copy is never stale; copies the manifest no longer lists are pruned), which
the Parquet readers of training, statistics and KPIs (DuckDB, Polars) open as local files;
``scan`` streams straight from the store through ``pyarrow.dataset``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scalerec.data.eventlog import (
    PARTITION_PREFIX, ROW_GROUP_ROWS, SORT_MAX_ROWS, TMP_PREFIX, TXN_FILE, EventLog, LogTransaction, Progress,
    TimeLike, _conform, _FileInfo, _fsync_dir, _fsync_file, _partition_date, _pid_alive, _read_info, _to_utc_us, _US_PER_DAY,
)
from scalerec.data.objectstore import ObjectStore
from scalerec.data.schema import EVENT_SCHEMA
from scalerec.errors import StorageError, ValidationError

__all__ = ["SharedEventLog", "GC_GRACE_S", "KEEP_FLUSHES", "KEEP_MANIFESTS"]

MANIFESTS = "_manifests"
_GEN_RE = re.compile(r"^g-(\d{12})\.json$")
#: Manifests kept besides the latest: a reader that listed an older one can finish its read.
KEEP_MANIFESTS = 16
#: Flushes of pending events whose buffer ids each manifest keeps: a reader of "log + pending"
#: drops the pending rows a manifest already holds (one read spanning more flushes retries).
KEEP_FLUSHES = 256
#: Unlisted objects younger than this are left alone by garbage collection: a transaction still
#: uploading, or a reader of an older manifest (an upload that outlives it is re-checked at publish).
GC_GRACE_S = 6 * 3600.0
_EPOCH_DATE = dt.date(1970, 1, 1)


def _entry(rel: str, info: _FileInfo, size: int) -> dict[str, Any]:
    return {"path": rel, "day": rel.split("/", 1)[0][len(PARTITION_PREFIX):], "rows": info.num_rows, "bytes": size,
            "min_us": info.min_us, "max_us": info.max_us, "txids": sorted(info.txids)}


def _entry_info(e: dict[str, Any]) -> _FileInfo:
    return _FileInfo(int(e["rows"]), e.get("min_us"), e.get("max_us"), frozenset(e.get("txids", ())))


class SharedLogTransaction(LogTransaction):
    """Stages like the local log (Parquet files in a private local directory, same encoding); the
    commit uploads each file under a fresh object name and then publishes the manifest."""

    log: "SharedEventLog"
    #: Buffer ids of the pending events this transaction moves (set by DataStore.flush_pending).
    pending_ids: Sequence[int] = ()

    def _flushed(self) -> dict[str, Any] | None:
        if not self.pending_ids:
            return None
        ids = sorted(int(i) for i in self.pending_ids)
        runs = [[ids[0], ids[0]]]
        for i in ids[1:]:  # contiguous in practice: a claim takes the oldest unclaimed ids
            if i == runs[-1][1] + 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        return {"txid": self.txid, "ids": runs}

    def _commit(self) -> int:
        if not self._close_staging():
            return 0
        staged = []
        for path, day in self._files:
            date = (_EPOCH_DATE + dt.timedelta(days=day)).isoformat()
            staged.append((path, f"{PARTITION_PREFIX}{date}/part-{uuid.uuid4().hex}.parquet"))
        uploaded: list[str] = []
        try:
            entries = []
            for path, rel in staged:
                size = self.log._upload(path, rel)
                uploaded.append(rel)
                entries.append(_entry(rel, _read_info(path), size))
            self.log._publish(add=entries, remove=[], flushed=self._flushed())
        except BaseException:
            # Unpublished objects are invisible; remove them now (garbage collection would later).
            with contextlib.suppress(Exception):
                self.log._delete_objects(uploaded)
            self._discard()
            raise
        for path, rel in staged:  # the staged file is this machine's cached copy of the object
            self.log._keep_in_cache(path, rel)
        self._discard()
        return self.rows


class SharedEventLog(EventLog):
    """The event log under an object-store URL (see the module docstring). ``cache_dir`` is this
    machine's cache and staging area; ``publish_guard()`` is a context manager held around each
    manifest publish and garbage collection (the catalogue's ``log-publish`` lease in a DataStore)."""

    transaction_class = SharedLogTransaction

    def __init__(self, url: str, cache_dir: Path | str, *,
                 publish_guard: Callable[[], contextlib.AbstractContextManager[Any]] | None = None) -> None:
        super().__init__(cache_dir)
        self.store = ObjectStore(url, marker="_manifests")
        self.url, self.shown = self.store.url, self.store.shown
        self._guard = publish_guard or contextlib.nullcontext
        self._manifest: dict[str, Any] = {"generation": 0, "files": []}
        self._by_name: dict[str, dict[str, Any]] = {}
        self._pruned_generation = -1
        self._manifest_lock = threading.Lock()
        self._pin = threading.local()  # the manifest a consistent view reads (this thread)

    def __repr__(self) -> str:
        return f"SharedEventLog({self.shown!r})"

    # -- the object store ------------------------------------------------------------------
    def _key(self, rel: str) -> str:
        return self.store._key(rel)

    def _upload(self, path: Path, rel: str) -> int:
        try:
            if self.store.local:
                self.store.fs.create_dir(self._key(rel).rsplit("/", 1)[0], recursive=True)
            with open(path, "rb") as src, self.store.fs.open_output_stream(self._key(rel)) as dst:
                size = 0
                while chunk := src.read(8 << 20):
                    dst.write(chunk)
                    size += len(chunk)
            if self.store.local:  # a disk keeps the local log's durability: on disk before it is published
                _fsync_file(Path(self._key(rel)))
                _fsync_dir(Path(self._key(rel)).parent)
            return size
        except (OSError, pa.ArrowException) as exc:
            raise self.store._failed(exc, f"cannot write {rel}") from None

    def _delete_objects(self, rels: Iterable[str]) -> int:
        n = 0
        for rel in rels:
            with contextlib.suppress(FileNotFoundError):
                self.store.fs.delete_file(self._key(rel))
                n += 1
            with contextlib.suppress(OSError):
                (self.root / rel).unlink()
        return n

    def _local_path(self, rel: str) -> Path:
        """A local file holding object ``rel``: the object itself on a local store, else the cached
        copy (downloaded once; immutable names make a cached copy always valid)."""
        if self.store.local:
            return Path(self._key(rel))
        path = self.root / rel
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".fetch-{uuid.uuid4().hex}")
        try:
            with self.store.fs.open_input_stream(self._key(rel)) as src, open(tmp, "wb") as dst:
                while chunk := src.read(8 << 20):
                    dst.write(chunk)
            os.replace(tmp, path)
        except FileNotFoundError:
            raise StorageError(
                f"{rel} left the event log {self.shown} while being read (a user deletion or garbage collection "
                "ran meanwhile); retry the read"
            ) from None
        except (OSError, pa.ArrowException) as exc:
            raise self.store._failed(exc, f"cannot read {rel}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _keep_in_cache(self, staged: Path, rel: str) -> None:
        if self.store.local:
            return
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.replace(staged, dest)

    # -- manifests -------------------------------------------------------------------------
    def _generations(self) -> list[int]:
        try:
            infos = self.store.fs.get_file_info(pafs.FileSelector(self._key(MANIFESTS), allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            raise self.store._failed(exc, "cannot list the event log's manifests") from None
        gens = []
        for info in infos:
            m = _GEN_RE.match(info.base_name)
            if m and info.type == pafs.FileType.File:
                gens.append(int(m.group(1)))
        return sorted(gens)

    def _read_manifest(self, gen: int) -> dict[str, Any]:
        try:
            with self.store.fs.open_input_stream(self._key(f"{MANIFESTS}/g-{gen:012d}.json")) as fh:
                return json.loads(fh.read().decode("utf-8"))
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise self.store._failed(exc, f"cannot read manifest generation {gen}") from None

    def manifest(self) -> dict[str, Any]:
        """The latest published manifest (``{"generation": n, "files": [...]}``; generation 0: empty log)."""
        pinned = getattr(self._pin, "manifest", None)
        if pinned is not None:
            return pinned
        gens = self._generations()
        gen = gens[-1] if gens else 0
        with self._manifest_lock:
            if gen == self._manifest["generation"]:
                return self._manifest
        m = self._read_manifest(gen) if gen else {"generation": 0, "files": []}
        with self._manifest_lock:
            if m["generation"] >= self._manifest["generation"] or gen == 0:
                self._manifest = m
                self._by_name = {e["path"].rsplit("/", 1)[-1]: e for e in m["files"]}
            return self._manifest

    @contextlib.contextmanager
    def pinned(self, manifest: dict[str, Any]) -> Iterator[None]:
        """Every read of this thread inside sees ``manifest`` (one snapshot for several reads)."""
        outer = getattr(self._pin, "manifest", None)
        self._pin.manifest = manifest
        try:
            yield
        finally:
            self._pin.manifest = outer

    def view(self, read_pending: Callable[[], tuple[pa.Table, list[int], list[str | None]]]
             ) -> tuple[dict[str, Any], pa.Table]:
        """A manifest and the pending events it does not hold, without a lock across machines.

        The pending rows are read (with buffer ids and claim tokens) before the manifest, so a
        batch is in the pending read, the manifest, or both; a row the manifest holds (its claim
        token is a txid of the log, or its id is in a recorded flush) is dropped from the pending
        side: each event counted once. Retries when more flushes than the manifest records ran
        between the two reads."""
        for _ in range(8):
            seq0 = int(self.manifest().get("flush_seq", 0))
            table, ids, claims = read_pending()
            m = self.manifest()
            recorded = m.get("flushed", [])
            if int(m.get("flush_seq", 0)) - seq0 <= len(recorded):
                break
        else:  # pragma: no cover - a flush per read, for eight reads in a row
            raise StorageError(f"the event log {self.shown} changed under every read; retry when flushes are fewer")
        if not table.num_rows:
            return m, table
        logged = {t for e in m["files"] for t in e.get("txids", ())}
        runs = [r for f in recorded for r in f["ids"]]
        id_arr = np.asarray(ids, dtype=np.int64)
        drop = pc.fill_null(pc.is_in(pa.array(claims, pa.string()), value_set=pa.array(sorted(logged), pa.string())),
                            False).to_numpy(zero_copy_only=False)
        for lo, hi in runs:
            drop |= (id_arr >= lo) & (id_arr <= hi)
        return m, table.filter(pa.array(~drop)) if drop.any() else table

    def _put_manifest(self, gen: int, body: bytes) -> None:
        key = self._key(f"{MANIFESTS}/g-{gen:012d}.json")
        fs = self.store.fs
        if self.store.local:  # a local file is written in place: write aside, then rename in whole
            fs.create_dir(self._key(MANIFESTS), recursive=True)
            tmp = f"{key}.part-{uuid.uuid4().hex}"
            with fs.open_output_stream(tmp) as fh:
                fh.write(body)
            _fsync_file(Path(tmp))
            fs.move(tmp, key)
            _fsync_dir(Path(key).parent)
        else:  # one small PUT: the object appears whole or not at all
            with fs.open_output_stream(key) as fh:
                fh.write(body)

    def _publish(self, *, add: Sequence[dict[str, Any]], remove: Sequence[str],
                 flushed: dict[str, Any] | None = None) -> int:
        """Publish the latest manifest with ``add`` entries and without ``remove`` paths; returns the
        new generation. Under the publish guard, so concurrent publishers compose their changes."""
        with self._guard():
            gens = self._generations()
            cur = self._read_manifest(gens[-1]) if gens else {"generation": 0, "files": []}
            files = {e["path"]: e for e in cur["files"]}
            gone = [r for r in remove if r not in files]
            if gone:
                raise StorageError(
                    f"{len(gone)} file(s) to replace in the event log {self.shown} were replaced by another writer "
                    f"meanwhile (e.g. {gone[0]}); nothing changed; run the job again"
                )
            if add:  # garbage collection may have taken an upload that outlived its grace period
                infos = self.store.fs.get_file_info([self._key(e["path"]) for e in add])
                lost = [e["path"] for e, i in zip(add, infos) if i.type != pafs.FileType.File]
                if lost:
                    raise StorageError(f"uploaded objects vanished before the commit (e.g. {lost[0]}); nothing changed; retry")
            for r in remove:
                del files[r]
            for e in add:
                files[e["path"]] = e
            gen = cur["generation"] + 1
            if self.store.fs.get_file_info(self._key(f"{MANIFESTS}/g-{gen:012d}.json")).type != pafs.FileType.NotFound:
                raise StorageError(
                    f"manifest generation {gen} of the event log {self.shown} was published by another writer at the "
                    "same time; nothing changed; every machine writing this log must share one catalogue "
                    "([data] catalog_url), whose log-publish lease serialises publishing"
                )
            flushes = list(cur.get("flushed", ()))[-(KEEP_FLUSHES - 1):] + ([flushed] if flushed else [])
            body = {"generation": gen, "created": time.time(), "by": f"{socket.gethostname()}:{os.getpid()}",
                    "flush_seq": int(cur.get("flush_seq", 0)) + bool(flushed), "flushed": flushes,
                    "files": sorted(files.values(), key=lambda e: e["path"])}
            try:
                self._put_manifest(gen, json.dumps(body, separators=(",", ":")).encode())
            except (OSError, pa.ArrowException) as exc:
                raise self.store._failed(exc, f"cannot publish manifest generation {gen}") from None
        self.manifest()
        return gen

    def _entries(self, start: TimeLike = None, end: TimeLike = None) -> list[dict[str, Any]]:
        lo, hi = _to_utc_us(start, "start"), _to_utc_us(end, "end")
        out = []
        for e in self.manifest()["files"]:
            day_us = (dt.date.fromisoformat(e["day"]) - _EPOCH_DATE).days * _US_PER_DAY
            if (lo is not None and day_us + _US_PER_DAY <= lo) or (hi is not None and day_us >= hi):
                continue
            out.append(e)
        return sorted(out, key=lambda e: (e["day"], e["path"]))

    # -- the EventLog surface --------------------------------------------------------------
    def partitions(self, start: TimeLike = None, end: TimeLike = None) -> list[tuple[dt.date, Path]]:
        days = sorted({e["day"] for e in self._entries(start, end)})
        return [(dt.date.fromisoformat(d), self.root / f"{PARTITION_PREFIX}{d}") for d in days]

    def _visible_files(self, part_dir: Path) -> list[Path]:  # type: ignore[override]
        day = _partition_date(Path(part_dir).name)
        entries = [e for e in self.manifest()["files"] if day is not None and e["day"] == day.isoformat()]
        return [self._local_path(e["path"]) for e in sorted(entries, key=lambda e: e["path"])]

    def files(self, start: TimeLike = None, end: TimeLike = None) -> list[Path]:
        entries = self._entries(start, end)
        self.prune_cache()
        return [self._local_path(e["path"]) for e in entries]

    def _info(self, path: Path) -> _FileInfo:
        e = self._by_name.get(Path(path).name)
        return _entry_info(e) if e is not None else super()._info(path)

    def count(self, start: TimeLike = None, end: TimeLike = None) -> int:
        return sum(int(e["rows"]) for e in self._entries(start, end))

    def time_range(self) -> tuple[dt.datetime, dt.datetime] | None:
        entries = [e for e in self._entries() if e["rows"]]
        if not entries:
            return None
        if any(e.get("min_us") is None for e in entries):
            return super().time_range()
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return (epoch + dt.timedelta(microseconds=min(e["min_us"] for e in entries)),
                epoch + dt.timedelta(microseconds=max(e["max_us"] for e in entries)))

    def txids(self, days: Iterable[dt.date] | None = None) -> set[str]:
        wanted = None if days is None else {d.isoformat() for d in days}
        return {t for e in self.manifest()["files"] if wanted is None or e["day"] in wanted for t in e.get("txids", ())}

    def is_empty(self) -> bool:
        return not self.manifest()["files"]

    def dataset(self, entries: Sequence[dict[str, Any]] | None = None) -> pads.Dataset:
        """The published objects (default: all) as a ``pyarrow.dataset`` over the store's filesystem."""
        entries = self._entries() if entries is None else entries
        return pads.dataset([self._key(e["path"]) for e in entries], schema=EVENT_SCHEMA, format="parquet",
                            filesystem=self.store.fs)

    def scan(self, *, start: TimeLike = None, end: TimeLike = None, columns: Sequence[str] | None = None,
             filter: pc.Expression | None = None, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Like :meth:`EventLog.scan`, streamed from the store through ``pyarrow.dataset`` (the
        manifest read first is the snapshot)."""
        cols = list(columns) if columns is not None else list(EVENT_SCHEMA.names)
        unknown = [c for c in cols if c not in EVENT_SCHEMA.names]
        if unknown:
            raise ValidationError(
                f"unknown event column(s) {', '.join(unknown)}; available: {', '.join(EVENT_SCHEMA.names)}"
            )
        entries = self._entries(start, end)
        if not entries:
            return
        ts_type = EVENT_SCHEMA.field("timestamp").type
        expr = filter
        for bound, op in ((_to_utc_us(start, "start"), pc.greater_equal), (_to_utc_us(end, "end"), pc.less)):
            if bound is not None:
                cond = op(pc.field("timestamp"), pa.scalar(bound, ts_type))
                expr = cond if expr is None else expr & cond
        try:
            for batch in self.dataset(entries).to_batches(columns=cols, filter=expr, batch_size=batch_size):
                if batch.num_rows:
                    yield batch
        except FileNotFoundError:
            raise StorageError(f"an object left the event log {self.shown} while being read (a user deletion ran); "
                               "retry the read") from None
        except (OSError, pa.ArrowException) as exc:
            raise self.store._failed(exc, "cannot read the event log") from None

    def _read_entries(self, entries: Sequence[dict[str, Any]]) -> pa.Table:
        return _conform(self.dataset(entries).to_table())

    def _write_staged(self, tmp: Path, table_or_batches: Any, txids: Iterable[str]) -> tuple[Path, int]:
        out = tmp / f"part-{uuid.uuid4().hex}.parquet"
        with self._writer(out, txids) as w:
            for t in table_or_batches:
                if t.num_rows:
                    w.write_table(t, row_group_size=ROW_GROUP_ROWS)
        return out, pq.read_metadata(out).num_rows

    def _stage_dir(self) -> Path:
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        (tmp / TXN_FILE).write_text(json.dumps({"state": "staging", "pid": os.getpid(),
                                                "host": socket.gethostname(), "created": time.time()}))
        return tmp

    def _upload_new(self, out: Path, day: str, txids: Iterable[str]) -> dict[str, Any]:
        rel = f"{PARTITION_PREFIX}{day}/part-{uuid.uuid4().hex}.parquet"
        info = _read_info(out)
        return _entry(rel, _FileInfo(info.num_rows, info.min_us, info.max_us, frozenset(txids)), self._upload(out, rel))

    def compact(self, *, min_files: int = 8, days: Iterable[dt.date] | None = None,
                progress: Progress | None = None, stop: Callable[[], None] | None = None) -> dict[str, int]:
        """Merge each day with >= ``min_files`` objects into one: the merged object is uploaded, then
        one publish swaps it for the old ones (collected later: readers of the older manifest)."""
        if min_files < 2:
            raise ValidationError(f"min_files={min_files} must be at least 2 (a single file is already compact)")
        wanted = None if days is None else {d.isoformat() for d in days}
        result = {"partitions": 0, "files_before": 0, "files_after": 0, "rows": 0}
        with self.lock():
            by_day: dict[str, list[dict[str, Any]]] = {}
            for e in self._entries():
                if wanted is None or e["day"] in wanted:
                    by_day.setdefault(e["day"], []).append(e)
            todo = [(d, es) for d, es in sorted(by_day.items()) if len(es) >= min_files]
            tmp = self._stage_dir()
            try:
                for i, (day, entries) in enumerate(todo):
                    if stop is not None:
                        stop()
                    total = sum(int(e["rows"]) for e in entries)
                    txids = {t for e in entries for t in e.get("txids", ())}
                    if total <= SORT_MAX_ROWS:
                        data = self._read_entries(entries)
                        parts: Any = [data.take(pc.sort_indices(data.column("timestamp")))]
                    else:  # stream, unsorted, to keep memory flat
                        parts = (_conform(pa.Table.from_batches([b])) for b in
                                 self.dataset(entries).to_batches(batch_size=ROW_GROUP_ROWS))
                    out, written = self._write_staged(tmp, parts, txids)
                    if written != total:  # never publish a file that lost rows
                        raise StorageError(f"compaction of {day} wrote {written} rows instead of {total}; nothing changed")
                    new = self._upload_new(out, day, txids)
                    if stop is not None:
                        stop()
                    self._publish(add=[new], remove=[e["path"] for e in entries])
                    self._keep_in_cache(out, new["path"])
                    result["partitions"] += 1
                    result["files_before"] += len(entries)
                    result["files_after"] += 1
                    result["rows"] += total
                    if progress is not None:
                        progress(i + 1, len(todo))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return result

    def _object_paths(self) -> set[str]:
        """Every data object under the URL, listed or not (relative paths)."""
        root = self.store.root
        try:
            infos = self.store.fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            raise self.store._failed(exc, "cannot list the event log") from None
        rels = (i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File)
        return {r for r in rels if r.startswith(PARTITION_PREFIX) and r.endswith(".parquet")}

    def _rows_of(self, rel: str, ids: pa.Array) -> int:
        try:
            users = pq.read_table(self._key(rel), columns=["user_id"], filesystem=self.store.fs).column("user_id")
        except FileNotFoundError:
            return 0
        return int(pc.sum(pc.is_in(users, value_set=ids)).as_py() or 0)

    def _hits(self, ids: pa.Array, progress: Progress | None) -> dict[str, tuple[dict[str, Any], int]]:
        """path -> (entry, rows of ``ids``) for the objects holding any of ``ids``."""
        entries = self._entries()
        hits: dict[str, tuple[dict[str, Any], int]] = {}
        for i, e in enumerate(entries):
            n_hit = self._rows_of(e["path"], ids)
            if n_hit:
                hits[e["path"]] = (e, int(n_hit))
            if progress is not None:
                progress(i + 1, len(entries))
        return hits

    def count_user_rows(self, user_ids: Iterable[str]) -> dict[str, int]:
        ids = pa.array(sorted({str(u) for u in user_ids}), pa.string())
        if len(ids) == 0:
            return {}
        return {path: n for path, (_, n) in self._hits(ids, None).items()}

    def delete_users_detailed(self, user_ids: Iterable[str], *, progress: Progress | None = None) -> dict[str, Any]:
        """Rewrite every object holding these users without their rows, publish all replacements in
        one manifest, then delete the replaced objects from the store and this machine's cache at once
        (the rows must be gone, not just unlisted)."""
        ids = pa.array(sorted({str(u) for u in user_ids}), pa.string())
        out: dict[str, Any] = {"rows": 0, "files": {}}
        if len(ids) == 0:
            return out
        with self.lock():
            hits = self._hits(ids, progress)
            if not hits:
                return out
            tmp = self._stage_dir()
            added: list[tuple[Path, dict[str, Any]]] = []
            try:
                for path, (e, n_hit) in hits.items():
                    keep = int(e["rows"]) - n_hit
                    if keep:
                        data = self._read_entries([e])
                        mask = pc.invert(pc.fill_null(pc.is_in(data.column("user_id"), value_set=ids), False))
                        staged, written = self._write_staged(tmp, [data.filter(mask)], e.get("txids", ()))
                        if written != keep:
                            raise StorageError(f"rewriting {path} kept {written} rows instead of {keep}; nothing changed")
                        added.append((staged, self._upload_new(staged, e["day"], e.get("txids", ()))))
                    out["rows"] += n_hit
                    out["files"][path] = n_hit
                try:
                    self._publish(add=[a for _, a in added], remove=list(hits))
                except BaseException:
                    self._delete_objects(a["path"] for _, a in added)
                    raise
                for staged, a in added:
                    self._keep_in_cache(staged, a["path"])
                self._delete_objects(hits)
                # unlisted objects (replaced by an earlier compaction, awaiting collection) may hold them too
                listed = {e["path"] for e in self.manifest()["files"]}
                for rel in self._object_paths() - listed:
                    if self._rows_of(rel, ids):
                        out["unlisted_removed"] = out.get("unlisted_removed", 0) + self._delete_objects([rel])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return out

    # -- housekeeping ----------------------------------------------------------------------
    def prune_cache(self) -> int:
        """Drop cached copies of objects the latest manifest no longer lists (compacted away, or a
        deleted user's): returns how many. Runs when a new generation is first seen."""
        if self.store.local:
            return 0
        m = self.manifest()
        if m["generation"] == self._pruned_generation or not self.root.is_dir():
            return 0
        listed = {e["path"] for e in m["files"]}
        n = 0
        for part in self.root.glob(f"{PARTITION_PREFIX}*"):
            for f in part.glob("part-*.parquet"):
                if f"{part.name}/{f.name}" not in listed:
                    f.unlink(missing_ok=True)
                    n += 1
        self._pruned_generation = m["generation"]
        return n

    def recover(self, *, grace_s: float = GC_GRACE_S) -> dict[str, int]:
        """Collect what crashed or finished writers left: this machine's abandoned staging dirs,
        manifests beyond the last KEEP_MANIFESTS, and objects no kept manifest lists that are older
        than ``grace_s``; then prune the local cache. Safe at any time."""
        stats = {"rolled_forward": 0, "discarded": 0, "rewrites_finished": 0, "rewrites_undone": 0,
                 "objects_collected": 0, "manifests_pruned": 0}
        if self.root.is_dir():
            host = socket.gethostname()
            for tmp in self.root.glob(f"{TMP_PREFIX}*"):
                try:
                    txn = json.loads((tmp / TXN_FILE).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    txn = None
                if txn and txn.get("host") == host and _pid_alive(int(txn.get("pid", -1))):
                    continue
                if txn is None and time.time() - tmp.stat().st_mtime < 3600:
                    continue  # just created, journal not yet written
                shutil.rmtree(tmp, ignore_errors=True)
                stats["discarded"] += 1
        fs = self.store.fs
        with self._guard():
            gens = self._generations()
            keep = gens[-(KEEP_MANIFESTS + 1):]
            listed = {e["path"] for g in keep for e in self._read_manifest(g)["files"]}
            try:
                for g in gens[: len(gens) - len(keep)]:
                    fs.delete_file(self._key(f"{MANIFESTS}/g-{g:012d}.json"))
                    stats["manifests_pruned"] += 1
                now = time.time()
                root = self.store.root
                for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
                    rel = info.path[len(root) + 1:]
                    if info.type != pafs.FileType.File or not rel.startswith(PARTITION_PREFIX) or rel in listed:
                        continue
                    mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
                    if now - mtime >= grace_s:
                        fs.delete_file(info.path)
                        stats["objects_collected"] += 1
            except (OSError, pa.ArrowException) as exc:
                raise self.store._failed(exc, "cannot collect garbage") from None
        self.prune_cache()
        return stats
