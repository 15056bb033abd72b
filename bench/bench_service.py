"""RecommendService in-process: this checkout against an older one on the same store, in one run.

Builds a synthetic store (``scalerec.datasets.synth``) with one trained ALS version, extracts the
baseline's ``src`` (``git archive <ref>``, default ``main``) unless ``--baseline-src`` is given,
then times ``recommend_user`` / ``similar_items`` / ``popular`` / ``trending`` /
``recommend_session`` per call in child processes, one per code version, alternating
baseline/new for ``--rounds`` rounds (so drift in machine load hits both alike). Each child
also digests its responses (ids, order, scores, reasons, strategy; not the random
recommendation_id) so the run says whether both versions answer identically.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_service.py [--baseline-ref main]

Prints a table (median us per call, best round of each side, ratio new/baseline) and appends a
JSON line to bench/results/service.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import append_result, load_line, machine_info, run_child

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

OPS = ("user", "user_filtered", "user_boosted", "similar", "similar_filtered", "popular", "trending",
       "popular_filtered", "session")


def build_store(data_dir: Path, users: int, items: int, events: int) -> None:
    from scalerec.config import Settings
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.training.pipeline import TrainOptions, train

    settings = Settings(data={"dir": data_dir})
    store = DataStore.open(settings)
    generate_store(store, n_users=users, n_items=items, n_events=events, seed=11, days=90)
    result = train(settings, TrainOptions(models=["als"], trials=1), store=store)
    store.close()
    if result.status != "registered":
        raise SystemExit(f"training did not register a version: {result.status}")


def child(data_dir: Path, calls: int, exact_max_items: int) -> None:
    """Time each operation ``calls`` times in this process; print one JSON object."""
    import gc

    import numpy as np

    from scalerec.config import Settings
    from scalerec.serving.filters import ItemFilter
    from scalerec.serving.service import RecommendService

    settings = Settings(data={"dir": data_dir}, serving={"exact_index_max_items": exact_max_items})
    service = RecommendService(settings)
    st = service.live.model
    counts = np.diff(np.asarray(st.seen_indptr))
    users = [str(u) for u in st.user_ids[np.argsort(-counts, kind="stable")[: min(500, len(st.user_ids))]]]
    items = [str(i) for i in st.item_ids[st.popular_order[: min(300, st.n_items)]]]
    cats = service.store.catalog.items_table(columns=["item_id", "categories"]).column("categories").to_pylist()
    category = next(c[0] for c in cats if c)
    filtered = ItemFilter(exclude_categories=(category,), max_per_category=3, min_price=1.0)
    plain = ItemFilter()
    sessions = [items[i : i + 4] for i in range(0, len(items) - 4, 7)]

    def op(name: str, i: int) -> dict[str, Any]:
        if name == "user":
            return service.recommend_user(users[i % len(users)], 20, plain)
        if name == "user_filtered":
            return service.recommend_user(users[i % len(users)], 20, filtered)
        if name == "user_boosted":
            return service.recommend_user(users[i % len(users)], 20, plain, boost_items=items[i % 50 : i % 50 + 3])
        if name == "similar":
            return service.similar_items(items[i % len(items)], 20, plain)
        if name == "similar_filtered":
            return service.similar_items(items[i % len(items)], 20, filtered)
        if name == "popular":
            return service.popular(20, plain)
        if name == "trending":
            return service.trending(20, plain)
        if name == "popular_filtered":
            return service.popular(20, filtered)
        return service.recommend_session(sessions[i % len(sessions)], 20, plain)

    out: dict[str, Any] = {}
    gc.freeze()  # as the app does after start-up
    for name in OPS:
        digest = hashlib.sha256()
        for i in range(min(calls, 50)):  # warm-up; also the answers compared across versions
            r = op(name, i)
            digest.update(json.dumps({k: v for k, v in r.items() if k != "recommendation_id"},
                                     sort_keys=True).encode())
        times = np.empty(calls, dtype=np.int64)
        for i in range(calls):
            t0 = time.perf_counter_ns()
            op(name, i)
            times[i] = time.perf_counter_ns() - t0
        out[name] = {"median_us": float(np.median(times)) / 1e3, "mean_us": float(times.mean()) / 1e3,
                     "digest": digest.hexdigest()[:16]}
        service.reclog._buf.clear()  # the log's buffer is not what is measured
    service.close()
    print(json.dumps(out))


def baseline_checkout(ref: str, into: Path) -> Path:
    """``src`` of ``ref`` extracted with ``git archive`` (reads the repository, changes nothing)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--items", type=int, default=3_000)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--calls", type=int, default=2_000, help="timed calls per operation per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline-ref", default="main")
    p.add_argument("--baseline-src", type=Path, default=None, help="an older checkout's src (instead of --baseline-ref)")
    p.add_argument("--exact-max-items", type=int, default=50_000, help="below the item count: FAISS HNSW retrieval")
    p.add_argument("--data-dir", type=Path, default=None, help="reuse a store built by an earlier run")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.data_dir, args.calls, args.exact_max_items)
        return

    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        tmp_path = Path(tmp)
        data_dir = args.data_dir or tmp_path / "data"
        if not (data_dir / "catalog.db").exists():
            t0 = time.perf_counter()
            build_store(data_dir, args.users, args.items, args.events)
            print(f"store + ALS: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        old_src = (args.baseline_src or baseline_checkout(args.baseline_ref, tmp_path / "baseline")).resolve()
        sides = {"baseline": old_src, "new": (REPO / "src").resolve()}
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MKL_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        for r in range(args.rounds):
            for side in (sides if r % 2 == 0 else reversed(list(sides))):
                out, _ = run_child([str(Path(__file__).resolve()), "--child", "--data-dir", str(data_dir),
                                    "--calls", str(args.calls), "--exact-max-items", str(args.exact_max_items)],
                                   env={**env, "PYTHONPATH": str(sides[side])})
                runs[side].append(json.loads(out.strip().splitlines()[-1]))

    rows = []
    print(f"{'operation':<18} {'baseline us':>12} {'new us':>9} {'ratio':>7}  same answers")
    for name in OPS:
        best = {s: min(run[name]["median_us"] for run in runs[s]) for s in sides}
        same = len({run[name]["digest"] for s in sides for run in runs[s]}) == 1
        ratio = best["new"] / best["baseline"]
        rows.append({"op": name, "baseline_us": round(best["baseline"], 1), "new_us": round(best["new"], 1),
                     "ratio": round(ratio, 3), "same_answers": same,
                     "rounds_us": {s: [round(run[name]["median_us"], 1) for run in runs[s]] for s in sides}})
        print(f"{name:<18} {best['baseline']:>12.1f} {best['new']:>9.1f} {ratio:>7.3f}  {'yes' if same else 'NO'}")
    print(load_line(machine))
    path = append_result("service", {
        "store": {"users": args.users, "items": args.items, "events": args.events},
        "index": "exact" if args.items <= args.exact_max_items else "hnsw",
        "calls": args.calls, "rounds": args.rounds,
        "baseline": args.baseline_ref if args.baseline_src is None else str(args.baseline_src),
        "rows": rows,
    }, machine=machine)
    print(f"appended to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
