"""The figures monitoring watches: read now from the store, the registry, the process and the
serving counters (a *sample*), and turned into rates, shares and latency quantiles over a window
of two samples. Alert rules, the dashboard and /metrics all take their numbers from here."""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from scalerec.monitoring import metrics

#: Endpoints whose latency the objective is about (the recommendation lists).
RECOMMENDATION_ENDPOINTS = (
    "/v1/users/{user_id}/recommendations", "/v1/items/{item_id}/similar", "/v1/popular", "/v1/trending",
    "/v1/rank", "/v1/sessions/recommendations",
)
#: Figures a rule may name, with what they mean (``scalerec monitor rules`` documents them).
FIGURES: dict[str, str] = {
    "requests_per_second": "HTTP requests answered per second over the window",
    "p50_latency_ms": "median latency of recommendation endpoints over the window",
    "p99_latency_ms": "99th-percentile latency of recommendation endpoints over the window",
    "error_5xx_share": "share of requests answered 5xx over the window",
    "fallback_share": "share of served lists that came from a non-personalised fallback",
    "fold_in_share": "share of served lists computed from a user's fresh events",
    "events_per_second": "events accepted per second over the window",
    "reject_share": "share of posted events rejected by validation over the window",
    "pending_events": "events waiting in the pending buffer",
    "ingestion_lag_seconds": "age of the oldest event still waiting in the pending buffer",
    "compaction_backlog_partitions": "day partitions holding at least [data] compact_min_files files",
    "model_age_hours": "hours since the serving model version was trained",
    "model_age_ratio": "model age over the retraining period ([training] schedule_interval_minutes, else 1 day)",
    "ann_recall": "recall@20 of the ANN index against exact search on a sample of users (1 for exact)",
    "quality_drop": "relative drop of the newest version's test figure below the previous production's",
    "drift_score": "largest drift statistic of the latest drift report's data checks over its threshold (>1 = drifted)",
    "feature_drift_score": "largest feature-drift statistic (item/user attributes, request context) over its threshold (>1 = drifted)",
    "kpi_drop_score": "largest CTR/conversion drop of the production version against its own earlier days, over its threshold (>1 = dropped)",
    "memory_headroom_share": "free share of the memory budget",
    "disk_free_share": "free share of the disk budget",
    "days_to_memory_exhaustion": "days until the served model outgrows the memory budget at the last 30 days' growth",
    "days_to_disk_exhaustion": "days until the data directory fills the disk budget at the last 30 days' growth",
    "process_rss_bytes": "resident memory of this server process",
}


# ------------------------------------------------------------------------------- data figures
def data_figures(store: Any, settings: Any, now: float | None = None) -> dict[str, float]:
    """Events, users, items, log bytes and files, growth per day, pending backlog and its age, compaction backlog.

    Counts come from Parquet footers (cached by file name in the event log) and catalogue counts,
    so this is cheap enough for every sample.
    """
    now = time.time() if now is None else now
    log = store.log
    per_day: dict[dt.date, int] = {}
    n_logged = n_bytes = n_files = backlog = 0
    for day, part in log.partitions():
        files = log._visible_files(part)
        rows = 0
        for f in files:
            rows += log._info(f).num_rows
            try:
                n_bytes += f.stat().st_size
            except FileNotFoundError:
                continue  # compacted away between the listing and the stat
        per_day[day] = rows
        n_logged += rows
        n_files += len(files)
        if len(files) >= settings.data.compact_min_files:
            backlog += 1
    catalog = store.catalog
    pending = int(catalog.count_pending_events())
    lag = 0.0
    if pending:
        ts = catalog.pending_events_table().column("timestamp")
        oldest = ts.to_numpy().astype("datetime64[us]").astype(np.int64).min() if len(ts) else None
        if oldest is not None:
            lag = max(0.0, now - oldest / 1e6)
    today = dt.datetime.fromtimestamp(now, dt.timezone.utc).date()
    last7 = [per_day.get(today - dt.timedelta(days=d), 0) for d in range(1, 8)]
    last30 = [per_day.get(today - dt.timedelta(days=d), 0) for d in range(1, 31)]
    return {
        "events": float(n_logged + pending),
        "users": float(catalog.count_users()),
        "items": float(catalog.count_items()),
        "log_bytes": float(n_bytes),
        "log_files": float(n_files),
        "events_per_day_7d": float(np.mean(last7)),
        "events_per_day_30d": float(np.mean(last30)),
        "bytes_per_event": float(n_bytes / n_logged) if n_logged else 0.0,
        "pending_events": float(pending),
        "ingestion_lag_seconds": float(lag),
        "compaction_backlog_partitions": float(backlog),
    }


