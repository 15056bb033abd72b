"""Benchmark: import rate into the event log on object storage ([data] events_url) vs the local
disk, and the model-store half of `scalerec migrate` (bytes/s to the store vs a local copy), same run.

Usage:
    .venv/bin/python bench/bench_event_store.py                       # the shared Online Retail file
    .venv/bin/python bench/bench_event_store.py --csv events.csv      # another events CSV (no preset)

Import: the real `import_file` (parse, validate, encode, write, publish) into a fresh data
directory per run with the log (a) in `<dir>/events` (the default), (b) on an object store that is
a local path, (c) on moto's S3-compatible server on loopback (started here, one bucket per run).
Rounds are interleaved (a, b, c, a, b, c, ...) so load drifts hit every target; medians are
compared. Migrate: `migrate_store` (upload + read-back SHA-256 of every file) of a made-up model
directory to a local path and to moto, beside `shutil.copytree` of the same directory.
Prints tables and appends one JSON line to bench/results/event_store.jsonl.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import append_result, load_line, machine_info  # noqa: E402
from _servers import S3Server  # noqa: E402

RETAIL = HERE.parents[1] / "shared" / "datasets" / "online-retail" / "online_retail.csv.gz"


def import_once(path: Path, preset: str | None, work: Path, events_url: str | None) -> dict[str, Any]:
    from scalerec.config import Settings
    from scalerec.data.importers import import_file
    from scalerec.data.store import DataStore

    d = Path(tempfile.mkdtemp(dir=work))
    try:
        store = DataStore.open(Settings(data={"dir": d, "events_url": events_url}))
        t0 = time.perf_counter()
        report = import_file(store, "events", path, preset=preset)
        seconds = time.perf_counter() - t0
        logged = store.log.count()
        store.close()
        return {"rows": report.imported, "logged": logged, "seconds": seconds}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fake_models(root: Path, versions: int, mib: int) -> Path:
    """Made-up model versions: random arrays (incompressible), a few small files, manifest last."""
    rng = np.random.default_rng(0)
    models = root / "models"
    for v in range(versions):
        d = models / f"v{v + 1:04d}"
        (d / "model").mkdir(parents=True)
        np.save(d / "model" / "factors.npy", rng.random((mib * 1024 * 1024 // 8 // 64, 64)))
        np.save(d / "popular.npy", rng.random(1000))
        (d / "manifest.json").write_text('{"version": "v%04d"}' % (v + 1))
    return models


def migrate_once(models: Path, url: str | None, work: Path) -> tuple[float, int]:
    from scalerec.data.migrate import migrate_store
    from scalerec.data.objectstore import ObjectStore

    t0 = time.perf_counter()
    if url is None:
        dest = Path(tempfile.mkdtemp(dir=work)) / "models"
        shutil.copytree(models, dest)
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        seconds = time.perf_counter() - t0
        shutil.rmtree(dest.parent)
        return seconds, size
    reports = migrate_store(models, ObjectStore(url))
    assert all(r.ok for r in reports)
    return time.perf_counter() - t0, sum(r.bytes for r in reports)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", type=Path, help="an events CSV in the export layout (default: Online Retail)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--versions", type=int, default=2, help="made-up model versions for the migrate part")
    ap.add_argument("--mib", type=int, default=48, help="MiB of arrays per made-up version")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    path, preset = (args.csv, None) if args.csv else (RETAIL, "online-retail")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    work = Path(tempfile.mkdtemp(prefix="bench-event-store-", dir=args.work_dir))
    machine = machine_info()
    s3 = S3Server().start()
    targets = {"local disk (<dir>/events, default)": lambda: None,
               "object store: local path": lambda: str(Path(tempfile.mkdtemp(dir=work)) / "store"),
               "object store: moto S3 on loopback": lambda: s3.bucket_url("events")}
    imports: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    migrates: dict[str, list[tuple[float, int]]] = {"local copy (shutil.copytree)": [],
                                                   "migrate_store -> local path": [],
                                                   "migrate_store -> moto S3": []}
    try:
        models = fake_models(work, args.versions, args.mib)
        for _ in range(args.rounds):
            for name, url in targets.items():
                imports[name].append(import_once(path, preset, work, url()))
            migrates["local copy (shutil.copytree)"].append(migrate_once(models, None, work))
            migrates["migrate_store -> local path"].append(
                migrate_once(models, str(Path(tempfile.mkdtemp(dir=work)) / "store"), work))
            migrates["migrate_store -> moto S3"].append(migrate_once(models, s3.bucket_url("models"), work))
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(load_line(machine))
    base = statistics.median(r["seconds"] for r in imports[next(iter(targets))])
    print(f"| import of {path.name}, median of {args.rounds} | rows | seconds | rows/s | ratio to local disk |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in imports.items():
        assert len({(r["rows"], r["logged"]) for r in runs}) == 1 and runs[0]["rows"] == runs[0]["logged"]
        med = statistics.median(r["seconds"] for r in runs)
        print(f"| {name} | {runs[0]['rows']:,} | {med:.2f} | {runs[0]['rows'] / med:,.0f} | {base / med:.2f} |")
    print()
    mbase = statistics.median(s for s, _ in migrates["local copy (shutil.copytree)"])
    print(f"| model versions ({args.versions} x {args.mib} MiB), median of {args.rounds} | MiB | seconds | MB/s | ratio to local copy |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in migrates.items():
        med = statistics.median(s for s, _ in runs)
        size = runs[0][1]
        print(f"| {name} | {size / 2**20:,.0f} | {med:.2f} | {size / med / 1e6:,.0f} | {mbase / med:.2f} |")
    out = append_result("event_store", {"args": {k: str(v) for k, v in vars(args).items()}, "input": str(path.name),
                                        "imports": imports, "migrates": migrates}, machine=machine)
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
