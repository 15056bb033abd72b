"""How long an item marked unavailable on one worker stays in another worker's lists.

Two RecommendService instances over one data directory (what `serve --workers 2` runs: one per
worker process; here threads of one process, each with its own watcher) serve a small synthetic
shop. Repeatedly, an item of worker B's popular list is PATCHed unavailable through worker A, and
worker B is asked for /v1/popular every millisecond until the item is gone: the time from A's
acknowledgement to B's first answer without it. Peer: the same with the change poll of before
(2 s, the model poll), in the same run. Prints a table, appends JSON lines to bench/results/change_feed.jsonl.

    .venv/bin/python bench/bench_change_feed.py [--changes 200] [--old-changes 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import append_result, load_line, machine_info  # noqa: E402


def measure(settings, changes: int, poll_s: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    from scalerec.serving import service as svc

    svc.CHANGE_POLL_S = poll_s
    a, b = svc.RecommendService(settings, watch=True), svc.RecommendService(settings, watch=True)
    try:
        top = [x["item_id"] for x in b.popular(n=20)["items"]]
        out = []
        for k in range(changes):
            item = top[k % len(top)]
            a.patch_item(item, {"available": False})
            t0 = time.perf_counter()
            while item in {x["item_id"] for x in b.popular(n=20)["items"]}:
                time.sleep(0.001)
            out.append(1000 * (time.perf_counter() - t0))
            a.patch_item(item, {"available": True})
            while item not in {x["item_id"] for x in b.popular(n=20)["items"]}:
                time.sleep(0.001)
        return np.asarray(out)
    finally:
        a.close()
        b.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--old-changes", type=int, default=10)
    args = p.parse_args()
    from scalerec.config import Settings
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.serving.service import CHANGE_BOUND_MS, CHANGE_POLL_S
    from scalerec.training.pipeline import TrainOptions, train

    before = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data={"dir": Path(tmp) / "shop"})
        store = DataStore.open(settings)
        generate_store(store, n_users=500, n_items=200, n_events=20_000, seed=7, days=60)
        train(settings, TrainOptions(models=["popular"], trials=1), store=store)
        store.close()
        rows = {"this tree (change poll %.0f ms)" % (1000 * CHANGE_POLL_S): measure(settings, args.changes, CHANGE_POLL_S),
                "before (change poll 2000 ms)": measure(settings, args.old_changes, 2.0)}
    print(f"{'variant':34} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    stats = {}
    for name, ms in rows.items():
        stats[name] = {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                       "max_ms": float(ms.max())}
        s = stats[name]
        print(f"{name:34} {s['n']:5d} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f} {s['max_ms']:8.1f}")
    new, old = stats.values()
    print(f"p99 ratio before/this: {old['p99_ms'] / new['p99_ms']:.1f}x; README bound {CHANGE_BOUND_MS} ms: "
          f"{'met' if new['p99_ms'] < CHANGE_BOUND_MS else 'NOT met'}; load {load_line(before)}")
    append_result("change_feed", {"variants": stats, "bound_ms": CHANGE_BOUND_MS}, machine=before)


if __name__ == "__main__":
    main()
