"""Merchandising benchmark: a placement with three rules, a promotion and a diversity cap against
the plain user endpoint, in the same run on the same server; and the rule evaluator's cost per
candidate (vectorised masks over item columns).

    .venv/bin/python bench/bench_merch.py --users 20000 --items 5000 --events 400000

Builds (or reuses) a synthetic store with an ALS version in production (bench_serving's
builder), starts `scalerec serve`, stores the placement through the API and runs wrk against
both endpoints alternately (``--rounds`` pairs, each ``--duration`` s, so both see the same
background load). In-process, it times the two service calls per request (median of many) and a
set of rules over candidate arrays of growing size. Prints tables and appends one JSON line to
bench/results/merch.jsonl. Needs `wrk`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _common import append_result, load_line, machine_info
from bench_serving import build_store, cpu_seconds, free_port, log, run_wrk, start, stop, wait_http

#: three rules (a filter, a boost, a bury), a promotion and a per-brand cap; the bury's age bound
#: is set per store (:func:`placement_for`): the older half of the catalogue, so it reorders
PLACEMENT = {
    "strategy": "personal",
    "filter": 'price > 1 and attributes.brand != "Granite"',
    "boosts": [
        {"name": "cheap", "rule": "price < 30 and category != \"groceries\"", "multiply": 1.5},
        {"name": "old", "rule": "age_days > {median_age}", "multiply": 0.5},
    ],
    "promotions": [{"name": "red", "rule": 'attributes.color == "red" and price < 60', "slots": 2, "positions": [1, 5]}],
    "diversity": {"by": "attributes.brand", "max_per": 3},
}

RULES = [
    "price < 30",
    'category in ("toys", "shoes", "kitchen")',
    'attributes.brand != "Granite"',
    'price > 1 and attributes.brand != "Granite" and category in ("toys", "shoes") or age_days < 30',
    "price < $item.price and attributes.brand == $user.brand",
]


def placement_for(service) -> tuple[dict, dict]:
    """PLACEMENT with the bury "old" over the older half of this store's items (synthetic items'
    dates are fixed: a fixed bound would bury all of them as time passes), and the share of the
    catalogue each of its rules matches."""
    import copy

    from scalerec.serving.rules import parse_rule

    cols, _ = service.merchandising.columns(service.live)
    age = cols.age_days()
    median = int(np.nanmedian(age)) if np.isfinite(age).any() else 0
    spec = copy.deepcopy(PLACEMENT)
    for b in spec["boosts"]:
        b["rule"] = b["rule"].replace("{median_age}", str(median))
    allowed = parse_rule(spec["filter"]).mask(cols, None)
    share = lambda m: round(float(np.mean(m)), 3)  # noqa: E731
    shares = {"filter": share(allowed)}
    for b in spec["boosts"]:
        m = parse_rule(b["rule"]).mask(cols, None)
        shares[b["name"]] = share(m)
        shares[b["name"] + " among allowed"] = share(m[allowed])
    for p in spec["promotions"]:
        shares["promotion " + p["name"]] = share(parse_rule(p["rule"]).mask(cols, None))
    return spec, shares


def rule_costs(service, sizes: list[int], repeats: int) -> list[dict]:
    """ns per candidate of each rule over random candidate arrays of each size (median)."""
    from scalerec.serving.rules import parse_rule

    live = service.live
    cols, _ = service.merchandising.columns(live)
    env = {"item": {"price": 40.0}, "user": {"brand": "Juniper"}}
    rng = np.random.default_rng(0)
    out = []
    for text in RULES:
        rule = parse_rule(text)
        rule.mask(cols, None, env)  # builds the attribute columns once (per catalogue version)
        row = {"rule": text}
        for size in sizes:
            ids = rng.integers(0, cols.n_items, size)
            times = []
            for _ in range(repeats):
                t = time.perf_counter_ns()
                rule.mask(cols, ids, env)
                times.append(time.perf_counter_ns() - t)
            med = statistics.median(times)
            row[str(size)] = {"us": round(med / 1e3, 1), "ns_per_candidate": round(med / size, 1)}
        out.append(row)
    return out


def in_process(service, users: list[str], n: int) -> dict:
    """Median and p99 microseconds per call: the plain user list vs the placement's, for users
    the placement has not served yet (its kept lists miss) and then the same users again (they hit)."""
    merch = service.merchandising
    out: dict = {"calls": len(users)}
    p = lambda xs, q: round(float(np.percentile(xs, q)) / 1e3, 1)  # noqa: E731
    for tag in ("", "returning_"):
        plain, placed = [], []
        for u in users:  # alternate calls: both see the same caches and load
            t = time.perf_counter_ns()
            service.recommend_user(u, n)
            plain.append(time.perf_counter_ns() - t)
            t = time.perf_counter_ns()
            merch.recommend("bench", user_id=u, n=n)
            placed.append(time.perf_counter_ns() - t)
        out |= {f"{tag}plain_p50_us": p(plain, 50), f"{tag}plain_p99_us": p(plain, 99),
                f"{tag}placement_p50_us": p(placed, 50), f"{tag}placement_p99_us": p(placed, 99),
                f"{tag}p50_ratio": round(p(placed, 50) / p(plain, 50), 3), f"{tag}lists": dict(merch.stats)}
    return out


def stage_costs(service, user: str, n: int, repeats: int = 300) -> dict:
    """Minimum microseconds (least disturbed by other load) of the whole calls and of each stage
    the placement adds, on one fixed request."""
    import scalerec.serving.merchandising as merch_mod
    from scalerec.serving.pipeline import DEFAULT, Candidates, Request, retrieve

    def best(f, times: int = repeats) -> float:  # noqa: ANN001
        out = float("inf")
        for _ in range(times):
            t = time.perf_counter_ns()
            f()
            out = min(out, time.perf_counter_ns() - t)
        return round(out / 1e3, 1)

    m = service.merchandising
    live = service.live
    comp = m._compiled_for(m.placements.get("bench"))
    cols, masks = m.columns(live)
    env = m._env(live, cols, comp, user, None, {})
    allowed = m._allowed(live, cols, masks, comp, env)
    query, _, _ = m._personal(live, user, allowed, True)
    fills = ("trending", "popular")
    run = merch_mod._Run(m, live, cols, comp, env, allowed, user, fills)
    fetch = run.fetch(n)
    req = Request(live, n, comp.flt, allowed, query, "model", fills=fills, placement="bench", fetch=fetch)
    empty = np.zeros(0, np.int64), np.zeros(0, np.float32)
    # the placement's retrieval: the top `fetch` by boosted score over the whole catalogue
    c = run.retrieve_exact(req, Candidates(*empty, [], fetch))
    run._exact = None  # time the boost stage's general path (a reranker between would take it)
    boosted = run.boost(req, c)
    capped = run.diversify(req, boosted)
    top = Candidates(capped.ids[:n], capped.scores[:n], capped.reasons[:n], fetch)
    pipeline = run.pipeline(service.pipeline, source="model")
    return {
        "plain_call_us": best(lambda: service.recommend_user(user, n)),
        "placement_call_us": best(lambda: m.recommend("bench", user_id=user, n=n)),
        "plain_pipeline_us": best(lambda: DEFAULT.run(Request(live, n, comp.flt, allowed, query, "model", fills=fills))),
        "placement_pipeline_us": best(lambda: pipeline.run(req)),
        f"retrieve_k{n}_us": best(lambda: retrieve(req, Candidates(*empty, [], n))),
        f"retrieve_k{fetch}_us": best(lambda: retrieve(req, Candidates(*empty, [], fetch))),
        f"retrieve_boosted_k{fetch}_us": best(lambda: run.retrieve_exact(req, Candidates(*empty, [], fetch))),
        "allowed_us": best(lambda: m._allowed(live, cols, masks, comp, env)),
        "boost_us": best(lambda: run.boost(req, c)),
        "columns_full_us": best(lambda: merch_mod.build_columns(live, service.store.catalog.items_table(
            columns=["item_id", "attributes", "created_at"]), cols.numbers), 5),
        "columns_patch_1_item_us": best(lambda: merch_mod.patch_columns(cols, live, merch_mod._item_rows_table(
            [service.store.catalog.get_item(str(live.model.item_ids[7]))]), []), 20),
        "diversify_us": best(lambda: run.diversify(req, boosted)),
        "arrange_us": best(lambda: run.arrange(req, top)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/scalerec-bench-merch"))
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--old-src", type=Path, default=None,
                    help="another checkout's src/ (e.g. main's): a second server runs it and its two endpoints join the rounds")
    args = ap.parse_args()

    build = build_store(args.data_dir, args.users, args.items, args.events, args.factors)
    from scalerec.config import Settings
    from scalerec.serving.auth import ApiKeyStore
    from scalerec.serving.service import RecommendService

    settings = Settings(data={"dir": args.data_dir})
    machine = machine_info()
    load_before = load_line()
    service = RecommendService(settings)
    placement, shares = placement_for(service)
    service.merchandising.placements.put("bench", placement)
    for _ in range(1200):  # the lists the HTTP servers serve from (a background process writes them)
        if service.live.model.retriever.precomputed is not None:
            break
        time.sleep(0.1)
    picked = np.random.default_rng(1).choice(service.live.model.user_ids, args.calls + 200, replace=False)
    users, warm = [str(u) for u in picked[200:]], [str(u) for u in picked[:200]]
    for u in warm:  # warm up (other users than the measured ones)
        service.recommend_user(u, args.n)
        service.merchandising.recommend("bench", user_id=u, n=args.n)
    sample = service.merchandising.recommend("bench", user_id=users[0], n=args.n)
    reasons = sorted({i["reason"] for i in sample["items"]})
    calls = in_process(service, users, args.n)
    costs = rule_costs(service, [100, 1_000, 10_000, service.live.model.n_items], 200)
    stages = stage_costs(service, users[0], args.n)

    http: list[dict] = []
    if not args.skip_http:
        key = ApiKeyStore.from_settings(settings).create("read", "bench-merch")[0]
        port = free_port()
        env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        logs = args.data_dir / "bench-logs"
        logs.mkdir(exist_ok=True)
        servers = {"": (port, start([sys.executable, "-m", "scalerec", "--data-dir", str(args.data_dir), "serve", "--port",
                                     str(port), "--workers", "1"], env, logs / "serve-merch.log"))}
        if args.old_src is not None:  # the same store served by the other code, side by side
            old_port = free_port()
            old_env = {**env, "PYTHONPATH": str(args.old_src.resolve())}
            servers["old "] = (old_port, start([sys.executable, "-m", "scalerec", "--data-dir", str(args.data_dir), "serve",
                                                "--port", str(old_port), "--workers", "1"], old_env, logs / "serve-merch-old.log"))
        try:
            for p_, proc in servers.values():
                wait_http(f"http://127.0.0.1:{p_}/v1/health/ready", proc=proc)
            width = max(6, len(str(args.users)))
            wenv = {"SR_KEY": key, "SR_USERS": str(args.users), "SR_WIDTH": str(width)}
            paths = {"plain": f"/v1/users/%s/recommendations?n={args.n}",
                     "placement": f"/v1/placements/bench/recommendations?user_id=%s&n={args.n}"}
            targets = [(tag + name, p_, path, proc) for tag, (p_, proc) in servers.items() for name, path in paths.items()]
            for _, p_, path, _ in targets:  # warm up each
                run_wrk(f"http://127.0.0.1:{p_}", connections=args.connections, duration_s=3, env={**wenv, "SR_PATH": path})
            for r in range(args.rounds):
                for name, p_, path, proc in (targets if r % 2 == 0 else list(reversed(targets))):
                    cpu0 = cpu_seconds(proc)  # the server's own CPU (from /proc): work per request, less load-bound than req/s
                    res = run_wrk(f"http://127.0.0.1:{p_}", connections=args.connections, duration_s=args.duration,
                                  env={**wenv, "SR_PATH": path})
                    res["cpu_us_per_request"] = round((cpu_seconds(proc) - cpu0) / max(res["requests"], 1) * 1e6, 1)
                    res["endpoint"], res["round"] = name, r
                    http.append(res)
                    log(f"round {r} {name}: {res['rps']} rps p50 {res['p50_ms']} p99 {res['p99_ms']} ms "
                        f"cpu {res['cpu_us_per_request']} us/req non-2xx {res['non_2xx']}")
        finally:
            for _, proc in servers.values():
                stop(proc)
    service.close()

    def agg(name: str, k: str) -> float:
        return round(statistics.mean(h[k] for h in http if h["endpoint"] == name), 2)

    summary: dict = {}
    endpoints = list(dict.fromkeys(h["endpoint"] for h in http))

    def round_ratio(tag: str, k: str = "rps") -> float:
        """Median over rounds of placement / plain ``k`` (each round's pair saw the same load)."""
        return round(statistics.median(
            next(h[k] for h in http if h["endpoint"] == tag + "placement" and h["round"] == r)
            / next(h[k] for h in http if h["endpoint"] == tag + "plain" and h["round"] == r)
            for r in range(args.rounds)), 3)

    if http:
        summary = {e: {"rps": agg(e, "rps"), "p50_ms": agg(e, "p50_ms"), "p99_ms": agg(e, "p99_ms"),
                       "cpu_us": round(statistics.median(h["cpu_us_per_request"] for h in http if h["endpoint"] == e), 1),
                       "non_2xx": sum(h["non_2xx"] for h in http if h["endpoint"] == e)} for e in endpoints}
        summary["rps_ratio"] = round(summary["placement"]["rps"] / summary["plain"]["rps"], 3)
        summary["p99_ratio"] = round(summary["placement"]["p99_ms"] / summary["plain"]["p99_ms"], 3)
        summary["rps_ratio_median_of_rounds"] = round_ratio("")
        summary["cpu_ratio_median_of_rounds"] = round_ratio("", "cpu_us_per_request")
        if "old placement" in summary:
            summary["old_rps_ratio_median_of_rounds"] = round_ratio("old ")
            summary["old_cpu_ratio_median_of_rounds"] = round_ratio("old ", "cpu_us_per_request")
    load_after = load_line(machine)
    print(f"\nstore: {build}  n={args.n}  placement reasons seen: {reasons}")
    print(f"rules: {[b['rule'] for b in placement['boosts']]}; share of the catalogue each matches: {shares}")
    print(f"load: before {load_before} | after {load_after}")
    if summary:
        print(f"\nHTTP (wrk, {args.connections} connections, {args.rounds} x {args.duration} s each, alternating)")
        print(f"{'endpoint':>14} | {'rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu us/req':>10} {'non2xx':>6}")
        for e in endpoints:
            s = summary[e]
            print(f"{e:>14} | {s['rps']:>8.0f} {s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['cpu_us']:>10.1f} {s['non_2xx']:>6}")
        print(f"placement / plain: throughput x{summary['rps_ratio']} (median of the rounds' ratios "
              f"x{summary['rps_ratio_median_of_rounds']}), p99 x{summary['p99_ratio']} (goal: at most 15% slower)")
        print(f"server CPU per request, placement / plain (median of the rounds' ratios): x{summary['cpu_ratio_median_of_rounds']}")
        if "old_rps_ratio_median_of_rounds" in summary:
            print(f"old code (--old-src): placement / plain, median of the rounds' ratios x{summary['old_rps_ratio_median_of_rounds']}"
                  f" req/s, x{summary['old_cpu_ratio_median_of_rounds']} CPU per request")
    for tag, what in (("", "first request of each user"), ("returning_", "the same users again")):
        print(f"\nin-process, {what} ({calls['calls']} calls each, alternating): plain p50 {calls[tag + 'plain_p50_us']} us "
              f"p99 {calls[tag + 'plain_p99_us']} us | placement p50 {calls[tag + 'placement_p50_us']} us p99 "
              f"{calls[tag + 'placement_p99_us']} us | p50 ratio x{calls[tag + 'p50_ratio']} | {calls[tag + 'lists']}")
    print("\nper request, minimum of 300 (us): " + ", ".join(f"{k[:-3]} {v}" for k, v in stages.items()))
    sizes = [k for k in costs[0] if k != "rule"]
    print("\nrule evaluation, median over 200 runs: us per call (ns per candidate)")
    print(f"{'rule':<60} | " + " | ".join(f"{s + ' cands':>18}" for s in sizes))
    for row in costs:
        print(f"{row['rule'][:60]:<60} | " + " | ".join(
            f"{row[s]['us']:>8} ({row[s]['ns_per_candidate']:>6})" for s in sizes))
    path = append_result("merch", {"args": vars(args) | {"data_dir": str(args.data_dir),
                                                          "old_src": str(args.old_src) if args.old_src else None}, "build": build,
                                   "load_before": load_before, "load_after": load_after, "http": http,
                                   "summary": summary, "in_process": calls, "stages": stages, "rule_costs": costs,
                                   "placement": placement, "rule_shares": shares}, machine=machine)
    print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
