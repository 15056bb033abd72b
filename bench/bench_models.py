"""Benchmark: fit time and peak memory of every model family, and ALS batch top-k against the GEMM limit.

Usage:
    .venv/bin/python bench/bench_models.py --users 100000 --items 10000 --nnz 1000000
    .venv/bin/python bench/bench_models.py --data-dir demo-store        # a scalerec data directory
    .venv/bin/python bench/bench_models.py --matrix path/to/saved/matrix  # written by save_matrix

Prints a rich table and appends one JSON line to bench/results/models.jsonl.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import scipy.sparse as sp
from rich.console import Console
from rich.table import Table

from _common import PeakRSS, git_commit
from scalerec.errors import ModelCapacityError
from scalerec.models import Recommender, make_model

RESULTS = Path(__file__).resolve().parent / "results" / "models.jsonl"

#: the families and settings benchmarked (reference-like settings; ALS is the speed target)
CONFIGS: dict[str, dict[str, Any]] = {
    "popular": {},
    "trending": {},
    "itemknn": {"neighbors": 100},
    "rp3beta": {"neighbors": 200, "alpha": 0.8, "beta": 0.5},
    "ease": {"l2": 500.0},
    "als": {"factors": 64, "regularization": 0.01, "alpha": 1.0, "iterations": 15},
    "bpr": {"factors": 64, "iterations": 100},
}


def synthetic_matrix(n_users: int, n_items: int, nnz: int, seed: int = 0) -> sp.csr_matrix:
    """Binary user x item matrix with Zipf-like item popularity and log-normal user activity."""
    rng = np.random.default_rng(seed)
    item_p = 1.0 / (np.arange(n_items) + 10.0) ** 0.9
    item_p /= item_p.sum()
    user_p = rng.lognormal(0.0, 1.0, n_users)
    user_p /= user_p.sum()
    # draw ~10% extra pairs so that duplicates removed still leave about nnz cells
    m = int(nnz * 1.1)
    rows = rng.choice(n_users, m, p=user_p).astype(np.int32)
    cols = rng.choice(n_items, m, p=item_p).astype(np.int32)
    X = sp.csr_matrix((np.ones(m, np.float32), (rows, cols)), shape=(n_users, n_items))
    X.sum_duplicates()
    X.data[:] = 1.0
    return X


def load_input(args: argparse.Namespace) -> tuple[sp.csr_matrix, str]:
    if args.matrix:
        from scalerec.data.matrix import load_matrix

        return load_matrix(args.matrix, mmap=False).matrix, f"matrix:{args.matrix}"
    if args.data_dir:
        from scalerec.config import load_settings
        from scalerec.data.matrix import matrix_from_settings
        from scalerec.data.store import DataStore

        settings = load_settings(data={"dir": args.data_dir})
        return matrix_from_settings(DataStore(settings), settings).matrix, f"data:{args.data_dir}"
    X = synthetic_matrix(args.users, args.items, args.nnz, args.seed)
    return X, f"synthetic:{args.users}x{args.items}:{args.nnz}"


def _fit_in_child(name: str, params: dict[str, Any], X: sp.csr_matrix, out: str) -> dict[str, Any]:
    """Fit in a fresh process, so its peak memory is the model's alone; save it for the parent."""
    model = make_model(name, **params)
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            model.fit(X)
            fit_s = time.perf_counter() - t0
    except ModelCapacityError as exc:
        return {"skipped": exc.message}
    model.save(out)
    return {"fit_s": fit_s, "fit_peak_mib": mem.peak_mib}


def bench_fit(
    name: str, params: dict[str, Any], X: sp.csr_matrix, rec_users: np.ndarray, workdir: Path
) -> dict[str, Any]:
    row: dict[str, Any] = {"family": name, "params": params}
    out = workdir / name
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        row.update(pool.submit(_fit_in_child, name, params, X, str(out)).result())
    if "skipped" in row:
        return row
    model = Recommender.load(out, mmap=True)
    model.recommend(rec_users[:10], 20, exclude=X[rec_users[:10]])  # page the arrays in
    t0 = time.perf_counter()
    model.recommend(rec_users, 20, exclude=X[rec_users])
    row["recommend_users_per_s"] = len(rec_users) / (time.perf_counter() - t0)
    row["model"] = model
    return row


