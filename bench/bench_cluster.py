"""Benchmark: scale-out on Ray. ALS seconds per iteration (distributed on 1 and 2 Ray nodes, scalerec's
single-machine ALS, implicit directly, Spark MLlib), batch inference users/s against the GEMM limit,
the speed-up curve, and a paper estimate for 100M users x 10M items on 32 nodes.

Usage:
    .venv/bin/python bench/bench_cluster.py --events 2000000             # a quick run
    .venv/bin/python bench/bench_cluster.py                              # the 20M-event matrix
    .venv/bin/python bench/bench_cluster.py --skip-spark --events 5000000
    .venv/bin/python bench/bench_cluster.py --events 2000000 --als-only --repeats 5   # the issue-18 ratio

Every contender fits the same synthetic matrix (generated once per run, deterministically, from
``--seed``): ``events`` distinct (user, item) cells over ``events / 50`` users and ``events / 250``
items (the default 5M-event shape is the issue's 100k x 20k reference matrix), Zipf item
popularity, log-normal user activity, values 1..5. Ray "nodes" are ``ray.cluster_utils.Cluster``
nodes on this one machine, so 2 nodes share its cores. pyspark is pip-installed into the venv when
missing (Spark runs in local mode on all cores; Java 17 is needed).

Prints the tables and appends one JSON line to bench/results/cluster.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from scalerec.cluster.als import DistributedALS, gather_rows, make_shards, solve_cg
from scalerec.models.als import ALS

RESULTS = Path(__file__).resolve().parent / "results" / "cluster.jsonl"
console = Console()

#: the paper-estimate workload (assumptions, stated in the output)
PAPER = {
    "users": 100_000_000,
    "items": 10_000_000,
    "events_per_user": 50,
    "nodes": 32,
    "cores_per_node": 16,
    "network_gbit_s": 10.0,
    "shard_nnz": 1_000_000,
}


# ---------------------------------------------------------------------------------- data
def synthetic_matrix(n_users: int, n_items: int, events: int, seed: int) -> sp.csr_matrix:
    """``events`` distinct cells (values 1..5), Zipf items and log-normal users; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    item_p = 1.0 / (np.arange(n_items) + 10.0) ** 0.9
    item_p /= item_p.sum()
    user_p = rng.lognormal(0.0, 1.0, n_users)
    user_p /= user_p.sum()
    item_cdf, user_cdf = np.cumsum(item_p), np.cumsum(user_p)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < events:  # draw until enough distinct cells (duplicates are merged away)
        m = int((events - len(keys)) * 1.15) + 1000
        rows = np.minimum(np.searchsorted(user_cdf, rng.random(m)), n_users - 1)
        cols = np.minimum(np.searchsorted(item_cdf, rng.random(m)), n_items - 1)
        keys = np.unique(np.concatenate([keys, rows.astype(np.int64) * n_items + cols]))
    keys = np.sort(rng.permutation(keys)[:events])
    values = rng.integers(1, 6, events).astype(np.float32)
    C = sp.csr_matrix((values, (keys // n_items, keys % n_items)), shape=(n_users, n_items))
    C.sort_indices()
    return C


# ---------------------------------------------------------------------------------- contenders
def per_iteration(stamps: list[float]) -> dict[str, float]:
    """From progress time stamps (start, after it 1, after it 2, ...): first and steady iterations."""
    laps = np.diff(stamps)
    steady = laps[1:] if len(laps) > 1 else laps
    return {"first_s": float(laps[0]), "per_iteration_s": float(statistics.median(steady)), "laps_s": [float(x) for x in laps]}


def bench_implicit(C: sp.csr_matrix, factors: int, iterations: int) -> dict[str, Any]:
    from implicit.cpu.als import AlternatingLeastSquares

    laps: list[float] = []
    model = AlternatingLeastSquares(factors=factors, regularization=0.01, iterations=iterations, random_state=0)
    t = time.perf_counter()
    model.fit(C, show_progress=False, callback=lambda it, elapsed, loss: laps.append(elapsed))
    total = time.perf_counter() - t
    return {"per_iteration_s": float(statistics.median(laps[1:] or laps)), "first_s": laps[0], "fit_s": total, "laps_s": laps}


def bench_scalerec_als(C: sp.csr_matrix, factors: int, iterations: int) -> dict[str, Any]:
    stamps = [time.perf_counter()]
    model = ALS(factors=factors, regularization=0.01, iterations=iterations, random_state=0)
    model.fit(C, progress=lambda done, total: stamps.append(time.perf_counter()))
    return {**per_iteration(stamps), "fit_s": stamps[-1] - stamps[0]}


def start_cluster(cpus_per_node: list[int], store_bytes: int) -> Any:
    """A local multi-node Ray cluster; every node on 127.0.0.1, so nothing listens on the network."""
    import ray
    from ray.cluster_utils import Cluster

    from scalerec.cluster.ray_executor import LOOPBACK, use_loopback

    use_loopback()
    node = {"object_store_memory": store_bytes, "node_ip_address": LOOPBACK}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": cpus_per_node[0], **node, "include_dashboard": False},
    )
    for cpus in cpus_per_node[1:]:
        cluster.add_node(num_cpus=cpus, **node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False, logging_level="WARNING")
    return cluster


def stop_cluster(cluster: Any) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


def bench_distributed(C: sp.csr_matrix, factors: int, iterations: int) -> tuple[dict[str, Any], DistributedALS]:
    t = time.perf_counter()
    model = DistributedALS(factors=factors, regularization=0.01, iterations=iterations, random_state=0)
    model.fit(C)
    fit_s = time.perf_counter() - t
    laps = model.shard_stats_["iteration_s"]  # the fit's own per-iteration times, set-up apart
    steady = laps[1:] or laps
    timing = {"first_s": laps[0], "per_iteration_s": float(statistics.median(steady)), "laps_s": laps, "fit_s": fit_s}
    return {**model.shard_stats_, **timing}, model


def bench_als_repeats(C: sp.csr_matrix, factors: int, iterations: int, repeats: int, store_bytes: int) -> dict[str, Any]:
    """implicit (2 threads) and distributed ALS on 1 node x 2 CPUs, alternating, ``repeats`` times.

    One Ray cluster serves every repeat (as a long-running one would), so repeats 2.. also show
    whether a fit pays its set-up again. Returns per-repeat figures and the median ratio.
    """
    cluster = start_cluster([2], store_bytes)
    rows: list[dict[str, Any]] = []
    try:
        for r in range(repeats):
            imp = bench_implicit(C, factors, iterations)
            dist, _ = bench_distributed(C, factors, iterations)
            rows.append({
                "repeat": r,
                "implicit_s": imp["per_iteration_s"],
                "distributed_s": dist["per_iteration_s"],
                "ratio": dist["per_iteration_s"] / imp["per_iteration_s"],
                "implicit_first_s": imp["first_s"],
                "distributed_first_s": dist["first_s"],
                "distributed_setup_s": dist["setup_s"],
                "distributed_laps_s": dist["laps_s"],
            })
            console.print(rows[-1])
    finally:
        stop_cluster(cluster)
    ratios = [row["ratio"] for row in rows]
    return {"repeats": rows, "median_ratio": float(statistics.median(ratios)), "min_ratio": min(ratios), "max_ratio": max(ratios)}


def main_als_only(args: Any, C: sp.csr_matrix, store_bytes: int) -> None:
    load = os.getloadavg()
    summary = bench_als_repeats(C, args.factors, args.iterations, args.repeats, store_bytes)
    table = Table(title=f"distributed ALS (1 node x 2 CPUs) vs implicit (2 threads), {C.shape[0]:,} x {C.shape[1]:,}, {C.nnz:,} events, {args.factors} factors")
    for col in ("repeat", "implicit s/it", "distributed s/it", "ratio", "dist. first it s", "dist. set-up s"):
        table.add_column(col, justify="right")
    for row in summary["repeats"]:
        table.add_row(str(row["repeat"]), f"{row['implicit_s']:.3f}", f"{row['distributed_s']:.3f}", f"{row['ratio']:.2f}x",
                      f"{row['distributed_first_s']:.3f}", f"{row['distributed_setup_s']:.3f}")
    console.print(table)
    console.print(f"median ratio {summary['median_ratio']:.2f}x (min {summary['min_ratio']:.2f}x, max {summary['max_ratio']:.2f}x); load average before {load}, after {os.getloadavg()}")
    line = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "mode": "als_only", "cpus": os.cpu_count(), "load_before": load, "load_after": os.getloadavg(),
        "events": int(C.nnz), "users": int(C.shape[0]), "items": int(C.shape[1]),
        "factors": args.factors, "iterations": args.iterations, **summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    console.print(f"appended to {RESULTS}")


def bench_transfer(mb: int = 256) -> dict[str, float] | None:
    """Object-store throughput between the two local nodes: a task on one node reads an array made on the other."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return None

    def make(nbytes: int) -> np.ndarray:
        return np.ones(nbytes // 4, dtype=np.float32)

    def read(arr: np.ndarray) -> float:
        return time.time()

    make_r = ray.remote(make).options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[0], soft=False))
    read_r = ray.remote(read).options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[1], soft=False))
    # Warm up: both workers started and a first small transfer done, so only the copy is timed.
    ray.get(read_r.remote(make_r.remote(4096)))
    ref = make_r.remote(mb * 1024 * 1024)
    ray.wait([ref], fetch_local=False)
    t_empty = time.time()
    ray.get(read_r.remote(make_r.remote(4)))  # the round trip of a task without data
    overhead = time.time() - t_empty
    t0 = time.time()
    t1 = ray.get(read_r.remote(ref))
    seconds = max(t1 - t0 - overhead / 2, 1e-9)
    return {"mb": float(mb), "seconds": seconds, "gb_per_s": mb / 1024 / seconds}


def bench_batch(model: Any, C: sp.csr_matrix, users: int, n: int, executor: Any) -> dict[str, Any]:
    from scalerec.serving.batch import Scorer, run_batch

    users = min(users, C.shape[0])
    scorer = Scorer(
        model=model,
        seen=C[:users],
        user_ids=np.array([f"u{i}" for i in range(users)]),
        item_ids=np.array([f"i{j}" for j in range(C.shape[1])]),
        version="bench",
    )
    out = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        result = run_batch(scorer, out, executor=executor, n=n, overwrite=True)
        size = sum(p.stat().st_size for p in out.glob("part-*.parquet"))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"users": users, "users_per_s": result.users_per_s, "seconds": result.seconds, "shards": result.shards_total, "bytes": size}


def gemm_limit(n_items: int, factors: int) -> dict[str, float]:
    """Users/s if scoring were only the dense GEMM (all cores, and one core)."""
    rng = np.random.default_rng(0)
    V = rng.random((n_items, factors), dtype=np.float32)
    U = rng.random((2048, factors), dtype=np.float32)
    out: dict[str, float] = {}
    for label, threads in (("all_cores", None), ("one_core", 1)):
        with threadpool_limits(threads):
            U @ V.T
            reps, t = 0, time.perf_counter()
            while time.perf_counter() - t < 1.0:
                U @ V.T
                reps += 1
            seconds = (time.perf_counter() - t) / reps
        out[f"gflops_{label}"] = 2 * U.shape[0] * n_items * factors / seconds / 1e9
        out[f"users_per_s_{label}"] = U.shape[0] / seconds
    # The machine's limit: every core running the GEMM at the one-core rate (a shared, busy
    # machine measures less with all threads at once; both are reported).
    out["users_per_s_limit"] = max(out["users_per_s_all_cores"], (os.cpu_count() or 1) * out["users_per_s_one_core"])
    return out


def shard_costs(C: sp.csr_matrix, factors: int) -> dict[str, float]:
    """One core: CG half-step seconds per nonzero for a user and an item shard, and the gather cost."""
    rng = np.random.default_rng(1)
    X = rng.random((C.shape[0], factors), dtype=np.float32) * 0.01
    Y = rng.random((C.shape[1], factors), dtype=np.float32) * 0.01
    out: dict[str, float] = {}
    with threadpool_limits(1):
        for side, M, own, fixed in (("user", C, X, Y), ("item", C.T.tocsr(), Y, X)):
            shards = make_shards(M, 8)
            s = shards[len(shards) // 2]
            parts = [fixed[a : a + len(fixed) // 4] for a in range(0, len(fixed), len(fixed) // 4)]
            bounds = np.array([a for a in range(0, len(fixed), len(fixed) // 4)] + [len(fixed)])
            t = time.perf_counter()
            rows = gather_rows(parts, bounds, s.cols)
            gather_s = time.perf_counter() - t
            gram = fixed.T.astype(np.float64) @ fixed + 0.01 * np.eye(factors)
            t = time.perf_counter()
            solve_cg(s, own[s.start : s.stop], rows, gram, 3)
            solve_s = time.perf_counter() - t
            out[f"{side}_s_per_nnz"] = solve_s / s.nnz
            out[f"{side}_gather_s_per_row"] = gather_s / max(1, len(s.cols))
            out[f"{side}_shard_nnz"] = float(s.nnz)
            out[f"{side}_shard_cols"] = float(len(s.cols))
    return out


def bench_spark(C: sp.csr_matrix, factors: int, iterations: tuple[int, int], memory_gb: int) -> dict[str, Any]:
    """Spark MLlib ALS (implicitPrefs) in local mode; seconds per iteration from two fits of different length."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        console.print("installing pyspark into the venv ...")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "pyspark"], check=True)
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.ml.recommendation import ALS as SparkALS
    from pyspark.sql import SparkSession

    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    coo = C.tocoo()
    pq.write_table(
        pa.table({"user": coo.row.astype(np.int32), "item": coo.col.astype(np.int32), "rating": coo.data}),
        work / "ratings.parquet",
    )
    cores = os.cpu_count() or 1
    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("scalerec-bench")
        .config("spark.driver.memory", f"{memory_gb}g")
        .config("spark.sql.shuffle.partitions", str(2 * cores))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(work))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.setCheckpointDir(str(work / "checkpoints"))
    try:
        df = spark.read.parquet(str(work / "ratings.parquet")).repartition(2 * cores).cache()
        df.count()
        fits = {}
        for iters in iterations:
            als = SparkALS(
                rank=factors, maxIter=iters, regParam=0.01, alpha=1.0, implicitPrefs=True, userCol="user",
                itemCol="item", ratingCol="rating", seed=0, numUserBlocks=2 * cores, numItemBlocks=2 * cores,
            )
            t = time.perf_counter()
            model = als.fit(df)
            model.userFactors.count()
            model.itemFactors.count()
            fits[iters] = time.perf_counter() - t
        a, b = iterations
        return {
            "per_iteration_s": (fits[b] - fits[a]) / (b - a),
            "fits_s": {str(k): v for k, v in fits.items()},
            "version": spark.version,
            "cores": cores,
        }
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------- estimate
def paper_estimate(costs: dict[str, float], factors: int, measured_transfer_gb_s: float | None) -> dict[str, Any]:
    """Time and memory per iteration for PAPER's workload, from the measured per-shard costs."""
    p = PAPER
    nnz = p["users"] * p["events_per_user"]
    cores = p["nodes"] * p["cores_per_node"]
    fbytes = 4 * factors
    # compute: both half-steps over all nonzeros, spread over every core; plus gathering each
    # shard's fixed rows (at most one per nonzero, fewer when a shard repeats columns)
    user_s = nnz * costs["user_s_per_nnz"] / cores
    item_s = nnz * costs["item_s_per_nnz"] / cores
    shards = nnz / p["shard_nnz"]
    gather_rows_user = min(p["items"], p["shard_nnz"]) * shards  # upper bound of rows gathered
    gather_rows_item = min(p["users"], p["shard_nnz"]) * shards
    gather_s = (gather_rows_user * costs["user_gather_s_per_row"] + gather_rows_item * costs["item_gather_s_per_row"]) / cores
    compute_s = user_s + item_s + gather_s
    # broadcast: every node needs all fixed factors once per half-step (its tasks gather from them)
    inbound = (p["users"] + p["items"]) * fbytes * (p["nodes"] - 1) / p["nodes"]
    net_gb_s = p["network_gbit_s"] / 8
    network_s = inbound / 1e9 / net_gb_s
    memory_node = {
        "matrix_shards_gb": 2 * nnz * 8 / p["nodes"] / 1e9,  # CSR both ways: int32 index + float32 value
        "fixed_factors_gb": (p["users"] + p["items"]) * fbytes / 1e9,  # all of X and Y in the object store
        "task_gather_gb": p["cores_per_node"] * min(p["items"], p["shard_nnz"]) * fbytes / 1e9,
    }
    memory_node["total_gb"] = sum(memory_node.values())
    return {
        "assumptions": dict(p, factors=factors, nnz=nnz),
        "compute_s_per_iteration": compute_s,
        "network_s_per_iteration": network_s,
        "iteration_s_if_not_overlapped": compute_s + network_s,
        "iteration_s_if_overlapped": max(compute_s, network_s),
        "node_inbound_gb_per_iteration": inbound / 1e9,
        "driver_final_factors_gb": (p["users"] + p["items"]) * fbytes / 1e9,
        "memory_per_node": memory_node,
        "measured_local_object_store_gb_s": measured_transfer_gb_s,
    }


# ---------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--users", type=int, default=None, help="default events / 50")
    ap.add_argument("--items", type=int, default=None, help="default events / 250")
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=4, help="ALS iterations timed per contender")
    ap.add_argument("--spark-iterations", type=int, nargs=2, default=(1, 3))
    ap.add_argument("--spark-memory-gb", type=int, default=8)
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--batch-users", type=int, default=40_000)
    ap.add_argument("--n", type=int, default=100, help="recommendations per user in batch inference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--als-only", action="store_true", help="only implicit vs distributed ALS (1 node x 2 CPUs), --repeats times")
    ap.add_argument("--repeats", type=int, default=5, help="with --als-only: alternating fits of each")
    args = ap.parse_args()
    n_users = args.users or args.events // 50
    n_items = args.items or args.events // 250
    f, iters = args.factors, args.iterations

    t = time.perf_counter()
    C = synthetic_matrix(n_users, n_items, args.events, args.seed)
    console.print(f"matrix {n_users:,} x {n_items:,}, {C.nnz:,} events ({time.perf_counter() - t:.1f}s to generate)")
    store_bytes = int(max(2e9, 12 * C.nnz * 2 + 16 * (n_users + n_items) * f))
    results: dict[str, Any] = {}
    if args.als_only:
        main_als_only(args, C, store_bytes)
        return

    console.print("implicit ...")
    results["implicit"] = bench_implicit(C, f, iters)
    console.print("scalerec ALS (single machine) ...")
    results["scalerec_als"] = bench_scalerec_als(C, f, iters)
    console.print("per-shard costs ...")
    costs = shard_costs(C, f)
    gemm = gemm_limit(n_items, f)

    from scalerec.execution import LocalExecutor
    from scalerec.cluster.ray_executor import RayExecutor

    layouts = {"ray_1node_1cpu": [1], "ray_1node_2cpu": [2], "ray_2nodes_1cpu": [1, 1]}
    model = None
    transfer = None
    batch: dict[str, Any] = {}
    for name, cpus in layouts.items():
        console.print(f"distributed ALS on {name} ...")
        cluster = start_cluster(cpus, store_bytes)
        try:
            results[name], trained = bench_distributed(C, f, iters)
            model = model or trained.to_local()
            if len(cpus) == 2:
                transfer = bench_transfer()
            if name != "ray_1node_1cpu":
                console.print(f"batch inference on {name} ...")
                batch[name] = bench_batch(model, C, args.batch_users, args.n, RayExecutor())
        finally:
            stop_cluster(cluster)
    console.print("batch inference in-process ...")
    batch["in_process"] = bench_batch(model, C, args.batch_users, args.n, LocalExecutor(1))

    if not args.skip_spark:
        console.print("Spark MLlib ALS ...")
        try:
            results["spark_mllib"] = bench_spark(C, f, tuple(args.spark_iterations), args.spark_memory_gb)
        except Exception as exc:  # noqa: BLE001 - a missing JVM must not lose the other figures
            results["spark_mllib"] = {"error": f"{type(exc).__name__}: {exc}"}
            console.print(f"[red]Spark failed: {exc}[/red]")

    estimate = paper_estimate(costs, f, transfer["gb_per_s"] if transfer else None)
    report(args, C, results, batch, gemm, costs, transfer, estimate)


