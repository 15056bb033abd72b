"""Monitoring benchmark, three parts in one run on synthetic shops:

1. serving throughput (wrk over loopback, two `scalerec serve` processes started once) with
   monitoring off (``[monitoring] enabled = false``) and on — sampling every second (60x the
   default) while a scraper reads /metrics every second — in pairs of bursts whose order
   alternates, the median of the pairs' on/off ratios;
2. the dashboard with 30 days of figures (one sample a minute): server time of its data, and in
   Debian's Chromium (Playwright) the first paint (navigation until every panel has its data)
   and a refresh of the 30-day range;
3. capacity: measure a small store, project to ``--factor`` x users and events, build that store,
   and compare disk, model memory, training time and CPU per request.

    .venv/bin/python bench/bench_monitoring.py --events 200000 --factor 5

Prints tables and appends one JSON line to bench/results/monitoring.jsonl. Needs `wrk` and
/usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_result, machine_info  # noqa: E402
from bench_serving import cpu_seconds, free_port, run_wrk, start, stop, wait_http  # noqa: E402

from scalerec.config import Settings  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(d: Path, users: int, items: int, events: int, train: bool = True) -> tuple[Settings, float]:
    """Generate the store here, train it as a shop does: `scalerec train` in its own process (so its
    peak memory is a real training process's, not this one's after generating the data). A store
    generated earlier with the same sizes (``generated.json``) is trained without generating it again."""
    import json
    import subprocess

    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store

    settings = Settings(data={"dir": d})
    if not (d / "models").is_dir() or not any((d / "models").iterdir()):
        sizes = {"users": users, "items": items, "events": events}
        marker = d / "generated.json"
        if not marker.exists() or json.loads(marker.read_text()) != sizes:
            shutil.rmtree(d, ignore_errors=True)
            with DataStore.open(settings) as store:
                generate_store(store, n_users=users, n_items=items, n_events=events, seed=7, days=90)
            marker.write_text(json.dumps(sizes))
        if not train:
            return settings, float("nan")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scalerec", "--data-dir", str(d), "train", "--models", "als", "--trials", "1",
                        "--json"], check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return settings, time.perf_counter() - t
    return settings, float("nan")


def throughput(settings: Settings, users: int, seconds: int, rounds: int) -> dict:
    """Two servers on copies of one store, started once: monitoring off and on (sampling every
    second, /metrics scraped every second while its burst runs). ``rounds`` pairs of wrk bursts,
    the order alternating (off-on, on-off, ...) so a load change between the two halves of a pair
    falls on both sides equally; the figure is the median of the pairs' on/off ratios. The on
    server's monitor keeps ticking during the off bursts (about 1% of a core at 1 s), which
    understates the overhead by at most that."""
    from scalerec.serving.auth import ApiKeyStore

    from scalerec.data.store import DataStore

    key = ApiKeyStore.from_settings(settings).create("admin", "bench")[0]
    py = sys.executable
    root = Path(settings.data.dir)
    logs = root / "bench-logs"
    logs.mkdir(exist_ok=True)
    with DataStore.open(settings, read_only=True) as store:  # the ids' width as generated (u000001): known users
        width = len(store.catalog.users_table().column("user_id")[0].as_py()) - 1
    env_wrk = {"SR_KEY": key, "SR_USERS": str(users), "SR_WIDTH": str(width), "SR_PREFIX": "u"}
    dirs = {}
    for mode in ("off", "on"):
        dirs[mode] = root.parent / f"{root.name}-{mode}"
        shutil.rmtree(dirs[mode], ignore_errors=True)
        shutil.copytree(root, dirs[mode], ignore=shutil.ignore_patterns("bench-logs", "monitoring", "logs", "impressions"))
    procs, bases = {}, {}
    started = time.time()
    try:
        for mode in ("off", "on"):
            port = free_port()
            env = {"SCALEREC_MONITORING__ENABLED": "true" if mode == "on" else "false",
                   "SCALEREC_MONITORING__SAMPLE_INTERVAL_SECONDS": "1", "OMP_NUM_THREADS": "1"}
            procs[mode] = start([py, "-m", "scalerec", "--data-dir", str(dirs[mode]), "serve", "--port", str(port)],
                                env, logs / f"serve-{mode}.log")
            bases[mode] = f"http://127.0.0.1:{port}"
        for mode in ("off", "on"):
            wait_http(bases[mode] + "/v1/health/ready", proc=procs[mode])
            run_wrk(bases[mode], connections=8, duration_s=2, env=env_wrk)  # warm-up
        figures = dirs["on"] / "monitoring" / "figures.json"  # steady state: the monitor's first round done
        deadline = time.time() + 180
        while time.time() < deadline and (not figures.is_file() or figures.stat().st_mtime < started):
            time.sleep(0.2)
        out: dict[str, list[float]] = {"off": [], "on": []}
        p99: dict[str, list[float]] = {"off": [], "on": []}
        cpu_us: dict[str, list[float]] = {"off": [], "on": []}  # server CPU per answered request (load-proof)
        for r in range(rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                stop_scrape = threading.Event()
                if mode == "on":
                    def scrape(base: str = bases["on"]) -> None:
                        import httpx

                        with httpx.Client(timeout=10) as c:
                            while not stop_scrape.wait(1.0):
                                c.get(base + "/v1/metrics")
                    threading.Thread(target=scrape, daemon=True).start()
                try:
                    c0 = cpu_seconds(procs[mode])
                    res = run_wrk(bases[mode], connections=8, duration_s=seconds, env=env_wrk)
                    c1 = cpu_seconds(procs[mode])
                finally:
                    stop_scrape.set()
                out[mode].append(res["rps"])
                p99[mode].append(res["p99_ms"])
                cpu_us[mode].append((c1 - c0) / max(1, res["requests"]) * 1e6)
                log(f"pair {r + 1} monitoring {mode}: {res['rps']:,.0f} req/s, p99 {res['p99_ms']} ms, "
                    f"{cpu_us[mode][-1]:,.0f} CPU-us/request, non-2xx {res['non_2xx']}")
    finally:
        for proc in procs.values():
            stop(proc)
    from scalerec.evaluation.stats import bootstrap_ci

    ratios = [a / b for a, b in zip(out["on"], out["off"])]
    cpu_ratios = [a / b for a, b in zip(cpu_us["on"], cpu_us["off"])]
    # the primary figure: server CPU per request (from /proc, so the machine's other load does not
    # count), the geometric mean of the pairs' on/off ratios with its 95% bootstrap interval over pairs
    gm, lo, hi = (float(np.exp(v)) for v in bootstrap_ci(np.log(cpu_ratios), confidence=0.95, n_boot=10_000, seed=0))
    off, on = float(np.median(out["off"])), float(np.median(out["on"]))
    q1, q3 = (float(x) for x in np.percentile(ratios, [25, 75]))
    return {"rps_off": out["off"], "rps_on": out["on"], "p99_off_ms": p99["off"], "p99_on_ms": p99["on"],
            "median_off": off, "median_on": on, "pair_ratios": ratios, "ratio_on_off": float(np.median(ratios)),
            "ratio_iqr": [q1, q3], "cpu_us_off": cpu_us["off"], "cpu_us_on": cpu_us["on"], "cpu_pair_ratios": cpu_ratios,
            "cpu_ratio_on_off": float(np.median(cpu_ratios)),
            "cpu_ratio_iqr": [float(x) for x in np.percentile(cpu_ratios, [25, 75])],
            "cpu_ratio_geomean": gm, "cpu_ratio_ci95": [lo, hi], "pairs": len(cpu_ratios),
            "goal_met": bool(hi <= 1.05), "goal_excluded": bool(lo > 1.05)}


def fake_history(settings: Settings, days: int = 30) -> int:
    """One sample a minute for ``days`` days, shaped like the server's (counters rise, levels drift)."""
    from scalerec.monitoring.figures import Sample
    from scalerec.monitoring.history import History

    h = History(settings)
    rng = np.random.default_rng(0)
    now = time.time()
    n = days * 24 * 60
    bounds = ["0.0005", "0.001", "0.0025", "0.005", "0.0075", "0.01", "0.015", "0.02", "0.03", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "+Inf"]
    req = 0.0
    buckets = dict.fromkeys(bounds, 0.0)
    shares = np.array([0.0, 0.01, 0.1, 0.3, 0.25, 0.15, 0.1, 0.05, 0.02, 0.01, 0.01, 0, 0, 0, 0, 0])
    for i in range(n):
        at = now - (n - i) * 60
        k = rng.poisson(600 * (1 + 0.5 * np.sin(i / 1440 * 2 * np.pi)))
        req += k
        counts = np.cumsum(shares / shares.sum() * k)
        for b, c in zip(bounds, counts):
            buckets[b] += float(c)
        buckets["+Inf"] += 0.0
        h.append(Sample(at, {"requests": req, "errors_5xx": req * 0.001, "events_ingested": req * 0.2, "events_rejected": 0.0,
                             "lists": {"model": req * 0.7, "fallback": req * 0.2, "fold_in": req * 0.1}, "buckets": dict(buckets)},
                        {"events": 1e6 + i * 10, "process_rss_bytes": 4e8}))
    return n


