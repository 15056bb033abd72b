"""The recommendation log: every served list with its request context, as JSON lines.

Batched in memory and appended by a background thread, one file per process and day under
``<data_dir>/logs/`` (``recommendations-DAY-PID.jsonl``, then ``recommendations-DAY-PID.K.jsonl``
once a file passes the size limit; days older than the retention are deleted when the day changes
and on start), for attribution of later events and for training. The directory is 0700 and
the files 0600 (they hold user ids). A user's deletion scrubs their lines from every file
(:func:`scrub_users`, an atomic rewrite under the file's lock), and each flush drops buffered
records of users deleted after the records were made (the tombstones, polled by one number).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: The recommendation log's file names under ``<data_dir>/logs/`` (other logs there are not scrubbed).
LOG_GLOB = "recommendations-*.jsonl"
_NAME = re.compile(r"recommendations-(\d{4}-\d{2}-\d{2})-")


#: Records serialised per step of a flush (~1 ms of orjson holding the GIL).
CHUNK_RECORDS = 512
_dumps = functools.partial(orjson.dumps, option=orjson.OPT_SERIALIZE_NUMPY)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class RecommendationLog:
    """Buffers served lists with their request context and appends them as JSON lines in batches
    (one file per process and day under ``<data_dir>/logs/``) for attribution and later training."""

    def __init__(
        self,
        root: Path,
        flush_s: float = 1.0,
        *,
        tombstones: Any = None,
        retention_days: float = 30.0,
        max_bytes: int = 256 << 20,
    ) -> None:
        self.root = root
        self.retention_s = float(retention_days) * 86_400.0
        self.max_bytes = int(max_bytes)
        self._day: str | None = None  # the day of the file being appended to
        self._part = 0
        self._flush_lock = threading.Lock()  # the thread and close() may flush at once
        # the catalogue's deletion tombstones (TombstoneTable); None: no filtering at flush
        self._tombstones = tombstones
        self._tomb_seq = tombstones.tombstone_head() if tombstones is not None else 0
        self._forgotten: dict[str, float] = {}  # user_id -> records made before this (s) are dropped
        self._buf: deque[dict[str, Any]] = deque(maxlen=200_000)
        self._flush_s = flush_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, record: dict[str, Any]) -> None:
        self._buf.append(record)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="scalerec-reclog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()
        self.flush()

    def flush(self) -> int:
        if not self._buf:
            return 0
        with self._flush_lock:
            written = 0
            # the size check uses the buffered records' count as a bound; the file lock is the writers'
            with _locked_append(self.root, self._target(len(self._buf) * 256)) as f:
                forgotten = self._poll_tombstones()  # read under the file lock: a scrub is before or after
                while self._buf:  # in chunks, each one C-level map: the GIL is free between them
                    recs = [self._buf.popleft() for _ in range(min(CHUNK_RECORDS, len(self._buf)))]
                    if forgotten:
                        recs = [r for r in recs if not _forgets(forgotten, r)]
                    if recs:
                        f.write(b"\n".join(map(_dumps, recs)) + b"\n")
                        written += len(recs)
                    time.sleep(0)
        return written

    def _target(self, incoming: int) -> Path:
        """The file to append to: a new one per day, and a new part once one is past max_bytes."""
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        if day != self._day:
            self._day, self._part = day, 0
            self.prune()
        path = self._path(day, self._part)
        while (size := _size(path)) and size + incoming > self.max_bytes:
            self._part += 1
            path = self._path(day, self._part)
        return path

    def _path(self, day: str, part: int) -> Path:
        suffix = f".{part}" if part else ""
        return self.root / f"recommendations-{day}-{os.getpid()}{suffix}.jsonl"

    def prune(self, now: float | None = None) -> int:
        """Delete log files (of every process) whose day ended more than the retention ago."""
        if not self.root.is_dir():
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_s
        removed = 0
        for path in self.root.glob(LOG_GLOB):
            m = _NAME.match(path.name)
            if m is None:
                continue
            day_end = datetime.strptime(m.group(1), "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() + 86_400
            if day_end < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def _poll_tombstones(self) -> dict[str, float]:
        """Users deleted since this log started: user_id -> cut-off time (s; inf while unfinished)."""
        if self._tombstones is None:
            return self._forgotten
        head = self._tombstones.tombstone_head()
        if head > self._tomb_seq:
            for seq, user_id, deleted_at in self._tombstones.user_tombstones(self._tomb_seq):
                self._forgotten[user_id] = math.inf if deleted_at is None else deleted_at / 1e6
            self._tomb_seq = head
        return self._forgotten

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()


# ---------------------------------------------------------------------- privacy: mode and scrubbing
def _private_dir(root: Path) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if root.stat().st_mode & 0o077:
        os.chmod(root, 0o700)  # older directories were created world-readable


@contextlib.contextmanager
def _locked_append(root: Path, path: Path) -> Iterator[Any]:
    """``path`` opened for appending (0600), under its exclusive flock, and surely the file at
    ``path``: a scrub may have replaced it between open and lock, then it is opened again."""
    _private_dir(root)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        f = os.fdopen(fd, "ab")
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield f
                f.flush()
                return
        finally:
            f.close()  # closing releases the lock


def _forgets(forgotten: dict[str, float], rec: dict[str, Any]) -> bool:
    cut = forgotten.get(rec.get("user_id"))  # type: ignore[arg-type]
    return cut is not None and float(rec.get("at") or 0.0) < cut


def scrub_users(root: Path, user_ids: Iterable[str]) -> dict[str, Any]:
    """Remove every line of these users from the recommendation log files under ``root``.

    Each file holding one is rewritten without those lines (0600 temp file, fsynced, renamed over
    the original) under the file's exclusive lock, the same lock writers append under. Files are
    searched as bytes first; only matching lines are parsed. Also makes the directory 0700 and
    every log file 0600. Returns ``{"files": {name: lines removed}, "lines": total}``.
    """
    ids = {str(u) for u in user_ids}
    out: dict[str, Any] = {"files": {}, "lines": 0}
    if not root.is_dir():
        return out
    _private_dir(root)
    needles = [b'"user_id":' + orjson.dumps(u) for u in sorted(ids)]
    for path in sorted(root.glob(LOG_GLOB)):
        removed = _scrub_file(path, ids, needles)
        if removed:
            out["files"][path.name] = removed
            out["lines"] += removed
    return out


def count_user_lines(root: Path, user_ids: Iterable[str]) -> dict[str, int]:
    """Lines of these users per recommendation log file (read-only; files without any omitted)."""
    ids = {str(u) for u in user_ids}
    needles = [b'"user_id":' + orjson.dumps(u) for u in sorted(ids)]
    found: dict[str, int] = {}
    for path in sorted(root.glob(LOG_GLOB)) if root.is_dir() else ():
        data = path.read_bytes()
        if any(n in data for n in needles):
            n = sum(1 for line in data.splitlines() if _is_theirs(line, ids, needles))
            if n:
                found[path.name] = n
    return found


def _is_theirs(line: bytes, ids: set[str], needles: list[bytes]) -> bool:
    if not any(n in line for n in needles):
        return False
    try:
        return orjson.loads(line).get("user_id") in ids
    except (orjson.JSONDecodeError, AttributeError):
        return False


def _scrub_file(path: Path, ids: set[str], needles: list[bytes]) -> int:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    with os.fdopen(fd, "r+b") as f:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.fchmod(fd, 0o600)
        data = f.read()
        if not any(n in data for n in needles):
            return 0
        lines = data.splitlines()
        kept = [line for line in lines if not _is_theirs(line, ids, needles)]
        removed = len(lines) - len(kept)
        if not removed:
            return 0
        tmp = path.with_name(f".scrub-{uuid.uuid4().hex}.tmp")
        tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(tfd, "wb") as t:
                if kept:
                    t.write(b"\n".join(kept) + b"\n")
                t.flush()
                os.fsync(t.fileno())
            os.replace(tmp, path)  # atomic: readers see the old file or the scrubbed one
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return removed
