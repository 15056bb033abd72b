"""Online KPIs and experiments: three measurements, each against its peer in the same run.

``kpis``        KPI query time (DuckDB over Parquet) on generated impressions and events, e.g.
                10M impressions of 10 items and 1M attributed events (80% echo a
                recommendation_id, 20% attributed by the window): the whole history read live
                vs from the KPI rollup of all days but the last (same figures, checked), and
                one day / seven days, so the cost follows the window asked.
``throughput``  `scalerec serve` under wrk: no experiment vs an experiment splitting users 50/50
                between two loaded versions, alternated in one run; impressions written per second.
``simulate``    a tuned ALS against popularity, 50/50, through the real HTTP app (TestClient),
                with simulated shoppers of known tastes: sessions until the verdict is
                significant, and the estimated lift against the simulator's true lift.

    PYTHONPATH=src python bench/bench_experiments.py kpis --impressions 10000000 --events 1000000
    PYTHONPATH=src python bench/bench_experiments.py throughput --duration 15
    PYTHONPATH=src python bench/bench_experiments.py simulate --sessions 8000

Each appends one JSON line to bench/results/experiments.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from _common import append_result, machine_info

ROOT = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- KPI query time
def gen_kpi_data(data_dir: Path, n_imp: int, n_ev: int, days: int, n_users: int, n_items: int, per_list: int) -> dict:
    from scalerec.config import Settings
    from scalerec.data.impressions import IMPRESSION_SCHEMA, ImpressionStore
    from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import _fixed_width_ids

    settings = Settings(data={"dir": data_dir})
    store = DataStore.open(settings)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    item_ids = _fixed_width_ids("i", np.arange(n_items), 7)
    store.catalog.upsert_items(pa.table({
        "item_id": item_ids, "title": pa.nulls(n_items, pa.string()), "description": pa.nulls(n_items, pa.string()),
        "categories": pa.nulls(n_items, pa.list_(pa.string())), "price": rng.lognormal(3, 1, n_items),
        "available": np.ones(n_items, bool), "attributes": pa.nulls(n_items, ITEM_SCHEMA.field("attributes").type),
        "created_at": pa.nulls(n_items, ITEM_SCHEMA.field("created_at").type)}, schema=ITEM_SCHEMA))
    start_us = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    span = days * 86_400_000_000
    imp_store = ImpressionStore(data_dir / "impressions")
    per_day = n_imp // days
    zipf = rng.zipf(1.3, size=4 * n_items) % n_items  # popular items shown more often
    imp_user = np.empty(n_imp, np.int64)
    imp_at = np.empty(n_imp, np.int64)
    imp_items = np.empty((n_imp, per_list), np.int64)
    for d in range(days):
        lo, hi = d * per_day, (d + 1) * per_day if d < days - 1 else n_imp
        n = hi - lo
        at = start_us + d * 86_400_000_000 + np.sort(rng.integers(0, 86_400_000_000, n))
        users = rng.integers(0, n_users, n)
        items = zipf[rng.integers(0, len(zipf), (n, per_list))]
        imp_user[lo:hi], imp_at[lo:hi], imp_items[lo:hi] = users, at, items
        flat = _fixed_width_ids("i", items.ravel(), 7)
        table = pa.table({
            "recommendation_id": _fixed_width_ids("r", np.arange(lo, hi), 31),
            "at": pa.array(at, pa.int64()).cast(IMPRESSION_SCHEMA.field("at").type),
            "user_id": _fixed_width_ids("u", users, 7), "session_id": pa.nulls(n, pa.string()),
            "kind": pa.array(["user"] * n), "placement": pa.array(np.array(["home", "product", "cart"])[rng.integers(0, 3, n)]),
            "model_version": pa.array(np.array(["v0001", "v0002"])[rng.integers(0, 2, n)]),
            "strategy": pa.array(["model"] * n), "experiment": pa.array(["e"] * n),
            "variant": pa.array(np.array(["control", "new"])[rng.integers(0, 2, n)]),
            "items": pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * per_list, per_list, dtype=np.int32)), flat),
            "teams": pa.nulls(n, IMPRESSION_SCHEMA.field("teams").type),
        }, schema=IMPRESSION_SCHEMA)
        imp_store.write(table)
    gen_imp_s = time.perf_counter() - t0
    # events: each on a shown item of an impression, at most 6 h later; 80% echo the id
    t0 = time.perf_counter()
    src = rng.integers(0, n_imp, n_ev)
    pos = rng.integers(0, per_list, n_ev)
    direct = rng.random(n_ev) < 0.8
    ts = imp_at[src] + rng.integers(1, 6 * 3_600_000_000, n_ev)
    kinds = np.array(["click", "add_to_cart", "purchase"])[rng.choice(3, n_ev, p=[0.7, 0.2, 0.1])]
    rid = _fixed_width_ids("r", src, 31)
    rid = pa.array(np.where(direct, np.asarray(rid.to_numpy(zero_copy_only=False), dtype=object), None), pa.string())
    events = pa.table({
        "user_id": _fixed_width_ids("u", imp_user[src], 7), "item_id": _fixed_width_ids("i", imp_items[src, pos], 7),
        "event_type": pa.array(kinds), "timestamp": pa.array(ts, pa.int64()).cast(EVENT_SCHEMA.field("timestamp").type),
        "value": pa.array(np.ones(n_ev, np.float32)), "session_id": pa.nulls(n_ev, pa.string()),
        "recommendation_id": rid, "context": pa.nulls(n_ev, EVENT_SCHEMA.field("context").type)}, schema=EVENT_SCHEMA)
    order = np.argsort(ts, kind="stable")
    store.log.append(events.take(pa.array(order)))
    gen_ev_s = time.perf_counter() - t0
    store.close()
    size = sum(f.stat().st_size for f in (data_dir / "impressions").rglob("*.parquet"))
    ev_size = sum(f.stat().st_size for f in (data_dir / "events").rglob("*.parquet"))
    return {"gen_impressions_s": round(gen_imp_s, 1), "gen_events_s": round(gen_ev_s, 1),
            "impression_mib": round(size / 2**20, 1), "event_mib": round(ev_size / 2**20, 1),
            "start": dt.datetime.fromtimestamp(start_us / 1e6, dt.timezone.utc).isoformat(),
            "direct_share": float(direct.mean())}


def bench_kpis(args: argparse.Namespace) -> dict:
    from scalerec.config import Settings
    from scalerec.data.impressions import ImpressionStore
    from scalerec.data.store import DataStore
    from scalerec.online.kpis import KpiWindow, kpis, position_curve

    data_dir = Path(args.dir) / "kpis"
    meta_path = data_dir / "bench_meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("args") == [args.impressions, args.events, args.days]:
        meta = json.loads(meta_path.read_text())
        log(f"reusing {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
        log(f"generating {args.impressions:,} impressions and {args.events:,} events ...")
        meta = gen_kpi_data(data_dir, args.impressions, args.events, args.days, args.users, args.items, 10)
        meta["args"] = [args.impressions, args.events, args.days]
        meta_path.write_text(json.dumps(meta))
        log(json.dumps(meta))
    settings = Settings(data={"dir": data_dir}, online={"attribution_window_hours": 24})
    start = dt.datetime.fromisoformat(meta["start"])
    # the rollup of every day but the last (what `scalerec compact` keeps for the closed days)
    from scalerec.online import rollups

    last_day = (start + dt.timedelta(days=args.days - 1)).date()
    store = DataStore.open(settings)
    t0 = time.perf_counter()
    merged = ImpressionStore(data_dir / "impressions").compact(last_day)
    built = rollups.build(store, settings, last_day)
    rollup_s = time.perf_counter() - t0
    store.close()
    log(json.dumps({"rollup_build_s": round(rollup_s, 2), **built, "merged": merged}))
    store = DataStore.open(settings, read_only=True)
    windows = {"all": (None, None), "last day": (start + dt.timedelta(days=args.days - 1), None),
               "last 7 days": (start + dt.timedelta(days=args.days - 7), None)}
    rows = []
    for name, (since, until) in windows.items():
        w = KpiWindow.from_settings(settings, since=since, until=until)
        for by in (["version"], ["variant", "placement"], ["day"]):
            # the whole history: from the rollup and read live, alternated in the same run
            modes = ("live", "rollup") if name == "all" else ("live",)
            times: dict[str, list[float]] = {m: [] for m in modes}
            outs: dict[str, list] = {}
            for _ in range(args.repeat):
                for m in modes:
                    t0 = time.perf_counter()
                    outs[m] = kpis(store, w, by=by, rollup=m == "rollup")
                    times[m].append(time.perf_counter() - t0)
            key = lambda r: tuple(str(r.get(c)) for c in ("model_version", "variant", "placement", "day"))  # noqa: E731
            if "rollup" in outs:  # the same figures either way
                a, b = ({key(r): r for r in outs[m]} for m in ("live", "rollup"))
                assert a.keys() == b.keys() and all(
                    (a[k]["impressions"], a[k]["clicks"], a[k]["carts"], a[k]["purchases"])
                    == (b[k]["impressions"], b[k]["clicks"], b[k]["carts"], b[k]["purchases"])
                    and abs(a[k]["revenue"] - b[k]["revenue"]) <= 1e-9 * max(1.0, abs(a[k]["revenue"])) for k in a)
            for m in modes:
                out = outs[m]
                n_imp = sum(r["impressions"] for r in out)
                n_att = sum(r["clicks"] + r["carts"] + r["purchases"] for r in out)
                rows.append({"window": name, "by": "+".join(by), "source": m, "impressions": n_imp, "attributed": n_att,
                             "best_s": round(min(times[m]), 3), "median_s": round(float(np.median(times[m])), 3)})
                log(json.dumps(rows[-1]))
        if name == "all":
            t0 = time.perf_counter()
            position_curve(store, w)
            rows.append({"window": name, "by": "position curve", "source": "live", "impressions": n_imp,
                         "attributed": n_att, "best_s": round(time.perf_counter() - t0, 3), "median_s": None})
    store.close()
    print(f"\nKPI queries ({args.impressions:,} impressions, {args.events:,} events, {args.days} days; load {os.getloadavg()[0]:.2f}); "
          f"rollup of the first {args.days - 1} days built in {rollup_s:.1f} s")
    print(f"{'window':<12} {'by':<18} {'source':<7} {'impressions':>12} {'attributed':>11} {'best s':>8} {'median s':>9}")
    for r in rows:
        print(f"{r['window']:<12} {r['by']:<18} {r['source']:<7} {r['impressions']:>12,} {r['attributed']:>11,} "
              f"{r['best_s']:>8} {str(r['median_s']):>9}")
    pick = lambda win, src: min(r["median_s"] for r in rows if r["window"] == win and r["by"] == "version" and r["source"] == src)  # noqa: E731
    full, rolled, day = pick("all", "live"), pick("all", "rollup"), pick("last day", "live")
    print(f"whole history by version, median: live {full} s, from the rollup {rolled} s ({full / rolled:.1f}x faster); "
          f"live whole history / last day: {full / day:.1f}x")
    return {"bench": "kpis", "data": meta, "rows": rows, "rollup_build_s": round(rollup_s, 2),
            "all_over_day": round(full / day, 2), "live_over_rollup": round(full / rolled, 2)}


# ---------------------------------------------------------------------- serving throughput
def bench_throughput(args: argparse.Namespace) -> dict:
    import bench_serving as bs

    data_dir = Path(args.dir) / "serving"
    bs.build_store(data_dir, args.users, args.items, args.events_store, 64)
    from scalerec.config import Settings
    from scalerec.data.matrix import matrix_from_settings
    from scalerec.data.impressions import ImpressionStore
    from scalerec.data.store import DataStore
    from scalerec.models import make_model
    from scalerec.registry import Registry

    settings = Settings(data={"dir": data_dir})
    reg = Registry(settings)
    prod = reg.production().version
    others = [v.version for v in reg.list() if v.version != prod]
    if others:
        second = others[0]
    else:  # a second version to split users with: the same matrix, another model
        store = DataStore.open(settings)
        X = matrix_from_settings(store, settings)
        model = make_model("als", factors=64, iterations=4, random_state=1).fit(X)
        popular = np.bincount(X.matrix.indices, minlength=X.n_items).astype(np.float32)
        lv = reg.load(prod)
        second = reg.register(model=model, matrix=X, popular=popular, trending=popular, manifest={
            "model": {"family": "als", "params": model.get_params()}, "data": dict(lv.manifest.get("data") or {})}).version
        store.close()
    key_out = subprocess.run([sys.executable, "-m", "scalerec", "--data-dir", str(data_dir), "keys", "create", "--role",
                              "admin", "--name", "bench", "--json"], capture_output=True, text=True, check=True).stdout
    key = json.loads(key_out)["key"]
    port = bs.free_port()
    env = {"SR_KEY": key, "SR_USERS": str(args.users), "SR_WIDTH": str(max(6, len(str(args.users)))),
           "SCALEREC_ONLINE__IMPRESSIONS_FLUSH_S": "1"}
    proc = bs.start([sys.executable, "-m", "scalerec", "--data-dir", str(data_dir), "serve", "--port", str(port),
                     "--workers", str(args.workers)], env, Path(args.dir) / "serve.log")
    imp = ImpressionStore(data_dir / "impressions")
    rows = []
    try:
        bs.wait_http(f"http://127.0.0.1:{port}/v1/health/ready", proc=proc)
        cli = [sys.executable, "-m", "scalerec", "--data-dir", str(data_dir), "experiments"]
        bs.run_wrk(f"http://127.0.0.1:{port}", connections=args.connections, duration_s=3, env=env)  # warm-up
        for rnd in range(args.rounds):
            for mode in ("plain", "experiment"):
                name = f"bench-{int(time.time())}-{rnd}"
                if mode == "experiment":
                    subprocess.run([*cli, "create", name, "--variant", "control=production:50", "--variant",
                                    f"new={second}:50"], check=True, capture_output=True)
                    time.sleep(5)  # the workers' watcher polls every 2 s, then loads the second version
                before = sum(1 for _ in imp.files())
                rows_before = imp.read().num_rows if before else 0
                r = bs.run_wrk(f"http://127.0.0.1:{port}", connections=args.connections, duration_s=args.duration, env=env)
                time.sleep(2.5)  # the last impression batches
                written = imp.read().num_rows - rows_before
                r.update({"mode": mode, "round": rnd, "impressions_written": written,
                          "impressions_per_s": round(written / args.duration, 1)})
                rows.append(r)
                log(json.dumps({k: r[k] for k in ("mode", "rps", "p50_ms", "p99_ms", "non_2xx", "impressions_per_s")}))
                if mode == "experiment":
                    subprocess.run([*cli, "stop", name], check=True, capture_output=True)
                    time.sleep(3)
    finally:
        bs.stop(proc)
    plain = np.mean([r["rps"] for r in rows if r["mode"] == "plain"])
    exp = np.mean([r["rps"] for r in rows if r["mode"] == "experiment"])
    print(f"\nserving throughput, {args.workers} worker(s), wrk -c{args.connections} {args.duration}s x {args.rounds} rounds "
          f"(load {os.getloadavg()[0]:.2f})")
    print(f"{'mode':<11} {'round':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>8} {'impr/s':>8}")
    for r in rows:
        print(f"{r['mode']:<11} {r['round']:>5} {r['rps']:>8} {r['p50_ms']:>7} {r['p99_ms']:>7} {r['non_2xx']:>8} {r['impressions_per_s']:>8}")
    print(f"experiment / plain: {exp / plain:.3f} ({100 * (exp / plain - 1):+.1f}%)")
    return {"bench": "throughput", "rows": rows, "ratio": round(float(exp / plain), 3), "workers": args.workers,
            "second_version": second}


# ---------------------------------------------------------------------- simulated experiment
def _ok(call, failures: list[str], tries: int = 5) -> dict:
    """The JSON of a 2xx answer; an error (a busy catalogue under a loaded machine) is noted and retried."""
    for _ in range(tries):
        r = call()
        if r.status_code < 300:
            return r.json()
        failures.append(f"{r.status_code} {r.text[:120]}")
        time.sleep(0.2)
    raise RuntimeError(f"{tries} failures: {failures[-1]}")


def bench_simulate(args: argparse.Namespace) -> dict:
    from fastapi.testclient import TestClient

    from scalerec.config import Settings
    from scalerec.data.store import DataStore
    from scalerec.datasets.shopper import Shoppers, SimulationResult, simulate
    from scalerec.datasets.synth import generate_store
    from scalerec.online import experiments as ex
    from scalerec.online.report import experiment_report
    from scalerec.serving.http.app import create_app
    from scalerec.serving.service import RecommendService
    from scalerec.training.pipeline import TrainOptions, train

    shop = {"n_users": args.users, "n_items": args.items, "seed": 3, "days": 60}
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=60)).date()
    data_dir = Path(tempfile.mkdtemp(prefix="sim-", dir=args.dir)) / "data"
    settings = Settings(data={"dir": data_dir})
    store = DataStore.open(settings)
    generate_store(store, n_events=args.events_store, start=start, **shop)
    store.close()
    t0 = time.perf_counter()
    popular = train(settings, TrainOptions(models=["popular"], trials=1)).version.version
    tuned = train(settings, TrainOptions(models=["als"], trials=args.trials, promote=False)).version.version
    train_s = time.perf_counter() - t0
    service = RecommendService(settings)
    client = TestClient(create_app(service, insecure_dev=True, watch=False))
    client.__enter__()  # one portal thread for the whole run (not one per request)
    r = client.post("/v1/experiments", json={"name": "tuned-vs-popular", "variants": [
        {"name": "control", "version": "production", "weight": 50}, {"name": "new", "version": tuned, "weight": 50}]})
    assert r.status_code == 201, r.text
    shoppers = Shoppers(shop["n_users"], shop["n_items"], seed=shop["seed"], days=shop["days"], start=start)
    res = SimulationResult()
    checkpoints = []
    first_significant = None
    failures: list[str] = []
    done = 0
    t0 = time.perf_counter()
    step = args.step
    while done < args.sessions:
        step = min(step, args.sessions - done)
        simulate(shoppers, lambda u: _ok(lambda: client.get(f"/v1/users/{u}/recommendations?n=10"), failures),
                 lambda evs: _ok(lambda: client.post("/v1/events", json=evs), failures), sessions=step, seed=done + 1,
                 result=res)
        done += step
        service.impressions.flush()
        rep = experiment_report(settings, service.store, ex.get(service.store.catalog, "tuned-vs-popular"))
        lift = rep["kpis"]["conversion"]["variants"]["new"]["lift"]
        cl = rep["kpis"]["conversion"]["variants"]["new"]["cuped_lift"]
        row = {"sessions": done, "decided": rep["decided"], "winner": rep["winner"], "lift": lift["lift"],
               "low": lift["low"], "high": lift["high"], "cuped_lift": cl["lift"], "cuped_low": cl["low"],
               "cuped_high": cl["high"], "true_lift": res.true_lift("new", "control"), "srm_p": rep["srm"]["p_value"]}
        checkpoints.append(row)
        log(json.dumps(row))
        if rep["decided"] and first_significant is None:
            first_significant = done
        step = done  # checkpoints double: 50, 100, 200, ...
    sim_s = time.perf_counter() - t0
    client.__exit__(None, None, None)
    service.close()
    print(f"\nsimulated experiment: tuned ALS ({args.trials} trials) vs popularity, 50/50, "
          f"{shop['n_users']} shoppers x {shop['n_items']} items (load {os.getloadavg()[0]:.2f})")
    print(f"{'sessions':>8} {'verdict':>8} {'lift':>8} {'95% interval':>20} {'CUPED':>8} {'true lift':>9} {'SRM p':>6}")
    pct = lambda x: "-" if x is None else format(x, "+.1%")  # noqa: E731
    for c in checkpoints:
        print(f"{c['sessions']:>8} {str(c['winner'] or '-'):>8} {pct(c['lift']):>8} "
              f"{'[' + pct(c['low']) + ', ' + pct(c['high']) + ']':>20} {pct(c['cuped_lift']):>8} "
              f"{pct(c['true_lift']):>9} {c['srm_p']:>6.2f}")
    print(f"first significant verdict after {first_significant} sessions; {done} sessions in {sim_s:.0f} s "
          f"({done / sim_s:.0f}/s through the HTTP app)")
    shutil.rmtree(data_dir.parent, ignore_errors=True)
    print(f"requests retried after an error: {len(failures)} {sorted(set(failures))[:5]}")
    return {"bench": "simulate", "failures": len(failures), "checkpoints": checkpoints, "first_significant": first_significant,
            "train_s": round(train_s, 1), "sim_s": round(sim_s, 1), "shop": shop, "trials": args.trials}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kpis")
    k.add_argument("--impressions", type=int, default=10_000_000)
    k.add_argument("--events", type=int, default=1_000_000)
    k.add_argument("--days", type=int, default=30)
    k.add_argument("--users", type=int, default=500_000)
    k.add_argument("--items", type=int, default=50_000)
    k.add_argument("--repeat", type=int, default=3)
    t = sub.add_parser("throughput")
    t.add_argument("--users", type=int, default=20_000)
    t.add_argument("--items", type=int, default=5_000)
    t.add_argument("--events-store", type=int, default=400_000)
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--connections", type=int, default=8)
    t.add_argument("--duration", type=int, default=15)
    t.add_argument("--rounds", type=int, default=2)
    s = sub.add_parser("simulate")
    s.add_argument("--users", type=int, default=2_000)
    s.add_argument("--items", type=int, default=300)
    s.add_argument("--events-store", type=int, default=150_000)
    s.add_argument("--trials", type=int, default=4)
    s.add_argument("--sessions", type=int, default=4_000)
    s.add_argument("--step", type=int, default=50, help="the first checkpoint; they double from there")
    for sp in (k, t, s):
        sp.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "scalerec-bench-experiments"))
    args = p.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    out = {"kpis": bench_kpis, "throughput": bench_throughput, "simulate": bench_simulate}[args.what](args)
    append_result("experiments", out, machine=machine)


if __name__ == "__main__":
    main()
