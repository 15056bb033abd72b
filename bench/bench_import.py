"""Benchmark: import rate (rows/s) and peak memory of `scalerec import events`, beside the time of a
plain `pyarrow.csv.read_csv` of the same file (the ceiling: parsing alone, no validation or writing).

Usage:
    .venv/bin/python bench/bench_import.py                      # the shared Online Retail file
    .venv/bin/python bench/bench_import.py --csv events.csv     # also a large events CSV
    .venv/bin/python bench/bench_import.py --make-csv 20000000 /tmp/ev20m.csv   # write one (~2.2 GB)

A large events CSV comes from `scalerec synth` then `scalerec export events out.csv` (or --make-csv,
which does the same without a data directory). Each measurement runs in a fresh child process; its
peak RSS is the kernel's high-water mark for that process (os.wait4), so nothing is missed between
samples. The imported store lives in a temporary directory under --work-dir (default /tmp) and is
deleted afterwards. Prints a rich table and appends one JSON line to bench/results/import.jsonl.
Goals (foundation issue): >= 1,000,000 rows/s and peak RSS < 1.5 GB for a 20M-row file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from _common import append_result, load_line, machine_info, run_child as _run

HERE = Path(__file__).resolve().parent
RETAIL = HERE.parents[1] / "shared" / "datasets" / "online-retail" / "online_retail.csv.gz"


# -- children (run with --child ...) ---------------------------------------------------------------

def child_read_csv(path: str) -> dict[str, Any]:
    import pyarrow.csv as pacsv

    t0, c0 = time.perf_counter(), time.process_time()
    table = pacsv.read_csv(path)
    return {"rows": table.num_rows, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def child_stream_parse(path: str) -> dict[str, Any]:
    """The parse alone as the import does it: streamed 4 MiB blocks, every column as text, one
    thread; batches are dropped. The import's own ceiling (read_csv also infers types and keeps
    the whole table in memory)."""
    import csv

    import pyarrow as pa
    import pyarrow.csv as pacsv

    t0, c0 = time.perf_counter(), time.process_time()
    with pa.input_stream(path) as fh:  # .gz detected from the suffix, as the import does
        names = next(csv.reader([fh.read(1 << 16).decode("utf-8", "replace").splitlines()[0]]))
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=4 << 20, use_threads=False),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, null_values=[""],
                                             strings_can_be_null=True),
    )
    rows = sum(batch.num_rows for batch in reader)
    return {"rows": rows, "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def child_import(path: str, data_dir: str, preset: str | None, chunk_rows: int | None) -> dict[str, Any]:
    from scalerec.config import Settings
    from scalerec.data.importers import import_file
    from scalerec.data.store import DataStore

    store = DataStore.open(Settings(data={"dir": data_dir}))
    t0, c0 = time.perf_counter(), time.process_time()
    report = import_file(store, "events", path, preset=preset, chunk_rows=chunk_rows)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    logged = store.log.count()
    files = store.log.files()
    log_bytes = sum(f.stat().st_size for f in files)
    store.close()
    return {"rows": report.rows_read, "imported": report.imported, "logged": logged, "log_files": len(files),
            "log_bytes": log_bytes,
            "rejected": report.rejected, "seconds": seconds, "cpu_s": cpu}


def run_child(args: list[str]) -> dict[str, Any]:
    """Run this script as a child; returns its JSON result plus its peak RSS (MiB) from wait4."""
    out, peak_mib = _run([__file__, "--child", *args])
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = peak_mib
    return result


# -- making a large CSV ------------------------------------------------------------------------------

def make_csv(n_events: int, out: Path, seed: int = 0, days: int = 180) -> None:
    """A synthetic events CSV in the layout of `scalerec export events` (synth generator, streamed) over
    ``days`` days: n_events / days rows per day file of the log."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from scalerec.datasets import synth
    from scalerec.data.export import csv_schema, flatten_for_csv
    from scalerec.data.schema import EVENT_SCHEMA

    catalog = synth.make_catalog(max(2_000, n_events // 1_000), seed=seed, days=days)
    users = synth.make_users(max(10_000, n_events // 50), seed=seed, days=days)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    writer = None
    keys: list[str] = []
    done = 0
    try:
        for chunk in synth.event_chunks(catalog, users, n_events=n_events, seed=seed, chunk_events=500_000):
            if writer is None:
                ctx = chunk.column("context").combine_chunks()
                keys = sorted(k for k in pc.unique(ctx.keys).to_pylist() if k is not None)
                schema = csv_schema(EVENT_SCHEMA, "context", keys)
                writer = pacsv.CSVWriter(str(tmp), schema)
            writer.write_table(flatten_for_csv(chunk, EVENT_SCHEMA, "context", keys).cast(schema))
            done += chunk.num_rows
            print(f"\r{done:,} / {n_events:,} events", end="", file=sys.stderr)
        if writer is not None:
            writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"\nwrote {out} ({out.stat().st_size / 1e6:,.0f} MB)", file=sys.stderr)
    del pa


# -- the benchmark -------------------------------------------------------------------------------------

def bench_file(path: Path, preset: str | None, chunk_rows: int | None, work_dir: Path) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="scalerec-import-", dir=work_dir))
    try:
        imp = run_child(["import", str(path), str(data_dir), preset or "", str(chunk_rows or 0)])
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    ceiling = run_child(["read_csv", str(path)])
    parse = run_child(["parse", str(path)])
    return {
        "input": path.name,
        "preset": preset,
        "bytes": path.stat().st_size,
        "rows": imp["rows"],
        "imported": imp["imported"],
        "log_files": imp["log_files"],
        "log_bytes": imp["log_bytes"],
        "import_s": imp["seconds"],
        "import_cpu_s": imp["cpu_s"],
        "import_rows_per_s": imp["rows"] / imp["seconds"],
        "import_peak_rss_mib": imp["peak_rss_mib"],
        "read_csv_s": ceiling["seconds"],
        "read_csv_cpu_s": ceiling["cpu_s"],
        "read_csv_rows_per_s": ceiling["rows"] / ceiling["seconds"],
        "read_csv_peak_rss_mib": ceiling["peak_rss_mib"],
        "parse_s": parse["seconds"],
        "parse_cpu_s": parse["cpu_s"],
        "parse_peak_rss_mib": parse["peak_rss_mib"],
        "chunk_rows": chunk_rows,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "read_csv":
            result = child_read_csv(rest[0])
        elif kind == "parse":
            result = child_stream_parse(rest[0])
        else:
            path, data_dir, preset, chunk = rest
            result = child_import(path, data_dir, preset or None, int(chunk) or None)
        print(json.dumps(result))
        return

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, action="append", default=[], help="an events CSV to import (repeatable)")
    ap.add_argument("--no-retail", action="store_true", help="skip the Online Retail file")
    ap.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk (default: the setting)")
    ap.add_argument("--make-csv", nargs=2, metavar=("N_EVENTS", "OUT"), help="write a synthetic events CSV and exit")
    ap.add_argument("--days", type=int, default=180,
                    help="days the --make-csv events span (rows per day file = N_EVENTS / days; default 180)")
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results/import.jsonl")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()),
                    help="where the temporary data directory goes (default: the system temp dir)")
    args = ap.parse_args()
    if args.make_csv:
        make_csv(int(args.make_csv[0]), Path(args.make_csv[1]), days=args.days)
        return

    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # the table is wide; keep it readable in logs
    inputs: list[tuple[Path, str | None]] = []
    if not args.no_retail:
        inputs.append((RETAIL, "online-retail"))
    inputs += [(p, None) for p in args.csv]
    machine = machine_info()
    results = []
    for path, preset in inputs:
        console.print(f"importing {path.name} ...", highlight=False)
        results.append(bench_file(path, preset, args.chunk_rows, args.work_dir))

    table = Table(title="scalerec import events vs pyarrow.csv.read_csv of the same file (the ceiling asked for) "
                        "and the import's own streamed text parse")
    for col in ("input", "rows", "MB", "import s", "rows/s", "peak RSS MiB", "cpu s", "log B/row", "read_csv s",
                "read_csv cpu s", "read_csv peak MiB", "import / read_csv", "parse s", "parse cpu s",
                "import / parse"):
        table.add_column(col, justify="left" if col == "input" else "right")
    for r in results:
        table.add_row(
            r["input"] + (f" ({r['preset']})" if r["preset"] else ""), f"{r['rows']:,}", f"{r['bytes'] / 1e6:,.0f}",
            f"{r['import_s']:.2f}", f"{r['import_rows_per_s']:,.0f}", f"{r['import_peak_rss_mib']:,.0f}",
            f"{r['import_cpu_s']:.2f}", f"{r['log_bytes'] / max(r['imported'], 1):.1f}", f"{r['read_csv_s']:.2f}",
            f"{r['read_csv_cpu_s']:.2f}", f"{r['read_csv_peak_rss_mib']:,.0f}", f"{r['import_s'] / r['read_csv_s']:.1f}x",
            f"{r['parse_s']:.2f}", f"{r['parse_cpu_s']:.2f}", f"{r['import_s'] / r['parse_s']:.1f}x",
        )
    console.print(table)
    console.print(load_line(machine), highlight=False)
    console.print("goal: >= 1,000,000 rows/s and peak RSS < 1.5 GB on a 20M-row file", highlight=False)
    if not args.no_save:
        path = append_result("import", {"results": results}, machine=machine)
        console.print(f"appended to {path}", highlight=False)


if __name__ == "__main__":
    main()
