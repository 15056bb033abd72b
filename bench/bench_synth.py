"""Benchmark: synthetic-shop generator rate (events/s) and peak memory, which must not grow with N.

Usage:
    .venv/bin/python bench/bench_synth.py                         # 100M events (the lead's run)
    .venv/bin/python bench/bench_synth.py --events 5000000        # a quick check
    .venv/bin/python bench/bench_synth.py --events 5000000 --store /tmp/synth --overwrite   # + write a store

The generator alone (event_chunks, chunks discarded) is timed first; with ``--store`` the same
shop is then written through ``generate_store`` (event log + catalogue) into that directory, which
must not hold events yet. Peak RSS is sampled in a thread; "RSS at 10%" vs "peak" shows whether
memory grows with the number of events. Prints a rich table and appends one JSON line to
bench/results/synth.jsonl.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from _common import MIB, PeakRSS, append_result, load_line, machine_info
from scalerec.datasets.synth import event_chunks, make_catalog, make_users


def _progress(console: Console, label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)


def bench_generator(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Time the pure generator; RSS is recorded when 10% of the events are out and at the peak."""
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        catalog = make_catalog(args.items, seed=args.seed, days=args.days, start=args.start)
        users = make_users(args.users, seed=args.seed, days=args.days, start=args.start)
        world_s = time.perf_counter() - t0
        rss_world = mem.proc.memory_info().rss
        done, rss_10 = 0, None
        t1, cpu1 = time.perf_counter(), time.process_time()
        with _progress(console, "generating") as bar:
            task = bar.add_task("events", total=args.events)
            for chunk in event_chunks(catalog, users, n_events=args.events, seed=args.seed,
                                      chunk_events=args.chunk_events):
                done += chunk.num_rows
                del chunk
                if rss_10 is None and done >= args.events / 10:
                    rss_10 = mem.peak  # peak so far: the steady state is reached within a few chunks
                bar.update(task, completed=done)
        gen_s, gen_cpu_s = time.perf_counter() - t1, time.process_time() - cpu1
    return {
        "events": done,
        "world_s": round(world_s, 3),
        "generate_s": round(gen_s, 3),
        "events_per_s": round(done / gen_s) if gen_s > 0 else None,
        # CPU time is the fairer figure on a shared machine (wall time includes waiting for a core)
        "generate_cpu_s": round(gen_cpu_s, 3),
        "events_per_cpu_s": round(done / gen_cpu_s) if gen_cpu_s > 0 else None,
        "rss_start_mib": round(mem.start / MIB, 1),
        "rss_after_world_mib": round(rss_world / MIB, 1),
        "rss_peak_at_10pct_mib": None if rss_10 is None else round(rss_10 / MIB, 1),
        "rss_peak_mib": round(mem.peak / MIB, 1),
    }


def bench_store(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Time generate_store into ``args.store`` (event log + catalogue), end to end."""
    from scalerec.config import Settings
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store

    root = Path(args.store)
    if root.exists() and args.overwrite:
        shutil.rmtree(root)
    store = DataStore.open(Settings(data={"dir": root}))
    cpu0 = time.process_time()
    with PeakRSS() as mem, _progress(console, "writing store") as bar:
        task = bar.add_task("events", total=args.events)
        report = generate_store(
            store, n_users=args.users, n_items=args.items, n_events=args.events, seed=args.seed,
            days=args.days, start=args.start, chunk_events=args.chunk_events,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    cpu_s = time.process_time() - cpu0
    disk = sum(p.stat().st_size for p in (root / "events").rglob("*.parquet"))
    return {
        "dir": str(root),
        "events": report.n_events,
        "event_counts": report.event_counts,
        "elapsed_s": round(report.elapsed_s, 3),
        "events_per_s": round(report.events_per_s),
        "cpu_s": round(cpu_s, 3),
        "events_per_cpu_s": round(report.n_events / cpu_s) if cpu_s > 0 else None,
        # the events alone (generate + write the log), without the catalogue and customer upserts
        "events_only_s": round(report.events_s, 3),
        "events_only_per_s": round(report.events_only_per_s),
        "rss_peak_mib": round(mem.peak / MIB, 1),
        "log_bytes": disk,
        "log_bytes_per_event": round(disk / max(report.n_events, 1), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000_000)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--start", default=None, help="first day YYYY-MM-DD (default: the period ends 2025-01-01)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-events", type=int, default=1_000_000)
    ap.add_argument("--store", help="also write the shop into this data directory (e.g. /tmp/synth; 100M events ~1 GB)")
    ap.add_argument("--overwrite", action="store_true", help="delete --store first")
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results/synth.jsonl")
    args = ap.parse_args()
    console = Console()
    machine = machine_info()

    gen = bench_generator(args, console)
    store = bench_store(args, console) if args.store else None

    table = Table(title=f"synthetic shop: {args.events:,} events, {args.users:,} users, {args.items:,} items, "
                        f"{args.days} days ({os.cpu_count()} cores)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("catalogue + customers", f"{gen['world_s']:.2f} s")
    table.add_row("generator", f"{gen['generate_s']:.2f} s")
    table.add_row("generator rate", f"{gen['events_per_s']:,} events/s")
    table.add_row("generator rate per CPU second", f"{gen['events_per_cpu_s']:,} events/s")
    table.add_row("RSS at start / after world", f"{gen['rss_start_mib']:,.0f} / {gen['rss_after_world_mib']:,.0f} MiB")
    if gen["rss_peak_at_10pct_mib"] is not None:
        table.add_row("peak RSS after 10% of events", f"{gen['rss_peak_at_10pct_mib']:,.0f} MiB")
    table.add_row("peak RSS (generator)", f"{gen['rss_peak_mib']:,.0f} MiB")
    if store is not None:
        table.add_row("store: generate + write", f"{store['elapsed_s']:.2f} s")
        table.add_row("store rate (wall / per CPU s)",
                      f"{store['events_per_s']:,} / {store['events_per_cpu_s']:,} events/s")
        table.add_row("store: events alone (generate + write log)",
                      f"{store['events_only_s']:.2f} s, {store['events_only_per_s']:,} events/s")
        table.add_row("store: peak RSS", f"{store['rss_peak_mib']:,.0f} MiB")
        table.add_row("event log on disk",
                      f"{store['log_bytes'] / MIB:,.1f} MiB ({store['log_bytes_per_event']} B/event)")
    console.print(table)
    console.print("goals: > 1,000,000 events/s; peak RSS flat in the number of events")

    console.print(load_line(machine), highlight=False)
    record = {
        "n_events": args.events,
        "n_users": args.users,
        "n_items": args.items,
        "days": args.days,
        "seed": args.seed,
        "chunk_events": args.chunk_events,
        "generator": gen,
        "store": store,
    }
    if not args.no_save:
        path = append_result("synth", record, machine=machine)
        console.print(f"appended to {path}")


if __name__ == "__main__":
    main()
