"""`scalerec migrate`: move an embedded data directory's shared state to the multi-machine set-up.

The model versions of ``<dir>/models/`` go to an object store (``--to-store``, any
:class:`~scalerec.data.objectstore.ObjectStore` URL) and the SQLite catalogue to a PostgreSQL one
(``--to-catalog``), in that order: a version's files are committed in the store before its row can
be seen in the new catalogue (the registry's own rule). The event log goes to an object-store log
(``--to-events``, see :mod:`scalerec.data.objectlog`) when asked, else stays in the directory.

Every step can be interrupted and run again: a version is committed by its marker (written last;
a committed version is not uploaded again) and the catalogue is copied in blocks whose cursors
commit with them (``scalerec.data.catalog.copy``). Both are then verified (every file's SHA-256
read back from the store; every table's rows and SHA-256 on both sides), and only when every check
passes is the source marked (``meta migrated_to``); it is never changed otherwise. While it runs,
the source's ``log-maintenance``, ``train`` and ``retrain`` leases are held, so no compaction,
deletion or training changes it meanwhile, and a lost lease stops the copy between two blocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from scalerec.data.catalog import catalog_exists, open_catalog, parse_catalog_url
from scalerec.data.catalog.copy import TableReport, copy_catalog, target_state, verify
from scalerec.data.catalog.urls import redact_url
from scalerec.data.eventlog import EventLog, _read_info
from scalerec.data.lease import Lease, hold_lease
from scalerec.data.objectlog import SharedEventLog, _entry
from scalerec.data.objectstore import ObjectStore
from scalerec.errors import ConflictError, StorageError, ValidationError

if TYPE_CHECKING:
    from scalerec.config import Settings

__all__ = ["MigrationReport", "VersionReport", "migrate"]

#: Leases of the source held for the whole migration: nothing compacts, deletes or trains meanwhile.
SOURCE_LEASES = ("log-maintenance", "train", "retrain")
_CHUNK = 8 << 20

#: progress(step, what, done, total): step "store" (bytes of one version) or "catalog" (rows of a table)
ProgressFn = Callable[[str, str, int, int], None]


@dataclass
class VersionReport:
    """One model version: its files, bytes and the SHA-256 over (path, file SHA-256) on each side."""

    name: str
    files: int = 0
    bytes: int = 0
    uploaded: bool = False
    checksum: str = ""
    store_checksum: str = ""
    first_difference: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checksum) and self.checksum == self.store_checksum


@dataclass
class EventLogReport:
    """The event log: files, rows, bytes and the SHA-256 over (file, size, file SHA-256) on each side."""

    url: str  # redacted
    files: int = 0
    rows: int = 0
    bytes: int = 0
    uploaded: int = 0
    checksum: str = ""
    store_checksum: str = ""
    store_rows: int = 0
    first_difference: str | None = None

    @property
    def ok(self) -> bool:
        return self.checksum == self.store_checksum and self.rows == self.store_rows


@dataclass
class MigrationReport:
    catalog_url: str | None = None  # redacted
    store_url: str | None = None  # redacted
    mode: str | None = None  # "replica" | "merge" (catalogue)
    tables: list[TableReport] = field(default_factory=list)
    versions: list[VersionReport] = field(default_factory=list)
    events: EventLogReport | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (all(t.ok for t in self.tables) and all(v.ok for v in self.versions)
                and (self.events is None or self.events.ok))

    def failures(self) -> list[str]:
        out = [f"table {t.name}: {t.first_difference or f'{t.source_rows} vs {t.target_rows} rows'}"
               for t in self.tables if not t.ok]
        out += [f"version {v.name}: {v.first_difference or 'checksums differ'}" for v in self.versions if not v.ok]
        if self.events is not None and not self.events.ok:
            out.append(f"event log: {self.events.first_difference or 'checksums differ'}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "catalog_url": self.catalog_url, "store_url": self.store_url, "mode": self.mode,
            "seconds": round(self.seconds, 3),
            "tables": [{"name": t.name, "source_rows": t.source_rows, "target_rows": t.target_rows,
                        "checksum": t.checksum, "target_checksum": t.target_checksum, "ok": t.ok,
                        "repaired_ranges": t.repaired, "skipped": t.skipped, "difference": t.first_difference}
                       for t in self.tables],
            "versions": [{"name": v.name, "files": v.files, "bytes": v.bytes, "uploaded": v.uploaded,
                          "checksum": v.checksum, "store_checksum": v.store_checksum, "ok": v.ok,
                          "difference": v.first_difference} for v in self.versions],
            "events": None if self.events is None else {
                "url": self.events.url, "files": self.events.files, "rows": self.events.rows,
                "bytes": self.events.bytes, "uploaded": self.events.uploaded, "checksum": self.events.checksum,
                "store_checksum": self.events.store_checksum, "store_rows": self.events.store_rows,
                "ok": self.events.ok, "difference": self.events.first_difference},
        }


# --------------------------------------------------------------------------------------------
# the model store


def local_versions(models_dir: Path, marker: str = "manifest.json") -> list[Path]:
    """Committed version directories of a local model store (a marker; no hidden temp dirs), by name."""
    if not models_dir.is_dir():
        return []
    return sorted((p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / marker).is_file()),
                  key=lambda p: p.name)


def _file_digests_local(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h, n = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
        out[path.relative_to(root).as_posix()] = (n, h.hexdigest())
    return out


def _file_digests_store(store: ObjectStore, name: str) -> dict[str, tuple[int, str]]:
    prefix = store._key(name)
    out = {}
    try:
        infos = store.fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
        for info in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
            h, n = hashlib.sha256(), 0
            with store.fs.open_input_stream(info.path) as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    n += len(chunk)
            out[info.path[len(prefix) + 1:]] = (n, h.hexdigest())
    except (OSError, pa.ArrowException) as exc:
        raise store._failed(exc, f"cannot read {name} back") from None
    return out


def _tree_checksum(digests: dict[str, tuple[int, str]]) -> str:
    h = hashlib.sha256()
    for rel in sorted(digests):
        h.update(f"{rel}\0{digests[rel][0]}\0{digests[rel][1]}\n".encode())
    return h.hexdigest()


def store_entries(store: ObjectStore) -> set[str]:
    """Names of the committed directories under the store's root."""
    try:
        infos = store.fs.get_file_info(pafs.FileSelector(store.root, recursive=False, allow_not_found=True))
    except (OSError, pa.ArrowException) as exc:
        raise store._failed(exc, "cannot list the store") from None
    names = {i.path.rsplit("/", 1)[-1] for i in infos if i.type == pafs.FileType.Directory}
    return {n for n in names if store.committed(n)}


