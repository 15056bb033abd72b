"""Shared pieces of the benchmark scripts: peak-memory measurement, machine description, result lines.

Use from a script in bench/ (which Python puts on sys.path): ``from _common import PeakRSS, append_result``.

- :class:`PeakRSS` samples the RSS of this process in a thread (a peak between samples can be
  missed; :func:`run_child` gives the kernel's exact high-water mark of a child process instead).
- :func:`machine_info` and :func:`git_commit` describe where and on what a figure was measured.
- :func:`append_result` appends one JSON line (time, commit, machine, then the caller's fields)
  to ``bench/results/<name>.jsonl``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
MIB = 2**20


class PeakRSS:
    """Samples this process's RSS every ``interval_s``; ``peak`` (bytes) is the highest seen,
    ``start`` the RSS when created, ``peak_mib`` the rise above the start."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.proc = psutil.Process()
        self.interval_s = interval_s
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def peak_mib(self) -> float:
        return (self.peak - self.start) / MIB


def run_child(argv: list[str], *, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run ``python argv...`` to the end; returns (its stdout, its peak RSS in MiB).

    The peak is the kernel's high-water mark for that process (``wait4``), so nothing is missed
    between samples and nothing the parent allocated counts. Raises SystemExit when it fails.
    """
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True,
                            env=None if env is None else {**os.environ, **env})
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {code}")
    return out, usage.ru_maxrss / 1024  # Linux reports KiB


def git_commit() -> str | None:
    """Short hash of HEAD of the repository holding bench/ (None outside git); '+dirty' is not
    detected: commit before measuring."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=HERE)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        return None


def machine_info() -> dict[str, Any]:
    """Host, CPU count, memory, load averages (1/5/15 min) and library versions, now."""
    import numpy
    import pyarrow

    load = os.getloadavg()
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_1_5_15": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
    }


def load_line(before: dict[str, Any] | None = None) -> str:
    """'load average 1.2 (1 min) before, 1.9 after; 2 CPUs' for printing under a table."""
    now = os.getloadavg()[0]
    if before is None:
        return f"load average {now:.1f} (1 min); {os.cpu_count()} CPUs"
    return f"load average {before['load_1_5_15'][0]:.1f} (1 min) before, {now:.1f} after; {os.cpu_count()} CPUs"


def append_result(name: str, record: dict[str, Any], *, machine: dict[str, Any] | None = None) -> Path:
    """Append ``{"time", "commit", "machine", **record}`` as one JSON line to results/<name>.jsonl."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.jsonl"
    line = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine if machine is not None else machine_info(),
        **record,
    }
    with path.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    return path
