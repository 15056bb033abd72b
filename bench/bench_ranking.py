"""The ranking stage on a synthetic shop whose weather drives demand (the truth is known).

Trains the CF candidates and the ranker with `scalerec train` (same split, same gate), then:
NDCG@20 of the ranked lists vs the chosen CF model alone, overall and on rainy / hot days (the
manifest's test part, intervals by user bootstrap); per segment vs popularity (the weakest
segments); new-item hit share; through HTTP (the real app), the share of rainwear in the top 20
of the same users with `context.weather=rain` vs `context.weather=sun`; and the rerank cost per
request: the same requests in-process with the ranker and with `[ranking] enabled = false`.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_ranking.py [--users 6000 --items 1000 --events 600000]
    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_ranking.py --online-retail

``--online-retail``: the two-stage model on the Online Retail protocol (../shared/datasets/online-retail/):
the ranker learns on the (user, day) queries of ``[ranking] learning_windows`` windows of
``window_days`` before the protocol's test start (ranker.learning_set: CF and features as of each
window's start), then ranks the protocol's test users' candidates with CF and features as of the
test start; NDCG@20 against the CF model alone (the tuned
single model: EASE, lambda 312, recency half-life 30 days, chosen on validation by
bench_selection.py) on the same users, with a paired bootstrap interval of the difference; where the
relevant pairs are (CF top k, the CF candidates, each source, all candidates: the ranker's ceiling,
the ranked top k), the share of users the ranker helps and hurts, the repeat-purchase share and the
features with most gain.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

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
    ap.add_argument("--online-retail", action="store_true", help="the Online Retail protocol instead of the synthetic shop")
    ap.add_argument("--window-days", type=float, default=None, help="[ranking] window_days for --online-retail")
    ap.add_argument("--learning-windows", type=int, default=None, help="[ranking] learning_windows for --online-retail")
    args = ap.parse_args()
    machine = machine_info()
    if args.online_retail:
        online_retail(args, machine)
        return

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
        import scalerec

        record: dict = {"args": vars(args), "src": str(Path(scalerec.__file__).parents[1]),
                        "family": result.best_family, "status": sec["status"],
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


def online_retail(args: argparse.Namespace, machine: dict) -> None:
    import polars as pl

    from scalerec.config import EventType
    from scalerec.data.importers import import_file
    from scalerec.data.matrix import MatrixSpec
    from scalerec.data.snapshot import load_events
    from scalerec.data.store import DataStore
    from scalerec.datasets.online_retail import ONLINE_RETAIL_ATTRIBUTION, online_retail_protocol
    from scalerec.evaluation.stats import bootstrap_ci
    from scalerec.models import make_model
    from scalerec.ranking import features as F
    from scalerec.ranking import ranker as R

    csv = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "online-retail" / "online_retail.csv.gz"
    if not csv.is_file():
        sys.exit(f"error: {csv} not found")
    cols = ["user_id", "item_id", "event_type", "timestamp", "value", "session_id", "context"]
    k = 20
    with tempfile.TemporaryDirectory() as tmp:
        ranking = {"segment_keys": ["country"]}
        if args.window_days:
            ranking["window_days"] = args.window_days
        if args.learning_windows:
            ranking["learning_windows"] = args.learning_windows
        settings = Settings(data={"dir": Path(tmp) / "data"}, ranking=ranking, matrix={"binary": True})
        cfg = settings.ranking
        store = DataStore.open(settings)
        t = time.perf_counter()
        for kind in ("events", "items", "users"):
            import_file(store, kind, csv, preset="online-retail")
        split = online_retail_protocol(store)
        raw = load_events(store.events(columns=cols), columns=cols)
        world, ev = R.build_world(store, settings, np.asarray(split.train.user_ids), np.asarray(split.train.item_ids), raw)
        print(f"imported and prepared in {time.perf_counter() - t:.0f} s; side information: {R.side_information(world, ev)}")
        t2 = F._us(split.info["test_start"])
        purchases = raw.filter(pl.col("event_type") == "purchase")

        def cf_at(cut_us: int, **params):
            from datetime import datetime, timezone

            cut = datetime.fromtimestamp(cut_us / 1e6, tz=timezone.utc)
            model = make_model("ease", **params)
            spec = MatrixSpec.from_settings(settings, model.matrix_overrides(), event_types={"purchase": EventType(weight=1.0)})
            model.fit(spec.build(purchases.filter(pl.col("timestamp") < cut), user_ids=world.user_ids,
                                 item_ids=world.item_ids, now=cut))
            return model

        tuned = {"l2": 312.0, "recency_half_life_days": 30.0}
        t = time.perf_counter()
        learn = R.learning_set(ev, world, cfg, t2, lambda cut: cf_at(cut, **tuned), settings.evaluation.seed)
        booster = R.fit_booster(learn.x, learn.y, learn.q, cfg, settings.evaluation.seed)
        n_learn = sum(w["queries"] for w in learn.windows)
        learn_s = time.perf_counter() - t
        users = np.asarray(split.test_users, np.int64)
        rel = sp.csr_matrix(split.test[users])
        d2 = R.as_of(ev, t2, world, cfg)
        ctx = {"weather": np.zeros(len(users), np.float32), "temp_c": np.full(len(users), np.nan, np.float32),
               "device": np.zeros(len(users), np.float32), **R.time_context(np.full(len(users), t2))}
        rows, recall = {}, {}
        for label, params in (("EASE l2 312, half-life 30 d (tuned)", tuned), ("EASE l2 500 (reference)", {"l2": 500.0})):
            cfb = R.cf_block(cf_at(t2, **params), d2, users, cfg.cf_candidates)
            cand = R.candidate_frame(d2, world, cfg, users, cfb, t2, weather=np.zeros(len(users), np.int64))
            ranked = R.top_lists(cand, R.predict_blocks(booster, d2, world, cand, users, ctx), len(users), k)
            rows[label] = (R.ndcg(ranked, rel, k), R.ndcg(cfb.ids[:, :k], rel, k), cand.height / len(users))
            recall[label] = _candidate_recall(cand, cfb, ranked, rel, k)
        print(f"\nOnline Retail protocol, {len(users)} test users; learning windows {len(learn.windows)} x {cfg.window_days:g} days "
              f"before the test start: {n_learn} (user, day) queries, {len(learn.y)} rows, learned in {learn_s:.0f} s")
        print(f"{'CF model':38} {'CF alone NDCG@20':>18} {'two-stage NDCG@20':>18} {'two-stage - CF [95%]':>28} {'ratio':>6}")
        record: dict = {"args": vars(args), "users": len(users), "learn_queries": n_learn, "learning_windows": learn.windows,
                        "src": str(Path(R.__file__).parents[2]), "rows": {}}
        for label, (vr, vc, per) in rows.items():
            m, lo, hi = bootstrap_ci(vr - vc, confidence=0.95, n_boot=2000, seed=0)
            ratio = vr.mean() / vc.mean()
            print(f"{label:38} {vc.mean():18.4f} {vr.mean():18.4f} {f'{m:+.4f} [{lo:+.4f}, {hi:+.4f}]':>28} {ratio:6.3f}")
            record["rows"][label] = {"cf": float(vc.mean()), "two_stage": float(vr.mean()), "diff": [m, lo, hi],
                                     "ratio": float(ratio), "candidates_per_user": per}
        print("\nwhere the relevant (user, item) pairs are: share of them in each list (the ranker's input vs the CF list)")
        for label, r in recall.items():
            print(f"  {label}: " + ", ".join(f"{n} {v:.3f}" for n, v in r.items()))
            record["rows"][label]["recall"] = r
        for label, (vr, vc, _) in rows.items():
            share = {"better": float(np.mean(vr > vc + 1e-9)), "worse": float(np.mean(vr < vc - 1e-9)),
                     "same": float(np.mean(np.abs(vr - vc) <= 1e-9))}
            print(f"  per user, {label}: two-stage better for {share['better']:.3f}, worse {share['worse']:.3f}, "
                  f"same {share['same']:.3f}")
            record["rows"][label]["per_user"] = share
        repeat = _repeat_share(purchases, world, users, t2)
        print(f"  repeat purchases: {repeat['repeat_share']:.3f} of the test users' test-window (user, item) pairs were "
              f"bought before the test start (the protocol's relevance excludes them, as the candidates do)")
        record["repeat"] = repeat
        gains = dict(zip(R.FEATURES, booster.feature_importance("gain").tolist()))
        top = sorted(gains.items(), key=lambda kv: -kv[1])[:12]
        print("features with most gain: " + ", ".join(f"{n} {g:.0f}" for n, g in top))
        record["feature_gain"] = dict(top)
        store.close()
    print(f"{ONLINE_RETAIL_ATTRIBUTION}\nmachine: {load_line(machine)}")
    record["load"] = load_line(machine)
    append_result("ranking_online_retail", record, machine=machine)


def _candidate_recall(cand, cfb, ranked: np.ndarray, rel: sp.csr_matrix, k: int) -> dict[str, float]:
    """Share of the relevant (user, item) pairs in: the CF top k, the CF candidates, each source,
    all candidates (the ranker's input, its ceiling) and the ranked top k."""
    from scalerec.ranking.candidates import SOURCES

    rel = sp.csr_matrix(rel > 0, dtype=np.float32)
    total = max(rel.nnz, 1)

    def hits(q: np.ndarray, i: np.ndarray) -> float:
        keep = i >= 0
        return float(np.asarray(rel[q[keep], i[keep]]).sum() / total)

    qs = np.repeat(np.arange(ranked.shape[0]), ranked.shape[1])
    cq, ci = cand["q"].to_numpy().astype(np.int64), cand["i"].to_numpy().astype(np.int64)
    out = {f"cf top {k}": hits(np.repeat(np.arange(len(cfb.ids)), k), cfb.ids[:, :k].ravel()),
           f"cf top {cfb.ids.shape[1]}": hits(np.repeat(np.arange(len(cfb.ids)), cfb.ids.shape[1]), cfb.ids.ravel())}
    for s in SOURCES:
        m = np.isfinite(cand[s].to_numpy())
        if m.any():
            out[s] = hits(cq[m], ci[m])
    out["all candidates"] = hits(cq, ci)
    out[f"ranked top {k}"] = hits(qs, ranked.ravel())
    return out


def _repeat_share(purchases, world, users: np.ndarray, t2: int) -> dict[str, float]:
    """How much of the test users' test-window buying is of items they had bought before."""
    import polars as pl

    ids = set(np.asarray(world.user_ids)[users].astype(str).tolist())
    p = purchases.filter(pl.col("user_id").is_in(list(ids))).with_columns(pl.col("timestamp").dt.epoch("us").alias("t"))
    before = p.filter(pl.col("t") < t2).select("user_id", "item_id").unique()
    after = p.filter(pl.col("t") >= t2).select("user_id", "item_id").unique()
    again = after.join(before, on=["user_id", "item_id"], how="semi").height
    return {"pairs": after.height, "repeat_share": again / max(after.height, 1)}


if __name__ == "__main__":
    main()
