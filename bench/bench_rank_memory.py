"""Ranking-stage training memory per step: `scalerec train` on a synthetic shop, each step of the
stage (build_world, as_of, fit_cf, candidate_frame, ...) wrapped to record the process's RSS at
its start and end and its peak (a sampler thread, every 10 ms), for this tree and, with
``--old-src``, another (e.g. main in a worktree) on a copy of the same store, one after the other.

    python bench/bench_rank_memory.py --events 1000000 --users 50000 --old-src /tmp/old/src

Prints a table per tree and appends one JSON line to bench/results/rank_memory.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_result, machine_info  # noqa: E402

#: the stage's steps, in ranking/ranker.py (those absent from a tree are skipped)
STEPS = ("build_world", "as_of", "make_queries", "fit_cf", "cf_block", "candidate_frame", "assemble_blocks",
         "fit_booster", "predict_blocks", "top_lists", "train_ranker")

CHILD = r"""
import json, os, sys, threading, time
import psutil
proc, peak, rows = psutil.Process(), [0], []
def sample():
    while True:
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
import scalerec.ranking.ranker as R
def wrap(name):
    f = getattr(R, name)
    def w(*a, **k):
        r0, outer = proc.memory_info().rss, peak[0]
        peak[0] = r0
        t = time.perf_counter()
        out = f(*a, **k)
        r1 = proc.memory_info().rss
        rows.append({"step": name, "start": r0, "end": r1, "peak": max(peak[0], r1), "s": time.perf_counter() - t})
        peak[0] = max(outer, peak[0])
        return out
    setattr(R, name, w)
for n in json.loads(sys.argv[1]):
    if hasattr(R, n):
        wrap(n)
from scalerec.cli import main
sys.argv = ["scalerec", "--data-dir", sys.argv[2], "train", "--models", "als", "--trials", "1", "--json"]
try:
    main()
except SystemExit:
    pass
with open(os.environ["RANK_MEMORY_OUT"], "w") as fh:
    json.dump(rows, fh)
"""


def profile(src: Path, store: Path, out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "RANK_MEMORY_OUT": str(out)}
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(STEPS), str(store)], check=True, env=env,
                   stdout=subprocess.DEVNULL, cwd=src.parent)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("bench/work/rank_memory"))
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=2_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--old-src", type=Path, default=None, help="another tree's src/ to profile on a copy of the store")
    args = ap.parse_args()
    from scalerec.config import Settings
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store

    base = args.data_dir / f"shop-{args.events}"
    if not (base / "events").is_dir():
        shutil.rmtree(base, ignore_errors=True)
        with DataStore.open(Settings(data={"dir": base})) as store:
            generate_store(store, n_users=args.users, n_items=args.items, n_events=args.events, seed=7, days=90)
    trees = {"this": Path(__file__).resolve().parent.parent / "src"}
    if args.old_src:
        trees["old"] = args.old_src.resolve()
    load_before = os.getloadavg()
    rec: dict = {"users": args.users, "items": args.items, "events": args.events, "trees": {}}
    for name, src in trees.items():
        store = args.data_dir / f"run-{name}"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(base, store)  # untrained copy: each tree trains the same data from scratch
        t = time.perf_counter()
        rows = profile(src, store, args.data_dir / f"steps-{name}.json")
        rec["trees"][name] = {"src": str(src), "wall_s": time.perf_counter() - t, "steps": rows}
    rec["load_before"], rec["load_after"] = load_before, os.getloadavg()
    append_result("rank_memory", rec, machine=machine_info())
    mib = 2**20
    for name, tr in rec["trees"].items():
        print(f"\n{name} ({tr['src']}), {args.events:,} events")
        print("| step | start MiB | end MiB | peak MiB | peak above start | s |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in tr["steps"]:
            print(f"| {r['step']} | {r['start'] / mib:,.0f} | {r['end'] / mib:,.0f} | {r['peak'] / mib:,.0f} | "
                  f"+{(r['peak'] - r['start']) / mib:,.0f} | {r['s']:.1f} |")
    print(f"\nload average before {load_before}, after {rec['load_after']}")


if __name__ == "__main__":
    main()