def migrate_store(
    models_dir: Path, store: ObjectStore, *, force: bool = False, progress: ProgressFn | None = None,
    stop: Callable[[], None] | None = None,
) -> list[VersionReport]:
    """Publish every local version not yet committed in ``store`` and verify every one of them."""
    store.check()
    versions = local_versions(models_dir, store.marker)
    names = {p.name for p in versions}
    others = sorted(store_entries(store) - names)
    if others and not force:
        raise ConflictError(
            f"the object store {store.shown} already holds other model versions ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); migrate into an empty prefix, or pass --force to add this "
            "directory's versions beside them (a version of the same name is never overwritten)"
        )
    reports = []
    for path in versions:
        if stop is not None:
            stop()
        rep = VersionReport(path.name)
        local = _file_digests_local(path)
        rep.files, rep.bytes, rep.checksum = len(local), sum(n for n, _ in local.values()), _tree_checksum(local)
        if not store.committed(path.name):  # an interrupted upload has no marker: uploaded again whole
            if progress:
                progress("store", path.name, 0, rep.bytes)
            store.publish(path, path.name)
            rep.uploaded = True
        remote = _file_digests_store(store, path.name)
        rep.store_checksum = _tree_checksum(remote)
        if not rep.ok:
            diff = sorted(set(local) ^ set(remote)) or sorted(k for k in local if local[k] != remote.get(k))
            rep.first_difference = (f"{diff[0]} differs in the store (a version of this name from elsewhere; "
                                    "it is not overwritten)" if diff else "checksums differ")
        if progress:
            progress("store", path.name, rep.bytes, rep.bytes)
        reports.append(rep)
    return reports


# --------------------------------------------------------------------------------------------
# the event log

#: Beside a migrated local log: the URL it was moved to (the directory may then set events_url).
MIGRATED_MARK = ".migrated-to"


