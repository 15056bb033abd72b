"""What a catalogue write costs the next request that places new items (issue 11's new-item slots).

A store with a trained, active ranker gets ``--new`` items the version does not know; then, in
rounds, one write to a known item and one to a new item, each followed by a similar-items request
(the one that rebuilds the new items' state). Peer in the same run: the same stage without the
change feed (``feed=None``), which reads every item and recomputes the new items' similarities after
any write, as the code before this change did. Per-request wall and CPU time, median over rounds.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_new_items.py --items 20000 --events 400000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_result, load_line, machine_info  # noqa: E402
from bench_rerank import build  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, default=None, help="a store with a trained, active ranker")
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--new", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    machine = machine_info()
    d = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-new-items-")) / "shop"
    if not (d / "catalog.db").exists():
        build(d, args.users, args.items, args.events)

    from scalerec.config import Settings
    from scalerec.ranking.newitems import NewItemSlots
    from scalerec.serving.filters import ItemFilter
    from scalerec.serving.service import RecommendService

    svc = RecommendService(Settings(data={"dir": d}))
    try:
        slots = next((s for s in svc.pipeline.finish if isinstance(s, NewItemSlots)), None)
        if slots is None or svc.ranking.bundle(svc.live.model) is None:
            raise SystemExit("the store has no active ranker: new-item slots are off")
        peer = NewItemSlots(svc.ranking, svc.store.catalog, None)
        known = [str(i) for i in svc.live.model.item_ids[:2]]
        for j in range(args.new):
            svc.put_item(f"bench-new-{j}", {"title": f"waterproof rain jacket {j}", "categories": ["rainwear"],
                                                "price": 30.0 + j, "available": True})
        svc.state.apply_changes()
        stages = {"feed patch (this change)": slots, "full re-read (before)": peer}
        times: dict[str, dict[str, list[float]]] = {f"{k} / {w}": {"wall": [], "cpu": []}
                                                     for k in stages for w in ("known item", "new item")}
        for r in range(args.rounds):
            for write, key in (("known item", known[r % 2]), ("new item", f"bench-new-{r % args.new}")):
                svc.patch_item(key, {"price": 10.0 + r})
                svc.state.apply_changes()
                for name, stage in stages.items():
                    t, c = time.perf_counter(), time.thread_time()
                    stage.new_items(svc.live)
                    times[f"{name} / {write}"]["wall"].append((time.perf_counter() - t) * 1e3)
                    times[f"{name} / {write}"]["cpu"].append((time.thread_time() - c) * 1e3)
                svc.similar_items(known[0], n=10, flt=ItemFilter())  # the request path itself still answers
        rows = {k: {m: statistics.median(v[m]) for m in ("wall", "cpu")} for k, v in times.items()}
        print(f"{'after a write to a ...':44} {'wall ms':>9} {'CPU ms':>9}")
        for k, v in rows.items():
            print(f"{k:44} {v['wall']:9.2f} {v['cpu']:9.2f}")
        ratio = {w: rows[f'full re-read (before) / {w}']['cpu'] / max(rows[f'feed patch (this change) / {w}']['cpu'], 1e-6)
                 for w in ("known item", "new item")}
        print("CPU ratio before/after: " + ", ".join(f"{w} x{r:.0f}" for w, r in ratio.items()))
        load = load_line(machine)
        print(load)
        n_items = len(svc.live.model.item_ids)
        append_result("new_items", {"args": {k: str(v) for k, v in vars(args).items()}, "model_items": n_items,
                                    "rows": rows, "cpu_ratio_before_after": ratio, "load": load}, machine=machine)
    finally:
        svc.close()


if __name__ == "__main__":
    main()
