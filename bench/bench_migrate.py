"""`scalerec migrate` of a catalogue (issue 14 item 6) beside its peer in the same run: the same
items and pending events written into an empty PostgreSQL schema through the catalogue API
(``upsert_items`` / ``add_pending_events`` in blocks, what re-importing does), vs
``copy_catalog`` (blocks with their cursors, triggers off) and then ``verify`` (both sides read
back and hashed). Rounds alternate the two, median reported.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python bench/bench_migrate.py [--items 100000 --events 400000]

Starts its own PostgreSQL cluster (fsync on); prints a table and appends one JSON line to
bench/results/migrate.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import append_result, load_line, machine_info  # noqa: E402
from _servers import PostgresServer  # noqa: E402

from scalerec.config import Settings  # noqa: E402
from scalerec.data.catalog import open_catalog  # noqa: E402
from scalerec.data.catalog.copy import copy_catalog, verify  # noqa: E402
from scalerec.data.validate import validate_events, validate_items  # noqa: E402

BLOCK = 50_000


def _tables(n_items: int, n_events: int) -> tuple[list[pa.Table], list[pa.Table]]:
    settings = Settings()
    items = []
    for lo in range(0, n_items, BLOCK):
        i = np.arange(lo, min(lo + BLOCK, n_items))
        valid, _ = validate_items(pa.table({"item_id": [f"sku-{k}" for k in i], "title": [f"Item {k}" for k in i],
                                            "price": (i % 97).astype(float) + 0.5}), settings)
        items.append(valid)
    events = []
    for lo in range(0, n_events, BLOCK):
        i = np.arange(lo, min(lo + BLOCK, n_events))
        valid, _ = validate_events(pa.table({"user_id": [f"u{k % 20000}" for k in i],
                                             "item_id": [f"sku-{k % max(1, n_items)}" for k in i],
                                             "event_type": ["view"] * len(i), "timestamp": 1_700_000_000 + i}),
                                   settings)
        events.append(valid)
    return items, events


def through_api(url: str, items: list[pa.Table], events: list[pa.Table]) -> float:
    cat = open_catalog(url)
    t0 = time.perf_counter()
    for t in items:
        cat.upsert_items(t)
    for t in events:
        cat.add_pending_events(t)
    s = time.perf_counter() - t0
    cat.close()
    return s


def migrated(source_path: Path, url: str) -> tuple[float, float]:
    src, dst = open_catalog(f"sqlite:///{source_path}"), open_catalog(url)
    t0 = time.perf_counter()
    copy_catalog(src, dst, source_id=str(source_path), block_rows=BLOCK)
    t1 = time.perf_counter()
    reports = verify(src, dst, block_rows=BLOCK)
    t2 = time.perf_counter()
    assert all(r.ok for r in reports), [r.name for r in reports if not r.ok]
    src.close()
    dst.close()
    return t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    items, events = _tables(args.items, args.events)
    source = root / "catalog.db"
    through_api(f"sqlite:///{source}", items, events)
    rows = args.items + args.events
    machine = machine_info()
    pg = PostgresServer(fsync=True).start()
    api_s, copy_s, verify_s = [], [], []
    try:
        for _ in range(args.rounds):  # interleaved: one round's load is shared by both
            api_s.append(through_api(pg.new_schema_url(), items, events))
            c, v = migrated(source, pg.new_schema_url())
            copy_s.append(c)
            verify_s.append(v)
    finally:
        pg.stop()
    api, cp, vf = (statistics.median(x) for x in (api_s, copy_s, verify_s))
    print(load_line(machine))
    print(f"| {rows:,} rows ({args.items:,} items + {args.events:,} pending events), median of {args.rounds} | "
          "seconds | rows/s | ratio to the API |")
    print("|---|---:|---:|---:|")
    print(f"| catalogue API (upsert_items + add_pending_events, blocks of {BLOCK:,}) | {api:.2f} | {rows / api:,.0f} | 1.00 |")
    print(f"| migrate: copy_catalog | {cp:.2f} | {rows / cp:,.0f} | {api / cp:.2f} |")
    print(f"| migrate: verify (both sides read and hashed) | {vf:.2f} | {rows / vf:,.0f} | {api / vf:.2f} |")
    print(f"| migrate: copy + verify | {cp + vf:.2f} | {rows / (cp + vf):,.0f} | {api / (cp + vf):.2f} |")
    path = append_result("migrate", {"args": vars(args), "rows": rows, "api_s": api_s, "copy_s": copy_s,
                                     "verify_s": verify_s}, machine=machine)
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
