"""How long a serving process's log flushes keep a request thread from the GIL (issue 18, serving tail).

    PYTHONPATH=src python bench/bench_flush.py --baseline-src /tmp/old/src --records 4000 --rounds 5

A serving worker answers requests on one thread while the impression log and the recommendation
log flush in background threads; while a flush runs C code that holds the GIL (Arrow conversion of
Python objects, orjson) the request thread waits. This measures that wait directly: a child process
per code version buffers ``--records`` records shaped like the service's, flushes both logs in
their own threads, and meanwhile its main thread sleeps 0.5 ms again and again (as an event loop
waiting on sockets); every wake-up later than asked is time the GIL was held by the flush. Reported:
the flush's wall time and the main thread's worst and 99th-percentile lateness during it, beside
its worst lateness for as long again without a flush (the machine's own scheduling delay); each the
median over 5 flushes per process, then the median over rounds. Versions
alternate per round in fresh processes (same load). Appends a line to bench/results/flush.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import append_result, load_line, machine_info

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, threading, time, tempfile
from pathlib import Path
import numpy as np
from scalerec.serving.impressions import ImpressionLog
from scalerec.serving.reclog import RecommendationLog

n = int(sys.argv[1])
FLUSHES = 5
if len(sys.argv) > 2:
    sys.setswitchinterval(float(sys.argv[2]))
rng = np.random.default_rng(0)
def rec(k, now):
    items = [f"i{int(i):06d}" for i in rng.integers(0, 100_000, 20)]
    return {"recommendation_id": f"{k:032x}", "at": now, "kind": "user", "user_id": f"u{k:07d}",
            "model_version": "20260101T000000-abcdef", "strategy": "model", "items": items,
            "context": {"device": "mobile"}, "placement": None, "experiment": None, "variant": None, "session_id": None}
out = {}
with tempfile.TemporaryDirectory() as d:
    for name, log in (("impressions", ImpressionLog(Path(d) / "imp")), ("reclog", RecommendationLog(Path(d) / "logs"))):
        flushes = []
        for rep in range(1 + FLUSHES):  # the first warms imports and file creation
            now = time.time()
            for k in range(n):
                log.add(rec(k, now))
            done = threading.Event()
            t0 = time.perf_counter()
            th = threading.Thread(target=lambda: (log.flush(), done.set()))
            th.start()
            late = []
            while not done.is_set():
                a = time.perf_counter()
                time.sleep(0.0005)
                late.append(time.perf_counter() - a - 0.0005)
            th.join()
            wall = time.perf_counter() - t0
            idle = []  # the same loop for as long without a flush: the machine's own wake-up delay
            while time.perf_counter() - t0 < 2 * wall:
                a = time.perf_counter()
                time.sleep(0.0005)
                idle.append(time.perf_counter() - a - 0.0005)
            if rep:
                late, idle = np.array(late) * 1e3, np.array(idle) * 1e3
                flushes.append((wall * 1e3, late.max(), np.percentile(late, 99), idle.max()))
        f = np.array(flushes)  # the median over flushes of each figure: one preemption of the process is not the result
        out[name] = {"flush_ms": round(float(np.median(f[:, 0])), 2), "max_late_ms": round(float(np.median(f[:, 1])), 2),
                     "p99_late_ms": round(float(np.median(f[:, 2])), 2), "idle_max_late_ms": round(float(np.median(f[:, 3])), 2),
                     "flushes": len(f)}
print("FLUSH_JSON " + json.dumps(out))
"""


def run(src: Path, records: int, switch_s: float | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", CHILD, str(records), *([str(switch_s)] if switch_s else [])]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("FLUSH_JSON "))
    return json.loads(line[len("FLUSH_JSON "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=4000, help="records per flush (~5 s of a worker at 800 req/s)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--src", type=Path, default=HERE.parent / "src")
    p.add_argument("--baseline-src", type=Path, default=None, help="an older checkout's src/, run alternately")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="also run this code with sys.setswitchinterval(S) (CPython's default is 0.005)")
    args = p.parse_args()
    machine = machine_info()
    versions = {"this": (args.src, None), **({"baseline": (args.baseline_src, None)} if args.baseline_src else {})}
    if args.switch_interval:
        versions[f"this, switch {args.switch_interval * 1e3:g} ms"] = (args.src, args.switch_interval)
    runs: dict[str, list[dict]] = {v: [] for v in versions}
    for i in range(args.rounds):
        for v in (list(versions) if i % 2 == 0 else list(versions)[::-1]):
            runs[v].append(run(versions[v][0], args.records, versions[v][1]))
    med = {v: {log: {k: statistics.median(r[log][k] for r in rs) for k in ("flush_ms", "max_late_ms", "p99_late_ms", "idle_max_late_ms")}
               for log in ("impressions", "reclog")} for v, rs in runs.items()}
    print(f"{args.records} records per flush, {args.rounds} rounds (medians)")
    print(f"{'code':>20} {'log':>12} | {'flush ms':>9} {'worst wait ms':>13} {'p99 wait ms':>11} {'worst, no flush':>15}")
    for v, logs in med.items():
        for log, m in logs.items():
            print(f"{v:>20} {log:>12} | {m['flush_ms']:>9.2f} {m['max_late_ms']:>13.2f} {m['p99_late_ms']:>11.2f} {m['idle_max_late_ms']:>15.2f}")
    print(load_line(machine))
    append_result("flush", {"records": args.records, "rounds": args.rounds, "medians": med, "runs": runs,
                            "baseline_src": str(args.baseline_src) if args.baseline_src else None}, machine=machine)


if __name__ == "__main__":
    main()