def per_day_events(store: Any) -> dict[str, int]:
    """Events per UTC day of the log (from file footers)."""
    log = store.log
    return {day.isoformat(): sum(log._info(f).num_rows for f in log._visible_files(part)) for day, part in log.partitions()}


# ---------------------------------------------------------------------------- process figures
_PROC: psutil.Process | None = None

#: the default memory budget leaves this share of the memory to the OS, page cache and other processes ...
MEMORY_RESERVE_SHARE = 0.10
#: ... and at least this much (never more than half of the memory)
MEMORY_RESERVE_MIN = 2**30
#: a cgroup "limit" at or above this is no limit (cgroup v1 writes about 2^63 for unlimited)
_NO_LIMIT = 2**60


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """This process's cgroup memory limit in bytes (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``,
    the lowest from its group up to the root), or None when it has none or it cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = Path(path.lstrip("/"))
        if controllers == "":  # v2: one unified hierarchy
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        chain = [rel, *rel.parents] if str(rel) not in ("", ".") else [Path(".")]
        candidates += [base / d / name for d in chain]
    limits = []
    for f in candidates:
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_LIMIT:
            limits.append(int(text))
    return min(limits) if limits else None


def memory_budget(settings: Any) -> tuple[float, str]:
    """The memory capacity may plan with, in bytes, and how it was chosen: ``[monitoring]
    memory_budget_mb`` when set, else the memory this process may use (its cgroup limit when lower
    than the machine's RAM) less a reserve of ``MEMORY_RESERVE_SHARE`` of it, at least
    ``MEMORY_RESERVE_MIN`` (at most half), for the OS, the page cache and other processes."""
    mon = settings.monitoring
    if mon.memory_budget_mb:
        return float(mon.memory_budget_mb * 2**20), "[monitoring] memory_budget_mb"
    total = float(psutil.virtual_memory().total)
    limit = cgroup_memory_limit()
    base, what = (float(limit), "the cgroup memory limit") if limit is not None and limit < total else (total, "the machine's RAM")
    reserve = min(max(base * MEMORY_RESERVE_SHARE, float(MEMORY_RESERVE_MIN)), base / 2)
    return base - reserve, (f"{what} ({base / 2**30:.1f} GiB) less a reserve of {reserve / 2**30:.1f} GiB "
                            f"({MEMORY_RESERVE_SHARE:.0%}, at least {MEMORY_RESERVE_MIN / 2**30:g} GiB) for the OS and other processes")


def process_figures(settings: Any) -> dict[str, float]:
    """This process's memory, CPU, threads and files; the machine's memory; the data directory's disk."""
    global _PROC
    if _PROC is None or _PROC.pid != os.getpid():
        _PROC = psutil.Process()
    p = _PROC
    with p.oneshot():
        mem = p.memory_info()
        cpu = p.cpu_times()
        threads = p.num_threads()
        try:
            fds = p.num_fds()
        except (AttributeError, psutil.Error):
            fds = 0
    vm = psutil.virtual_memory()
    du = shutil.disk_usage(Path(settings.data.dir)) if Path(settings.data.dir).exists() else None
    mon = settings.monitoring
    mem_budget, _ = memory_budget(settings)
    disk_total = float(du.total) if du else 0.0
    disk_budget = mon.disk_budget_mb * 2**20 if mon.disk_budget_mb else disk_total
    used_dir = _dir_bytes(Path(settings.data.dir))
    return {
        "process_rss_bytes": float(mem.rss),
        "process_cpu_seconds": float(cpu.user + cpu.system),
        "process_threads": float(threads),
        "process_open_fds": float(fds),
        "system_memory_total_bytes": float(vm.total),
        "system_memory_available_bytes": float(vm.available),
        "memory_budget_bytes": float(mem_budget),
        "memory_headroom_share": float(max(0.0, min(vm.available, mem_budget - (vm.total - vm.available))) / mem_budget)
        if mem_budget else 1.0,
        "disk_free_bytes": float(du.free) if du else 0.0,
        "disk_total_bytes": disk_total,
        "disk_budget_bytes": float(disk_budget),
        "data_dir_bytes": float(used_dir),
        "disk_free_share": float(max(0.0, min(du.free if du else 0.0, disk_budget - used_dir)) / disk_budget) if disk_budget else 1.0,
    }


_DIR_CACHE: dict[str, tuple[float, int]] = {}


def _dir_bytes(root: Path, ttl_s: float = 60.0) -> int:
    """Bytes under ``root`` (walked at most once a minute: large stores have many files)."""
    key = str(root)
    hit = _DIR_CACHE.get(key)
    if hit is not None and time.monotonic() - hit[0] < ttl_s:
        return hit[1]
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f), follow_symlinks=False).st_size
            except OSError:
                continue
    _DIR_CACHE[key] = (time.monotonic(), total)
    return total


