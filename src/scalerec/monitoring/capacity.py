"""Capacity planning: what this store costs (measured) and what a peak or a new market needs (projected).

Measured: bytes per event on disk; the served version's bytes split by what they scale with
(users, items, item pairs, matrix cells), its ranking bundle among them; CPU-µs per request by
strategy (timed in this process on the real service, the median of interleaved rounds) and the
ranking stage's rerank share of it; training seconds per million events per family (from the
manifests) and, with ``calibrate``, a power law of the refit's CPU time fitted on refits of the
served family on 1/4, 1/2 and all of this store's users. Projected with stated scaling rules
(``ASSUMPTIONS``), never fitted to one shop's figures by hand.
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
    "training: with calibration (`scalerec capacity --calibrate`), the served family's refit CPU time follows "
    "c x cells^a fitted on refits over 1/4, 1/2 and all users of this store (the slope a measured, not assumed); "
    "without, ALS/BPR/item-kNN/RP3beta/popular time grows linearly with events and EASE with items cubed "
    "(its Gram inverse) plus events",
    "training memory: the run's peak is the larger of the refit's and the ranking stage's (both recorded by "
    "`scalerec train`); the stage's queries x candidates x features frames (measured bytes) grow with the learning "
    "queries and stop at [ranking] max_queries. With training runs of this store at two or more sizes (its "
    "training history, events 1.5x apart or more), each peak less the frames is a line in events fitted on them; "
    "with one size, each peak above a bare process (this one's resident memory when it starts measuring) grows "
    "like the model's bytes (the refit) or with events (the stage), which overstates it where a share is fixed",
    "CPU per request: fixed per strategy as users and events grow (measured here: the median of 5 interleaved "
    "rounds); workers = ceil(peak rps x CPU-s per request / 0.6), a worker kept below 60% busy so the latency "
    "tail stays flat",
    "ranking stage: its bundle (models/<version>/ranking/) is part of the model's bytes, its arrays and sparse "
    "matrices scaling with users, items or cells like the model's; its rerank CPU is in the personal lists' cost "
    "(measured apart as the difference with the stage off). A store below [ranking] min_queries has no bundle: "
    "the projection says so, and the stage's bytes and CPU appear only once it is active (measure again then)",
    "one machine is enough while workers <= its cores, serving memory and a training run's peak <= its memory "
    "budget and a retraining fits in the "
    "retraining period; beyond that, the Ray cluster (`--cluster`) takes over",
]
TARGET_UTILISATION = 0.6


def _np_shape(path: Path) -> tuple[int, ...] | None:
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (ValueError, OSError):
        return None


def _axis(shape: tuple[int, ...], n_users: int, n_items: int) -> str:
    """What an array of ``shape`` scales with."""
    if not shape:
        return "fixed"
    if len(shape) >= 2 and shape[0] == n_items and shape[1] == n_items:
        return "item_pairs"
    if shape[0] in (n_users, n_users + 1):
        return "users"
    if shape[0] in (n_items, n_items + 1):
        return "items"
    return "cells"


def _npz_parts(path: Path, n_users: int, n_items: int) -> dict[str, float] | None:
    """An .npz file's share per axis: a SciPy sparse matrix by its shape (an unknown one with its
    nonzeros, as cells), named arrays by their first axis; None when it is not a NumPy archive."""
    try:
        with np.load(path) as z:
            names = set(z.files)
            if {"data", "indices", "indptr", "shape"} <= names:
                # a sparse matrix by its shape: rows per user or item hold about the same nonzeros as the
                # axis grows (events per user constant); item x item pairs saturate with the catalogue
                axis = _axis(tuple(int(x) for x in z["shape"]), n_users, n_items)
                return {axis if axis != "fixed" else "cells": 1.0}
            sizes = {n: z[n].nbytes for n in names}
            axes = {n: _axis(tuple(z[n].shape), n_users, n_items) for n in names}
    except (ValueError, OSError):
        return None
    total = sum(sizes.values()) or 1
    out: dict[str, float] = {}
    for n, b in sizes.items():
        out[axes[n]] = out.get(axes[n], 0.0) + b / total
    return out


def model_bytes(version_dir: Path, n_users: int, n_items: int) -> dict[str, int]:
    """The version's files (its ranking bundle included), in bytes, by what they scale with:
    users, items, item_pairs, cells, fixed."""
    out = {"users": 0, "items": 0, "item_pairs": 0, "cells": 0, "fixed": 0}
    for root, _, files in os.walk(version_dir):
        for f in files:
            p = Path(root) / f
            size = p.stat().st_size
            if f.endswith(".npz"):
                shares = _npz_parts(p, n_users, n_items) or {"fixed": 1.0}
                for axis, share in shares.items():
                    out[axis] += int(round(size * share))
                continue
            shape = _np_shape(p) if f.endswith(".npy") else None
            out["fixed" if shape is None else _axis(shape, n_users, n_items)] += size
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


def request_costs(service: Any, *, calls: int = 500, rounds: int = 5, seed: int = 0) -> dict[str, float]:
    """CPU-µs per request by strategy, on the real service in this process (no HTTP): the median
    over ``rounds`` interleaved rounds."""
    live = service.state.current
    if live is None:
        return {}
    st = live.model
    rng = np.random.default_rng(seed)
    users = st.user_ids[rng.integers(0, len(st.user_ids), size=calls)].tolist() if len(st.user_ids) else []
    items = st.item_ids[rng.integers(0, len(st.item_ids), size=calls)].tolist() if len(st.item_ids) else []
    sessions = [items[i : i + 3] for i in range(0, max(0, len(items) - 3), 3)][: calls // 3 or 1]
    service.reclog.add = lambda *_a, **_k: None  # type: ignore[method-assign]  # timing the answer, not the log
    service.impressions.add = lambda *_a, **_k: None  # type: ignore[method-assign]
    plan = {
        "model": (lambda u: service.recommend_user(u, 20), users),
        "fold_in": (lambda s: service.recommend_session(s, 20), sessions),
        "fallback": (lambda i: service.recommend_user(f"capacity-unknown-{i}", 20), list(range(calls))),
        "similar": (lambda i: service.similar_items(i, 20), items),
        "popular": (lambda _: service.popular(20), list(range(calls))),
    }
    # interleaved rounds, median: a burst of other load on the machine hits one round of each, not one strategy
    per_round = {k: [] for k in plan}
    chunk = max(1, calls // rounds)
    for r in range(rounds):
        for k, (fn, args) in plan.items():
            part = args[r * len(args) // rounds:(r + 1) * len(args) // rounds] or args[:chunk]
            per_round[k].append(_time_calls(fn, part))
    return {k: float(np.nanmedian(v)) if any(x == x for x in v) else math.nan for k, v in per_round.items()}


#: Shares of the users the calibration refits on (the points the training-time power law is fitted to).
CALIBRATION_FRACTIONS = (0.25, 0.5, 1.0)


def training_calibration(loaded: Any, family: str, params: dict[str, Any], *,
                         fractions: tuple[float, ...] = CALIBRATION_FRACTIONS, seed: int = 0) -> dict[str, Any]:
    """Refit the served version's family and parameters on random shares of its users (the matrix's
    rows, so cells shrink with them) and fit ``cpu_seconds = c x cells^a`` on the points (log-log
    least squares). Process CPU time: other load on the machine does not count."""
    from scalerec.data.matrix import InteractionMatrix
    from scalerec.models import make_model

    m = loaded.matrix
    order = np.random.default_rng(seed).permutation(m.n_users)
    points = []
    for f in fractions:
        rows = np.sort(order[: max(2, int(round(f * m.n_users)))])
        sub = InteractionMatrix(m.matrix[rows], m.user_ids[rows], m.item_ids)
        model = make_model(family, **params)
        t0 = time.process_time()
        model.fit(sub)
        points.append({"fraction": f, "users": int(len(rows)), "cells": int(sub.nnz), "cpu_seconds": time.process_time() - t0})
    x = np.log([p["cells"] for p in points])
    y = np.log([max(p["cpu_seconds"], 1e-6) for p in points])
    a, b = np.polyfit(x, y, 1)
    return {"family": family, "points": points, "exponent": float(a), "coefficient": float(math.exp(b)),
            "cells": int(m.nnz), "cpu_seconds": points[-1]["cpu_seconds"]}


def _ranking(prod: Any, man: Any, n_users: int, n_items: int) -> dict[str, Any]:
    """The version's ranking stage: its status (and why), and its bundle's bytes by axis."""
    section = dict((man.extra or {}).get("ranking") or {})
    root = Path(prod.path) / "ranking"
    parts = model_bytes(root, n_users, n_items) if root.is_dir() else {}
    out = {"status": section.get("status") or "absent", "reason": section.get("reason"),
           "bytes": parts, "total_bytes": sum(parts.values())}
    if section.get("peak_rss_bytes"):  # the stage's training memory (versions trained before it was recorded: absent)
        out["training"] = {"rss_start_bytes": int(section["rss_start_bytes"]), "peak_rss_bytes": int(section["peak_rss_bytes"]),
                           "frame_bytes": int(section.get("frame_bytes") or 0),
                           "learn_queries": int((section.get("queries") or {}).get("learn") or 0),
                           "max_queries": int((section.get("settings") or {}).get("max_queries") or 0)}
    return out


def training_peak_rss(model: dict[str, Any] | None, ranking: dict[str, Any] | None) -> int | None:
    """The training run's peak resident memory: the refit's or the ranking stage's, whichever is higher."""
    peaks = [x for x in ((model or {}).get("peak_rss_bytes"), ((ranking or {}).get("training") or {}).get("peak_rss_bytes")) if x]
    return int(max(peaks)) if peaks else None


