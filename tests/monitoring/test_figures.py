"""Figures: latency quantiles from histogram buckets, window rates and shares across a counter
reset, data figures from the store, ANN recall of a real FAISS index against exact search, and
/metrics exposing data, training, model and process figures."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from _serving_fixtures import base_store, make_api  # noqa: F401  (fixtures)
from scalerec.monitoring.figures import Sample, ann_recall, data_figures, quantile_from_buckets, window_figures
from scalerec.monitoring.monitor import Monitor


def _hist(values: np.ndarray, bounds: list[float]) -> dict[str, float]:
    out = {str(b): float((values <= b).sum()) for b in bounds}
    out["+Inf"] = float(len(values))
    return out


def test_quantile_from_buckets_brackets_the_true_quantile() -> None:
    rng = np.random.default_rng(0)
    bounds = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25]
    old_vals = rng.exponential(0.004, 5000)
    new_vals = np.r_[old_vals, rng.exponential(0.02, 5000)]  # the window holds only the slow half
    window = new_vals[len(old_vals):]
    for q in (0.5, 0.99):
        got = quantile_from_buckets(_hist(new_vals, bounds), _hist(old_vals, bounds), q)
        true = np.quantile(window, q)
        lo = max([b for b in [0.0, *bounds] if b <= true])
        hi = min([b for b in [*bounds, math.inf] if b >= true])
        assert lo <= got <= hi, (q, got, true)
    assert math.isnan(quantile_from_buckets(_hist(old_vals, bounds), _hist(old_vals, bounds), 0.5))  # nothing in the window


def test_window_figures_rates_shares_and_a_reset() -> None:
    old = Sample(0.0, {"requests": 100.0, "errors_5xx": 1.0, "lists": {"model": 50.0, "fallback": 10.0},
                       "events_ingested": 0.0, "events_rejected": 0.0, "buckets": {}}, {"events": 5.0})
    new = Sample(10.0, {"requests": 200.0, "errors_5xx": 3.0, "lists": {"model": 80.0, "fallback": 40.0, "fold_in": 20.0},
                        "events_ingested": 90.0, "events_rejected": 10.0, "buckets": {}}, {"events": 95.0})
    f = window_figures(new, old)
    assert f["requests_per_second"] == 10.0 and f["error_5xx_share"] == 0.02
    assert f["fallback_share"] == 30 / 80 and f["fold_in_share"] == 20 / 80
    assert f["events_per_second"] == 9.0 and f["reject_share"] == 0.1 and f["events"] == 95.0
    restarted = Sample(20.0, {"requests": 5.0, "errors_5xx": 0.0, "lists": {}, "buckets": {}})
    assert window_figures(restarted, new)["requests_per_second"] == 0.5  # counted since the restart


def test_data_figures_count_the_store(base_store: Path, tmp_path: Path) -> None:
    a = make_api(base_store, tmp_path)
    try:
        stats = a.service.store.stats()
        f = data_figures(a.service.store, a.settings)
        assert f["events"] == stats["n_events"] and f["items"] == stats["n_items_catalog"]
        assert f["log_files"] == stats["n_files"] and f["log_bytes"] > 0 and f["pending_events"] == 0
        r = a.post("/v1/events", json={"user_id": "u-new", "item_id": a.service.live.model.item_ids[0], "event_type": "view"})
        assert r.status_code in (200, 202)
        f2 = data_figures(a.service.store, a.settings)
        assert f2["events"] == f["events"] + 1
        if f2["pending_events"]:
            assert f2["ingestion_lag_seconds"] >= 0
    finally:
        a.service.close()


@pytest.mark.parametrize("limit", [10_000, 50])
def test_ann_recall_against_exact(base_store: Path, tmp_path: Path, limit: int) -> None:
    a = make_api(base_store, tmp_path, exact_index_max_items=limit)
    try:
        state = a.service.live.model
        recall = ann_recall(state, sample=100)
        if state.index.kind == "exact":
            assert recall == 1.0
        else:
            assert state.index.kind == "hnsw"
            assert 0.5 < recall <= 1.0  # HNSW at its default breadth on a 150-item catalogue
    finally:
        a.service.close()


def test_metrics_endpoint_exposes_every_part(base_store: Path, tmp_path: Path) -> None:
    a = make_api(base_store, tmp_path)
    mon = Monitor(a.service)
    try:
        with a.client:  # the lifespan registers the figures collector
            t0 = time.time()
            mon.tick(t0)
            for u in a.service.live.model.user_ids[:5].tolist():
                a.get(f"/v1/users/{u}/recommendations?n=5")
            mon.tick(t0 + 61)
            text = a.client.get("/v1/metrics").text
        for name in ("scalerec_recommendations_total{strategy=\"model\"}", "scalerec_events ", "scalerec_items ", "scalerec_log_bytes ",
                     "scalerec_events_per_day_7d ", "scalerec_pending_events ", "scalerec_ingestion_lag_seconds ",
                     "scalerec_compaction_backlog_partitions ", "scalerec_model_age_hours ", "scalerec_ann_recall ",
                     "scalerec_fallback_share ", "scalerec_fold_in_share ", "scalerec_p99_latency_ms ", "scalerec_process_rss_bytes ",
                     "scalerec_process_cpu_seconds ", "scalerec_disk_free_share ", "scalerec_memory_headroom_share ",
                     "scalerec_model_test_metric{", "scalerec_model_fit_seconds{"):
            assert name in text, name
    finally:
        mon.close()
        a.service.close()


def _cgroup_tree(root: Path, proc: Path, lines: list[str], files: dict[str, str]) -> tuple[Path, Path]:
    proc.write_text("\n".join(lines) + "\n")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root, proc


def test_cgroup_memory_limit_v1_v2_and_none(tmp_path: Path) -> None:
    from scalerec.monitoring.figures import cgroup_memory_limit

    # v2: the lowest memory.max from the process's group up to the root ("max" is no limit)
    root, proc = _cgroup_tree(tmp_path / "v2", tmp_path / "v2.cgroup", ["0::/shop/train"],
                              {"shop/train/memory.max": "max", "shop/memory.max": str(6 * 2**30), "memory.max": str(8 * 2**30)})
    assert cgroup_memory_limit(root, proc) == 6 * 2**30
    # v1: the memory controller's line; about 2^63 means unlimited
    root, proc = _cgroup_tree(tmp_path / "v1", tmp_path / "v1.cgroup", ["4:memory:/job", "3:cpu:/job"],
                              {"memory/job/memory.limit_in_bytes": str(3 * 2**30)})
    assert cgroup_memory_limit(root, proc) == 3 * 2**30
    root, proc = _cgroup_tree(tmp_path / "v1u", tmp_path / "v1u.cgroup", ["4:memory:/"],
                              {"memory/memory.limit_in_bytes": "9223372036854771712"})
    assert cgroup_memory_limit(root, proc) is None
    assert cgroup_memory_limit(tmp_path / "absent", tmp_path / "absent.cgroup") is None


def test_default_memory_budget_is_the_usable_memory_less_a_stated_reserve(tmp_path: Path) -> None:
    import psutil

    from scalerec.config import Settings
    from scalerec.monitoring.figures import MEMORY_RESERVE_MIN, MEMORY_RESERVE_SHARE, cgroup_memory_limit, memory_budget

    budget, basis = memory_budget(Settings(data={"dir": tmp_path}))
    total = psutil.virtual_memory().total
    limit = cgroup_memory_limit()
    base = min(total, limit) if limit else total
    reserve = min(max(base * MEMORY_RESERVE_SHARE, MEMORY_RESERVE_MIN), base / 2)
    assert budget == pytest.approx(base - reserve)
    assert 0 < budget < total and "reserve" in basis and ("RAM" in basis or "cgroup" in basis)
    set_budget, set_basis = memory_budget(Settings(data={"dir": tmp_path}, monitoring={"memory_budget_mb": 4096}))
    assert set_budget == 4096 * 2**20 and set_basis == "[monitoring] memory_budget_mb"
