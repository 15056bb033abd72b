"""Serving cost of the ranker's features: CPU per request of the ranking stage's candidate merge and
feature rows (ranking/tables.py), and of the forest, on a trained synthetic shop.

Trains a small shop with `scalerec train` in this tree's code, loads the version's ranking bundle as
serving does, and times per request (thread CPU, the steadier figure on a shared machine) the
candidates (`ServingTables.candidates`), the feature rows (`ServingTables.features`) and the
predictor, over the same users. Run it once per code version (e.g. with ``PYTHONPATH`` of the code
before a change) to compare; it prints one table and appends a JSON line to bench/results/.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_rank_features.py [--users 1500 --items 300 --events 150000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_result, load_line, machine_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1500)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    machine = machine_info()

    import scalerec
    from scalerec.config import Settings
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.ranking.ranker import FEATURES, request_context
    from scalerec.serving.service import RecommendService
    from scalerec.training.pipeline import TrainOptions, train

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "data"
        ranking = {"min_queries": 50, "max_queries": 1500, "trees": 60, "compile": False}
        settings = Settings(data={"dir": d}, ranking=ranking)
        store = DataStore.open(settings)
        generate_store(store, n_users=args.users, n_items=args.items, n_events=args.events, seed=11, days=90,
                       start="2024-09-01", reviews=0.2)
        result = train(settings, TrainOptions(models=["als"], trials=1), store=store)
        store.close()
        assert result.ranking["status"] == "active", result.ranking["reason"]
        service = RecommendService(settings)
        st = service.live.model
        b = service.ranking.bundle(st)
        cfg = settings.ranking
        tb = b.tables
        rows = np.linspace(0, len(st.user_ids) - 1, args.requests).astype(int)
        now = int(time.time() * 1e6)
        prepared = []
        for row in rows.tolist():
            allowed = np.ones(st.n_items, bool)
            allowed[b.asof.seen[row].indices] = False
            ids, scores = st.retriever.search(st.retriever.user_query(row), cfg.cf_candidates, allowed)
            ctx = request_context({"weather": "rain"}, b.world, now)
            prepared.append((row, allowed, np.asarray(ids, np.int64), np.asarray(scores, np.float32), ctx))
        parts = {"candidates": [], "features": [], "predict": []}
        n_cand = []
        for _ in range(args.rounds):
            for row, allowed, ids, scores, ctx in prepared:
                t0 = time.thread_time_ns()
                seeds = tb.seeds(row, np.zeros(0, np.int64))
                cand = tb.candidates(cfg, row, ids, scores, seeds, allowed, now, int(ctx["weather"][0]))
                t1 = time.thread_time_ns()
                x = tb.features(cand, row, ctx)
                t2 = time.thread_time_ns()
                b.predict(x)
                t3 = time.thread_time_ns()
                parts["candidates"].append(t1 - t0)
                parts["features"].append(t2 - t1)
                parts["predict"].append(t3 - t2)
                n_cand.append(len(cand["i"]))
        service.close()
    med = {k: float(np.median(v)) / 1e3 for k, v in parts.items()}
    src = str(Path(scalerec.__file__).parents[1])
    print(f"code {src}: {len(FEATURES)} features, {np.mean(n_cand):.0f} candidates per request, "
          f"{args.requests} requests x {args.rounds} rounds; median CPU us per request")
    print(f"{'candidates':>12} {'features':>10} {'predict (LightGBM)':>20} {'sum':>8}")
    print(f"{med['candidates']:12.0f} {med['features']:10.0f} {med['predict']:20.0f} {sum(med.values()):8.0f}")
    print(f"machine: {load_line(machine)}")
    append_result("rank_features", {"args": vars(args), "src": src, "features": len(FEATURES),
                                    "candidates": float(np.mean(n_cand)), "median_cpu_us": med,
                                    "load": load_line(machine)}, machine=machine)


if __name__ == "__main__":
    main()
