#!/usr/bin/env python3
"""The test command behind ``make test``: the suite in two pytest processes that cannot die silently.

Usage: ``python tests/run_suite.py [pytest arguments]`` from the repository root.

The tests not marked ``ray`` and those marked ``ray`` run in separate pytest processes, one after
the other, each printing its own pytest summary. Ray ends its driver process (``_exit``) when the
cluster's GCS or raylet dies, and a segfault or an ``os._exit`` ends any process: when a pytest
process ends without finishing its session, this runner says so on a line of its own, naming the
test that was running, counts that test as failed and runs the rest of that part in a new process.
A test running longer than ``$SCALEREC_SUITE_TEST_TIMEOUT`` seconds (default 900) is interrupted the
same way. The last line is always ``suite: N passed, N failed, N skipped``.

Exit status: 0 when every part passed; 1 when a test failed, a process died, or a part collected no
tests (pytest's 5); 5 only when arguments narrowed the run (``-k``, ``-m``, paths) to no test at all;
130 when the runner itself was interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from _signals import default_signals  # noqa: E402
from _suite_journal import DESELECT_ENV, JOURNAL_ENV  # noqa: E402

#: (name, marker expression) of each pytest process, in the order they run
PARTS = (("core", "not ray"), ("ray", "ray"))
#: new pytest processes a part may start after its first one died
MAX_RESTARTS = 5
#: seconds a pytest process gets to print its summary after SIGINT before it is killed
GRACE_S = 60.0
NO_TESTS = 5  # pytest.ExitCode.NO_TESTS_COLLECTED
HINTS = {"ray": " (Ray can end its driver process when the cluster's GCS or raylet dies)"}


class Interrupted(Exception):
    """The runner itself got SIGINT or SIGTERM."""


@dataclass
class Part:
    name: str
    marker: str
    outcomes: dict[str, str] = field(default_factory=dict)  # node id -> passed / failed / skipped
    skip_reasons: dict[str, str] = field(default_factory=dict)  # node id -> why it was skipped
    problems: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    no_tests: bool = False

    def counts(self) -> Counter[str]:
        return Counter(self.outcomes.values())


def _say(message: str) -> None:
    print(f"run_suite: {message}", flush=True)


def _split_marker(args: list[str]) -> tuple[str | None, list[str]]:
    """The user's ``-m EXPR`` (to be combined with each part's) and the other arguments."""
    marker, rest, i = None, [], 0
    while i < len(args):
        arg = args[i]
        if arg == "-m" and i + 1 < len(args):
            marker, i = args[i + 1], i + 2
            continue
        if arg.startswith("-m") and not arg.startswith("--") and len(arg) > 2:
            marker = arg[2:].removeprefix("=")
        else:
            rest.append(arg)
        i += 1
    return marker, rest


def _selects(args: list[str]) -> bool:
    """Whether ``args`` narrow the suite (``-k``, ``-m``, test paths): then a part may select nothing."""
    for arg in args:
        if arg.startswith(("-k", "-m", "--deselect", "--lf", "--last-failed", "--sw", "--stepwise")):
            return True
        if not arg.startswith("-") and Path(arg.split("::")[0]).exists():
            return True
    return False


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _Journal:
    """Reads the records that ``_suite_journal`` appends while the pytest process runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.finish: int | None = None
        self.running: str | None = None  # started, its teardown not yet reported
        self.hung: str | None = None  # the test this runner interrupted for running too long
        self.started_at = 0.0
        self.reports: dict[str, list[tuple[str, str, bool]]] = {}
        self.skip_reasons: dict[str, str] = {}

    def poll(self) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a record still being written waits for the next poll
        self.offset += end
        for line in data[:end].splitlines():
            record = json.loads(line)
            if "start" in record:
                self.running, self.started_at = record["start"], time.monotonic()
            elif "report" in record:
                self.reports.setdefault(record["report"], []).append((record["when"], record["outcome"], record["xfail"]))
                if "reason" in record:
                    self.skip_reasons[record["report"]] = record["reason"]
                if record["when"] == "teardown" and record["report"] == self.running:
                    self.running = None
            elif "finish" in record:
                self.finish = record["finish"]


def _outcome(reports: list[tuple[str, str, bool]]) -> str:
    outcomes = {outcome for _, outcome, _ in reports}
    if "failed" in outcomes:
        return "failed"
    return "skipped" if "skipped" in outcomes else "passed"


def _run_once(part: Part, args: list[str], deselect: Path, test_timeout: float) -> tuple[int, _Journal]:
    """One pytest process over what is left of ``part``; returns its exit status and journal."""
    fd, name = tempfile.mkstemp(prefix=f"scalerec-suite-{part.name}-", suffix=".jsonl")
    os.close(fd)
    journal = _Journal(Path(name))
    env = dict(os.environ, **{JOURNAL_ENV: name, DESELECT_ENV: str(deselect)})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "pytest", "-p", "_suite_journal", "-p", "faulthandler",
           "-o", "faulthandler_timeout=600", "-m", part.marker, *args]
    # Own session: Ctrl-C reaches it through this runner only, and what it leaves running can be killed.
    proc = subprocess.Popen(cmd, env=env, preexec_fn=default_signals, start_new_session=True)
    interrupted_at: float | None = None
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            journal.poll()
            now = time.monotonic()
            if interrupted_at is None and journal.running and now - journal.started_at > test_timeout:
                journal.hung = journal.running
                _say(f"{part.name} part: {journal.hung} still running after {test_timeout:.0f} s; interrupting it")
                part.problems.append(f"{journal.hung} ran past {test_timeout:.0f} s")
                proc.send_signal(signal.SIGINT)
                interrupted_at = now
            elif interrupted_at is not None and now - interrupted_at > GRACE_S:
                proc.kill()
    except Interrupted:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        try:  # Ray's raylet, GCS and workers outlive a driver that died
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        journal.poll()
        journal.path.unlink(missing_ok=True)
    if interrupted_at is not None:
        journal.finish = None  # stopped by this runner: go on with the rest of the part
    return proc.returncode, journal