# ------------------------------------------------------------------------------ model figures
def ann_recall(state: Any, *, sample: int = 200, k: int = 20, seed: int = 0) -> float | None:
    """Recall@k of the served index against exact inner-product search, on ``sample`` users.

    1.0 for an exact index; None for models without item vectors. Measured once per model version.
    """
    from scalerec.serving.index import ExactIndex

    retriever = getattr(state, "retriever", None)
    index = getattr(retriever, "index", None)
    if index is None:
        return None
    if index.kind == "exact":
        return 1.0
    users = np.asarray(retriever.user_vectors)
    if len(users) == 0:
        return None
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(users), size=min(sample, len(users)), replace=False))
    q = np.ascontiguousarray(users[rows], dtype=np.float32)
    k = min(k, index.n_items)
    got, _ = index.search(q, k)
    want, _ = ExactIndex(np.asarray(retriever.item_vectors)).search(q, k)
    hits = [len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(got, want)]
    return float(np.sum(hits) / (k * len(rows)))


def model_figures(service: Any, now: float | None = None) -> dict[str, Any]:
    """The served version, its family, age (hours since its training) and age over the retraining period."""
    now = time.time() if now is None else now
    live = service.state.current if service is not None else None
    if live is None:
        return {"model_version": None, "model_age_hours": math.nan, "model_age_ratio": math.nan}
    st = live.model
    created = _parse_ts(st.created_at)
    age_h = (now - created) / 3600.0 if created is not None else math.nan
    period_min = service.settings.training.schedule_interval_minutes or 24 * 60
    return {
        "model_version": st.version,
        "model_family": st.family,
        "model_age_hours": age_h,
        "model_age_ratio": age_h * 60.0 / period_min if not math.isnan(age_h) else math.nan,
        "model_items": float(st.n_items),
        "model_users": float(len(st.user_ids)),
    }


def _parse_ts(value: Any) -> float | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def version_rows(registry: Any) -> list[dict[str, Any]]:
    """Every registered version with its stage, test/validation figures, gate interval and decision, newest first."""
    out = []
    for v in registry.list():
        try:
            m = v.typed_manifest()
        except Exception:  # noqa: BLE001 - an unreadable version is listed with its error
            out.append({"version": v.version, "stage": v.stage, "family": v.family, "error": v.error,
                        "created_at": v.created_at, "test": {}, "validation": {}, "promotion": {}})
            continue
        out.append({
            "version": v.version, "stage": v.stage, "family": v.family, "created_at": v.created_at,
            "promoted_at": v.promoted_at, "metric": m.primary_metric, "score": m.score,
            "test": m.test_metrics, "validation": m.validation_metrics, "promotion": dict(m.promotion),
            "fit_seconds": m.fit_seconds, "peak_rss_bytes": m.peak_rss_bytes, "events": m.event_count,
            "error": v.error,
        })
    out.sort(key=lambda r: r["created_at"] or "", reverse=True)
    return out


def quality_drop(rows: list[dict[str, Any]]) -> float:
    """How far (relative) the newest version's test figure falls below the production before it; 0 when not below."""
    if len(rows) < 2:
        return 0.0
    newest = rows[0]
    previous = next((r for r in rows[1:] if r.get("promoted_at") and r.get("metric") == newest.get("metric")), None)
    if previous is None or newest.get("score") is None or not previous.get("score"):
        return 0.0
    return float(max(0.0, (previous["score"] - newest["score"]) / abs(previous["score"])))