def _digest_stream(read: Callable[[int], bytes]) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    while chunk := read(_CHUNK):
        h.update(chunk)
        n += len(chunk)
    return n, h.hexdigest()


def migrate_events(
    events_dir: Path, url: str, cache_dir: Path, *, force: bool = False, progress: ProgressFn | None = None,
    stop: Callable[[], None] | None = None,
) -> EventLogReport:
    """Copy the local event log's visible files to the object-store log at ``url`` and verify them.

    Every file is uploaded under a fresh object name and all of them are published in one
    manifest (all or nothing: an interrupted run leaves only unlisted objects, collected later, and
    uploads again). Each entry records its source file and SHA-256, so a rerun uploads nothing
    that is already published; verification reads every object back."""
    local = EventLog(events_dir)
    target = SharedEventLog(url, cache_dir)
    target.store.check()
    report = EventLogReport(redact_url(url))
    files = {p.relative_to(events_dir).as_posix(): p for p in local.files()}
    digests = {}
    for rel, path in files.items():
        with open(path, "rb") as fh:
            digests[rel] = _digest_stream(fh.read)
    report.files, report.bytes = len(files), sum(n for n, _ in digests.values())
    report.rows = sum(local._info(p).num_rows for p in files.values())
    report.checksum = _tree_checksum(digests)
    published = {e["src"]: e for e in target.manifest()["files"] if e.get("src") in files}
    others = [e for e in target.manifest()["files"] if e.get("src") not in files]
    if others and not published and not force:
        raise ConflictError(
            f"the event log at {report.url} is not empty ({len(others):,} files of another log); move into an empty "
            "prefix, or pass --force to add this directory's events to it (they are then in both logs' count)"
        )
    todo = [rel for rel in files if rel not in published]
    mark = events_dir / MIGRATED_MARK
    if todo and mark.is_file() and mark.read_text().strip() == report.url:
        raise ConflictError(
            f"this event log was moved to {report.url} before and has changed since ({len(todo):,} new or compacted "
            "files): the shared log is in use; write new events there (set [data] events_url), not here"
        )
    if todo:
        added = []
        for i, rel in enumerate(todo):
            if stop is not None:
                stop()
            name = f"{rel.split('/', 1)[0]}/part-{uuid.uuid4().hex}.parquet"
            entry = _entry(name, _read_info(files[rel]), target._upload(files[rel], name))
            added.append({**entry, "src": rel, "sha256": digests[rel][1]})
            if progress:
                progress("events", "files", i + 1, len(todo))
        if stop is not None:
            stop()
        target._publish(add=added, remove=[])
        report.uploaded = len(added)
        published.update({e["src"]: e for e in added})
    back = {}
    for rel, e in published.items():
        with target.store.fs.open_input_stream(target._key(e["path"])) as fh:
            back[rel] = _digest_stream(fh.read)
    report.store_checksum = _tree_checksum(back)
    report.store_rows = sum(int(e["rows"]) for e in published.values())
    if not report.ok:
        diff = sorted(rel for rel in digests if back.get(rel) != digests[rel])
        report.first_difference = f"{diff[0]} differs in the store" if diff else "row counts differ"
    else:
        (events_dir / MIGRATED_MARK).write_text(report.url)
    return report


# --------------------------------------------------------------------------------------------
# the whole migration


@contextlib.contextmanager
def _source_leases(catalog: Any) -> Iterator[list[Lease]]:
    with contextlib.ExitStack() as stack:
        leases = []
        for name in SOURCE_LEASES:
            lease = stack.enter_context(hold_lease(catalog, name, blocking=False))
            if not lease:
                raise ConflictError(
                    f"the source's {name!r} lease is held by {lease.other}: a compaction, deletion or training is "
                    "running on it; wait for it to finish (and stop every process writing to the source), then migrate"
                )
            leases.append(lease)
        yield leases