def _queries_scale(q: int, cap: int, e: float) -> float:
    """How the ranker's learning queries grow at ``e`` x events: with them, up to ``cap``."""
    return 1.0 if not q or (cap and q >= cap) else min(e, cap / q) if cap else e


def _ranking_training_then(rt: dict[str, Any], fixed_cap: int, e: float) -> dict[str, float]:
    """The ranking stage's training peak at ``e`` x events from one size (ASSUMPTIONS: training memory)."""
    start, peak, frame = rt["rss_start_bytes"], rt["peak_rss_bytes"], rt["frame_bytes"]
    fixed = min(start, fixed_cap)
    q_scale = _queries_scale(rt["learn_queries"], rt["max_queries"], e)
    rest = max(0, peak - start - frame)
    return {"peak_rss_bytes": fixed + (start - fixed) * e + rest * e + frame * q_scale,
            "frame_bytes": frame * q_scale, "queries_scale": q_scale, "basis": "one size: grown with events"}


#: Training runs must span this ratio of event counts before a line is fitted on them.
HISTORY_SPAN = 1.5


def training_history(settings: Any, family: str | None) -> list[dict[str, Any]]:
    """This store's registered training runs of ``family`` with their memory figures (newest per event count)."""
    from scalerec.monitoring.training import read_runs

    points: dict[int, dict[str, Any]] = {}
    for r in read_runs(settings):
        if r.get("status") == "registered" and r.get("family") == family and r.get("events") and r.get("peak_rss_bytes"):
            points[int(r["events"])] = {k: r.get(k) for k in ("events", "peak_rss_bytes", "ranking_peak_rss_bytes",
                                                              "ranking_frame_bytes", "ranking_learn_queries")}
    return [points[k] for k in sorted(points)]