# ---------------------------------------------------------------------------- serving counters
def serving_counters() -> dict[str, Any]:
    """Cumulative serving counters of every worker: requests, 5xx, latency buckets of the
    recommendation endpoints, lists per strategy, events accepted and rejected."""
    out: dict[str, Any] = {"requests": 0.0, "errors_5xx": 0.0, "events_ingested": 0.0, "events_rejected": 0.0,
                           "lists": {}, "buckets": {}}
    reco = set(RECOMMENDATION_ENDPOINTS)
    for fam in metrics.serving_registry().collect():
        for s in fam.samples:
            if s.name == "scalerec_http_requests_total":
                out["requests"] += s.value
                if str(s.labels.get("status", "")).startswith("5"):
                    out["errors_5xx"] += s.value
            elif s.name == "scalerec_http_request_duration_seconds_bucket" and s.labels.get("endpoint") in reco:
                le = s.labels["le"]
                out["buckets"][le] = out["buckets"].get(le, 0.0) + s.value
            elif s.name == "scalerec_recommendations_total":
                st = s.labels["strategy"]
                out["lists"][st] = out["lists"].get(st, 0.0) + s.value
            elif s.name == "scalerec_events_ingested_total":
                out["events_ingested"] += s.value
            elif s.name == "scalerec_events_rejected_total":
                out["events_rejected"] += s.value
    return out


# ------------------------------------------------------------------------------------ samples
@dataclass
class Sample:
    """Everything monitoring reads at one moment (cumulative counters, levels)."""

    at: float
    counters: dict[str, Any]
    levels: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "counters": self.counters, "levels": self.levels}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sample":
        return cls(at=float(d["at"]), counters=d.get("counters") or {}, levels=d.get("levels") or {})


def _delta(new: float, old: float) -> float:
    # a counter that went down was reset (a restart): what it counted since is its whole value
    return new - old if new >= old else new


def quantile_from_buckets(new: dict[str, float], old: dict[str, float], q: float) -> float:
    """The ``q`` quantile (seconds) of the observations between two cumulative histograms, linear
    within a bucket as Prometheus' histogram_quantile does; NaN without observations."""
    bounds = sorted((float(le), le) for le in new if le != "+Inf")
    counts = [_delta(new.get(le, 0.0), old.get(le, 0.0)) for _, le in bounds]
    total = _delta(new.get("+Inf", 0.0), old.get("+Inf", 0.0))
    if total <= 0:
        return math.nan
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for (b, _), c in zip(bounds, counts):
        if c >= rank:
            return prev_b + (b - prev_b) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_b, prev_c = b, c
    return bounds[-1][0] if bounds else math.nan  # above the highest finite bucket


def window_figures(new: Sample, old: Sample | None) -> dict[str, float]:
    """Rates, shares and quantiles between two samples, plus ``new``'s levels."""
    out = {k: v for k, v in new.levels.items() if isinstance(v, (int, float))}
    if old is None or new.at <= old.at:
        return out
    span = new.at - old.at
    c, o = new.counters, old.counters
    req = _delta(c.get("requests", 0.0), o.get("requests", 0.0))
    out["requests_per_second"] = req / span
    out["error_5xx_share"] = _delta(c.get("errors_5xx", 0.0), o.get("errors_5xx", 0.0)) / req if req else 0.0
    lists_new, lists_old = c.get("lists", {}), o.get("lists", {})
    lists = {k: _delta(v, lists_old.get(k, 0.0)) for k, v in lists_new.items()}
    n_lists = sum(lists.values())
    out["fallback_share"] = lists.get("fallback", 0.0) / n_lists if n_lists else 0.0
    out["fold_in_share"] = lists.get("fold_in", 0.0) / n_lists if n_lists else 0.0
    out["p50_latency_ms"] = 1000 * quantile_from_buckets(c.get("buckets", {}), o.get("buckets", {}), 0.5)
    out["p99_latency_ms"] = 1000 * quantile_from_buckets(c.get("buckets", {}), o.get("buckets", {}), 0.99)
    ev = _delta(c.get("events_ingested", 0.0), o.get("events_ingested", 0.0))
    rej = _delta(c.get("events_rejected", 0.0), o.get("events_rejected", 0.0))
    out["events_per_second"] = ev / span
    out["reject_share"] = rej / (ev + rej) if ev + rej else 0.0
    return out
