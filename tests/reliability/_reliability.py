"""Shared by the reliability tests: the tally bench/bench_reliability.py reads."""

from __future__ import annotations

import json
import os

#: where bench/bench_reliability.py collects what the tests counted (one JSON object per line)
COUNTS_ENV = "SCALEREC_RELIABILITY_COUNTS"


def record(**counts: int) -> None:
    """Adds ``counts`` to the bench's tally (a no-op outside bench_reliability)."""
    path = os.environ.get(COUNTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(counts) + "\n")
