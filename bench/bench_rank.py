"""CPU seconds per ``POST /v1/rank`` through the real app: this checkout against an older one.

Builds a synthetic store with one trained ALS version (``bench_service.build_store``), extracts
the baseline's ``src`` (``git archive <ref>``, default ``main``) unless ``--baseline-src`` is
given, then sends ``/v1/rank`` requests with a read key through FastAPI's TestClient in child
processes, one per code version, alternating baseline/new for ``--rounds`` rounds. The figure is
the process CPU time (all threads: the client, the event loop and the worker thread) per request.

Cases (``--ids`` ids per request, 5,000 by default, the endpoint's limit):

- ``long``: ids of 256 characters (the id policy's maximum), none known to the model; before the
  fix each lookup recast the model's whole id vocabulary to the id's width.
- ``mixed``: the model's items (up to half the request) and 256-character unknown ids.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_rank.py [--baseline-ref main]

Prints a table (median CPU ms per request, best round of each side, ratio) and appends a JSON
line to bench/results/rank.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import append_result, load_line, machine_info, run_child
from bench_service import baseline_checkout, build_store

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CASES = ("long", "mixed")
ID_LENGTH = 256


def _requests(st: Any, n_ids: int) -> dict[str, list[str]]:
    long_ids = [f"bench-{i:06d}-".ljust(ID_LENGTH, "x") for i in range(n_ids)]
    known = [str(i) for i in st.item_ids[: min(st.n_items, n_ids // 2)]]
    return {"long": long_ids, "mixed": known + long_ids[: n_ids - len(known)]}


def child(data_dir: Path, calls: int, n_ids: int) -> None:
    """Time each case ``calls`` times in this process (after one warm-up); print one JSON object."""
    import gc

    import numpy as np
    from fastapi.testclient import TestClient

    from scalerec.config import Settings
    from scalerec.serving.auth import ApiKeyStore
    from scalerec.serving.http.app import create_app
    from scalerec.serving.service import RecommendService

    settings = Settings(data={"dir": data_dir})
    key = ApiKeyStore.from_settings(settings).create("read", "bench-rank")[0]
    service = RecommendService(settings, watch=False)
    st = service.live.model
    user = str(st.user_ids[0])
    client = TestClient(create_app(service, watch=False))
    headers = {"Authorization": f"Bearer {key}"}
    out: dict[str, Any] = {}
    gc.freeze()
    for name, ids in _requests(st, n_ids).items():
        body = {"user_id": user, "item_ids": ids}
        r = client.post("/v1/rank", json=body, headers=headers)  # warm-up; its answer is compared
        if r.status_code != 200:
            raise SystemExit(f"/v1/rank answered {r.status_code}: {r.text[:300]}")
        answer = {k: v for k, v in r.json().items() if k != "recommendation_id"}
        cpu = np.empty(calls)
        for i in range(calls):
            t0 = time.process_time()
            client.post("/v1/rank", json=body, headers=headers)
            cpu[i] = time.process_time() - t0
        out[name] = {"median_ms": float(np.median(cpu)) * 1e3, "mean_ms": float(cpu.mean()) * 1e3,
                     "digest": hashlib.sha256(json.dumps(answer, sort_keys=True).encode()).hexdigest()[:16]}
        service.reclog._buf.clear()
    service.close()
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--items", type=int, default=3_000)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--ids", type=int, default=5_000, help="ids per /v1/rank request")
    p.add_argument("--calls", type=int, default=30, help="timed requests per case per round (new code)")
    p.add_argument("--baseline-calls", type=int, default=3, help="timed requests per case per round (baseline: slow)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline-ref", default="main")
    p.add_argument("--baseline-src", type=Path, default=None, help="an older checkout's src (instead of --baseline-ref)")
    p.add_argument("--data-dir", type=Path, default=None, help="reuse a store built by an earlier run")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.data_dir, args.calls, args.ids)
        return

    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-rank-") as tmp:
        tmp_path = Path(tmp)
        data_dir = args.data_dir or tmp_path / "data"
        if not (data_dir / "catalog.db").exists():
            t0 = time.perf_counter()
            build_store(data_dir, args.users, args.items, args.events)
            print(f"store + ALS: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        old_src = (args.baseline_src or baseline_checkout(args.baseline_ref, tmp_path / "baseline")).resolve()
        sides = {"baseline": old_src, "new": (REPO / "src").resolve()}
        calls = {"baseline": args.baseline_calls, "new": args.calls}
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MKL_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        for r in range(args.rounds):
            for side in (sides if r % 2 == 0 else reversed(list(sides))):
                out, _ = run_child([str(Path(__file__).resolve()), "--child", "--data-dir", str(data_dir),
                                    "--calls", str(calls[side]), "--ids", str(args.ids)],
                                   env={**env, "PYTHONPATH": str(sides[side])})
                runs[side].append(json.loads(out.strip().splitlines()[-1]))

    rows = []
    print(f"{'case':<8} {'ids':>6} {'baseline CPU ms':>16} {'new CPU ms':>11} {'speed-up':>9}  same answers")
    for name in CASES:
        best = {s: min(run[name]["median_ms"] for run in runs[s]) for s in sides}
        same = len({run[name]["digest"] for s in sides for run in runs[s]}) == 1
        rows.append({"case": name, "ids": args.ids, "id_length": ID_LENGTH,
                     "baseline_cpu_ms": round(best["baseline"], 2), "new_cpu_ms": round(best["new"], 2),
                     "speedup": round(best["baseline"] / best["new"], 1), "same_answers": same,
                     "rounds_ms": {s: [round(run[name]["median_ms"], 2) for run in runs[s]] for s in sides}})
        print(f"{name:<8} {args.ids:>6} {best['baseline']:>16.1f} {best['new']:>11.1f} "
              f"{best['baseline'] / best['new']:>8.1f}x  {'yes' if same else 'NO'}")
    print(load_line(machine))
    path = append_result("rank", {
        "store": {"users": args.users, "items": args.items, "events": args.events},
        "calls": calls, "rounds": args.rounds,
        "baseline": args.baseline_ref if args.baseline_src is None else str(args.baseline_src),
        "rows": rows,
    }, machine=machine)
    print(f"appended to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
