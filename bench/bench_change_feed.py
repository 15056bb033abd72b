"""How long an item marked unavailable on one worker stays in another worker's lists.

Two servers over one data directory serve a small synthetic shop. Repeatedly, an item of server
B's popular list is PATCHed unavailable through server A, and B is asked for its popular list every
millisecond until the item is gone: the time from A's acknowledgement to B's first answer without it.

Variants, in the same run:
- processes: two real `scalerec serve` processes (uvicorn) on two ports, PATCH and GET over HTTP
  (what `serve --workers 2` runs, with each worker addressable);
- threads: two RecommendService instances in this process, each with its own watcher (no HTTP);
- before: the threads variant with the change poll of before (2 s, the model poll).
Prints a table, appends JSON lines to bench/results/change_feed.jsonl.

    .venv/bin/python bench/bench_change_feed.py [--changes 200] [--old-changes 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import append_result, load_line, machine_info  # noqa: E402


def measure(settings, changes: int, poll_s: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    from scalerec.serving import service as svc

    svc.CHANGE_POLL_S = poll_s
    a, b = svc.RecommendService(settings, watch=True), svc.RecommendService(settings, watch=True)
    try:
        top = [x["item_id"] for x in b.popular(n=20)["items"]]
        out = []
        for k in range(changes):
            item = top[k % len(top)]
            a.patch_item(item, {"available": False})
            t0 = time.perf_counter()
            while item in {x["item_id"] for x in b.popular(n=20)["items"]}:
                time.sleep(0.001)
            out.append(1000 * (time.perf_counter() - t0))
            a.patch_item(item, {"available": True})
            while item not in {x["item_id"] for x in b.popular(n=20)["items"]}:
                time.sleep(0.001)
        return np.asarray(out)
    finally:
        a.close()
        b.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_processes(settings, changes: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Two `scalerec serve` processes on one data directory; the PATCH and the polls over HTTP."""
    import httpx

    from scalerec.serving.auth import ApiKeyStore

    key = ApiKeyStore.from_settings(settings).create("admin", "bench-change-feed")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEREC_")}
    env["PYTHONPATH"] = str(HERE.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    ports = [_free_port(), _free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "scalerec", "-d", str(settings.data_dir), "serve", "--port", str(port),
                               "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for port in ports]
    a, b = (httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            for port in ports)
    try:
        deadline = time.monotonic() + 120
        for client, proc in zip((a, b), procs):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"scalerec serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
                try:
                    if client.get("/v1/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("scalerec serve did not become ready in 120 s")
                time.sleep(0.1)

        def listed() -> set[str]:
            r = b.get("/v1/popular", params={"n": 20})
            r.raise_for_status()
            return {x["item_id"] for x in r.json()["items"]}

        top = sorted(listed())
        out = []
        for k in range(changes):
            item = top[k % len(top)]
            a.patch(f"/v1/items/{item}", json={"available": False}).raise_for_status()
            t0 = time.perf_counter()
            while item in listed():
                time.sleep(0.001)
            out.append(1000 * (time.perf_counter() - t0))
            a.patch(f"/v1/items/{item}", json={"available": True}).raise_for_status()
            while item not in listed():
                time.sleep(0.001)
        return np.asarray(out)
    finally:
        a.close()
        b.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--old-changes", type=int, default=10)
    args = p.parse_args()
    from scalerec.config import Settings
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.serving.service import CHANGE_BOUND_MS, CHANGE_POLL_S
    from scalerec.training.pipeline import TrainOptions, train

    before = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data={"dir": Path(tmp) / "shop"})
        store = DataStore.open(settings)
        generate_store(store, n_users=500, n_items=200, n_events=20_000, seed=7, days=60)
        train(settings, TrainOptions(models=["popular"], trials=1), store=store)
        store.close()
        poll = "%.0f ms" % (1000 * CHANGE_POLL_S)
        rows = {f"2 processes, HTTP (poll {poll})": measure_processes(settings, args.changes),
                f"2 threads, in-process (poll {poll})": measure(settings, args.changes, CHANGE_POLL_S),
                "before: 2 threads (poll 2000 ms)": measure(settings, args.old_changes, 2.0)}
    print(f"{'variant':36} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    stats = {}
    for name, ms in rows.items():
        stats[name] = {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                       "max_ms": float(ms.max())}
        s = stats[name]
        print(f"{name:36} {s['n']:5d} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f} {s['max_ms']:8.1f}")
    procs, threads, old = stats.values()
    print(f"p99 ratios: before/processes {old['p99_ms'] / procs['p99_ms']:.1f}x, processes/threads "
          f"{procs['p99_ms'] / threads['p99_ms']:.2f}x; README bound {CHANGE_BOUND_MS} ms across processes: "
          f"{'met' if procs['p99_ms'] < CHANGE_BOUND_MS else 'NOT met'}; {load_line(before)}")
    append_result("change_feed", {"variants": stats, "bound_ms": CHANGE_BOUND_MS}, machine=before)


if __name__ == "__main__":
    main()
