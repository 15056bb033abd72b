"""Benchmark: interaction-matrix build (scalerec.data.matrix) from a 20M-event synthetic store.

Usage:
    .venv/bin/python bench/bench_matrix.py                        # 20M events in /tmp/scalerec-matrix-20m
    .venv/bin/python bench/bench_matrix.py --events 2000000 --store /tmp/m2m --repeat 3

The store is made with ``generate_store`` (1M customers, 100k items, 180 days by default) unless
--store already holds exactly --events events, in which case it is reused. Each build runs in a
fresh child process with the default settings (``matrix_from_settings``: every event type, no
window, no decay, minimum counts 1); its peak RSS is the kernel's high-water mark (wait4), and
includes the interpreter and libraries (reported separately as "baseline"). Prints a rich table
and appends one JSON line to bench/results/matrix.jsonl. Goal (foundation issue): under 10 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from _common import MIB, PeakRSS, append_result, load_line, machine_info, run_child

GOAL_S = 10.0


def child_build(store_dir: str) -> dict[str, Any]:
    """Build the matrix of the store with default settings; wall/CPU time, shape, nnz, RSS rise."""
    import psutil

    from scalerec.config import Settings
    from scalerec.data.matrix import matrix_from_settings
    from scalerec.data.store import DataStore

    settings = Settings(data={"dir": store_dir})
    store = DataStore(settings)
    baseline = psutil.Process().memory_info().rss
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        m = matrix_from_settings(store, settings)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    matrix_bytes = m.matrix.data.nbytes + m.matrix.indices.nbytes + m.matrix.indptr.nbytes
    # A second build in the same process: its peak rise is the build's own working memory (the
    # first also pays the libraries' one-time allocations: code pages, thread pools, caches).
    shape = {"n_users": m.n_users, "n_items": m.n_items, "nnz": m.nnz}
    del m
    import gc

    gc.collect()
    warm_base = psutil.Process().memory_info().rss
    with PeakRSS(interval_s=0.002) as warm:
        t1 = time.perf_counter()
        matrix_from_settings(store, settings)
        warm_s = time.perf_counter() - t1
    return {
        "warm_seconds": warm_s, "warm_peak_rise_mib": (warm.peak - warm_base) / MIB,
        "warm_rise_over_matrix": (warm.peak - warm_base) / matrix_bytes,
        "seconds": seconds, "cpu_s": cpu, **shape,
        "matrix_mib": matrix_bytes / MIB, "baseline_rss_mib": baseline / MIB,
        "sampled_peak_rise_mib": (mem.peak - baseline) / MIB,
    }


def child_baseline() -> dict[str, Any]:
    """RSS of a child that imports what a build imports and does nothing else."""
    import scalerec.data.matrix  # noqa: F401
    import scalerec.data.store  # noqa: F401

    return {}


def child_make_store(root: str, events: int, users: int, items: int, days: int, seed: int) -> dict[str, Any]:
    """Generate the synthetic store (in a child: the parent stays small, see ensure_store)."""
    from scalerec.config import Settings
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store

    store = DataStore.open(Settings(data={"dir": root}))
    report = generate_store(store, n_users=users, n_items=items, n_events=events, seed=seed, days=days)
    store.close()
    return {"generate_s": round(report.elapsed_s, 2)}


def ensure_store(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Reuse --store when it holds exactly --events events; otherwise (re)generate it.

    Generated in a child process: Linux reports a child's peak RSS as at least the parent's RSS
    when it forked, so a parent that had generated 20M events itself would inflate every build's
    figure."""
    import pyarrow.parquet as pq

    root = Path(args.store)
    if root.exists():
        have = sum(pq.read_metadata(f).num_rows for f in (root / "events").rglob("date=*/*.parquet"))
        if have == args.events:
            console.print(f"reusing {root} ({have:,} events)", highlight=False)
            return {"generated": False}
        console.print(f"{root} holds {have:,} events, not {args.events:,}: generating it again", highlight=False)
        shutil.rmtree(root)
    console.print(f"generating {args.events:,} events into {root} ...", highlight=False)
    out, _ = run_child([__file__, "--make-store", str(root), str(args.events), str(args.users), str(args.items),
                        str(args.days), str(args.seed)])
    return {"generated": True, **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        result = child_build(sys.argv[2]) if sys.argv[2:] else child_baseline()
        print(json.dumps(result))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--make-store":
        root, *numbers = sys.argv[2:]
        print(json.dumps(child_make_store(root, *map(int, numbers))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="data directory (default /tmp/scalerec-matrix-<N>)")
    ap.add_argument("--repeat", type=int, default=3, help="builds (each in a fresh process); the best is reported too")
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results/matrix.jsonl")
    args = ap.parse_args()
    if args.store is None:
        args.store = f"/tmp/scalerec-matrix-{args.events // 1_000_000}m" if args.events >= 1_000_000 \
            else f"/tmp/scalerec-matrix-{args.events}"
    console = Console()
    made = ensure_store(args, console)
    files = list(Path(args.store, "events").rglob("date=*/*.parquet"))
    log_bytes = sum(f.stat().st_size for f in files)

    machine = machine_info()
    _, baseline_peak = run_child([__file__, "--child"])
    runs = []
    for i in range(args.repeat):
        out, peak = run_child([__file__, "--child", args.store])
        r = json.loads(out.strip().splitlines()[-1])
        r["peak_rss_mib"] = peak
        runs.append(r)
        console.print(f"build {i + 1}: {r['seconds']:.2f} s, cpu {r['cpu_s']:.2f} s, peak RSS {peak:,.0f} MiB",
                      highlight=False)
    best = min(runs, key=lambda r: r["seconds"])

    table = Table(title=f"build_matrix from a {args.events:,}-event store (default settings, {machine['cpus']} cores)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("event log", f"{len(files):,} files, {log_bytes / MIB:,.0f} MiB")
    table.add_row("matrix", f"{best['n_users']:,} x {best['n_items']:,}, nnz {best['nnz']:,} ({best['matrix_mib']:,.0f} MiB)")
    table.add_row("build time (best / median)",
                  f"{best['seconds']:.2f} / {sorted(r['seconds'] for r in runs)[len(runs) // 2]:.2f} s")
    table.add_row("build CPU time (best run)", f"{best['cpu_s']:.2f} s")
    table.add_row("events per second (best)", f"{args.events / best['seconds']:,.0f}")
    table.add_row("peak RSS of the build process", f"{max(r['peak_rss_mib'] for r in runs):,.0f} MiB")
    table.add_row("  of which interpreter + libraries", f"{baseline_peak:,.0f} MiB")
    table.add_row("peak rise above the baseline / matrix (first build)",
                  f"{(max(r['peak_rss_mib'] for r in runs) - baseline_peak) / best['matrix_mib']:.1f}x")
    table.add_row("peak rise / matrix (second build, same process)",
                  f"{max(r['warm_rise_over_matrix'] for r in runs):.1f}x ({best['warm_seconds']:.2f} s)")
    table.add_row("goal", f"< {GOAL_S:.0f} s: {'met' if best['seconds'] < GOAL_S else 'NOT met'}")
    console.print(table)
    console.print(load_line(machine), highlight=False)
    if not args.no_save:
        record = {"n_events": args.events, "n_users": args.users, "n_items": args.items, "days": args.days,
                  "seed": args.seed, "log_files": len(files), "log_bytes": log_bytes, **made,
                  "baseline_peak_rss_mib": baseline_peak, "runs": runs, "best_s": best["seconds"]}
        path = append_result("matrix", record, machine=machine)
        console.print(f"appended to {path}", highlight=False)


if __name__ == "__main__":
    main()
