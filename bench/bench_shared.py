"""Shared state on real servers (issue 14), each figure beside its embedded peer in the same run:

1. durable event ingestion into the catalogue's pending buffer: PostgreSQL (fsync on) vs SQLite
   (WAL, synchronous=FULL), batches of --batch events;
2. recommendation throughput and latency: two `scalerec serve` processes on a shared PostgreSQL
   catalogue + S3-compatible model store (moto on loopback) vs one process on the embedded store;
3. staleness of an availability change made on one process as seen by the other (p50/p99 ms);
4. publishing / fetching a model version: S3-compatible store vs a local directory (MB/s).

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python bench/bench_shared.py [--events 200000]

Starts its own PostgreSQL cluster (fsync on) and moto server; prints a table and appends one
JSON line to bench/results/shared.jsonl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "tests" / "reliability"))

from _common import append_result, load_line, machine_info  # noqa: E402
from _servers import PostgresServer, S3Server  # noqa: E402

from scalerec.config import Settings  # noqa: E402


def _events(n: int, start: int) -> pa.Table:
    from scalerec.data.validate import validate_events

    i = np.arange(start, start + n)
    valid, _ = validate_events(
        pa.table({"user_id": [f"u{k % 5000}" for k in i], "item_id": [f"i{k % 700}" for k in i],
                  "event_type": ["view"] * n, "timestamp": 1_700_000_000 + i}),
        Settings(),
    )
    return valid


def ingestion(url: str, total: int, batch: int) -> float:
    from scalerec.data.catalog import open_catalog

    catalog = open_catalog(url)
    tables = [_events(batch, k) for k in range(0, total, batch)]
    t0 = time.perf_counter()
    for t in tables:
        catalog.add_pending_events(t)
    dt = time.perf_counter() - t0
    assert catalog.count_pending_events() == total
    catalog.close()
    return total / dt


def _build(settings: Settings) -> None:
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.training.pipeline import TrainOptions, train

    with DataStore.open(settings) as store:
        generate_store(store, n_users=2_000, n_items=500, n_events=100_000, seed=3, days=60)
        assert train(settings, TrainOptions(models=["als"], trials=1), store=store).status == "registered"


def _load(urls: list[str], headers: dict, users: list[str], n_requests: int, threads: int) -> dict:
    lat: list[float] = []
    guard = threading.Lock()
    counter = iter(range(n_requests))

    def work() -> None:
        clients = [httpx.Client(base_url=u, headers=headers, timeout=30) for u in urls]
        mine = []
        for k in counter:
            c = clients[k % len(clients)]
            t = time.perf_counter()
            r = c.get(f"/v1/users/{users[k % len(users)]}/recommendations?n=10")
            mine.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
        with guard:
            lat.extend(mine)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"rps": len(a) / wall, "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def serving(pg: PostgresServer, s3: S3Server, root: Path, n_requests: int, threads: int, trials: int) -> dict:
    from _server import Server

    from scalerec.serving.auth import ApiKeyStore

    out: dict = {}
    # embedded: one process, SQLite + local models
    emb = Settings(data={"dir": root / "embedded"})
    _build(emb)
    key = ApiKeyStore.from_settings(emb).create("admin", "bench")[0]
    headers = {"Authorization": f"Bearer {key}"}
    from scalerec.registry import Registry

    users = [str(u) for u in Registry(emb).load().matrix.user_ids[:500]]
    with Server(root / "embedded", root / "embedded.log") as e:
        _load([e.url], headers, users, 200, threads)  # warm-up
        out["embedded_1proc"] = _load([e.url], headers, users, n_requests, threads)

    # shared: PostgreSQL catalogue + S3 model store, two processes with their own data dirs
    cat_url, store_url = pg.new_schema_url(), s3.bucket_url("models")
    os.environ["SCALEREC_DATA__CATALOG_URL"], os.environ["SCALEREC_DATA__STORE_URL"] = cat_url, store_url
    try:
        sh = Settings(data={"dir": root / "a", "catalog_url": cat_url, "store_url": store_url})
        _build(sh)
        key = ApiKeyStore.from_settings(sh).create("admin", "bench")[0]
        headers = {"Authorization": f"Bearer {key}"}
        with Server(root / "a", root / "a.log") as a, Server(root / "b", root / "b.log") as b:
            _load([a.url, b.url], headers, users, 200, threads)
            out["shared_2proc"] = _load([a.url, b.url], headers, users, n_requests, threads)
            # staleness: unavailable on A, polled on B
            cb = httpx.Client(base_url=b.url, headers=headers, timeout=30)
            ca = httpx.Client(base_url=a.url, headers=headers, timeout=30)
            top = [i["item_id"] for i in cb.get("/v1/popular?n=50").json()["items"]]
            stale = []
            rng = np.random.default_rng(1)
            for item in top[:trials]:
                time.sleep(rng.uniform(0, 2.0))  # a random phase against the watcher's 2 s poll
                t0 = time.perf_counter()
                assert ca.patch(f"/v1/items/{item}", json={"available": False}).status_code == 200
                while item in [i["item_id"] for i in cb.get("/v1/popular?n=60").json()["items"]]:
                    time.sleep(0.005)
                stale.append((time.perf_counter() - t0) * 1000)
            out["staleness_ms"] = {"n": len(stale), "p50": float(np.percentile(stale, 50)),
                                   "p99": float(np.percentile(stale, 99)), "max": max(stale)}
    finally:
        os.environ.pop("SCALEREC_DATA__CATALOG_URL")
        os.environ.pop("SCALEREC_DATA__STORE_URL")
    return out


def publish(s3: S3Server, root: Path, mb: int) -> dict:
    from scalerec.data.objectstore import ObjectStore

    src = root / "version"
    src.mkdir()
    rng = np.random.default_rng(0)
    per = 8  # MB a file: below one S3 part (one PutObject each)
    for k in range(mb // per):
        (src / f"part{k}.bin").write_bytes(rng.bytes(per << 20))
    (src / "manifest.json").write_text("{}")
    out = {}
    for name, url in (("local_dir", str(root / "store")), ("s3_moto", s3.bucket_url("models"))):
        store = ObjectStore(url)
        store.check()
        t0 = time.perf_counter()
        n = store.publish(src, "v0001")
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.fetch("v0001", root / f"cache-{name}")
        down = time.perf_counter() - t0
        out[name] = {"publish_mb_s": n / up / 2**20, "fetch_mb_s": n / down / 2**20}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=3_000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--model-mb", type=int, default=128)
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    root = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    pg = PostgresServer(fsync=True).start()
    s3 = S3Server().start()
    try:
        machine = machine_info()
        ing = {
            "sqlite": ingestion(f"sqlite:///{root / 'ingest.db'}", args.events, args.batch),
            "postgresql": ingestion(pg.new_schema_url(), args.events, args.batch),
        }
        srv = serving(pg, s3, root, args.requests, args.threads, args.trials)
        pub = publish(s3, root, args.model_mb)
    finally:
        s3.stop()
        pg.stop()
    e, s = srv["embedded_1proc"], srv["shared_2proc"]
    print(load_line(machine))
    print("| figure | embedded | shared | ratio shared/embedded |")
    print("|---|---:|---:|---:|")
    print(f"| durable ingestion, events/s (batches of {args.batch:,}) | {ing['sqlite']:,.0f} (SQLite) | "
          f"{ing['postgresql']:,.0f} (PostgreSQL) | {ing['postgresql'] / ing['sqlite']:.2f} |")
    print(f"| recommendations/s, {args.threads} client threads | {e['rps']:,.0f} (1 process) | {s['rps']:,.0f} "
          f"(2 processes) | {s['rps'] / e['rps']:.2f} |")
    print(f"| p50 / p99 ms | {e['p50_ms']:.1f} / {e['p99_ms']:.1f} | {s['p50_ms']:.1f} / {s['p99_ms']:.1f} | "
          f"{s['p99_ms'] / e['p99_ms']:.2f} (p99) |")
    st = srv["staleness_ms"]
    print(f"| availability change across processes, ms (n={st['n']}) | - | p50 {st['p50']:.0f} / p99 "
          f"{st['p99']:.0f} / max {st['max']:.0f} | |")
    loc, s3r = pub["local_dir"], pub["s3_moto"]
    print(f"| model version publish / fetch MB/s ({args.model_mb} MB) | {loc['publish_mb_s']:.0f} / "
          f"{loc['fetch_mb_s']:.0f} (local dir) | {s3r['publish_mb_s']:.0f} / {s3r['fetch_mb_s']:.0f} "
          f"(S3, moto) | {s3r['publish_mb_s'] / loc['publish_mb_s']:.2f} |")
    path = append_result("shared", {"args": vars(args), "ingestion_events_s": ing, "serving": srv, "store": pub},
                         machine=machine)
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