def migrate(
    settings: "Settings",
    *,
    to_catalog: str | None = None,
    to_store: str | None = None,
    to_events: str | None = None,
    force: bool = False,
    block_rows: int = 50_000,
    progress: ProgressFn | None = None,
) -> MigrationReport:
    """Copy the directory's model versions to ``to_store`` and its catalogue to ``to_catalog``,
    then verify both; raises StorageError naming what differs (the source is then unchanged)."""
    if not to_catalog and not to_store and not to_events:
        raise ValidationError("nothing to migrate: pass --to-catalog postgresql://..., --to-store s3://... "
                              "and/or --to-events s3://...")
    source_url = settings.data.resolved_catalog_url()
    parsed = parse_catalog_url(source_url)
    if parsed.scheme != "sqlite" or parsed.path in (None, ":memory:"):
        raise ValidationError(
            f"the data directory's catalogue is {redact_url(source_url)}, not an embedded SQLite file; migrate moves "
            "an embedded directory (unset [data] catalog_url for its catalog.db)"
        )
    if not catalog_exists(parsed):
        raise StorageError(f"no catalogue at {parsed.path}; is --data-dir the embedded shop's directory?")
    if to_catalog and parse_catalog_url(to_catalog).scheme not in ("postgresql", "postgres"):
        raise ValidationError(f"--to-catalog must be a postgresql://USER@HOST:PORT/DB URL, not {redact_url(to_catalog)}")
    started = time.perf_counter()
    report = MigrationReport(catalog_url=redact_url(to_catalog) if to_catalog else None,
                             store_url=redact_url(to_store) if to_store else None)
    source = open_catalog(parsed)
    try:
        with _source_leases(source) as leases:

            def stop() -> None:
                for lease in leases:
                    lease.check()

            if to_store:
                store = ObjectStore(to_store)
                report.versions = migrate_store(Path(settings.data.dir) / "models", store, force=force,
                                                progress=progress, stop=stop)
            if to_events:
                root = Path(settings.data.dir)
                report.events = migrate_events(root / "events", to_events, root / "cache" / "events", force=force,
                                               progress=progress, stop=stop)
            if to_catalog:
                report.mode, report.tables = _migrate_catalog(source, to_catalog, str(Path(parsed.path).resolve()),
                                                              force=force, block_rows=block_rows, progress=progress,
                                                              stop=stop)
            stop()
            if report.ok:
                source.set_meta("migrated_to", json.dumps(
                    {"catalog_url": report.catalog_url, "store_url": report.store_url,
                     "events_url": report.events.url if report.events else None,
                     "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    finally:
        source.close()
    report.seconds = time.perf_counter() - started
    return report


def _migrate_catalog(
    source: Any, url: str, source_path: str, *, force: bool, block_rows: int, progress: ProgressFn | None,
    stop: Callable[[], None],
) -> tuple[str, list[TableReport]]:
    source_id = f"sqlite://{source_path}"
    target = open_catalog(url)  # creates the schema on a new database
    try:
        state = target_state(target)
        ours = state["source"] == source_id
        nonempty = {t: n for t, n in state["rows"].items() if n}
        if ours and state["done"]:
            # copied and verified before: the target may be in use since, so it is only compared
            reports = verify(source, target, merge=state["mode"] == "merge", block_rows=block_rows, repair=False)
            if not all(r.ok for r in reports) and not force:
                bad = ", ".join(r.name for r in reports if not r.ok)
                raise ConflictError(
                    f"the target catalogue was migrated from this directory before and differs from it now ({bad}): "
                    "it may be in use; pass --force to add the source's rows that are new to it (nothing of the "
                    "target is changed)"
                )
            if all(r.ok for r in reports):
                return state["mode"] or "replica", reports
            merge = True
        elif ours:
            merge = state["mode"] == "merge"  # resume the unfinished copy as it began
        elif nonempty and not force:
            shown = ", ".join(f"{t} ({n:,} rows)" for t, n in sorted(nonempty.items()))
            raise ConflictError(
                f"the target catalogue {redact_url(url)} is not empty: {shown}; migrate into an empty database "
                "(or schema: ?options=-csearch_path%3DNAME), or pass --force to add this directory's rows to it "
                "(a key on both sides keeps the target's row and fails the verification)"
            )
        else:
            merge = bool(nonempty)

        def rows_progress(table: str, done: int, total: int) -> None:
            if progress:
                progress("catalog", table, done, total)

        copy_catalog(source, target, merge=merge, source_id=source_id, block_rows=block_rows,
                     progress=rows_progress, stop=stop)
        stop()
        return ("merge" if merge else "replica"), verify(source, target, merge=merge, block_rows=block_rows,
                                                         progress=rows_progress)
    finally:
        target.close()
