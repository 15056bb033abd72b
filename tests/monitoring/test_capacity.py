"""Capacity: the projection from a store to twice its users and events matches a store built at
that size within the stated tolerance (disk, model memory); factors are validated; the CLI says
what it rests on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalerec.cli import main
from scalerec.config import Settings
from scalerec.data.store import DataStore
from scalerec.datasets.synth import generate_store
from scalerec.errors import ValidationError
from scalerec.monitoring.capacity import ASSUMPTIONS, measure, project
from scalerec.monitoring.training import recorded_run
from scalerec.training.pipeline import TrainOptions, train

#: The stated tolerance of a projection (docs/monitoring.md): within 25% of the measured value.
TOLERANCE = 0.25


def _shop(d: Path, users: int, events: int) -> Settings:
    # the ranking stage active at both sizes (its bundle is part of what is projected): a store
    # below [ranking] min_queries has none, a step the projection reports instead of modelling
    settings = Settings(data={"dir": d}, ranking={"min_queries": 200})
    with DataStore.open(settings) as store:
        generate_store(store, n_users=users, n_items=400, n_events=events, seed=5, days=60)
        with recorded_run(settings) as run:  # the runs history, as `scalerec train` writes it
            run["result"] = result = train(settings, TrainOptions(models=["als"], trials=1), store=store)
    assert result.status == "registered"
    return settings


@pytest.fixture(scope="module")
def shops(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Settings]:
    root = tmp_path_factory.mktemp("capacity")
    return _shop(root / "small", 1500, 60_000), _shop(root / "double", 3000, 120_000)


def test_projection_matches_a_measured_store_at_twice_the_size(shops) -> None:
    small, double = shops
    m1 = measure(small, time_requests=False)
    m2 = measure(double, time_requests=False)
    assert m1["model"]["family"] == m2["model"]["family"] == "als"
    # like with like: the same configuration at both sizes (the projection assumes it)
    from scalerec.registry import Registry

    p1, p2 = (Registry(s).production().typed_manifest().params for s in (small, double))
    assert p1 == p2
    proj = project(m1, users="2x", events="2x")
    assert m1["ranking"]["status"] == m2["ranking"]["status"] == "active" and proj["notes"] == []
    assert m1["ranking"]["total_bytes"] > 0.2 * m1["model"]["total_bytes"]  # a real share of the model
    for what, projected, measured in [
        ("disk (event log)", proj["log_bytes"], m2["data"]["log_bytes"]),
        ("model memory (ranking bundle included)", proj["model_bytes"], m2["model"]["total_bytes"]),
        ("ranking bundle", proj["ranking"]["bytes"], m2["ranking"]["total_bytes"]),
        ("disk (log + model)", proj["disk_bytes"], m2["data"]["log_bytes"] + m2["model"]["total_bytes"]),
    ]:
        assert abs(projected / measured - 1) <= TOLERANCE, (what, projected, measured)
    # and the growth is really there: a projection at 1x would miss by more than the tolerance
    same = project(m1)
    assert abs(same["model_bytes"] / m2["model"]["total_bytes"] - 1) > TOLERANCE
    assert proj["assumptions"] == ASSUMPTIONS


def test_factors_are_validated(shops) -> None:
    m = measure(shops[0], time_requests=False)
    for bad in ("0x", "-2", "lots", "infx"):
        with pytest.raises(ValidationError, match="factor"):
            project(m, traffic=bad)
    assert project(m, traffic="5X")["factors"]["traffic"] == 5.0


def test_more_traffic_needs_more_workers_and_past_the_cores_a_cluster(shops) -> None:
    m = measure(shops[0], time_requests=True)
    costs = m["requests_cpu_us"]
    assert set(costs) == {"model", "fold_in", "fallback", "similar", "popular", "model_without_rerank"}
    assert all(v > 0 for v in costs.values())
    # the ranking stage's rerank, measured apart: the same personal lists with the stage off
    assert m["ranking"]["rerank_cpu_us"] == max(0.0, costs["model"] - costs["model_without_rerank"])
    base = project(m, peak_rps=10)
    peak = project(m, traffic="1000x", peak_rps=10)
    assert peak["workers"] >= base["workers"]
    expected = max(1, -(-10 * 1000 * costs["model"] / 1e6 // 0.6))
    assert peak["workers"] == int(expected)
    if peak["workers"] > m["machine"]["cpus"]:
        assert not peak["one_machine_enough"] and "cores" in peak["why_cluster"][0] and peak["ray_replicas"] == peak["workers"]


def test_capacity_cli_json(shops, capsys) -> None:
    small, _ = shops
    main(["-d", str(small.data.dir), "capacity", "--traffic", "5x", "--users", "2x", "--events", "3x", "--peak-rps", "4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["projection"]["factors"] == {"traffic": 5.0, "users": 2.0, "events": 3.0, "items": 1.0}
    assert out["projection"]["peak_rps"] == 20.0 and out["projection"]["assumptions"]
    assert out["measured"]["model"]["bytes"]["users"] > 0
    # the budget it judged one machine by, and how that budget was chosen (here: the default)
    proj = out["projection"]
    assert proj["memory_budget_bytes"] == out["measured"]["machine"]["memory_budget_bytes"] > 0
    assert "reserve" in proj["memory_budget_basis"]
    with pytest.raises(SystemExit) as exc:
        main(["-d", str(small.data.dir), "capacity", "--traffic", "many"])
    assert exc.value.code == 2


def test_calibration_fits_training_time_on_refits_of_this_store(shops) -> None:
    m = measure(shops[0], time_requests=False, calibrate=True)
    cal = m["training_calibration"]
    assert cal["family"] == "als" and [p["fraction"] for p in cal["points"]] == [0.25, 0.5, 1.0]
    cells = [p["cells"] for p in cal["points"]]
    assert cells == sorted(cells) and cells[0] < cells[-1] == cal["cells"]
    assert all(p["cpu_seconds"] > 0 for p in cal["points"])
    proj = project(m, users="2x", events="2x")
    fitted = proj["training"]["als"]
    assert "fitted on 3 refits" in fitted["basis"]
    assert proj["training_seconds"] == fitted["seconds"] == cal["coefficient"] * (2 * cal["cells"]) ** cal["exponent"]
    # without calibration the projection says it rests on the last refit, linear in events
    assert project(measure(shops[0], time_requests=False), events="2x")["training"]["als"]["basis"].startswith("linear")


def test_training_peak_memory_counts_the_ranking_stage(shops) -> None:
    """`scalerec train` records the ranking stage's own peak and its queries x candidates x
    features frames; the projected training peak is the larger of the refit's and the stage's, the
    frames growing with the learning queries only up to [ranking] max_queries."""
    from scalerec.monitoring.capacity import training_peak_rss

    small, _ = shops
    m = measure(small, time_requests=False)
    rt = m["ranking"]["training"]
    assert rt["peak_rss_bytes"] >= rt["rss_start_bytes"] > 0
    assert 0 < rt["frame_bytes"] < rt["peak_rss_bytes"] and rt["learn_queries"] >= 200
    assert rt["max_queries"] == small.ranking.max_queries
    assert training_peak_rss(m["model"], m["ranking"]) == max(m["model"]["peak_rss_bytes"], rt["peak_rss_bytes"])
    tr = project(m, users="2x", events="2x")["training"]["als"]
    stage = tr["ranking_stage"]
    assert tr["peak_rss_bytes"] == max(tr["refit_peak_rss_bytes"], stage["peak_rss_bytes"])
    assert stage["peak_rss_bytes"] > rt["peak_rss_bytes"]  # the event-bound part grows
    for queries, scale in ((rt["max_queries"], 1.0), (rt["max_queries"] // 4, 2.0), (rt["max_queries"] * 3 // 4, 4 / 3)):
        # at the cap the frames stay; below it they grow with events until the cap
        mm = {**m, "ranking": {**m["ranking"], "training": {**rt, "learn_queries": queries}}}
        st = project(mm, users="2x", events="2x")["training"]["als"]["ranking_stage"]
        assert st["queries_scale"] == pytest.approx(scale, rel=1e-3)
        assert st["frame_bytes"] == pytest.approx(rt["frame_bytes"] * scale)
    # a version trained before the stage's memory was recorded: said, and the refit alone counted
    old = {**m, "ranking": {k: v for k, v in m["ranking"].items() if k != "training"}}
    p_old = project(old, events="2x")
    assert "ranking_stage" not in p_old["training"]["als"] and any("training memory" in n for n in p_old["notes"])


def test_training_memory_from_the_store_s_runs_at_two_sizes(shops) -> None:
    """With training runs at two sizes (a growing shop's history) the peaks are lines in events
    fitted on them: projected to the larger size they give its recorded peaks; runs too close in
    size are not fitted on."""
    small, double = shops
    m1, m2 = (measure(s, time_requests=False) for s in shops)
    assert len(m1["training_history"]) == len(m2["training_history"]) == 1  # each store's own registered run
    run1, run2 = m1["training_history"][0], m2["training_history"][0]
    assert run1["events"] == m1["model"]["events"] and run1["peak_rss_bytes"] == m1["model"]["peak_rss_bytes"]
    assert run1["ranking_peak_rss_bytes"] == m1["ranking"]["training"]["peak_rss_bytes"]
    one = project(m1, users="2x", events="2x")["training"]["als"]
    assert "memory_basis" not in one  # one size: the single-size rule
    grown = {**m1, "training_history": [run1, run2]}
    e = run2["events"] / run1["events"]
    tr = project(grown, users=e, events=e)["training"]["als"]
    assert "fitted on 2 training runs" in tr["memory_basis"]
    assert tr["refit_peak_rss_bytes"] == pytest.approx(run2["peak_rss_bytes"], rel=1e-6)
    st = tr["ranking_stage"]
    assert st["queries_scale"] == (1.0 if run1["ranking_learn_queries"] >= small.ranking.max_queries else
                                   min(e, small.ranking.max_queries / run1["ranking_learn_queries"]))
    expected = run2["ranking_peak_rss_bytes"] - run2["ranking_frame_bytes"] + m1["ranking"]["training"]["frame_bytes"] * st["queries_scale"]
    assert st["peak_rss_bytes"] == pytest.approx(expected, rel=1e-6)
    assert tr["peak_rss_bytes"] == max(tr["refit_peak_rss_bytes"], st["peak_rss_bytes"])
    # a training peak over the memory budget is a reason one machine is not enough
    budget = {**grown, "machine": {**grown["machine"], "memory_budget_bytes": int(tr["peak_rss_bytes"] * 0.9)}}
    p_budget = project(budget, users=e, events=e)
    assert p_budget["training_peak_rss_bytes"] == tr["peak_rss_bytes"]
    assert not p_budget["one_machine_enough"] and any("training run peaks" in r for r in p_budget["why_cluster"])
    # a run whose ranking stage was skipped (no frames) is no point of the stage's line
    skipped = {**grown, "training_history": [{**run1, "ranking_frame_bytes": 0}, run2]}
    t_skip = project(skipped, users=e, events=e)["training"]["als"]
    assert "fitted on 2 training runs" in t_skip["memory_basis"] and t_skip["ranking_stage"]["basis"].startswith("one size")
    close = {**m1, "training_history": [run1, {**run2, "events": int(run1["events"] * 1.2)}]}
    assert "memory_basis" not in project(close, events="2x")["training"]["als"]
