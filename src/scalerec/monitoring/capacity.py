"""Capacity planning: what this store costs (measured) and what a peak or a new market needs (projected).

Measured: bytes per event on disk; the served version's bytes split by what they scale with
(users, items, item pairs, matrix cells); CPU-µs per request by strategy (timed in this process
on the real service); training seconds per million events per family (from the manifests); peak
training memory. Projected with stated scaling rules (``ASSUMPTIONS``), never fitted to one shop.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

#: How each cost grows (the projection's rules; printed with every projection).
ASSUMPTIONS = [
    "disk: the event log grows linearly with events (bytes per event measured on this store's zstd Parquet)",
    "memory: a model file whose first axis is users grows with users, items with items, an item x item array "
    "with items squared, a matrix-cell array (nnz) with events; worker processes share the memory-mapped model",
    "training: ALS/BPR/item-kNN/RP3beta/popular time grows linearly with events; EASE with items cubed "
    "(its Gram inverse) plus events",
    "training memory: the refit's peak above a bare process (this one's resident memory when it starts measuring) "
    "grows like the model's bytes",
    "CPU per request: fixed per strategy (measured here); workers = ceil(peak rps x CPU-s per request / 0.6), "
    "a worker kept below 60% busy so the latency tail stays flat",
    "one machine is enough while workers <= its cores, memory <= its budget and a retraining fits in the "
    "retraining period; beyond that, the Ray cluster (`--cluster`) takes over",
]
TARGET_UTILISATION = 0.6


def _np_shape(path: Path) -> tuple[int, ...] | None:
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (ValueError, OSError):
        return None


def model_bytes(version_dir: Path, n_users: int, n_items: int) -> dict[str, int]:
    """The version's files, in bytes, by what they scale with: users, items, item_pairs, cells, fixed."""
    out = {"users": 0, "items": 0, "item_pairs": 0, "cells": 0, "fixed": 0}
    for root, _, files in os.walk(version_dir):
        for f in files:
            p = Path(root) / f
            size = p.stat().st_size
            shape = _np_shape(p) if f.endswith(".npy") else None
            if shape is None or not shape:
                out["fixed"] += size
            elif len(shape) >= 2 and shape[0] == n_items and shape[1] == n_items:
                out["item_pairs"] += size
            elif shape[0] in (n_users, n_users + 1):
                out["users"] += size
            elif shape[0] in (n_items, n_items + 1):
                out["items"] += size
            else:
                out["cells"] += size
    return out


def _time_calls(fn: Any, args: list[Any], repeat: int = 1) -> float:
    """CPU-µs per call of ``fn`` over ``args`` (process CPU time, so other load on the machine does not count)."""
    if not args:
        return math.nan
    fn(args[0])  # warm caches (first-call allocations are not the steady state)
    t0 = time.process_time()
    for _ in range(repeat):
        for a in args:
            fn(a)
    return (time.process_time() - t0) / (len(args) * repeat) * 1e6