def _fit_line(xs: list[float], ys: list[float], x: float) -> float:
    """A least-squares line through (xs, ys) at ``x``, its slope at least 0 (memory does not shrink as data grows)."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    if b < 0:
        b, a = 0.0, float(np.mean(ys))
    return float(a + b * x)


def _history_then(history: list[dict[str, Any]], events_then: float, rt: dict[str, Any] | None,
                  e: float) -> dict[str, Any] | None:
    """Training peaks at ``events_then`` from lines fitted on this store's runs, or None without two sizes."""
    ev = [float(p["events"]) for p in history]
    if len(ev) < 2 or max(ev) < HISTORY_SPAN * min(ev):
        return None
    out: dict[str, Any] = {"refit_peak_rss_bytes": _fit_line(ev, [float(p["peak_rss_bytes"]) for p in history], events_then),
                           "basis": f"lines in events fitted on {len(ev)} training runs of this store "
                                    f"({min(ev):,.0f} to {max(ev):,.0f} events)"}
    staged = [p for p in history if p.get("ranking_peak_rss_bytes") and p.get("ranking_frame_bytes")]  # runs whose stage learned (a skipped stage holds no frames)
    sev = [float(p["events"]) for p in staged]
    if rt and len(sev) >= 2 and max(sev) >= HISTORY_SPAN * min(sev):
        q_scale = _queries_scale(rt["learn_queries"], rt["max_queries"], e)
        frame = rt["frame_bytes"] * q_scale
        rest = _fit_line(sev, [float(p["ranking_peak_rss_bytes"] - (p.get("ranking_frame_bytes") or 0)) for p in staged], events_then)
        out["ranking_stage"] = {"peak_rss_bytes": rest + frame, "frame_bytes": frame, "queries_scale": q_scale, "basis": out["basis"]}
    return out


