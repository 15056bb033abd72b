"""pytest plugin that ``tests/run_suite.py`` loads into each pytest process it runs.

It journals every test's start and reports to ``$SCALEREC_SUITE_JOURNAL``, one JSON object a line,
written at once, so that when the process dies (a Ray driver exit, a segfault, an ``os._exit``) the
runner still knows what had passed and which test was running. ``$SCALEREC_SUITE_DESELECT`` names a
file of node ids (one a line) to leave out: the tests a previous, dead process already ran.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

JOURNAL_ENV = "SCALEREC_SUITE_JOURNAL"
DESELECT_ENV = "SCALEREC_SUITE_DESELECT"

_fd: int | None = None


def _write(record: dict[str, Any]) -> None:
    if _fd is not None:
        # one write() per line on an O_APPEND descriptor: a crash never leaves half a record buffered
        os.write(_fd, (json.dumps(record) + "\n").encode())


def pytest_configure(config: pytest.Config) -> None:
    global _fd
    path = os.environ.get(JOURNAL_ENV)
    if path and _fd is None:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _fd
    if _fd is not None:
        os.close(_fd)
        _fd = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = os.environ.get(DESELECT_ENV)
    if not path:
        return
    with open(path, encoding="utf-8") as fh:
        done = {line.rstrip("\n") for line in fh if line.strip()}
    keep = [item for item in items if item.nodeid not in done]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in done])
        items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    _write({"collected": len(session.items)})


def pytest_runtest_logstart(nodeid: str) -> None:
    _write({"start": nodeid})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    record = {"report": report.nodeid, "when": report.when, "outcome": report.outcome, "xfail": hasattr(report, "wasxfail")}
    if report.skipped and not hasattr(report, "wasxfail") and isinstance(report.longrepr, tuple):
        record["reason"] = str(report.longrepr[2]).removeprefix("Skipped: ")  # (file, line, "Skipped: why")
    _write(record)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _write({"finish": int(exitstatus)})