def dashboard(settings: Settings) -> dict:
    from scalerec.monitoring.dashboard import dashboard_data
    from scalerec.serving.auth import ApiKeyStore
    from scalerec.serving.service import RecommendService

    n = fake_history(settings)
    svc = RecommendService(settings)
    try:
        dashboard_data(svc, range_="30d")  # caches (capacity basis, store stats) as a running server has them
        t = time.perf_counter()
        for _ in range(3):
            dashboard_data(svc, range_="30d")
        server_s = (time.perf_counter() - t) / 3
    finally:
        svc.close()
    key = ApiKeyStore.from_settings(settings).create("admin", "bench-dash")[0]
    port = free_port()
    logs = Path(settings.data.dir) / "bench-logs"
    proc = start([sys.executable, "-m", "scalerec", "--data-dir", str(settings.data.dir), "serve", "--port", str(port)],
                 {"OMP_NUM_THREADS": "1"}, logs / "serve-dash.log")
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/v1/health/ready", proc=proc)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"])
            ctx = b.new_context(extra_http_headers={"X-API-Key": key})
            page = ctx.new_page()
            page.goto(base + "/dashboard/api/data")  # the server's caches warm, as after its first refresh
            firsts, refreshes = [], []
            for _ in range(3):
                t = time.perf_counter()
                page.goto(base + "/dashboard")
                for panel in ("overview", "models", "data", "alerts", "capacity"):
                    page.wait_for_selector(f"#{panel}[data-ready='1']", timeout=120_000)
                firsts.append(time.perf_counter() - t)
                page.evaluate("window.lastRefreshMs = null")
                page.select_option("#range", "30d")
                page.wait_for_function("window.lastRefreshMs !== null", timeout=120_000)
                refreshes.append(page.evaluate("window.lastRefreshMs") / 1000)
            b.close()
    finally:
        stop(proc)
    return {"samples": n, "server_data_s": server_s, "first_paint_s": float(np.median(firsts)), "refresh_30d_s": float(np.median(refreshes))}


