"""Benchmark: the whole path at a given size, each step's time and peak memory (issue 18 item 5).

Usage:
    .venv/bin/python bench/bench_scale.py --events 1000000                     # one size
    .venv/bin/python bench/bench_scale.py --events 1000000 --events 3000000    # slopes between sizes
    .venv/bin/python bench/bench_scale.py --events 1000000 --trials 2 --serve-queries 500
    .venv/bin/python bench/bench_scale.py --events 1000000 --events 10000000 --lock /work/bigrun.lock \
        --lock-steps tuning --lock-from-events 5000000     # a shared machine: the big step takes turns

Steps, each in a fresh child process (its peak RSS is the kernel's high-water mark from wait4,
so nothing is missed between samples): import (a synthetic events CSV in the layout of
`scalerec export events`, written once per size under --work-dir and reused), matrix (the default
[matrix] settings), ALS fit (64 factors, 10 iterations, on that matrix), tuning (`train` with ALS
only and a --trials budget: split, search, test score, registration, promotion), batch (top-20 of
every user of the promoted version), serving (an in-process RecommendService: load, then
--serve-queries recommend_user calls, one at a time). Users and items grow with the events (as
`bench_import.py --make-csv` sizes them: events/50 users, events/1000 items). The peer in the same
run is the other sizes: per-step slopes (seconds and MiB per million events) between the smallest
and the largest size are printed and saved, for the projection in BENCHMARKS.md. Appends one JSON
line to bench/results/scale.jsonl.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from _common import append_result, load_line, machine_info, run_child

STEPS = ("import", "matrix", "als_fit", "tuning", "batch", "serving")


# -- children (run with --child STEP DATA_DIR ...) ---------------------------------------------------

def _settings(data_dir: str) -> Any:
    from scalerec.config import Settings

    return Settings(data={"dir": data_dir})


def child_import(data_dir: str, csv_path: str) -> dict[str, Any]:
    from scalerec.data.importers import import_file
    from scalerec.data.store import DataStore

    store = DataStore.open(_settings(data_dir))
    t0 = time.perf_counter()
    report = import_file(store, "events", csv_path)
    seconds = time.perf_counter() - t0
    store.close()
    return {"seconds": seconds, "rows": report.imported}


def child_matrix(data_dir: str) -> dict[str, Any]:
    from scalerec.data.matrix import matrix_from_settings
    from scalerec.data.store import DataStore

    settings = _settings(data_dir)
    store = DataStore(settings)
    t0 = time.perf_counter()
    m = matrix_from_settings(store, settings)
    seconds = time.perf_counter() - t0
    out_mib = (m.matrix.data.nbytes + m.matrix.indices.nbytes + m.matrix.indptr.nbytes) / 2**20
    return {"seconds": seconds, "users": m.n_users, "items": m.n_items, "nnz": m.nnz, "matrix_mib": out_mib}


def child_als(data_dir: str) -> dict[str, Any]:
    from scalerec.data.matrix import matrix_from_settings
    from scalerec.data.store import DataStore
    from scalerec.models.als import ALS

    settings = _settings(data_dir)
    m = matrix_from_settings(DataStore(settings), settings)
    model = ALS(factors=64, iterations=10)
    t0 = time.perf_counter()
    model.fit(m.matrix)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "s_per_iteration": seconds / 10}


def child_tuning(data_dir: str, trials: int) -> dict[str, Any]:
    from scalerec.data.store import DataStore
    from scalerec.training.pipeline import TrainOptions, train

    settings = _settings(data_dir)
    store = DataStore(settings)
    t0 = time.perf_counter()
    result = train(settings, TrainOptions(models=["als"], trials=trials, force=True), store=store)
    seconds = time.perf_counter() - t0
    if result.status != "registered":
        raise SystemExit(f"training did not register a version: {result.reason}")
    return {"seconds": seconds, "version": result.version.version if result.version else None,
            "metrics": result.metrics}


def child_batch(data_dir: str) -> dict[str, Any]:
    from scalerec.serving.batch import batch_recommend

    out = Path(data_dir) / "bench-batch"
    t0 = time.perf_counter()
    result = batch_recommend(_settings(data_dir), out, n=20, overwrite=True)
    seconds = time.perf_counter() - t0
    users = result.n_users
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "users": users}


def child_serving(data_dir: str, queries: int) -> dict[str, Any]:
    import numpy as np

    from scalerec.serving.filters import ItemFilter
    from scalerec.serving.service import RecommendService

    t0 = time.perf_counter()
    service = RecommendService(_settings(data_dir))
    load_s = time.perf_counter() - t0
    ids = service.live.model.user_ids
    rng = np.random.default_rng(0)
    users = [str(u) for u in ids[rng.integers(0, len(ids), queries)]]
    plain = ItemFilter()
    for u in users[:50]:  # warm-up
        service.recommend_user(u, 20, plain)
    times = np.empty(queries)
    t1 = time.perf_counter()
    for i, u in enumerate(users):
        s = time.perf_counter()
        service.recommend_user(u, 20, plain)
        times[i] = time.perf_counter() - s
    total = time.perf_counter() - t1
    service.close()
    return {"seconds": load_s + total, "load_s": load_s, "queries": queries, "qps": queries / total,
            "median_ms": float(np.median(times) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3)}


# -- the benchmark -------------------------------------------------------------------------------------

def _csv_for(n_events: int, work_dir: Path, console: Console) -> Path:
    path = work_dir / f"scalerec-scale-{n_events}.csv"
    if not path.exists():
        console.print(f"writing {path} ...", highlight=False)
        run_child([str(Path(__file__).with_name("bench_import.py")), "--make-csv", str(n_events), str(path)])
    return path


@contextmanager
def _step_lock(path: Path | None) -> Iterator[None]:
    """An exclusive flock on ``path`` for one step (None: no lock): on a shared machine the large
    steps take turns with other large runs, and the lock is free again between steps."""
    if path is None:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_size(n_events: int, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    csv_path = _csv_for(n_events, args.work_dir, console)
    data_dir = Path(tempfile.mkdtemp(prefix="scalerec-scale-", dir=args.work_dir))
    steps: dict[str, dict[str, Any]] = {}
    try:
        for step in STEPS:
            extra = {"import": [str(csv_path)], "tuning": [str(args.trials)],
                     "serving": [str(args.serve_queries)]}.get(step, [])
            console.print(f"{n_events:,} events: {step} ...", highlight=False)
            locked = step in args.lock_steps and n_events >= args.lock_from_events
            with _step_lock(args.lock if locked else None):
                wall0, load0 = time.perf_counter(), os.getloadavg()[0]
                out, peak = run_child([__file__, "--child", step, str(data_dir), *extra])
            result = json.loads(out.strip().splitlines()[-1])
            result["process_s"] = time.perf_counter() - wall0
            result["load"] = [round(load0, 1), round(os.getloadavg()[0], 1)]  # a shared machine: per step
            result["peak_rss_mib"] = peak
            steps[step] = result
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"events": n_events, "steps": steps}


def slopes(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Seconds and peak MiB per million events between the smallest and the largest size."""
    if len(runs) < 2:
        return {}
    a, b = runs[0], runs[-1]
    d = (b["events"] - a["events"]) / 1e6
    return {s: {"s_per_m_events": (b["steps"][s]["seconds"] - a["steps"][s]["seconds"]) / d,
                "mib_per_m_events": (b["steps"][s]["peak_rss_mib"] - a["steps"][s]["peak_rss_mib"]) / d}
            for s in STEPS}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        step, data_dir, *rest = sys.argv[2:]
        fn = {"import": lambda: child_import(data_dir, rest[0]), "matrix": lambda: child_matrix(data_dir),
              "als_fit": lambda: child_als(data_dir), "tuning": lambda: child_tuning(data_dir, int(rest[0])),
              "batch": lambda: child_batch(data_dir), "serving": lambda: child_serving(data_dir, int(rest[0]))}[step]
        print(json.dumps(fn(), default=str))
        return

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, action="append", default=[], help="events (repeatable; default 1,000,000)")
    ap.add_argument("--trials", type=int, default=2, help="tuning budget: ALS trials (default 2)")
    ap.add_argument("--serve-queries", type=int, default=500, help="recommend_user calls timed (default 500)")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()),
                    help="where the CSVs and the temporary data directories go (default: the system temp dir)")
    ap.add_argument("--lock", type=Path, help="flock this file around each step of --lock-steps (a shared machine's "
                    "big-run lock), released between steps")
    ap.add_argument("--lock-steps", default=",".join(STEPS),
                    help=f"comma-separated steps that hold --lock (default: all of {','.join(STEPS)})")
    ap.add_argument("--lock-from-events", type=int, default=0, help="only sizes of at least this many events hold --lock")
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results/scale.jsonl")
    args = ap.parse_args()
    sizes = sorted(args.events or [1_000_000])
    args.lock_steps = {s.strip() for s in args.lock_steps.split(",") if s.strip()}
    if args.lock_steps - set(STEPS):
        ap.error(f"--lock-steps: unknown steps {sorted(args.lock_steps - set(STEPS))}; choose from {', '.join(STEPS)}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    machine = machine_info()
    runs = [run_size(n, args, console) for n in sizes]
    slope = slopes(runs)

    table = Table(title="scalerec end to end: each step in its own process (peak RSS from wait4)")
    for col in ("events", "step", "seconds", "peak RSS MiB", "load", "detail"):
        table.add_column(col, justify="left" if col in ("step", "detail") else "right")
    for run in runs:
        for step in STEPS:
            r = run["steps"][step]
            detail = {
                "import": lambda r: f"{r['rows'] / r['seconds']:,.0f} rows/s",
                "matrix": lambda r: f"{r['users']:,} x {r['items']:,}, nnz {r['nnz']:,}, CSR {r['matrix_mib']:,.0f} MiB",
                "als_fit": lambda r: f"{r['s_per_iteration']:.2f} s/iteration (64 factors)",
                "tuning": lambda r: f"{args.trials} trials, version {r['version']}",
                "batch": lambda r: f"top-20 of {r['users'] or 0:,} users",
                "serving": lambda r: (f"load {r['load_s']:.1f} s; {r['qps']:,.0f} q/s, median {r['median_ms']:.2f} ms, "
                                      f"p99 {r['p99_ms']:.2f} ms"),
            }[step](r)
            load = "-".join(f"{v:.1f}" for v in r.get("load", ()))
            table.add_row(f"{run['events']:,}", step, f"{r['seconds']:.2f}", f"{r['peak_rss_mib']:,.0f}", load, detail)
    console.print(table)
    if slope:
        st = Table(title=f"slopes between {sizes[0]:,} and {sizes[-1]:,} events")
        for col in ("step", "s per M events", "peak MiB per M events"):
            st.add_column(col, justify="left" if col == "step" else "right")
        for s, v in slope.items():
            st.add_row(s, f"{v['s_per_m_events']:.2f}", f"{v['mib_per_m_events']:.1f}")
        console.print(st)
    console.print(load_line(machine), highlight=False)
    if not args.no_save:
        path = append_result("scale", {"runs": runs, "slopes": slope, "trials": args.trials}, machine=machine)
        console.print(f"appended to {path}", highlight=False)


if __name__ == "__main__":
    main()
