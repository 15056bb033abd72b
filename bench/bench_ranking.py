"""The ranking stage on a synthetic shop whose weather drives demand (the truth is known).

Trains the CF candidates and the ranker with `scalerec train` (same split, same gate), then:
NDCG@20 of the ranked lists vs the chosen CF model alone, overall and on rainy / hot days (the
manifest's test part, intervals by user bootstrap); per segment vs popularity (the weakest
segments); new-item hit share; through HTTP (the real app), the share of rainwear in the top 20
of the same users with `context.weather=rain` vs `context.weather=sun`; and the rerank cost per
request: the same requests in-process with the ranker and with `[ranking] enabled = false`.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_ranking.py [--users 6000 --items 1000 --events 600000]
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

from scalerec.config import Settings  # noqa: E402


def _fmt(ci: dict) -> str:
    return f"{ci['mean']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}] (n={ci['n']})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--days", type=int, default=150)
    ap.add_argument("--start", default="2024-03-15")  # spring to August: rainy and hot days in the test part
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    machine = machine_info()

    from fastapi.testclient import TestClient

    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.serving.auth import ApiKeyStore
    from scalerec.serving.http.app import create_app
    from scalerec.serving.service import RecommendService
    from scalerec.training.pipeline import TrainOptions, train

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "data"
        settings = Settings(data={"dir": d})
        store = DataStore.open(settings)
        generate_store(store, n_users=args.users, n_items=args.items, n_events=args.events, seed=args.seed,
                       days=args.days, start=args.start, reviews=0.15)
        t = time.perf_counter()
        result = train(settings, TrainOptions(models=["als", "rp3beta"], trials=2), store=store)
        train_s = time.perf_counter() - t
        store.close()
        sec = result.ranking
        print(f"trained {result.best_family} in {train_s:.0f} s (ranking stage {result.timings.get('ranking_s', 0):.0f} s): "
              f"{sec['status']}: {sec['reason']}")
        record: dict = {"args": vars(args), "family": result.best_family, "status": sec["status"],
                        "train_s": train_s, "ranking_s": result.timings.get("ranking_s")}
        if sec["status"] != "active":
            append_result("ranking", record, machine=machine)
            return
        print("\nNDCG@20 on the test part (user, day) queries, 95% intervals")
        print(f"{'queries':8} {'ranked':>34} {'CF alone':>34} {'popular':>34} {'ranked/CF':>9}")
        for g, v in sec["test"].items():
            ratio = v["ranked"]["mean"] / v["cf"]["mean"] if v["cf"]["n"] and v["cf"]["mean"] else float("nan")
            print(f"{g:8} {_fmt(v['ranked']):>34} {_fmt(v['cf']):>34} {_fmt(v['popular']):>34} {ratio:9.2f}")
            record[f"ndcg_{g}"] = {"ranked": v["ranked"], "cf": v["cf"], "popular": v["popular"], "ratio": ratio}
        ni = sec["new_items"]
        print(f"\nnew items (first seen in the 7 days before the test part): {ni['items']} items, {ni['pairs']} relevant "
              f"pairs; hit share ranked {ni['ranked']}, CF {ni['cf']}")
        record["new_items"] = ni
        rows = [(key, value, v["ranked"]["mean"], v["popular"]["mean"], v["ranked"]["n"])
                for key, groups in sec["segments"].items() for value, v in groups.items() if v["ranked"]["n"] >= 30]
        beat = sum(r[2] > r[3] for r in rows)
        print(f"\nsegments (>= 30 queries): ranked beats popularity in {beat} of {len(rows)}; the weakest five:")
        for key, value, rk, pop, n in sorted(rows, key=lambda r: r[2])[:5]:
            print(f"  {key}={value:12} ranked {rk:.4f} popular {pop:.4f} (n={n})")
        record["segments_beating_popular"] = [beat, len(rows)]

        # HTTP: the same users, rain vs sun
        keys = ApiKeyStore.from_settings(settings)
        token = keys.create("read", "bench")[0]
        service = RecommendService(settings)
        client = TestClient(create_app(service, watch=False))
        table = service.store.catalog.items_table(columns=["item_id", "categories"])
        cats = dict(zip(table.column("item_id").to_pylist(), (c[0] for c in table.column("categories").to_pylist())))
        users = service.live.model.user_ids[:: max(1, len(service.live.model.user_ids) // args.requests)][: args.requests]
        share = {}
        for weather in ("rain", "sun"):
            got = []
            for u in users.tolist():
                r = client.get(f"/v1/users/{u}/recommendations?n=20&context.weather={weather}",
                               headers={"Authorization": f"Bearer {token}"})
                got.append(np.mean([cats[x["item_id"]] == "rainwear" for x in r.json()["items"]]))
            share[weather] = float(np.mean(got))
        ratio = share["rain"] / share["sun"] if share["sun"] else float("inf")
        print(f"\nrainwear share of the top 20 through HTTP ({len(users)} users): rain {share['rain']:.4f}, "
              f"sun {share['sun']:.4f}, ratio {ratio:.2f}")
        record["rainwear_share"] = {**share, "ratio": ratio}

        # rerank cost: the same requests in-process with and without the ranker
        plain = RecommendService(Settings(data={"dir": d}, ranking={"enabled": False}))
        cost = {}
        for name, svc in (("ranked", service), ("plain", plain)):
            for u in users[:20].tolist():
                svc.recommend_user(u, 20, context={"weather": "rain"})
            t = time.perf_counter()
            for u in users.tolist():
                svc.recommend_user(u, 20, context={"weather": "rain"})
            cost[name] = (time.perf_counter() - t) / len(users) * 1e6
        per = sec["candidates_per_query"]
        print(f"per request in-process: ranked {cost['ranked']:.0f} us, plain {cost['plain']:.0f} us; rerank cost "
              f"{cost['ranked'] - cost['plain']:.0f} us for ~{per:.0f} candidates")
        record["us_per_request"] = cost
        plain.close()
        service.close()
    print(f"\nmachine: {load_line(machine)}")
    record["load"] = load_line(machine)
    append_result("ranking", record, machine=machine)


if __name__ == "__main__":
    main()