def measure(settings: Any, *, store: Any = None, time_requests: bool = True, calibrate: bool = False) -> dict[str, Any]:
    """This store's sizes and costs: the basis of every projection. ``calibrate``: also refit the
    served family on shares of the users (:func:`training_calibration`; costs about two refits)."""
    from scalerec.data.store import DataStore
    from scalerec.monitoring.figures import data_figures, memory_budget, process_figures, version_rows
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
                                                         if k in ("memory_budget_bytes", "disk_budget_bytes", "system_memory_total_bytes", "data_dir_bytes")},
                        "memory_budget_basis": memory_budget(settings)[1]},
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
            out["ranking"] = _ranking(prod, man, n_users, n_items)
            out["training_history"] = training_history(settings, prod.family)
            if calibrate:
                out["training_calibration"] = training_calibration(registry.load(prod.version), man.family, dict(man.params))
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
                if out["ranking"]["status"] == "active" and settings.ranking.enabled:
                    # the rerank's own cost: the same personal lists with the stage off
                    plain = settings.model_copy(update={"ranking": settings.ranking.model_copy(update={"enabled": False})})
                    bare = RecommendService(plain, store=store, registry=registry, watch=False)
                    try:
                        without = request_costs(bare)["model"]
                    finally:
                        bare.reclog.close()
                    out["ranking"]["rerank_cpu_us"] = max(0.0, out["requests_cpu_us"]["model"] - without)
                    out["requests_cpu_us"]["model_without_rerank"] = without
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
    rk = measured.get("ranking") or {}
    for fam, tr in (measured.get("training") or {}).items():
        secs = tr["fit_seconds"] * e * (i**3 if fam == "ease" else 1.0)
        peak = tr.get("peak_rss_bytes") or 0
        fixed = min(peak, measured.get("baseline_rss_bytes") or 0)
        refit = fixed + (peak - fixed) * (model_then / model_now if model_now else e)
        training[fam] = {"seconds": secs, "basis": "linear in events from the last refit",
                         "peak_rss_bytes": refit, "refit_peak_rss_bytes": refit}
        if fam != model.get("family"):
            continue
        fitted = _history_then(measured.get("training_history") or [], (model.get("events") or 0) * e, rk.get("training"), e)
        if fitted:  # the store's own runs at several sizes: lines, not the one-size rule
            refit = fitted["refit_peak_rss_bytes"]
            training[fam].update(refit_peak_rss_bytes=refit, peak_rss_bytes=refit, memory_basis=fitted["basis"])
        if rk.get("training"):  # the served version's ranking stage, trained with it
            stage = (fitted or {}).get("ranking_stage") or _ranking_training_then(rk["training"], measured.get("baseline_rss_bytes") or 0, e)
            training[fam]["ranking_stage"] = stage
            training[fam]["peak_rss_bytes"] = max(refit, stage["peak_rss_bytes"])
    cal = measured.get("training_calibration")
    if cal:
        cpu_then = cal["coefficient"] * (cal["cells"] * e) ** cal["exponent"]
        training.setdefault(cal["family"], {})
        training[cal["family"]].update(
            seconds=cpu_then, cpu_seconds_now=cal["cpu_seconds"],
            basis=f"c x cells^{cal['exponent']:.2f} fitted on {len(cal['points'])} refits of this store "
                  "(model fit CPU seconds; the matrix build, linear in events, not included)")
    fam = model.get("family")
    train_s = training.get(fam, {}).get("seconds") if fam else None
    ranking = {"status": rk.get("status", "absent"), "reason": rk.get("reason"),
               "bytes": sum((rk.get("bytes") or {}).get(k, 0) * f for k, f in scale.items()),
               "rerank_cpu_us": rk.get("rerank_cpu_us")}
    notes = []
    if ranking["status"] != "active":
        notes.append(f"the ranking stage is {ranking['status']} on this store ({ranking['reason'] or 'no bundle'}): "
                     "its bundle and rerank CPU are not in this projection; measure again once it is active")
    elif not rk.get("training"):
        notes.append("the served version has no record of its ranking stage's training memory (trained before it was "
                     "recorded): the training peak counts the refit only; retrain to include it")
    reasons = []
    cpus = machine["cpus"]
    if workers > cpus:
        reasons.append(f"{workers} workers needed, this machine has {cpus} cores")
    if memory_then > machine["memory_budget_bytes"]:
        reasons.append(f"memory {memory_then / 2**30:.2f} GiB over the budget of {machine['memory_budget_bytes'] / 2**30:.2f} GiB")
    train_peak = training.get(fam, {}).get("peak_rss_bytes") if fam else None
    if train_peak and train_peak > machine["memory_budget_bytes"]:
        reasons.append(f"a training run peaks at {train_peak / 2**30:.2f} GiB, over the memory budget of "
                       f"{machine['memory_budget_bytes'] / 2**30:.2f} GiB")
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
        "training_peak_rss_bytes": train_peak,
        "ranking": ranking,
        "notes": notes,
        "memory_budget_bytes": machine["memory_budget_bytes"],
        "memory_budget_basis": machine.get("memory_budget_basis"),
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
