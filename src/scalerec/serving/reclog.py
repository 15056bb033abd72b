"""The recommendation log: every served list with its request context, as JSON lines.

Batched in memory and appended by a background thread, one file per process and day under
``<data_dir>/logs/`` (``recommendations-DAY-PID.jsonl``, then ``recommendations-DAY-PID.K.jsonl``
once a file passes the size limit), for attribution of later events and for training. Files of
days older than the retention are deleted when the day changes (and on start).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

_NAME = re.compile(r"recommendations-(\d{4}-\d{2}-\d{2})-")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class RecommendationLog:
    """Buffers served lists with their request context and appends them as JSON lines in batches
    (one file per process and day under ``<data_dir>/logs/``) for attribution and later training."""

    def __init__(
        self, root: Path, flush_s: float = 1.0, *, retention_days: float = 30.0, max_bytes: int = 256 << 20
    ) -> None:
        self.root = root
        self._buf: deque[dict[str, Any]] = deque(maxlen=200_000)
        self._flush_s = flush_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.retention_s = float(retention_days) * 86_400.0
        self.max_bytes = int(max_bytes)
        self._day: str | None = None  # the day of the file being appended to
        self._part = 0
        self._flush_lock = threading.Lock()  # the thread and close() may flush at once

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
        lines = []
        while self._buf:
            # orjson: this runs in the serving process, ~1 us a record where json.dumps took ~12.
            lines.append(orjson.dumps(self._buf.popleft(), option=orjson.OPT_SERIALIZE_NUMPY))
        data = b"\n".join(lines) + b"\n"
        with self._flush_lock:
            with open(self._target(len(data)), "ab") as f:
                f.write(data)
        return len(lines)

    def _target(self, incoming: int) -> Path:
        """The file to append to: a new one per day, and a new part once one is past max_bytes."""
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        if day != self._day:
            self.root.mkdir(parents=True, exist_ok=True)
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
        for path in self.root.glob("recommendations-*.jsonl"):
            m = _NAME.match(path.name)
            if m is None:
                continue
            day_end = datetime.strptime(m.group(1), "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() + 86_400
            if day_end < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
