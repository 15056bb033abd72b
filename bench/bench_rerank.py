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
    for u in users:
        for name, svc in (("ranked", ranked), ("plain", plain)):
            c, t = time.thread_time(), time.perf_counter()
            svc.recommend_user(u, n, context=ctx)
            lat[name].append((time.perf_counter() - t) * 1e6)
            cpu[name].append((time.thread_time() - c) * 1e6)
    strategies = [ranked.recommend_user(u, n, context=ctx)["strategy"] for u in users[:50]]
    ranked.close()
    plain.close()
    print(json.dumps({"lat": lat, "cpu": cpu, "users": len(users), "strategies": {s: strategies.count(s) for s in set(strategies)}}))


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
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.data_dir, args.requests, args.n, args.weather)
        return
    machine = machine_info()
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
                out, _ = run_child(argv, env={"PYTHONPATH": versions[v], "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
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
        record["results"][v] = res
    for v, res in record["results"].items():
        print(f"rerank cost ({v}): {res['rerank_us']:.0f} us wall, {res['rerank_cpu_us']:.0f} us CPU per request "
              "(median over rounds of ranked - plain)")
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