def report(args: Any, C: sp.csr_matrix, results: dict, batch: dict, gemm: dict, costs: dict, transfer: Any, estimate: dict) -> None:
    implicit_s = results["implicit"]["per_iteration_s"]
    table = Table(title=f"ALS, {args.factors} factors: seconds per iteration ({C.shape[0]:,} x {C.shape[1]:,}, {C.nnz:,} events)")
    for col in ("contender", "s / iteration", "vs implicit", "first iteration s"):
        table.add_column(col, justify="left" if col == "contender" else "right")
    for name, r in results.items():
        if "per_iteration_s" not in r:
            table.add_row(name, "-", "-", r.get("error", "")[:60])
            continue
        table.add_row(name, f"{r['per_iteration_s']:.3f}", f"{r['per_iteration_s'] / implicit_s:.2f}x", f"{r.get('first_s', float('nan')):.3f}")
    console.print(table)
    limit = gemm["users_per_s_limit"]
    bt = Table(title=f"batch inference, top {args.n}: users/s (GEMM limit {limit:,.0f}: {gemm['users_per_s_one_core']:,.0f} per core)")
    for col in ("where", "users", "users/s", "% of GEMM limit", "shards"):
        bt.add_column(col, justify="left" if col == "where" else "right")
    for name, b in batch.items():
        bt.add_row(name, f"{b['users']:,}", f"{b['users_per_s']:,.0f}", f"{100 * b['users_per_s'] / limit:.0f}%", str(b["shards"]))
    console.print(bt)
    console.print({"shard_costs": costs, "object_store_transfer": transfer, "gemm": gemm})
    console.print({"paper_estimate": estimate})
    line = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "events": int(C.nnz),
        "users": int(C.shape[0]),
        "items": int(C.shape[1]),
        "factors": args.factors,
        "iterations": args.iterations,
        "als": results,
        "batch": batch,
        "gemm": gemm,
        "shard_costs": costs,
        "object_store_transfer": transfer,
        "paper_estimate": estimate,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    console.print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
