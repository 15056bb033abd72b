"""Batch top-k of an ALS model against the GEMM limit, at several catalogue sizes (issue 18, item 2).

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_batch_topk.py --items 10000 --items 100000

For each catalogue size: a synthetic matrix (bench_models' Zipf-like items, log-normal users),
ALS factors fitted once and cached under ``--cache-dir`` (so runs of two trees score the same
factors), then, alternately ``--repeats`` times in one process on ``--threads`` threads:

- the GEMM ``U[block] @ V.T`` in the blocks ``recommend`` uses (``block_rows()``);
- the best-blocked GEMM: the fastest of a few block heights (the limit a blocking could reach);
- ``recommend(users, n, exclude=X)``: every user, own history excluded.

Prints best CPU and wall seconds and the ratios; appends one JSON line to
``bench/results/batch_topk.jsonl``. Compare two trees with ``bench/compare_trees.py``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import append_result, load_line, machine_info
from bench_models import synthetic_matrix

#: Block heights tried for the best-blocked GEMM (rows of users per product).
GEMM_ROWS = (64, 256, 1024)


def factors(users: int, items: int, nnz: int, iterations: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    path = cache / f"als-{users}x{items}-{nnz}-{iterations}it.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["U"], z["V"]
    from scalerec.models.als import ALS

    model = ALS(factors=64, regularization=0.01, alpha=1.0, iterations=iterations)
    model.fit(synthetic_matrix(users, items, nnz))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, U=model.user_factors_, V=model.item_factors_)
    return model.user_factors_, model.item_factors_


def measure(users: int, items: int, nnz: int, n: int, repeats: int, iterations: int, cache: Path) -> dict[str, Any]:
    from scalerec.models.als import ALS

    X = synthetic_matrix(users, items, nnz)
    U, V = factors(users, items, nnz, iterations, cache)
    model = ALS(factors=64, iterations=iterations)
    model.user_factors_, model.item_factors_ = U, V
    model.n_users_, model.n_items_ = U.shape[0], V.shape[0]
    rows = np.arange(U.shape[0])
    step = model.block_rows()

    def gemm(block: int) -> Callable[[], None]:
        def run() -> None:
            for s in range(0, len(rows), block):
                U[rows[s : s + block]] @ V.T
        return run

    runs: dict[str, Callable[[], None]] = {"gemm": gemm(step)}
    for r in GEMM_ROWS:
        if r != step:
            runs[f"gemm {r} rows"] = gemm(r)
    runs["recommend"] = lambda: model.recommend(rows, n, exclude=X)
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    best_cpu = {k: min(v) for k, v in cpu.items()}
    best_wall = {k: min(v) for k, v in wall.items()}
    limit = min((k for k in runs if k.startswith("gemm")), key=lambda k: best_cpu[k])
    return {
        "users": int(U.shape[0]), "items": int(V.shape[0]), "n": n, "block_rows": step,
        "cpu_s": cpu, "wall_s": wall,
        "gemm_cpu_s": best_cpu["gemm"], "recommend_cpu_s": best_cpu["recommend"],
        "cpu_ratio": best_cpu["recommend"] / best_cpu["gemm"],
        "wall_ratio": best_wall["recommend"] / best_wall["gemm"],
        "limit": limit, "limit_cpu_s": best_cpu[limit],
        "cpu_ratio_to_limit": best_cpu["recommend"] / best_cpu[limit],
        "gemm_gflops": 2.0 * U.shape[0] * V.shape[0] * U.shape[1] / best_cpu["gemm"] / 1e9,
        "users_per_cpu_s": U.shape[0] / best_cpu["recommend"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, action="append", default=[], help="catalogue size (repeatable; default 10000)")
    ap.add_argument("--nnz", type=int, default=1_000_000)
    ap.add_argument("--n", type=int, default=100, help="list length (top n)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=5, help="ALS iterations of the cached factors")
    ap.add_argument("--threads", type=int, default=1, help="BLAS and FAISS threads (1 is steadiest on a busy host)")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/scalerec-bench-topk"))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    machine = machine_info()
    results = []
    with threadpool_limits(args.threads, "blas"):
        for items in args.items or [10_000]:
            results.append(measure(args.users, items, args.nnz, args.n, args.repeats, args.iterations, args.cache_dir))
    table = Table(title=f"batch top {args.n} vs the GEMM, {args.users:,} users, {args.threads} thread(s), "
                        f"best CPU s of {args.repeats} ({load_line(machine)})")
    for col in ("items", "block rows", "GEMM s", "recommend s", "CPU ratio", "wall ratio", "best-blocked GEMM s",
                "ratio to it", "GEMM GFLOP/s"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(f"{r['items']:,}", str(r["block_rows"]), f"{r['gemm_cpu_s']:.3f}", f"{r['recommend_cpu_s']:.3f}",
                      f"{r['cpu_ratio']:.2f}x", f"{r['wall_ratio']:.2f}x", f"{r['limit_cpu_s']:.3f} ({r['limit']})",
                      f"{r['cpu_ratio_to_limit']:.2f}x", f"{r['gemm_gflops']:.1f}")
    Console(width=170).print(table)
    print(f"goal: recommend <= 2x the GEMM; load average now {os.getloadavg()[0]:.1f}")
    if not args.no_save:
        append_result("batch_topk", {"results": results, "threads": args.threads,
                                     "load_after": os.getloadavg()[0]}, machine=machine)


if __name__ == "__main__":
    main()
