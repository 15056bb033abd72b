"""Rerank cost per request: the ranking stage in-process, this tree vs an older checkout, same store, same run.

Each round starts one child process per code version (``--baseline-src``: an older ``src``, e.g.
``git archive main src | tar -x -C /tmp/old``); a child serves the same users' personal lists
(``n``, ``context.weather``) with the ranker and with ``[ranking] enabled = false`` (the plain
pipeline), alternating request by request, and reports every request's latency. Rounds alternate
the versions, so both share the machine's load; the table gives the median over rounds of the mean,
and p50 / p99 over all requests, in wall time and in the thread's CPU time (which the other jobs on
a shared machine do not inflate). The rerank cost is ranked minus plain of the same child.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_rerank.py --data-dir STORE [--baseline-src /tmp/old/src]
    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_rerank.py --users 6000 --items 1000 --events 600000

Without ``--data-dir`` it builds and trains the synthetic shop of bench_ranking.py in a temporary folder.

``--margins 1.0,1.25,1.5`` measures instead the precomputed lists' depth for a ranked version
(``max(precomputed_k, cf_candidates x margin)`` items per user): with a share ``--unavailable`` of
the catalogue not allowed (out of stock, filtered), how many requests the list answers (at least
``cf_candidates`` of its items allowed: the same answer as the live search) and, for those the live
search answers, the share of the served top ``n`` that the ranker took from CF candidates deeper
than the list (what a list answer cut to its allowed items would have lost).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_result, load_line, machine_info, run_child  # noqa: E402


def child(data_dir: Path, requests: int, n: int, weather: str) -> None:
    """Measure in this process (the scalerec on PYTHONPATH); print one JSON line."""
    from scalerec.config import Settings
    from scalerec.serving.service import RecommendService

    ranked = RecommendService(Settings(data={"dir": data_dir}), watch=False)
    plain = RecommendService(Settings(data={"dir": data_dir}, ranking={"enabled": False}), watch=False)
    ids = ranked.live.model.user_ids
    users = ids[:: max(1, len(ids) // requests)][:requests].tolist()
    ctx = {"weather": weather}
    lat: dict[str, list[float]] = {"ranked": [], "plain": []}
    cpu: dict[str, list[float]] = {"ranked": [], "plain": []}
    for u in users[:20]:  # warm: bundle load, first-call costs
        ranked.recommend_user(u, n, context=ctx)
        plain.recommend_user(u, n, context=ctx)
    sizes: list[int] = []  # candidates each ranked request reranked
    b = ranked.ranking.bundle(ranked.live.model) if ranked.ranking is not None else None
    if b is not None:
        merge = b.tables.candidates

        def counted(*a: object, **k: object) -> dict:
            out = merge(*a, **k)
            sizes.append(len(out["i"]))
            return out

        b.tables.candidates = counted  # type: ignore[method-assign]
    for u in users:
        for name, svc in (("ranked", ranked), ("plain", plain)):
            c, t = time.thread_time(), time.perf_counter()
            svc.recommend_user(u, n, context=ctx)
            lat[name].append((time.perf_counter() - t) * 1e6)
            cpu[name].append((time.thread_time() - c) * 1e6)
    strategies = [ranked.recommend_user(u, n, context=ctx)["strategy"] for u in users[:50]]
    ranked.close()
    plain.close()
    print(json.dumps({"lat": lat, "cpu": cpu, "users": len(users), "strategies": {s: strategies.count(s) for s in set(strategies)},
                      "candidates": float(np.mean(sizes)) if sizes else None}))


def margin_child(data_dir: Path, requests: int, n: int, weather: str, margins: list[float],
                 unavailable: list[float]) -> None:
    """The list-depth study in this process (see the module docstring); print one JSON line."""
    from scalerec.config import Settings
    from scalerec.serving.pipeline import Request
    from scalerec.serving.service import _NO_FILTER, _PERSONAL_FILLS, RecommendService

    svc = RecommendService(Settings(data={"dir": data_dir}), watch=False)
    live = svc.live
    st = live.model
    K = svc.settings.ranking.cf_candidates
    pk = svc.settings.serving.precomputed_k
    depths = {m: max(pk, int(round(K * m))) for m in margins}
    deep = 10 * K  # unfiltered ranks beyond this count as beyond every depth
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(st.user_ids), size=min(requests, len(st.user_ids)), replace=False))
    out: dict[str, dict] = {}
    listed = live.items.mask(_NO_FILTER)  # the catalogue's own availability, before the made-up share
    for p in unavailable:
        avail = rng.random(st.n_items) >= p
        res = {m: {"requests": 0, "list": 0, "live_items": 0, "live_beyond": 0, "all_items": 0, "all_beyond": 0}
               for m in margins}
        for row in rows.tolist():
            uid = str(st.user_ids[row])
            _, seen, history, _ = svc._fold_in(live, uid, row)
            if history is not None:
                continue  # a user with fresh events folds in: no precomputed list
            unseen = np.ones(st.n_items, bool)
            unseen[seen] = False
            base = st.retriever._user_query(row)
            ids_u, _ = st.retriever.search(base, deep, unseen)
            rank = np.full(st.n_items, np.iinfo(np.int64).max)
            ok = ids_u >= 0
            rank[ids_u[ok]] = np.flatnonzero(ok)
            allowed = unseen & avail & listed
            cf_ids, _ = st.retriever.search(base, K, allowed)
            req = Request(live, n, _NO_FILTER, allowed.copy(), base, "model", fills=_PERSONAL_FILLS,
                          context={"weather": weather}, user_id=uid, fetch=K)
            final = svc.pipeline.run(req).ids[:n]
            from_cf = np.isin(final, cf_ids)
            for m, d in depths.items():
                r = res[m]
                hit = int(allowed[ids_u[ok][:d]].sum()) >= K
                beyond = int((from_cf & (rank[final] >= d)).sum())
                r["requests"] += 1
                r["list"] += hit
                r["all_items"] += len(final)
                r["all_beyond"] += beyond
                if not hit:
                    r["live_items"] += len(final)
                    r["live_beyond"] += beyond
        out[str(p)] = {str(m): {**r, "depth": depths[m], "list_share": r["list"] / max(1, r["requests"]),
                                "beyond_share_live": r["live_beyond"] / max(1, r["live_items"]),
                                "beyond_share_all": r["all_beyond"] / max(1, r["all_items"])}
                       for m, r in res.items()}
    svc.close()
    print(json.dumps({"margins": out, "cf_candidates": K, "precomputed_k": pk, "users": len(rows),
                      "catalogue_available_share": float(listed.mean())}))


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """The children's threads and settings (``--cf-candidates`` through the settings' environment)."""
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if args.cf_candidates is not None:
        env["SCALEREC_RANKING__CF_CANDIDATES"] = str(args.cf_candidates)
    return env


def margin_study(args: argparse.Namespace, machine: dict) -> None:
    margins = [float(x) for x in args.margins.split(",")]
    unavailable = [float(x) for x in args.unavailable.split(",")]
    argv = [str(Path(__file__).resolve()), "--margin-child", "--data-dir", str(args.data_dir), "--requests",
            str(args.requests), "--n", str(args.n), "--weather", args.weather, "--margins", args.margins,
            "--unavailable", args.unavailable]
    here = str(Path(__file__).resolve().parents[1] / "src")
    out, _ = run_child(argv, env={"PYTHONPATH": here, **child_env(args)})
    rec = json.loads(out.strip().splitlines()[-1])
    print(f"\nprecomputed list depth: {rec['users']} users, cf_candidates {rec['cf_candidates']}, n={args.n}, "
          f"context.weather={args.weather}; the catalogue's own available share {rec['catalogue_available_share']:.3f}")
    print(f"{'unavailable':>11} {'margin':>6} {'depth':>5} {'list answers':>12} {'beyond, live answers':>21} {'beyond, all':>11}")
    for p in unavailable:
        for m in margins:
            r = rec["margins"][str(p)][str(m)]
            print(f"{p:>11.2f} {m:>6.2f} {r['depth']:>5} {r['list_share']:>12.3f} "
                  f"{r['beyond_share_live']:>12.4f} ({r['live_beyond']}/{r['live_items']}) {r['beyond_share_all']:>11.4f}")
    print(f"machine: {load_line(machine)}")
    append_result("rerank_margin", {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                    **rec, "load": load_line(machine)}, machine=machine)


def build(d: Path, users: int, items: int, events: int) -> None:
    from scalerec.config import Settings
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.training.pipeline import TrainOptions, train

    settings = Settings(data={"dir": d})
    store = DataStore.open(settings)
    generate_store(store, n_users=users, n_items=items, n_events=events, seed=3, days=150, start="2024-03-15", reviews=0.15)
    result = train(settings, TrainOptions(models=["als"], trials=1), store=store)
    store.close()
    print(f"trained {result.best_family}; ranking {result.ranking['status']}: {result.ranking['reason']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, default=None, help="a store with a trained, active ranker")
    ap.add_argument("--baseline-src", type=Path, default=None, help="an older checkout's src/ measured in the same run")
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--weather", default="rain")
    ap.add_argument("--cf-candidates", type=int, default=None,
                    help="[ranking] cf_candidates of both services (the other sources add to it; default: the setting's)")
    ap.add_argument("--build-only", action="store_true",
                    help="build and train the shop into --data-dir (kept; bench_serving.py reuses it), then stop")
    ap.add_argument("--margins", default="", help="measure the precomputed list depth at these margins (e.g. 1.0,1.25,1.5)")
    ap.add_argument("--unavailable", default="0,0.05,0.2", help="with --margins: shares of the catalogue not allowed")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--margin-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.data_dir, args.requests, args.n, args.weather)
        return
    if args.margin_child:
        margin_child(args.data_dir, args.requests, args.n, args.weather,
                     [float(x) for x in args.margins.split(",")], [float(x) for x in args.unavailable.split(",")])
        return
    if args.build_only:
        if args.data_dir is None:
            sys.exit("--build-only needs --data-dir")
        build(args.data_dir, args.users, args.items, args.events)
        return
    machine = machine_info()
    if args.margins:
        if args.data_dir is None:
            sys.exit("--margins needs --data-dir (a store with a trained, active ranker)")
        margin_study(args, machine)
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = args.data_dir
        if d is None:
            d = Path(tmp) / "data"
            build(d, args.users, args.items, args.events)
        here = str(Path(__file__).resolve().parents[1] / "src")
        versions = {"new": here}
        if args.baseline_src is not None:
            versions["old"] = str(args.baseline_src.resolve())
        argv = [str(Path(__file__).resolve()), "--child", "--data-dir", str(d), "--requests", str(args.requests),
                "--n", str(args.n), "--weather", args.weather]
        runs: dict[str, list[dict]] = {v: [] for v in versions}
        for r in range(args.rounds):
            for v in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
                out, _ = run_child(argv, env={"PYTHONPATH": versions[v], **child_env(args)})
                runs[v].append(json.loads(out.strip().splitlines()[-1]))
    print(f"\npersonal lists in-process (n={args.n}, context.weather={args.weather}), {args.requests} users x "
          f"{args.rounds} rounds; us per request")
    print(f"{'code':5} {'list':7} {'wall mean (median of rounds)':>29} {'p50':>8} {'p99':>8} {'CPU mean':>9} {'CPU p99':>8}")
    record: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "results": {}}
    for v, rs in runs.items():
        res = {}
        for name in ("ranked", "plain"):
            allv = np.concatenate([np.asarray(x["lat"][name]) for x in rs])
            mean = float(np.median([np.mean(x["lat"][name]) for x in rs]))
            allc = np.concatenate([np.asarray(x["cpu"][name]) for x in rs])
            res[name] = {"mean_us": mean, "p50_us": float(np.percentile(allv, 50)), "p99_us": float(np.percentile(allv, 99)),
                         "cpu_mean_us": float(np.median([np.mean(x["cpu"][name]) for x in rs])),
                         "cpu_p99_us": float(np.percentile(allc, 99))}
            print(f"{v:5} {name:7} {mean:29.0f} {res[name]['p50_us']:8.0f} {res[name]['p99_us']:8.0f} "
                  f"{res[name]['cpu_mean_us']:9.0f} {res[name]['cpu_p99_us']:8.0f}")
        res["rerank_us"] = float(np.median([np.mean(x["lat"]["ranked"]) - np.mean(x["lat"]["plain"]) for x in rs]))
        res["rerank_cpu_us"] = float(np.median([np.mean(x["cpu"]["ranked"]) - np.mean(x["cpu"]["plain"]) for x in rs]))
        res["strategies"] = rs[0]["strategies"]
        res["candidates_mean"] = rs[0].get("candidates")
        record["results"][v] = res
    for v, res in record["results"].items():
        print(f"rerank cost ({v}): {res['rerank_us']:.0f} us wall, {res['rerank_cpu_us']:.0f} us CPU per request "
              f"(median over rounds of ranked - plain); {res['candidates_mean'] or 0:.0f} candidates reranked on average")
    if "old" in record["results"]:
        old, new = record["results"]["old"], record["results"]["new"]
        ratio = old["rerank_us"] / max(new["rerank_us"], 1e-9)
        ratio_cpu = old["rerank_cpu_us"] / max(new["rerank_cpu_us"], 1e-9)
        print(f"old / new rerank cost: {ratio:.1f}x wall, {ratio_cpu:.1f}x CPU")
        record["old_over_new"] = ratio
        record["old_over_new_cpu"] = ratio_cpu
    print(f"machine: {load_line(machine)}")
    record["load"] = load_line(machine)
    append_result("rerank", record, machine=machine)


if __name__ == "__main__":
    main()