def request_costs(service: Any, *, calls: int = 200, seed: int = 0) -> dict[str, float]:
    """CPU-µs per request by strategy, on the real service in this process (no HTTP)."""
    live = service.state.current
    if live is None:
        return {}
    st = live.model
    rng = np.random.default_rng(seed)
    users = st.user_ids[rng.integers(0, len(st.user_ids), size=calls)].tolist() if len(st.user_ids) else []
    items = st.item_ids[rng.integers(0, len(st.item_ids), size=calls)].tolist() if len(st.item_ids) else []
    sessions = [items[i : i + 3] for i in range(0, max(0, len(items) - 3), 3)][: calls // 3 or 1]
    service.reclog.add = lambda *_a, **_k: None  # type: ignore[method-assign]  # timing the answer, not the log
    return {
        "model": _time_calls(lambda u: service.recommend_user(u, 20), users),
        "fold_in": _time_calls(lambda s: service.recommend_session(s, 20), sessions),
        "fallback": _time_calls(lambda i: service.recommend_user(f"capacity-unknown-{i}", 20), list(range(calls))),
        "similar": _time_calls(lambda i: service.similar_items(i, 20), items),
        "popular": _time_calls(lambda _: service.popular(20), list(range(calls))),
    }


def measure(settings: Any, *, store: Any = None, time_requests: bool = True) -> dict[str, Any]:
    """This store's sizes and costs: the basis of every projection."""
    from scalerec.data.store import DataStore
    from scalerec.monitoring.figures import data_figures, process_figures, version_rows
    from scalerec.registry import Registry

    base_rss = int(psutil.Process().memory_info().rss)
    own = store is None
    store = store if store is not None else DataStore.open(settings, read_only=True)
    try:
        data = data_figures(store, settings)
        registry = Registry(settings)
        rows = version_rows(registry)
        prod = registry.production()
        out: dict[str, Any] = {
            "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "data": data,
            "machine": {"cpus": os.cpu_count() or 1, **{k: v for k, v in process_figures(settings).items()
                                                         if k in ("memory_budget_bytes", "disk_budget_bytes", "system_memory_total_bytes", "data_dir_bytes")}},
            "model": None,
            "training": {},
            "requests_cpu_us": {},
            "baseline_rss_bytes": base_rss,
        }
        per_family: dict[str, dict[str, Any]] = {}
        for r in rows:  # newest first: the latest version of each family
            if r.get("fit_seconds") and r.get("events") and r["family"] not in per_family:
                per_family[r["family"]] = {
                    "version": r["version"], "fit_seconds": r["fit_seconds"], "events": r["events"],
                    "seconds_per_million_events": r["fit_seconds"] / r["events"] * 1e6,
                    "peak_rss_bytes": r.get("peak_rss_bytes"),
                }
        out["training"] = per_family
        if prod is not None:
            man = prod.typed_manifest()
            n_users = int(man.data_extra.get("n_users") or 0)
            n_items = int(man.data_extra.get("n_items") or 0)
            parts = model_bytes(prod.path, n_users, n_items)
            out["model"] = {"version": prod.version, "family": prod.family, "users": n_users, "items": n_items,
                            "events": man.event_count, "bytes": parts, "total_bytes": sum(parts.values()),
                            "peak_rss_bytes": man.peak_rss_bytes, "fit_seconds": man.fit_seconds}
            if time_requests:
                from scalerec.serving.service import RecommendService

                service = RecommendService(settings, store=store, registry=registry, watch=False)
                try:
                    out["requests_cpu_us"] = request_costs(service)
                    idx = service.state.current.model.index if service.state.current else None
                    out["model"]["index_bytes"] = int(idx.memory_bytes()) if idx is not None else 0
                    out["process_rss_bytes"] = int(psutil.Process().memory_info().rss)
                finally:
                    service.reclog.close()
        return out
    finally:
        if own:
            store.close()


def _factor(value: str | float | None) -> float:
    if value is None:
        return 1.0
    if isinstance(value, (int, float)):
        f = float(value)
    else:
        text = str(value).strip().lower().removesuffix("x")
        try:
            f = float(text)
        except ValueError:
            from scalerec.errors import ValidationError

            raise ValidationError(f"a growth factor is a number like 5x or 2.5, got {value!r}") from None
    if not f > 0 or math.isinf(f):
        from scalerec.errors import ValidationError

        raise ValidationError(f"a growth factor must be a positive number, got {value!r}")
    return f


def project(
    measured: dict[str, Any], *, traffic: Any = 1, users: Any = 1, events: Any = 1, items: Any = 1,
    peak_rps: float | None = None, retrain_period_hours: float = 24.0, strategy_mix: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Resources needed at ``traffic`` x requests, ``users`` x users, ``events`` x events, ``items`` x items."""
    t, u, e, i = (_factor(x) for x in (traffic, users, events, items))
    data = measured["data"]
    machine = measured["machine"]
    model = measured.get("model") or {}
    parts = model.get("bytes") or {}
    scale = {"users": u, "items": i, "item_pairs": i * i, "cells": e, "fixed": 1.0}
    model_now = sum(parts.values())
    model_then = sum(parts.get(k, 0) * f for k, f in scale.items()) + model.get("index_bytes", 0) * i
    disk_then = data["log_bytes"] * e + model_then
    costs = {k: v for k, v in (measured.get("requests_cpu_us") or {}).items() if v == v}
    mix = strategy_mix or {"model": 1.0}
    mix_total = sum(mix.values()) or 1.0
    cpu_us = sum(costs.get(k, costs.get("model", 0.0)) * w for k, w in mix.items()) / mix_total if costs else math.nan
    base_rps = peak_rps if peak_rps is not None else 10.0
    rps = base_rps * t
    workers = max(1, math.ceil(rps * cpu_us / 1e6 / TARGET_UTILISATION)) if cpu_us == cpu_us else 1
    rss = measured.get("process_rss_bytes") or 0
    per_worker = max(0, rss - model_now)
    memory_then = model_then + workers * per_worker
    training = {}
    for fam, tr in (measured.get("training") or {}).items():
        secs = tr["fit_seconds"] * e * (i**3 if fam == "ease" else 1.0)
        peak = tr.get("peak_rss_bytes") or 0
        fixed = min(peak, measured.get("baseline_rss_bytes") or 0)
        training[fam] = {"seconds": secs, "peak_rss_bytes": fixed + (peak - fixed) * (model_then / model_now if model_now else e)}
    fam = model.get("family")
    train_s = training.get(fam, {}).get("seconds") if fam else None
    reasons = []
    cpus = machine["cpus"]
    if workers > cpus:
        reasons.append(f"{workers} workers needed, this machine has {cpus} cores")
    if memory_then > machine["memory_budget_bytes"]:
        reasons.append(f"memory {memory_then / 2**30:.2f} GiB over the budget of {machine['memory_budget_bytes'] / 2**30:.2f} GiB")
    if train_s is not None and train_s > retrain_period_hours * 3600:
        reasons.append(f"a retraining takes {train_s / 3600:.1f} h, longer than the {retrain_period_hours:g} h period")
    return {
        "factors": {"traffic": t, "users": u, "events": e, "items": i},
        "peak_rps": rps, "peak_rps_basis": "measured peak" if peak_rps is not None else "assumed 10 req/s (no traffic history)",
        "cpu_us_per_request": cpu_us,
        "workers": workers,
        "memory_bytes": memory_then,
        "model_bytes": model_then,
        "disk_bytes": disk_then,
        "log_bytes": data["log_bytes"] * e,
        "training": training,
        "training_seconds": train_s,
        "one_machine_enough": not reasons,
        "why_cluster": reasons,
        "ray_replicas": workers if reasons else None,
        "assumptions": ASSUMPTIONS,
    }


def exhaustion_days(settings: Any, store: Any, model: dict[str, Any] | None, figures: dict[str, float],
                    *, days: int = 30) -> dict[str, float]:
    """Days until memory and disk budgets are exhausted at the last ``days`` days' growth (inf when not growing)."""
    import duckdb

    files = [str(p) for p in store.log.files()]
    out = {"days_to_memory_exhaustion": math.inf, "days_to_disk_exhaustion": math.inf}
    if not files:
        return out
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con = duckdb.connect()
    try:
        con.execute("SET threads TO 1")
        users_new, items_new, users_all, items_all, ev_new = con.execute(
            f"""WITH ev AS (SELECT user_id, item_id, timestamp FROM read_parquet([{listing}])),
                u AS (SELECT user_id, min(timestamp) AS first FROM ev WHERE user_id IS NOT NULL GROUP BY user_id),
                i AS (SELECT item_id, min(timestamp) AS first FROM ev GROUP BY item_id)
            SELECT (SELECT count(*) FROM u WHERE first >= ?), (SELECT count(*) FROM i WHERE first >= ?),
                   (SELECT count(*) FROM u), (SELECT count(*) FROM i), (SELECT count(*) FROM ev WHERE timestamp >= ?)""",
            [cutoff, cutoff, cutoff],
        ).fetchone()
    finally:
        con.close()
    bpe = figures.get("bytes_per_event") or 0.0
    disk_growth = ev_new * bpe / days
    disk_headroom = figures.get("disk_budget_bytes", 0.0) - figures.get("data_dir_bytes", 0.0)
    if disk_growth > 0:
        out["days_to_disk_exhaustion"] = max(0.0, disk_headroom / disk_growth)
    if model:
        parts = model.get("bytes") or {}
        per_user = parts.get("users", 0) / max(1, model.get("users") or 1)
        per_item = parts.get("items", 0) / max(1, model.get("items") or 1)
        n_items = max(1, model.get("items") or 1)
        pair_growth = parts.get("item_pairs", 0) * (((n_items + items_new / days) / n_items) ** 2 - 1)
        mem_growth = per_user * users_new / days + per_item * items_new / days + pair_growth
        used = figures.get("system_memory_total_bytes", 0.0) - figures.get("system_memory_available_bytes", 0.0)
        mem_headroom = figures.get("memory_budget_bytes", 0.0) - used
        if mem_growth > 0:
            out["days_to_memory_exhaustion"] = max(0.0, mem_headroom / mem_growth)
    out.update({"new_users_30d": float(users_new), "new_items_30d": float(items_new), "events_30d": float(ev_new),
                "users_total": float(users_all), "items_total": float(items_all)})
    return out
