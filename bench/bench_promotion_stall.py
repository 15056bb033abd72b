"""Event-write latency while a promotion prunes ``serving_recent_events`` (issue 17, defect 3).

Each code version runs in its own child process on its own store: a small synthetic shop with a
trained, served version; ``--rows`` kept compacted events (default 2M, older than the next model's
data) are bulk-inserted; a writer thread posts one event at a time through ``RecommendService``
(the path under POST /v1/events) while a second version is promoted and the started service's
watcher swaps to it. Latencies of the writes from the promotion until the old rows are gone are
reported (p50/p99/max). The baseline is ``main`` checked out with ``git worktree add`` (default
/tmp/old-storage) unless ``--baseline-src`` names a ``src`` directory.

    .venv/bin/python bench/bench_promotion_stall.py [--rows 2000000] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def child(data_dir: Path, rows: int) -> dict:
    import sqlite3

    from scalerec.config import Settings
    from scalerec.data.store import DataStore
    try:
        from scalerec.data.synth import generate_store
    except ImportError:  # main moved it (the baseline may be newer than this branch's base)
        from scalerec.datasets.synth import generate_store
    from scalerec.registry import Registry
    from scalerec.serving.service import RecommendService
    from scalerec.training.pipeline import TrainOptions, train

    settings = Settings(data={"dir": data_dir})
    store = DataStore.open(settings)
    generate_store(store, n_users=300, n_items=150, n_events=20_000, seed=7, days=60)
    store.close()
    assert train(settings, TrainOptions(models=["popular"], trials=1)).status == "registered"
    service = RecommendService(settings)
    service.start()
    db = data_dir / "catalog.db"
    # what compactions leave behind, all older than the next model's data (plain executemany: the
    # same fill for both code versions)
    t0 = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    chunk = 200_000
    for a in range(0, rows, chunk):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO serving_recent_events (user_id, item_id, event_type, timestamp, value) VALUES (?,?,?,?,?)",
            ((f"u{k % 5000}", f"i{k % 150:06d}", "view", 946_684_800_000_000 + k, 1.0)
             for k in range(a, min(rows, a + chunk))),
        )
        conn.execute("COMMIT")
    fill_s = time.perf_counter() - t0
    version = train(settings, TrainOptions(models=["popular"], trials=1, promote=False)).version.version

    lat: list[tuple[float, float]] = []  # (start, seconds)
    stop = threading.Event()
    items = [f"i{k:06d}" for k in range(150)]

    def writer() -> None:
        k = 0
        while not stop.is_set():
            t = time.perf_counter()
            service.ingest_events([{"user_id": f"bench-{k}", "item_id": items[k % 150], "event_type": "view"}])
            lat.append((t, time.perf_counter() - t))
            k += 1
            time.sleep(0.002)

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    time.sleep(1.0)
    t_promote = time.perf_counter()
    Registry(settings).promote(version, force=True)
    reader = sqlite3.connect(db)
    swapped_at = None
    deadline = time.perf_counter() + 600
    while time.perf_counter() < deadline:
        if swapped_at is None and service.ready and service.live.model.version == version:
            swapped_at = time.perf_counter()
        left = reader.execute("SELECT count(*) FROM serving_recent_events WHERE timestamp < 946684800000000 + ?",
                              (rows,)).fetchone()[0]
        if swapped_at is not None and left == 0:
            break
        time.sleep(0.05)
    t_done = time.perf_counter()
    time.sleep(0.2)
    stop.set()
    th.join()
    service.close()
    window = np.array([s for t, s in lat if t_promote <= t <= t_done]) * 1000
    return {
        "rows": rows, "fill_s": round(fill_s, 2), "writes": int(len(window)),
        "swap_s": round((swapped_at or t_done) - t_promote, 2), "pruned_s": round(t_done - t_promote, 2),
        "p50_ms": round(float(np.percentile(window, 50)), 2), "p99_ms": round(float(np.percentile(window, 99)), 2),
        "max_ms": round(float(window.max()), 2),
        # a stall holds back every write behind it: the time writes spent past 100 ms tells more
        # than a percentile over the few writes that got started during a long one
        "stalled_s": round(float(np.clip(window - 100, 0, None).sum() / 1000), 2),
    }


def run(src: Path, rows: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(Path(tmp) / "data"), "--rows", str(rows)],
            env=env, check=True, capture_output=True, text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_src(path: Path) -> Path:
    if not (path / "src").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), "main"], check=True,
                       capture_output=True)
    return path / "src"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--baseline-src", type=Path, default=None)
    ap.add_argument("--baseline-worktree", type=Path, default=Path("/tmp/old-storage"))
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.rows)))
        return
    sys.path.insert(0, str(HERE))
    from _common import append_result, machine_info

    old_src = args.baseline_src or baseline_src(args.baseline_worktree)
    results = {"old (main)": run(old_src, args.rows), "new": run(REPO / "src", args.rows)}
    print(f"event writes during a promotion that prunes {args.rows:,} kept events")
    print(f"{'code':<12}{'writes':>8}{'swap s':>8}{'pruned s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'stalled s':>11}")
    for name, r in results.items():
        print(f"{name:<12}{r['writes']:>8}{r['swap_s']:>8}{r['pruned_s']:>10}{r['p50_ms']:>9}{r['p99_ms']:>9}"
              f"{r['max_ms']:>9}{r['stalled_s']:>11}")
    append_result("promotion_stall", {"rows": args.rows, "results": results}, machine=machine_info())


if __name__ == "__main__":
    main()