def capacity(small: Settings, root: Path, users: int, items: int, events: int, factor: float) -> dict:
    """Project from the small store with `scalerec capacity --calibrate` (its training time from the
    power law fitted on refits over 1/4, 1/2 and all of its users, in CPU seconds), build the big
    one, and measure it the same way (one refit of all its users, CPU seconds; request costs the
    median of interleaved rounds; training memory as its own `scalerec train` process recorded)."""
    import json
    import subprocess

    from scalerec.monitoring.capacity import project, training_calibration, training_peak_rss
    from scalerec.registry import Registry

    def cli_capacity(s: Settings, *flags: str) -> dict:
        # `scalerec capacity` in its own process, as a shop runs it: its baseline memory is a bare process's
        out = subprocess.run([sys.executable, "-m", "scalerec", "--data-dir", str(s.data.dir), "capacity", "--json", *flags],
                             check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return json.loads(out.stdout)

    # a growing shop's training history: the same generator at a fifth of the size, trained the same
    # way, its run appended to this store's runs (once): the training-memory lines are fitted on both
    from scalerec.monitoring.paths import training_runs

    earlier, _ = build(root / "earlier", users // 5, items, events // 5)
    runs = training_runs(small)
    mine = runs.read_text(encoding="utf-8")
    theirs = [ln for ln in training_runs(earlier).read_text(encoding="utf-8").splitlines(keepends=True)
              if '"status": "registered"' in ln]
    if theirs and theirs[-1] not in mine:
        runs.write_text(theirs[-1] + mine, encoding="utf-8")
    f = f"{factor:g}x"
    first = cli_capacity(small, "--calibrate", "--users", f, "--events", f, "--peak-rps", "100")
    m1, proj = first["measured"], first["projection"]
    cal = m1["training_calibration"]
    log(f"calibration: {[(p['cells'], round(p['cpu_seconds'], 2)) for p in cal['points']]}, exponent {cal['exponent']:.3f}")
    linear = project({**m1, "training_calibration": None}, users=factor, events=factor, peak_rps=100)
    log(f"building the {factor:g}x store ({int(events * factor):,} events)")
    big, _ = build(root / f"big{factor:g}", int(users * factor), items, int(events * factor))
    m2 = cli_capacity(big)["measured"]
    reg = Registry(big)
    prod = reg.production()
    man = prod.typed_manifest()
    full = training_calibration(reg.load(prod.version), man.family, dict(man.params), fractions=(1.0,))
    tr = proj["training"][m1["model"]["family"]]
    stage = tr.get("ranking_stage") or {}
    rows = {
        "disk (log + model) bytes": (proj["disk_bytes"], m2["data"]["log_bytes"] + m2["model"]["total_bytes"]),
        "model memory bytes (ranking bundle included)": (proj["model_bytes"], m2["model"]["total_bytes"]),
        "ranking bundle bytes": (proj["ranking"]["bytes"], m2["ranking"]["total_bytes"]),
        "training refit CPU s (fitted power law)": (proj["training_seconds"], full["cpu_seconds"]),
        "training refit wall s (old rule: linear from one refit; both under the machine's load)": (
            linear["training_seconds"], m2["model"]["fit_seconds"]),
        "training peak RSS bytes (the run: refit or ranking stage)": (tr["peak_rss_bytes"], training_peak_rss(m2["model"], m2["ranking"])),
        "  refit peak RSS bytes": (tr["refit_peak_rss_bytes"], m2["model"]["peak_rss_bytes"]),
        "  ranking stage peak RSS bytes": (stage.get("peak_rss_bytes"), (m2["ranking"].get("training") or {}).get("peak_rss_bytes")),
        "CPU per request (model, rerank included) us": (m1["requests_cpu_us"]["model"], m2["requests_cpu_us"]["model"]),
        "rerank CPU per request us": (m1["ranking"].get("rerank_cpu_us"), m2["ranking"].get("rerank_cpu_us")),
    }
    return {"factor": factor, "rows": {k: {"projected": a, "measured": b, "ratio": a / b if a is not None and b else None}
                                       for k, (a, b) in rows.items()},
            "calibration": cal, "ranking": [m1["ranking"]["status"], m2["ranking"]["status"]], "notes": proj["notes"],
            "ranking_training": [m1["ranking"].get("training"), m2["ranking"].get("training")], "baseline_rss_bytes": m1["baseline_rss_bytes"],
            "small": {"events": m1["data"]["events"], "users": m1["data"]["users"]},
            "big": {"events": m2["data"]["events"], "users": m2["data"]["users"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("bench/work/monitoring"))
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=2_000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--factor", type=float, default=5.0)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=8, help="pairs of off/on bursts")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: throughput,dashboard,capacity")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    load_before = os.getloadavg()
    log(f"store: {args.users:,} users, {args.items:,} items, {args.events:,} events")
    small, _ = build(args.data_dir / "small", args.users, args.items, args.events)
    rec: dict = {"users": args.users, "items": args.items, "events": args.events}
    if "throughput" not in skip:
        rec["throughput"] = throughput(small, args.users, args.seconds, args.rounds)
    if "dashboard" not in skip:
        rec["dashboard"] = dashboard(small)
    if "capacity" not in skip:
        rec["capacity"] = capacity(small, args.data_dir, args.users, args.items, args.events, args.factor)
    rec["load_before"] = load_before
    rec["load_after"] = os.getloadavg()
    append_result("monitoring", rec, machine=machine_info())
    print()
    if "throughput" in rec:
        t = rec["throughput"]
        print("| monitoring | req/s (each pair) | median | p99 ms |")
        print("|---|---|---|---|")
        print(f"| off | {', '.join(f'{x:,.0f}' for x in t['rps_off'])} | {t['median_off']:,.0f} | {', '.join(map(str, t['p99_off_ms']))} |")
        print(f"| on (sample every 1 s, /metrics scraped every 1 s) | {', '.join(f'{x:,.0f}' for x in t['rps_on'])} | {t['median_on']:,.0f} | {', '.join(map(str, t['p99_on_ms']))} |")
        print(f"on/off per pair: {', '.join(f'{x:.3f}' for x in t['pair_ratios'])}")
        print(f"on/off throughput, median of the pairs: {t['ratio_on_off']:.3f} (interquartile {t['ratio_iqr'][0]:.3f}-{t['ratio_iqr'][1]:.3f})")
        print(f"server CPU-us per request off: {', '.join(f'{x:,.0f}' for x in t['cpu_us_off'])}")
        print(f"server CPU-us per request on:  {', '.join(f'{x:,.0f}' for x in t['cpu_us_on'])}")
        print(f"on/off server CPU per request, median of the pairs: {t['cpu_ratio_on_off']:.3f} "
              f"(interquartile {t['cpu_ratio_iqr'][0]:.3f}-{t['cpu_ratio_iqr'][1]:.3f})")
        verdict = "met" if t["goal_met"] else ("not met" if t["goal_excluded"] else "undecided (the interval straddles 1.05)")
        print(f"PRIMARY: on/off server CPU per request, geometric mean of {t['pairs']} pairs: {t['cpu_ratio_geomean']:.3f} "
              f"(95% bootstrap interval {t['cpu_ratio_ci95'][0]:.3f}-{t['cpu_ratio_ci95'][1]:.3f}); goal <= 1.05 "
              f"(<= 5% fewer requests per CPU-second): {verdict}\n")
    if "dashboard" in rec:
        d = rec["dashboard"]
        print(f"dashboard, {d['samples']:,} samples (30 days at one a minute): data built on the server {d['server_data_s']:.3f} s, "
              f"first paint {d['first_paint_s']:.2f} s, 30-day refresh {d['refresh_30d_s']:.2f} s\n")
    if "capacity" in rec:
        c = rec["capacity"]
        print(f"capacity: {c['small']['events']:,.0f} events -> projected x{c['factor']:g} vs built ({c['big']['events']:,.0f} events)")
        print("| figure | projected | measured | projected/measured |")
        print("|---|---|---|---|")
        for k, r in c["rows"].items():
            fmt = lambda v: "-" if v is None else f"{v:,.1f}"  # noqa: E731
            print(f"| {k} | {fmt(r['projected'])} | {fmt(r['measured'])} | {fmt(r['ratio']) if r['ratio'] is None else format(r['ratio'], '.2f')} |")
        print(f"ranking stage (small, big): {c['ranking']}; notes: {c['notes']}")
    print(f"\nload average before {load_before}, after {rec['load_after']}")


if __name__ == "__main__":
    main()
