"""The figures history: one sample per ``[monitoring] sample_interval_seconds``, in JSON-lines
files per UTC day under ``<data_dir>/monitoring/samples/``, pruned after ``history_days``."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import orjson

from scalerec.monitoring.figures import Sample, window_figures
from scalerec.monitoring.paths import samples_dir


def _day_file(root: Path, at: float) -> Path:
    return root / f"{dt.datetime.fromtimestamp(at, dt.timezone.utc).date().isoformat()}.jsonl"


class History:
    def __init__(self, settings: Any) -> None:
        self.root = samples_dir(settings)
        self.keep_days = settings.monitoring.history_days

    def append(self, sample: Sample) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps(sample.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        with open(_day_file(self.root, sample.at), "ab") as f:
            f.write(line)  # one write of a whole line: readers skip a torn last line

    def read(self, since: float | None = None, until: float | None = None, *, points: int | None = None) -> list[Sample]:
        """Samples in [since, until], oldest first; with ``points``, about that many evenly spaced
        ones (lines are thinned before they are parsed: a 30-day chart parses ~points lines, not 43,200)."""
        if not self.root.is_dir():
            return []
        lo = dt.datetime.fromtimestamp(since, dt.timezone.utc).date().isoformat() if since else ""
        hi = dt.datetime.fromtimestamp(until, dt.timezone.utc).date().isoformat() if until else "9999"
        lines: list[bytes] = []
        for f in sorted(self.root.glob("*.jsonl")):
            if lo <= f.stem <= hi:
                lines.extend(f.read_bytes().splitlines())
        if points and len(lines) > 2 * points:
            step = len(lines) // points
            lines = lines[::step] + [lines[-1]]
        out: list[Sample] = []
        for line in lines:
            try:
                s = Sample.from_dict(orjson.loads(line))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line torn by a crash mid-write
            if (since is None or s.at >= since) and (until is None or s.at <= until):
                out.append(s)
        out.sort(key=lambda s: s.at)
        return out

    def prune(self, now: float) -> int:
        if not self.root.is_dir():
            return 0
        cutoff = dt.datetime.fromtimestamp(now - self.keep_days * 86400, dt.timezone.utc).date().isoformat()
        gone = 0
        for f in self.root.glob("*.jsonl"):
            if f.stem < cutoff:
                f.unlink(missing_ok=True)
                gone += 1
        return gone


def series(samples: list[Sample], names: list[str], *, points: int = 500) -> dict[str, Any]:
    """Figures over time from consecutive samples, thinned to about ``points`` windows (the dashboard's charts)."""
    if len(samples) < 2:
        return {"t": [], **{n: [] for n in names}}
    step = max(1, (len(samples) - 1) // points)
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    out: dict[str, Any] = {"t": [], **{n: [] for n in names}}
    for old, new in zip(picked, picked[1:]):
        f = window_figures(new, old)
        out["t"].append(dt.datetime.fromtimestamp(new.at, dt.timezone.utc).isoformat())
        for n in names:
            v = f.get(n)
            out[n].append(None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    return out