def run_part(part: Part, args: list[str], *, selecting: bool, test_timeout: float) -> None:
    """Runs ``part`` to its end, starting a new pytest process each time one dies mid-test."""
    with tempfile.NamedTemporaryFile("w", prefix=f"scalerec-suite-{part.name}-", suffix=".deselect", delete=False) as fh:
        deselect = Path(fh.name)
    try:
        for attempt in range(MAX_RESTARTS + 1):
            returncode, journal = _run_once(part, args, deselect, test_timeout)
            part.exit_codes.append(returncode)
            for nodeid, reports in journal.reports.items():
                part.outcomes.setdefault(nodeid, _outcome(reports))
            part.skip_reasons.update(journal.skip_reasons)
            crashed = journal.hung or journal.running
            if crashed is not None:
                part.outcomes[crashed] = "failed"
            if journal.finish is not None:
                if returncode == NO_TESTS and attempt == 0:
                    part.no_tests = True
                    if not selecting:
                        part.problems.append("pytest collected no tests")
                        _say(f"{part.name} part: pytest collected no tests; that is a failure of the suite")
                elif returncode not in (0, 1, NO_TESTS):
                    part.problems.append(f"pytest exited with status {returncode}")
                return
            if journal.hung is not None:
                pass  # said when it was interrupted
            elif crashed is not None:
                where = f"while running {crashed}"
                part.problems.append(f"pytest process {_describe(returncode)} {where}")
                _say(f"{part.name} part: the pytest process {_describe(returncode)} {where}{HINTS.get(part.name, '')}; "
                     "counted as failed, no pytest summary for it")
            else:
                part.problems.append(f"pytest process {_describe(returncode)} outside any test")
                _say(f"{part.name} part: the pytest process {_describe(returncode)} outside any test "
                     "(session start, collection or session teardown: see its output above); no pytest summary for it")
                return
            if attempt == MAX_RESTARTS:
                part.problems.append(f"gave up after {MAX_RESTARTS + 1} pytest processes")
                _say(f"{part.name} part: {MAX_RESTARTS + 1} pytest processes died; the rest of the part is not run")
                return
            deselect.write_text("".join(f"{nodeid}\n" for nodeid in part.outcomes), encoding="utf-8")
            _say(f"{part.name} part: running its remaining tests in a new pytest process")
    finally:
        deselect.unlink(missing_ok=True)


def _print_skipped(parts: list[Part]) -> None:
    """Skipped tests, loudly, grouped by reason: a green run without the data is not the whole suite."""
    by_reason: dict[str, list[str]] = {}
    for part in parts:
        for nodeid, outcome in part.outcomes.items():
            if outcome == "skipped":
                by_reason.setdefault(part.skip_reasons.get(nodeid, "no reason given"), []).append(nodeid)
    if not by_reason:
        return
    n = sum(len(v) for v in by_reason.values())
    print("!" * 20 + f" {n} test(s) SKIPPED: these checks did not run " + "!" * 20, flush=True)
    for reason, nodeids in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(nodeids)} skipped: {reason}", flush=True)
        for nodeid in sorted(nodeids)[:10]:
            print(f"      {nodeid}", flush=True)
        if len(nodeids) > 10:
            print(f"      ... and {len(nodeids) - 10} more", flush=True)
    if any("Online Retail" in r for r in by_reason):
        print("  The Online Retail data: see README.md, 'Get the data' (CI fails without it).", flush=True)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    marker, args = _split_marker(given)
    selecting = _selects(given)
    test_timeout = float(os.environ.get("SCALEREC_SUITE_TEST_TIMEOUT", "900"))
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # a launcher that ignores them means it
            signal.signal(sig, _raise_interrupted)
    parts = [Part(name, f"({marker}) and ({expr})" if marker else expr) for name, expr in PARTS]
    interrupted = False
    try:
        for part in parts:
            run_part(part, args, selecting=selecting, test_timeout=test_timeout)
    except Interrupted as exc:
        interrupted = True
        _say(f"interrupted by {exc}")
    total: Counter[str] = Counter()
    print("=" * 30 + " run_suite summary " + "=" * 30, flush=True)
    for part in parts:
        counts = part.counts()
        total += counts
        status = "; ".join(part.problems) or ("no tests selected" if part.no_tests else "ok")
        codes = ", ".join(map(str, part.exit_codes)) or "not run"
        print(f"  {part.name} part ({part.marker}): {counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped']} skipped; pytest exit {codes}; {status}", flush=True)
    _print_skipped(parts)
    print(f"suite: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped", flush=True)
    if interrupted:
        return 130
    if any(part.problems or part.counts()["failed"] or any(c not in (0, NO_TESTS) for c in part.exit_codes) for part in parts):
        return 1
    if all(part.no_tests for part in parts):
        return NO_TESTS
    return 0


if __name__ == "__main__":
    sys.exit(main())
