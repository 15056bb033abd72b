"""The reliability suite is marked and runs in run_suite's core part (make test, CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from run_suite import PARTS  # noqa: E402


def _collected(marker: str) -> set[str]:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "-m", marker, str(HERE)],
                         cwd=HERE.parents[1], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return {line.split("::")[0].rsplit("/", 1)[-1] for line in res.stdout.splitlines() if "::" in line}


def test_every_reliability_module_is_marked_and_in_a_suite_part() -> None:
    modules = {p.name for p in HERE.glob("test_*.py")}
    assert _collected("reliability") == modules
    assert any(_collected(expr) == modules for _, expr in PARTS)