def bench_topk(model: Any, X: sp.csr_matrix, n: int, repeats: int) -> dict[str, Any]:
    """ALS recommend() for all users (top n, own history excluded) vs plain U @ Vᵀ in the same blocks."""
    users = np.arange(X.shape[0])
    step = model.block_rows()
    U, V = model.user_factors_, model.item_factors_

    def gemm() -> None:
        for s in range(0, len(users), step):
            U[users[s : s + step]] @ V.T

    def recommend() -> None:
        model.recommend(users, n, exclude=X)

    def best(fn: Any) -> tuple[float, float]:
        """Best wall and process-CPU seconds over the repeats (CPU time is steadier on a busy host)."""
        wall, cpu = [], []
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        return min(wall), min(cpu)

    (gemm_s, gemm_cpu), (rec_s, rec_cpu) = best(gemm), best(recommend)
    return {
        "users": len(users),
        "n": n,
        "block_rows": step,
        "gemm_s": gemm_s,
        "recommend_s": rec_s,
        "ratio": rec_s / gemm_s,
        "gemm_cpu_s": gemm_cpu,
        "recommend_cpu_s": rec_cpu,
        "cpu_ratio": rec_cpu / gemm_cpu,
        "users_per_s": len(users) / rec_s,
        "load_avg_1m": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--nnz", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", help="a scalerec data directory (matrix built with its settings)")
    ap.add_argument("--matrix", help="a matrix directory written by scalerec.data.matrix.save_matrix")
    ap.add_argument("--models", default=",".join(CONFIGS), help="comma-separated families")
    ap.add_argument("--top-n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rec-sample", type=int, default=20_000, help="users timed in each model's recommend")
    ap.add_argument("--threads", type=int, default=0,
                    help="BLAS and FAISS threads for the top-k comparison (0 = all cores; 1 is steadiest on a busy host)")
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results/models.jsonl")
    args = ap.parse_args()
    console = Console()

    t0 = time.perf_counter()
    X, source = load_input(args)
    console.print(f"matrix {source}: {X.shape[0]:,} users x {X.shape[1]:,} items, {X.nnz:,} nnz "
                  f"(built in {time.perf_counter() - t0:.1f}s)")
    rng = np.random.default_rng(args.seed)
    rec_users = np.sort(rng.choice(X.shape[0], min(args.rec_sample, X.shape[0]), replace=False))

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-models-"))
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        console.print(f"fitting {name} ...")
        rows.append(bench_fit(name, CONFIGS.get(name, {}), X, rec_users, workdir))

    table = Table(title=f"model fit ({source}, {os.cpu_count()} cores)")
    for col in ("family", "fit s", "fit peak MiB", "recommend users/s (top 20)"):
        table.add_column(col, justify="right" if col != "family" else "left")
    for r in rows:
        if "skipped" in r:
            table.add_row(r["family"], "refused", "", r["skipped"][:60])
        else:
            table.add_row(r["family"], f"{r['fit_s']:.2f}", f"{r['fit_peak_mib']:.0f}",
                          f"{r['recommend_users_per_s']:,.0f}")
    console.print(table)

    topk = None
    als = next((r["model"] for r in rows if r["family"] == "als" and "model" in r), None)
    if als is not None:
        if args.threads:
            import faiss
            from threadpoolctl import threadpool_limits

            faiss.omp_set_num_threads(args.threads)
            with threadpool_limits(args.threads, "blas"):
                topk = bench_topk(als, X, args.top_n, args.repeats)
        else:
            topk = bench_topk(als, X, args.top_n, args.repeats)
        topk["threads"] = args.threads or os.cpu_count()
        t = Table(title=f"ALS batch recommend, all users, top {args.top_n}, history excluded, "
                        f"{topk['threads']} thread(s)")
        for col in ("users", "block rows", "GEMM s", "recommend s", "ratio", "CPU ratio", "users/s"):
            t.add_column(col, justify="right")
        t.add_row(f"{topk['users']:,}", str(topk["block_rows"]), f"{topk['gemm_s']:.3f}",
                  f"{topk['recommend_s']:.3f}", f"{topk['ratio']:.2f}x", f"{topk['cpu_ratio']:.2f}x",
                  f"{topk['users_per_s']:,.0f}")
        console.print(t)
        console.print(f"goal: ratio <= 2.0x (top-k overhead at most one GEMM); load average "
                      f"{topk['load_avg_1m']:.1f} on {os.cpu_count()} cores")

    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "source": source,
        "n_users": int(X.shape[0]),
        "n_items": int(X.shape[1]),
        "nnz": int(X.nnz),
        "models": [{k: v for k, v in r.items() if k != "model"} for r in rows],
        "als_topk": topk,
    }
    shutil.rmtree(workdir, ignore_errors=True)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
        console.print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
