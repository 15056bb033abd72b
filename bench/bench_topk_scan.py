"""Batch top-k of an ALS version: items scanned by descending factor norm vs in column order, against the GEMM
in the same blocks, alternately in one process (best CPU seconds of --repeats, one thread).

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_topk_scan.py --data-dir /tmp/perf-serve

``--data-dir``: a store with a production ALS version (e.g. built by ``bench/bench_serving.py --build-only``).
Prints a table and appends one JSON line to ``bench/results/topk_scan.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import append_result, load_line, machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    from scalerec.config import Settings
    from scalerec.models.base import Recommender
    from scalerec.registry import Registry

    faiss.omp_set_num_threads(1)
    lv = Registry(Settings(data={"dir": args.data_dir})).load(None)
    model, X = lv.model, lv.matrix.matrix
    users = np.arange(min(args.users, X.shape[0]))
    exclude = X[users]
    U, V, step = model.user_factors_, model.item_factors_, model.block_rows()
    scan = type(model)._scan_scorer

    def gemm() -> None:
        for s in range(0, len(users), step):
            U[users[s : s + step]] @ V.T

    def recommend(scanned: bool) -> None:
        type(model)._scan_scorer = scan if scanned else Recommender._scan_scorer  # column order: the base's None
        try:
            model.recommend(users, args.n, exclude=exclude)
        finally:
            type(model)._scan_scorer = scan

    runs = {"gemm": gemm, "column order": lambda: recommend(False), "norm-descending scan": lambda: recommend(True)}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    load0 = machine_info()
    with threadpool_limits(1, "blas"):
        for _ in range(args.repeats):
            for name, fn in runs.items():
                c0 = time.process_time()
                fn()
                cpu[name].append(time.process_time() - c0)
    best = {k: min(v) for k, v in cpu.items()}
    table = Table(title=f"batch top {args.n}, {len(users):,} users x {V.shape[0]:,} items, {step} rows per block "
                        f"(best CPU s of {args.repeats}; {load_line(load0)})")
    for col in ("", "CPU s", "ratio to GEMM"):
        table.add_column(col, justify="right" if col else "left")
    for name, s in best.items():
        table.add_row(name, f"{s:.3f}", f"{s / best['gemm']:.2f}x")
    Console().print(table)
    append_result("topk_scan", {"data_dir": str(args.data_dir), "users": len(users), "items": int(V.shape[0]),
                                "n": args.n, "block_rows": step, "cpu_s": cpu,
                                "ratio_column_order": best["column order"] / best["gemm"],
                                "ratio_scan": best["norm-descending scan"] / best["gemm"],
                                "load_after": os.getloadavg()[0]}, machine=load0)


if __name__ == "__main__":
    main()
