#!/usr/bin/env python3
"""Runs the reliability suite (tests/reliability, marker ``reliability``) and reports what it did.

Counts: requests schemathesis sent, hostile HTTP requests and bad import files, kill -9 runs, events
acknowledged across the kills and lost (must be 0), model swaps under load and failed requests
(must be 0), plus the suite's pass/xfail/fail counts. Prints one summary and appends a JSON line to
bench/results/reliability.jsonl.

Usage: OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_reliability.py [pytest args]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import append_result

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        counts_path = Path(tmp) / "counts.jsonl"
        env = dict(os.environ, SCALEREC_RELIABILITY_COUNTS=str(counts_path))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "reliability",
                               "tests/reliability", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
        wall_s = time.perf_counter() - t0
        totals: Counter[str] = Counter()
        if counts_path.exists():
            for line in counts_path.read_text().splitlines():
                totals.update(json.loads(line))
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    outcome = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|xfailed|xpassed|error|errors|skipped)", summary)}
    record = {**dict(totals), "tests": outcome, "wall_s": round(wall_s, 1), "exit": proc.returncode}
    print(proc.stdout[-3000:] if proc.returncode else summary)
    for key in ("schemathesis_requests", "hostile_http", "bad_import_files", "kills", "events_acknowledged",
                "events_lost", "events_duplicated", "model_swaps", "swap_requests", "swap_requests_failed",
                "swap_requests_retried"):
        print(f"{key:>24}: {totals.get(key, 0):,}")
    print(f"{'wall':>24}: {wall_s:.1f} s")
    path = append_result("reliability", record)
    print(f"result line appended to {path.relative_to(ROOT)}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
