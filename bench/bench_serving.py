"""Serving benchmark: wrk over loopback against `scalerec serve` and a FastAPI hello world (the
ceiling) in the same run; batched durable event ingestion; recall@20 and memory of the ANN index.

    .venv/bin/python bench/bench_serving.py --users 1000000 --items 100000 --events 10000000

Builds (or reuses) a synthetic store in --data-dir, fits ALS directly (no tuning: the serving
path is measured, not the model search) and registers it as production. Prints a table and
appends one JSON line to bench/results/serving.jsonl. Needs `wrk` (apt-get install wrk).

Both servers run under uvicorn with the same settings (workers, event loop and HTTP parser:
uvloop and httptools when installed, which the result records). After the closed-loop sweep,
a paced run (each connection waits between requests) holds scalerec near half its maximum
throughput for the p99 goal. ``--baseline-src DIR`` also serves an older checkout's ``src``
(e.g. ``git archive <commit> src | tar -x -C DIR``) on the same store in the same run, so a
before/after comparison shares the machine's load. The events the ingestion phase posts are
deleted afterwards (``--keep-ingested`` keeps them), so repeated runs see the same share of
users with fresh events (fold-in). ``--fresh-share 0.18`` posts two views newer than the model for
18% of the user ids before measuring (the issue's "18% fresh users"; deleted afterwards too).
Each measurement records the established connections per worker process halfway through (the
hello world runs under the same per-worker-socket launcher as `scalerec serve` unless
``--hello-shared-socket``).

A store with a trained ranker (``bench/bench_rerank.py --build-only --data-dir DIR``) is served as
it is, so the figures include the ranking stage; ``--model-users N`` asks for N random users of the
production model (every request personal and reranked, none a new user's fallback),
``--query context.weather=rain`` adds request context and ``--serve-env KEY=VALUE`` sets server
settings (e.g. ``SCALEREC_RANKING__CF_CANDIDATES=120`` for about 200 candidates reranked).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "serving.jsonl"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 600, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}; see its log in bench-logs/")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready in {timeout_s} s")


def build_store(data_dir: Path, users: int, items: int, events: int, factors: int) -> dict:
    """Synthetic store + ALS version in production (reused when it already exists)."""
    from scalerec.config import Settings
    from scalerec.data.matrix import matrix_from_settings
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.models import make_model
    from scalerec.registry import Registry

    settings = Settings(data={"dir": data_dir})
    reg = Registry(settings)
    if reg.production() is not None:
        log(f"reusing {data_dir} ({reg.production().version})")
        return {"reused": True}
    shutil.rmtree(data_dir, ignore_errors=True)
    store = DataStore.open(settings)
    reg = Registry(settings)
    t = time.perf_counter()
    report = generate_store(store, n_users=users, n_items=items, n_events=events, seed=0, days=90)
    synth_s = time.perf_counter() - t
    log(f"synth: {report.n_events:,} events in {synth_s:.0f} s")
    t = time.perf_counter()
    X = matrix_from_settings(store, settings)
    matrix_s = time.perf_counter() - t
    t = time.perf_counter()
    model = make_model("als", factors=factors, iterations=8).fit(X)
    fit_s = time.perf_counter() - t
    log(f"matrix {X.n_users:,} x {X.n_items:,} ({X.nnz:,} nnz) in {matrix_s:.0f} s; ALS fit {fit_s:.0f} s")
    popular = np.bincount(X.matrix.indices, minlength=X.n_items).astype(np.float32)
    trending = np.bincount(X.matrix.indices, weights=X.matrix.data, minlength=X.n_items).astype(np.float32)
    tr = report.last_event.isoformat() if report.last_event else None
    v = reg.register(model=model, matrix=X, popular=popular, trending=trending, manifest={
        "model": {"family": "als", "params": model.get_params()},
        "data": {"max_timestamp": tr, "n_users": X.n_users, "n_items": X.n_items, "nnz": X.nnz},
    })
    reg.promote(v.version, force=True)
    store.close()
    return {"synth_s": round(synth_s, 1), "matrix_s": round(matrix_s, 1), "fit_s": round(fit_s, 1),
            "n_users": X.n_users, "n_items": X.n_items, "nnz": X.nnz}


def measure_index(data_dir: Path, queries: int = 1000) -> dict:
    """recall@20 of the production HNSW index against exact search, its memory and build time."""
    from scalerec.config import Settings
    from scalerec.registry import Registry
    from scalerec.serving.index import ExactIndex, FaissIndex

    lv = Registry(Settings(data={"dir": data_dir})).load(None)
    V = np.ascontiguousarray(lv.model.item_factors_)
    U = lv.model.user_factors_
    rng = np.random.default_rng(0)
    q = np.ascontiguousarray(U[rng.choice(len(U), size=min(queries, len(U)), replace=False)])
    exact = ExactIndex(V)
    out = {}
    for kind in ("hnsw", "ivf"):
        t = time.perf_counter()
        idx = FaissIndex.build(V, kind)
        build_s = time.perf_counter() - t
        ids_a, _ = idx.search(q, 20)
        ids_e, _ = exact.search(q, 20)
        recall = float(np.mean([len(set(a) & set(e)) / 20 for a, e in zip(ids_a, ids_e)]))
        allowed = rng.random(len(V)) < 0.1  # a 10% filter (e.g. a category)
        ids_f, _ = idx.search(q[:200], 20, allowed=allowed)
        ids_fe, _ = exact.search(q[:200], 20, allowed=allowed)
        recall_f = float(np.mean([len(set(a) & set(e)) / 20 for a, e in zip(ids_f, ids_fe)]))
        t = time.perf_counter()
        for row in q[:500]:
            idx.search(row[None, :], 20)
        per_q = (time.perf_counter() - t) / 500
        out[kind] = {"recall_at_20": round(recall, 4), "recall_at_20_filtered_10pct": round(recall_f, 4),
                     "memory_bytes": idx.memory_bytes(), "build_s": round(build_s, 1),
                     "query_us": round(per_q * 1e6, 1)}
    t = time.perf_counter()
    for row in q[:200]:
        exact.search(row[None, :], 20)
    out["exact"] = {"memory_bytes": exact.memory_bytes(), "query_us": round((time.perf_counter() - t) / 200 * 1e6, 1)}
    return out


def server_stack() -> dict:
    """What uvicorn's "auto" picks for both servers (same interpreter, same packages)."""
    import importlib.util

    def has(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    return {"loop": "uvloop" if has("uvloop") else "asyncio", "http": "httptools" if has("httptools") else "h11",
            "json": "orjson" if has("orjson") else "stdlib"}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def fresh_share(data_dir: Path, n_users: int) -> dict:
    """How many users have events newer than the production snapshot (those requests fold in).

    Read through the catalogue (serving's own FreshUsers), so a freshly built store that was never
    served counts the same as one that was."""
    from scalerec.config import Settings
    from scalerec.registry import Registry
    from scalerec.serving.realtime import ChangeFeed, FreshUsers
    from scalerec.serving.service import _snapshot_time

    settings = Settings(data={"dir": data_dir})
    prod = Registry(settings).production()
    snap = _snapshot_time(prod.manifest()) if prod else None
    n = len(FreshUsers(ChangeFeed(settings.data.resolved_catalog_url()), snap))
    return {"users_with_fresh_events": n, "share": round(n / n_users, 4)}


def wait_precomputed(data_dir: Path, timeout_s: float = 600) -> float | None:
    """Seconds until the production version's precomputed candidate lists are written (the
    serving workers compute them in the background after start); None if off or not in time."""
    from scalerec.config import Settings
    from scalerec.registry import Registry

    settings = Settings(data={"dir": data_dir})
    if settings.serving.precomputed_k == 0:
        return None
    version = Registry(settings).production().version
    folder = data_dir / "serving" / "candidates"
    t = time.perf_counter()
    while time.perf_counter() - t < timeout_s:
        if any((d / "meta.json").exists() for d in folder.glob(f"{version}-k*")):
            time.sleep(1.0)  # the other workers map the files once the lock is released
            return round(time.perf_counter() - t, 1)
        time.sleep(0.5)
    return None


def model_user_file(data_dir: Path, n: int, out: Path) -> int:
    """``n`` random user ids of the production model, one a line (for wrk's SR_IDS_FILE)."""
    from scalerec.config import Settings
    from scalerec.registry import Registry

    ids = Registry(Settings(data={"dir": data_dir})).load(None).matrix.user_ids
    pick = np.random.default_rng(2).choice(len(ids), size=min(n, len(ids)), replace=False)
    out.write_text("\n".join(str(ids[j]) for j in pick) + "\n")
    return len(pick)


def pending_head(data_dir: Path) -> int:
    from scalerec.config import Settings
    from scalerec.serving.realtime import ChangeFeed

    return ChangeFeed(Settings(data={"dir": data_dir}).data.resolved_catalog_url()).catalog.pending_head()


def drop_ingested(data_dir: Path, after_id: int) -> int:
    """Delete the pending events this run posted (ids above ``after_id``)."""
    import sqlite3

    with sqlite3.connect(data_dir / "catalog.db") as conn:
        return conn.execute("DELETE FROM pending_events WHERE id > ?", (after_id,)).rowcount


def run_wrk(url: str, *, connections: int, duration_s: int, env: dict, threads: int = 1) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s",
           "-s", str(ROOT / "wrk_users.lua"), url]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=duration_s + 60)
    m = re.search(r"WRK_JSON (\{.*\})", out.stdout)
    if not m:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(m.group(1))
    r["rps"] = round(r["requests"] / (r["duration_us"] / 1e6), 1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    r["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    r["connections"] = connections
    r["delay_ms"] = int(env.get("SR_DELAY_MS", 0))
    for k in ("p50_us", "p95_us", "p99_us", "max_us"):
        r[k.replace("_us", "_ms")] = round(r.pop(k) / 1000, 2)
    return r


def cpu_seconds(proc: subprocess.Popen) -> float:
    """User + system CPU seconds of a server and all its worker processes so far."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for q in procs:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a worker that exited meanwhile
            pass
    return total


def connection_split(proc: subprocess.Popen, port: int) -> list[int]:
    """Established connections on ``port`` per worker of a server (its children listening there), most first."""
    import psutil

    counts = []
    try:
        children = psutil.Process(proc.pid).children()
    except psutil.Error:
        return []
    for q in children:
        try:
            conns = [c for c in q.net_connections("tcp") if c.laddr and c.laddr.port == port]
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN for c in conns):
            counts.append(sum(c.status == psutil.CONN_ESTABLISHED for c in conns))
    return sorted(counts, reverse=True)


def start(cmd: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    f = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _event_bodies(users: np.ndarray, items: np.ndarray, user_width: int, n_items: int, batch: int) -> list[bytes]:
    iw = max(6, len(str(n_items)))
    bodies = []
    for lo in range(0, len(users), batch):
        events = [{"user_id": f"u{u:0{user_width}d}", "item_id": f"i{i:0{iw}d}", "event_type": "view",
                   "timestamp": "2025-06-01T12:00:00Z", "context": {"device": "mobile"}}
                  for u, i in zip(users[lo:lo + batch].tolist(), items[lo:lo + batch].tolist())]
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


def post_events(base: str, key: str, bodies: list[bytes], clients: int) -> dict:
    """POST /events of these bodies from ``clients`` threads; events/s acknowledged (durable)."""
    import httpx

    lock = threading.Lock()
    done = {"events": 0, "errors": 0}
    todo = list(range(len(bodies)))

    def worker() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                          timeout=120) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    b = todo.pop()
                r = c.post("/v1/events", content=bodies[b])
                with lock:
                    if r.status_code == 202:
                        done["events"] += r.json()["accepted"]
                    else:
                        done["errors"] += 1

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    el = time.perf_counter() - t
    return {"events": done["events"], "errors": done["errors"], "seconds": round(el, 2),
            "events_per_s": round(done["events"] / el, 0), "clients": clients,
            "request_bytes": len(bodies[0]) if bodies else 0}


def ingest(base: str, key: str, user_width: int, n_users: int, n_items: int, batches: int, batch: int, clients: int) -> dict:
    """Batched POST /events of random users' views from ``clients`` threads (the ingestion figure)."""
    rng = np.random.default_rng(1)
    users = rng.integers(1, n_users + 1, size=batches * batch)
    items = rng.integers(1, n_items + 1, size=batches * batch)
    return {**post_events(base, key, _event_bodies(users, items, user_width, n_items, batch), clients), "batch": batch}


def post_fresh(base: str, key: str, user_width: int, n_users: int, n_items: int, share: float, per_user: int = 2) -> dict:
    """Views newer than the model for a random ``share`` of the user ids wrk asks for, posted before
    measuring: those users' requests fold their fresh events in (the issue's "18% fresh users")."""
    rng = np.random.default_rng(2)
    chosen = rng.choice(np.arange(1, n_users + 1), size=int(round(share * n_users)), replace=False)
    users = np.repeat(chosen, per_user)
    items = rng.integers(1, n_items + 1, size=len(users))
    out = post_events(base, key, _event_bodies(users, items, user_width, n_items, 10_000), clients=2)
    return {**out, "users": len(chosen), "per_user": per_user}


def round_summary(rounds: list[dict], names: list[str]) -> dict:
    """Medians per server and the median of per-round ratios (each round shares its load)."""
    import statistics

    med = {n: {k: round(statistics.median(r[n][k] for r in rounds), 2)
               for k in ("rps", "p99_ms", "server_cpu_us_per_request")} for n in names}
    pairs = [("scalerec", "hello", "rps")]
    if "baseline" in names:
        pairs += [("scalerec", "baseline", "rps"), ("scalerec", "baseline", "server_cpu_us_per_request")]
    ratios = {}
    for a, b, k in pairs:
        per = [round(r[a][k] / r[b][k], 3) for r in rounds if r[b][k]]
        ratios[f"{a}/{b} {k}"] = {"median": round(statistics.median(per), 3) if per else None, "per_round": per}
    return {"connections": rounds[0][names[0]]["connections"], "median": med, "ratios": ratios,
            "load": [r["load"][0] for r in rounds]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/scalerec-bench-serving"))
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--connections", default="1,4,16,64")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--ingest-batches", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3,
                   help="after the sweep, this many rounds of every server alternately at --round-connections "
                        "(order reversed each round): median ratios and server CPU per request")
    p.add_argument("--round-connections", type=int, default=16)
    p.add_argument("--paced-rounds", type=int, default=0,
                   help="then this many paced windows of scalerec and the baseline alternately at the same pace "
                        "(half scalerec's maximum): median p99 at half load, both under the same load")
    p.add_argument("--skip-index", action="store_true")
    p.add_argument("--build-only", action="store_true", help="build the store and model, then stop")
    p.add_argument("--skip-ingest", action="store_true")
    p.add_argument("--fresh-share", type=float, default=0.0,
                   help="before measuring, post two views newer than the model for this share of the user ids "
                        "(the issue's figure is at 0.18: those requests fold in); deleted afterwards like the ingested")
    p.add_argument("--hello-shared-socket", action="store_true",
                   help="serve the hello world with uvicorn's own --workers (one shared socket) instead of "
                        "scalerec's launcher (a SO_REUSEPORT socket per worker, as `scalerec serve` now)")
    p.add_argument("--keep-ingested", action="store_true", help="leave the ingested events in the store")
    p.add_argument("--baseline-src", type=Path, default=None,
                   help="an older checkout's src/ folder served too, on the same store, in the same run")
    p.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the baseline server only (e.g. SCALEREC_SERVING__REUSE_PORT=false with "
                        "--baseline-src src: this code with uvicorn's shared socket)")
    p.add_argument("--results", type=Path, default=RESULTS, help="the JSON-lines file the result is appended to")
    p.add_argument("--note", default="", help="free text stored with the result (e.g. the code version)")
    p.add_argument("--model-users", type=int, default=0,
                   help="request this many random users of the production model (0: numbered ids 1..--users)")
    p.add_argument("--query", default="", help="added to every scalerec request's query string, e.g. context.weather=rain")
    p.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the scalerec servers (settings such as SCALEREC_RANKING__CF_CANDIDATES=120)")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    build = build_store(args.data_dir, args.users, args.items, args.events, args.factors)
    if args.build_only:
        print(json.dumps(build))
        return
    index = {} if args.skip_index else measure_index(args.data_dir)
    if index:
        log(f"index: {index}")

    from scalerec.config import Settings
    from scalerec.serving.auth import ApiKeyStore

    settings = Settings(data={"dir": args.data_dir})
    key = ApiKeyStore.from_settings(settings).create("admin", "bench")[0]
    py = sys.executable
    port_h, port_s, port_b = free_port(), free_port(), free_port()
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    serve_env = {**env, **dict(kv.split("=", 1) for kv in args.serve_env)}
    tmp = args.data_dir / "bench-logs"
    tmp.mkdir(exist_ok=True)
    fresh = fresh_share(args.data_dir, args.users)
    log(f"users with events newer than the model: {fresh}")
    load_before = load_avg()
    if args.hello_shared_socket:
        hello_cmd = [py, "-m", "uvicorn", "hello_app:app", "--app-dir", str(ROOT), "--port", str(port_h),
                     "--workers", str(args.workers), "--log-level", "warning", "--no-access-log"]
    else:  # the same launcher as `scalerec serve`, so both servers spread connections over workers alike
        hello_cmd = [py, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); from scalerec.serving.listen import run; "
                     f"run('hello_app:app', host='127.0.0.1', port={port_h}, workers={args.workers}, "
                     "log_level='warning', access_log=False)"]
    hello = start(hello_cmd, env, tmp / "hello.log")
    server = start([py, "-m", "scalerec", "--data-dir", str(args.data_dir), "serve", "--port", str(port_s),
                    "--workers", str(args.workers)], serve_env, tmp / "serve.log")
    path = "/v1/users/%s/recommendations?n=20" + (f"&{args.query}" if args.query else "")
    servers = {"hello": (port_h, "/hello/%s"), "scalerec": (port_s, path)}
    procs = {"hello": hello, "scalerec": server}
    baseline = None
    rows = []
    rounds: list[dict] = []
    paced_rounds: list[dict] = []
    ing: dict = {}
    pre_s = None
    head = pending_head(args.data_dir)
    try:
        wait_http(f"http://127.0.0.1:{port_h}/hello/x", proc=hello)
        t = time.perf_counter()
        wait_http(f"http://127.0.0.1:{port_s}/v1/health/ready", proc=server)
        if args.baseline_src is not None:
            # The older code on the same store (its workers import scalerec from --baseline-src),
            # started once the first server is up: both prepare the same metrics folder at start.
            baseline = start([py, "-m", "scalerec", "--data-dir", str(args.data_dir), "serve", "--port", str(port_b),
                              "--workers", str(args.workers)],
                             {**serve_env, "PYTHONPATH": str(args.baseline_src.resolve()),
                              **dict(kv.split("=", 1) for kv in args.baseline_env)}, tmp / "baseline.log")
            servers["baseline"] = (port_b, path)
            procs["baseline"] = baseline
            wait_http(f"http://127.0.0.1:{port_b}/v1/health/ready", proc=baseline)
        log(f"servers ready in {time.perf_counter() - t:.0f} s")
        width = max(6, len(str(args.users)))
        if args.fresh_share > 0:
            posted = post_fresh(f"http://127.0.0.1:{port_s}", key, width, args.users, args.items, args.fresh_share)
            fresh = {**fresh_share(args.data_dir, args.users), "posted": posted}
            log(f"posted fresh events before measuring: {fresh}")
        pre_s = wait_precomputed(args.data_dir)
        log(f"precomputed candidate lists ready {pre_s} s after that" if pre_s is not None
            else "no precomputed candidate lists (off, or not written in 600 s)")
        wenv = {"SR_KEY": key, "SR_USERS": str(args.users), "SR_WIDTH": str(width)}
        if args.model_users:
            n_ids = model_user_file(args.data_dir, args.model_users, tmp / "model-users.txt")
            wenv["SR_IDS_FILE"] = str(tmp / "model-users.txt")
            log(f"requests for {n_ids:,} random users of the production model")

        def measure(name: str, c: int, duration: int, **extra: str) -> dict:
            port, path = servers[name]
            e = {**wenv, **({"SR_PATH": path} if path else {}), **extra}
            cpu0 = cpu_seconds(procs[name])
            split: list[list[int]] = []
            timer = threading.Timer(duration / 2, lambda: split.append(connection_split(procs[name], port)))
            timer.start()
            r = run_wrk(f"http://127.0.0.1:{port}", connections=c, duration_s=duration, env=e)
            timer.join()
            r["connections_per_worker"] = split[0] if split else None
            # the server's own CPU per answered request: less sensitive to the neighbours' load than req/s
            r["server_cpu_us_per_request"] = round((cpu_seconds(procs[name]) - cpu0) / max(1, r["requests"]) * 1e6, 1)
            return r

        if args.model_users:  # a large ranking bundle loads on a worker's first list: not in the measured windows
            import httpx

            warm_ids = (tmp / "model-users.txt").read_text().split()[:40]
            t_warm = time.perf_counter()
            for u in warm_ids:  # a new connection each: the workers take turns accepting
                httpx.get(f"http://127.0.0.1:{port_s}" + path % u, headers={"Authorization": f"Bearer {key}"},
                          timeout=600).raise_for_status()
            log(f"first 40 personal lists (bundle loads) in {time.perf_counter() - t_warm:.1f} s")
        for name in servers:  # warm up (page in the memory-mapped arrays, fill caches)
            measure(name, 8, 3)
        for c in [int(x) for x in args.connections.split(",")]:
            row = {"connections": c, "load": load_avg()}
            for name in servers:  # alternately, so each sees about the same background load
                row[name] = measure(name, c, args.duration)
            rows.append(row)
            s, h = row["scalerec"], row["hello"]
            line = (f"c={c}: hello {h['rps']} rps p99 {h['p99_ms']} ms | scalerec {s['rps']} rps "
                    f"p50 {s['p50_ms']} p95 {s['p95_ms']} p99 {s['p99_ms']} ms, non-2xx {s['non_2xx']}, "
                    f"connections per worker {s['connections_per_worker']} (hello {h['connections_per_worker']})")
            if "baseline" in row:
                line += f" | baseline {row['baseline']['rps']} rps p99 {row['baseline']['p99_ms']} ms"
            log(line + f" (load {row['load'][0]})")
        max_s = max(r["scalerec"]["rps"] for r in rows)
        # Paced: 16 connections, each pausing so the total is about half of the maximum.
        p50_s = min(r["scalerec"]["p50_ms"] for r in rows)
        delay = max(1, round(16 * 1000 / (max_s / 2) - p50_s))
        paced = {"load": load_avg(), "scalerec": measure("scalerec", 16, args.duration, SR_DELAY_MS=str(delay))}
        if "baseline" in servers:
            max_b = max(r["baseline"]["rps"] for r in rows)
            delay_b = max(1, round(16 * 1000 / (max_b / 2) - min(r["baseline"]["p50_ms"] for r in rows)))
            paced["baseline"] = measure("baseline", 16, args.duration, SR_DELAY_MS=str(delay_b))
        log(f"paced near half max: {paced}")
        for i in range(args.paced_rounds):
            # the same pace (half scalerec's maximum) for scalerec and the baseline, alternately
            row = {"round": i, "load": load_avg(), "delay_ms": delay}
            for name in ([n for n in ("scalerec", "baseline") if n in servers][:: 1 if i % 2 == 0 else -1]):
                row[name] = measure(name, 16, args.duration, SR_DELAY_MS=str(delay))
            paced_rounds.append(row)
            log(f"paced round {i} (load {row['load'][0]}): " + ", ".join(
                f"{n} {row[n]['rps']} rps p99 {row[n]['p99_ms']} ms {row[n]['connections_per_worker']}"
                for n in ("scalerec", "baseline") if n in row))
        order = list(servers)
        for i in range(args.rounds):
            row = {"round": i, "load": load_avg()}
            for name in (order if i % 2 == 0 else order[::-1]):
                row[name] = measure(name, args.round_connections, args.duration)
            rounds.append(row)
            log(f"round {i} (c={args.round_connections}, load {row['load'][0]}): " + ", ".join(
                f"{n} {row[n]['rps']} rps {row[n]['server_cpu_us_per_request']} us CPU/req "
                f"{row[n]['connections_per_worker']}" for n in order))
        if not args.skip_ingest:
            ing = ingest(f"http://127.0.0.1:{port_s}", key, width, args.users, args.items,
                         args.ingest_batches, 10_000, clients=2)
            log(f"ingest: {ing}")
    finally:
        stop(server)
        stop(hello)
        if baseline is not None:
            stop(baseline)
        if not args.keep_ingested:
            log(f"dropped {drop_ingested(args.data_dir, head)} ingested events (the store stays as it was)")
    max_h = max(r["hello"]["rps"] for r in rows)
    half = paced["scalerec"]
    summary = {
        "max_rps_hello": max_h, "max_rps_scalerec": max_s, "ratio": round(max_s / max_h, 3),
        "p99_ms_near_half_max": half["p99_ms"], "rps_near_half_max": half["rps"],
        "events_per_s": ing.get("events_per_s"), "load_before": load_before, "load_after": load_avg(),
        "precomputed_lists_s": pre_s,
    }
    if "baseline" in servers:
        max_b = max(r["baseline"]["rps"] for r in rows)
        summary.update({"max_rps_baseline": max_b, "ratio_baseline": round(max_b / max_h, 3),
                        "p99_ms_near_half_max_baseline": paced["baseline"]["p99_ms"],
                        "rps_near_half_max_baseline": paced["baseline"]["rps"]})
    if rounds:
        summary["rounds"] = round_summary(rounds, list(servers))
    if paced_rounds:
        import statistics

        summary["paced_rounds"] = {n: {"p99_ms_median": statistics.median(r[n]["p99_ms"] for r in paced_rounds),
                                       "p99_ms": [r[n]["p99_ms"] for r in paced_rounds],
                                       "rps": [r[n]["rps"] for r in paced_rounds]}
                                   for n in ("scalerec", "baseline") if n in paced_rounds[0]}
    result = {
        "bench": "serving", "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "server": {"workers": args.workers, **server_stack(), "wrk_threads": 1,
                   "hello_socket": "shared" if args.hello_shared_socket else "per-worker"},
        "store": {"users": args.users, "items": args.items, "events": args.events, **build, "fresh": fresh},
        "workers": args.workers, "wrk": rows, "paced": paced, "paced_rounds": paced_rounds, "rounds": rounds, "index": index, "ingest": ing,
        "baseline_src": str(args.baseline_src) if args.baseline_src else None, "baseline_env": args.baseline_env,
        "requests": {"model_users": args.model_users, "query": args.query, "serve_env": args.serve_env},
        "summary": summary,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(result) + "\n")
    print()
    print(f"{'conns':>5} | {'hello rps':>9} {'p99 ms':>7} | {'scalerec rps':>12} {'p50':>6} {'p95':>6} {'p99':>6} "
          f"{'non2xx':>6} | {'baseline rps':>12} {'p99':>6}")
    for r in rows:
        h, s, b = r["hello"], r["scalerec"], r.get("baseline")
        tail = f" | {b['rps']:>12.0f} {b['p99_ms']:>6.2f}" if b else ""
        print(f"{r['connections']:>5} | {h['rps']:>9.0f} {h['p99_ms']:>7.2f} | {s['rps']:>12.0f} {s['p50_ms']:>6.2f} "
              f"{s['p95_ms']:>6.2f} {s['p99_ms']:>6.2f} {s['non_2xx']:>6}{tail}")
    if rounds:
        print()
        print(f"{len(rounds)} rounds at {args.round_connections} connections, servers alternately (medians)")
        print(f"{'server':>9} | {'rps':>8} {'p99 ms':>7} {'CPU us/req':>10}")
        for name, m in summary["rounds"]["median"].items():
            print(f"{name:>9} | {m['rps']:>8.0f} {m['p99_ms']:>7.2f} {m['server_cpu_us_per_request']:>10.0f}")
        for k, v in summary["rounds"]["ratios"].items():
            print(f"{k}: median {v['median']} (rounds {v['per_round']})")
    for n, m in summary.get("paced_rounds", {}).items():
        print(f"paced at half scalerec's maximum, {len(paced_rounds)} windows: {n} p99 median {m['p99_ms_median']} ms "
              f"(windows {m['p99_ms']}, req/s {m['rps']})")
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
