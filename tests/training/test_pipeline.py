"""Training pipeline on tiny synthetic stores: search, resume, gate, retraining, Ctrl-C safety."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from types import SimpleNamespace

import numpy as np
import optuna
import polars as pl
import pytest
import scipy.sparse as sp

from scalerec.config import Settings
from scalerec.data.snapshot import event_count
from scalerec.data.store import DataStore
from scalerec.datasets.synth import generate_store
from scalerec.models import MODELS
from scalerec.models.base import MATRIX_PARAMS
from scalerec.models.popular import MostPopular
from scalerec.registry import Registry
from scalerec.training import TrainOptions, run_training_subprocess, should_retrain, train
from scalerec.training.pipeline import measure_peak_rss
from scalerec.training.retrain import TrainingSchedule
from scalerec.training.tuning import load_report, storage_url

START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def tiny_store(path: Path, *, n_events: int = 6000, days: int = 60, start: datetime = START, seed: int = 7,
               settings: dict[str, Any] | None = None) -> tuple[Settings, DataStore]:
    """A small synthetic shop (150 users, 60 items) in ``path``; shared with test_cli_train."""
    settings = dict(settings or {})
    # its test part holds fewer users than the default [training] min_gate_users of 100
    settings["training"] = {"min_gate_users": 20, **settings.get("training", {})}
    s = Settings(data={"dir": path}, **settings)
    store = DataStore.open(s)
    generate_store(store, n_users=150, n_items=60, n_events=n_events, seed=seed, days=days, start=start)
    return s, store


def _versions_on_disk(settings: Settings) -> list[str]:
    root = Path(settings.data.dir) / "models"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _finished_trials(settings: Settings, family: str) -> int:
    return sum(
        1 for st in load_report(Path(settings.data.dir), family) for t in st["trials"] if t["state"] in ("complete", "pruned")
    )


class LeastPopular(MostPopular):
    """A deliberately bad model: recommends the least popular items first."""

    family = "worst"

    def _fit(self, X: sp.csr_matrix, progress: Any) -> None:
        super()._fit(X, progress)
        self.popularity_ = -self.popularity_


@pytest.fixture()
def store(tmp_path: Path) -> tuple[Settings, DataStore]:
    return tiny_store(tmp_path / "data")


def test_train_registers_and_promotes_a_complete_version(store: tuple[Settings, DataStore]) -> None:
    settings, ds = store
    events: list[Any] = []
    result = train(settings, TrainOptions(models=["popular", "ease"], trials=3), store=ds, progress=events.append)
    assert result.status == "registered"
    v = result.version
    assert v is not None and v.stage == "production"
    m = v.manifest()
    # the snapshot is the store's: same event count and range
    assert m["data"]["event_count"] == event_count(ds)
    lo, hi = ds.log.time_range()
    assert m["data"]["min_timestamp"] == lo.isoformat() and m["data"]["max_timestamp"] == hi.isoformat()
    assert len(m["data"]["fingerprint"]) == 64
    # a signal choice left at None (the [matrix] setting, e.g. the cell convention) is not a set parameter
    chosen = {k: v for k, v in result.best_params.items() if not (k in MATRIX_PARAMS and v is None)}
    assert m["model"]["family"] == result.best_family and m["model"]["params"] == {
        **MODELS[result.best_family]().get_params(), **chosen
    }
    # the default (auto) protocol: chosen on the validation part, scored once on the test part
    assert list(m["metrics"]) == ["test", "validation"]
    assert m["metrics"]["test"]["ndcg@20"] == pytest.approx(result.metrics["ndcg@20"])
    chosen = next(f for f in result.families if f.family == result.best_family)
    assert m["metrics"]["validation"]["ndcg@20"] == pytest.approx(chosen.best_value)
    assert m["protocol"]["split"] == "auto" and m["protocol"]["test"]["users"] == m["promotion"]["n_users"]
    assert m["fit_seconds"] > 0 and m["peak_rss_bytes"] > 10_000_000
    assert m["promotion"]["promoted"] and m["promotion"]["production_score"] is None
    assert m["scalerec_version"]
    # why the family won is recorded (training.select): here the validation leader, or a tie's figures
    sel = m["search"]["selection"]
    assert sel["chosen"] == result.best_family == result.selection["chosen"] and sel["reason"]
    assert sel["decided_by"] in ("validation", "second fold")
    # the 2 x 3 trials are shared by successive halving: 1 each, then the rest to the better one;
    # every family's first trial is the model's defaults
    counts = {f.family: f.trials_total for f in result.families}
    assert sum(counts.values()) == 6 and min(counts.values()) == 1
    winner = max(result.families, key=lambda f: f.best_value)
    assert winner.trials_total == 5 and not winner.dropped
    assert [f.dropped.startswith("dropped after round 1") for f in result.families if f is not winner] == [True]
    ease = next(f for f in result.families if f.family == "ease")
    # normalise: the shop's type weights are not 1, so the cell convention is searched (None = [matrix])
    assert ease.default_params == {"max_items": settings.models.ease_max_items, "l2": 500.0, "recency_half_life_days": None,
                                   "normalise": None}
    assert ease.best_value >= ease.default_value
    # fallbacks: popular = column sums of the all-data matrix, aligned with the model's items
    loaded = Registry(settings).load()
    assert loaded.popular.shape == (loaded.matrix.n_items,) and loaded.popular.sum() > 0
    assert (loaded.trending >= 0).all() and loaded.trending.sum() > 0
    assert {e.stage for e in events} >= {"snapshot", "split", "search", "fit", "gate", "register"}


def test_gate_refuses_a_bad_candidate_and_force_is_recorded(store, monkeypatch) -> None:
    settings, ds = store
    monkeypatch.setitem(MODELS, "worst", LeastPopular)
    first = train(settings, TrainOptions(models=["popular"], trials=2), store=ds)
    assert first.version.stage == "production"

    bad = train(settings, TrainOptions(models=["worst"], trials=1), store=ds)
    p = bad.version.manifest()["promotion"]
    assert not p["promoted"] and not p["gate_passed"] and not p["forced"]
    assert p["candidate_score"] < p["production_score"]
    assert p["production_version"] == first.version.version and p["method"] == "recipe"
    reg = Registry(settings)
    assert reg.production().version == first.version.version
    assert reg.get(bad.version.version).stage == "candidate"

    forced = train(settings, TrainOptions(models=["worst"], trials=1, force=True), store=ds)
    p = forced.version.manifest()["promotion"]
    assert p["promoted"] and p["forced"] and not p["gate_passed"] and p["reason"].startswith("forced")
    assert reg.production().version == forced.version.version and reg.production().forced


def test_gate_tolerance_lets_a_slightly_worse_candidate_through(tmp_path: Path, monkeypatch) -> None:
    settings, ds = tiny_store(tmp_path / "d", settings={"training": {"promotion_tolerance": 1.0}})
    monkeypatch.setitem(MODELS, "worst", LeastPopular)
    train(settings, TrainOptions(models=["popular"], trials=1), store=ds)
    r = train(settings, TrainOptions(models=["worst"], trials=1), store=ds)
    assert r.promotion["gate_passed"] and r.version.stage == "production"  # 100% tolerance: anything passes


def test_gate_evaluates_an_older_production_artifact_itself(tmp_path: Path) -> None:
    # production is trained on days 0..40; 40 more days arrive; the test window (last 30 days)
    # is entirely newer than production's data, so the artefact itself is scored (no leak).
    settings, ds = tiny_store(tmp_path / "d", days=40)
    first = train(settings, TrainOptions(models=["popular"], trials=1, test_days=10), store=ds)
    generate_store(ds, n_users=150, n_items=60, n_events=6000, seed=8, days=40,
                   start=datetime(2025, 2, 15, tzinfo=timezone.utc))
    second = train(settings, TrainOptions(models=["popular"], trials=1, test_days=30), store=ds)
    p = second.promotion
    assert p["method"] == "artifact" and p["production_version"] == first.version.version
    assert 0.0 < p["production_score"] <= 1.0


def test_search_resumes_across_runs(store) -> None:
    settings, ds = store
    r1 = train(settings, TrainOptions(models=["ease"], trials=2), store=ds)
    assert r1.families[0].trials_new == 2 and _finished_trials(settings, "ease") == 2
    r2 = train(settings, TrainOptions(models=["ease"], trials=4), store=ds)
    # same data, same split: the same study continues, only the missing trials run
    assert r2.families[0].study == r1.families[0].study
    assert r2.families[0].trials_new == 2 and _finished_trials(settings, "ease") == 4


def test_ctrl_c_during_search_leaves_nothing_and_the_search_resumes(store) -> None:
    settings, ds = store

    def interrupt_after_first_trial(ev) -> None:
        if ev.stage == "search" and ev.done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(settings, TrainOptions(models=["ease"], trials=3), store=ds, progress=interrupt_after_first_trial)
    assert _versions_on_disk(settings) == []
    assert not any((Path(settings.data.dir) / "tmp").glob("*"))
    assert Registry(settings).list() == []
    assert _finished_trials(settings, "ease") == 1

    r = train(settings, TrainOptions(models=["ease"], trials=3), store=ds)
    assert r.families[0].trials_new == 2 and r.families[0].trials_total == 3
    assert _versions_on_disk(settings) == [r.version.version]


def test_ctrl_c_while_writing_the_version_leaves_nothing(store) -> None:
    settings, ds = store

    def interrupt_in_register(ev) -> None:
        if ev.stage == "register" and ev.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(settings, TrainOptions(models=["popular"], trials=1), store=ds, progress=interrupt_in_register)
    assert _versions_on_disk(settings) == []
    assert Registry(settings).list() == []


def test_stale_running_trial_is_retried(store) -> None:
    settings, ds = store
    r = train(settings, TrainOptions(models=["ease"], trials=1), store=ds)
    # simulate a run killed mid-trial: a RUNNING trial left in the study
    study = optuna.load_study(study_name=r.families[0].study, storage=storage_url(Path(settings.data.dir)))
    dead = study.ask({"l2": optuna.distributions.FloatDistribution(1.0, 1e4, log=True)})
    killed_l2 = dead.params["l2"]
    r2 = train(settings, TrainOptions(models=["ease"], trials=2), store=ds)
    trials = optuna.load_study(study_name=r.families[0].study, storage=storage_url(Path(settings.data.dir))).trials
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert trials[dead.number].user_attrs["interrupted"]
    retried = [t for t in trials[dead.number + 1 :] if t.state == optuna.trial.TrialState.COMPLETE]
    assert retried and retried[0].params["l2"] == pytest.approx(killed_l2)
    assert r2.families[0].trials_total == 2


def test_if_new_events_skips_then_runs(store) -> None:
    settings, ds = store
    first = train(settings, TrainOptions(models=["popular"], trials=1, if_new_events=100), store=ds)
    assert first.status == "registered"  # no production yet: always due
    skipped = train(settings, TrainOptions(models=["popular"], trials=1, if_new_events=100), store=ds)
    assert skipped.status == "skipped" and skipped.new_events == 0 and "nothing to do" in skipped.reason
    before = event_count(ds)
    generate_store(ds, n_users=150, n_items=60, n_events=300, seed=9, days=3, start=datetime(2025, 3, 2, tzinfo=timezone.utc))
    added = event_count(ds) - before
    d = should_retrain(settings, added, store=ds)
    assert d.retrain and d.new_events == added
    assert not should_retrain(settings, added + 1, store=ds).retrain
    again = train(settings, TrainOptions(models=["popular"], trials=1, if_new_events=added), store=ds)
    assert again.status == "registered"
    assert again.version.manifest()["data"]["event_count"] == event_count(ds)


def test_minutes_budget_stops_the_search(store) -> None:
    settings, ds = store
    r = train(settings, TrainOptions(models=["ease"], minutes=0.0005), store=ds)  # 30 ms
    f = r.families[0]
    assert f.stopped == "time budget reached" and 1 <= f.trials_total < 50


def test_exhausted_search_space_stops_early(store) -> None:
    settings, ds = store
    r = train(settings, TrainOptions(models=["popular"], trials=40), store=ds)
    f = r.families[0]
    assert "exhausted" in f.stopped and f.trials_total < 40
    # only two distinct configurations exist; each is fitted once, repeats reuse the score
    trials = [t for st in load_report(Path(settings.data.dir), "popular") for t in st["trials"]]
    fitted = [t for t in trials if not t["duplicate"]]
    assert sorted(str(t["params"]) for t in fitted) == ["{'weighted': False}", "{'weighted': True}"]
    assert len(trials) == f.trials_total


def test_every_family_failing_is_an_error(tmp_path: Path) -> None:
    settings, ds = tiny_store(tmp_path / "d", settings={"models": {"ease_max_items": 10}})
    with pytest.raises(Exception, match="ease.*EASE refuses"):
        train(settings, TrainOptions(models=["ease"], trials=2), store=ds)
    assert _versions_on_disk(settings) == []


def test_empty_store_is_a_clear_error(tmp_path: Path) -> None:
    from scalerec.errors import EmptyDataError

    settings = Settings(data={"dir": tmp_path})
    with pytest.raises(EmptyDataError, match="import"):
        train(settings, TrainOptions(models=["popular"], trials=1))


def test_parallel_jobs_search_in_worker_processes(store) -> None:
    settings, ds = store
    r = train(settings, TrainOptions(models=["ease", "itemknn"], trials=4, jobs=2), store=ds)
    assert r.status == "registered"
    # 2 x 4 trials by successive halving: 2 each (two at a time), then 4 more for the better family
    assert sorted(f.trials_total for f in r.families) == [2, 6]
    assert all(f.trials_failed == 0 for f in r.families)
    assert not any((Path(settings.data.dir) / "tmp").glob("*"))  # the worker snapshot is removed


def test_training_subprocess_and_schedule(store, tmp_path: Path) -> None:
    settings, ds = store
    ds.close()
    log = tmp_path / "train.log"
    rc = run_training_subprocess(settings, "--models", "popular", "--trials", "1", log_path=log)
    assert rc == 0, log.read_text()
    assert Registry(settings).production() is not None
    sched = TrainingSchedule(interval_minutes=60, min_new_events=10)
    assert sched.due()
    assert sched.run_once(settings, log_path=log) == 0  # no new events: skipped, still success
    assert "skipped" in log.read_text()
    assert not sched.due()  # the next attempt waits for the interval
    assert len(Registry(settings).list()) == 1
    # a failing training returns its exit status; the caller lives on
    rc = run_training_subprocess(settings, "--models", "nope", log_path=log)
    assert rc == 2 and "unknown model families" in log.read_text()


def test_measure_peak_rss_sees_an_allocation() -> None:
    with measure_peak_rss() as base:
        pass
    with measure_peak_rss() as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block.sum()
        # Held for several sampling intervals: a spike shorter than one interval is only caught
        # when it also raises the process high-water mark, which earlier tests may have set higher.
        time.sleep(0.15)
        del block
    assert mem["peak_rss_bytes"] >= base["peak_rss_bytes"] + 48 * 2**20


def test_training_lock_refuses_a_second_run(store) -> None:
    from scalerec.errors import ConflictError
    from scalerec.training.pipeline import training_lock

    from scalerec.data.catalog import open_catalog

    settings, ds = store
    other = open_catalog(settings.data.resolved_catalog_url())  # another process or machine
    with training_lock(other):
        with pytest.raises(ConflictError, match="another training"):
            train(settings, TrainOptions(models=["popular"], trials=1), store=ds)
    other.close()


def test_python_m_scalerec_entry_point_exists() -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-m", "scalerec", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "train" in out.stdout and "models" in out.stdout


def test_new_data_warm_starts_from_the_previous_best(store) -> None:
    settings, ds = store
    first = train(settings, TrainOptions(models=["ease"], trials=4), store=ds)
    generate_store(ds, n_users=150, n_items=60, n_events=300, seed=9, days=3, start=datetime(2025, 3, 2, tzinfo=timezone.utc))
    second = train(settings, TrainOptions(models=["ease"], trials=2), store=ds)
    assert second.families[0].study != first.families[0].study  # new data: a new study
    trials = optuna.load_study(study_name=second.families[0].study, storage=storage_url(Path(settings.data.dir))).trials
    # defaults first, then the previous search's winner
    assert trials[0].user_attrs.get("default")
    assert first.families[0].best_params != first.families[0].default_params  # (on this fixture)
    assert trials[1].user_attrs.get("warm_start")
    assert trials[1].params["l2"] == pytest.approx(first.families[0].best_params["l2"])


def _same_cells(a: Any, b: Any) -> bool:
    """Same vocabularies and the same cells (float32 tolerance)."""
    if list(a.user_ids) != list(b.user_ids) or list(a.item_ids) != list(b.item_ids):
        return False
    diff = (a.matrix - b.matrix).tocsr()
    return a.nnz == b.nnz and (diff.nnz == 0 or float(abs(diff).max()) < 1e-5)


def _assert_tuned_and_gated_rows_follow_the_spec(snapshot, settings, spec, model, loaded) -> None:  # noqa: ANN001
    """Tuned: the split's training part is the spec's matrix of the events before its cut-off (capped
    the same way); gated: production is handed the users' split-training rows, that matrix itself."""
    from scalerec.training.pipeline import _VocabAdapter, make_run_split

    split, _ = make_run_split(snapshot, settings, TrainOptions())
    tuned = split.train_for(model)
    train_end = split.info["train_end"]
    before = snapshot.events.filter(snapshot.events["timestamp"] < train_end)
    expected = spec.with_overrides({"min_user_interactions": 1, "min_item_interactions": 1}).build(
        before, now=train_end, user_ids=tuned.user_ids, item_ids=tuned.item_ids
    )
    assert _same_cells(tuned, expected)
    assert float(tuned.matrix.data.max()) <= spec.cap + 1e-6
    prod = type(loaded)(loaded.version, loaded.manifest, model, loaded.matrix, loaded.popular, loaded.trending)
    assert (_VocabAdapter(prod, split).history != tuned.matrix).nnz == 0


@pytest.mark.parametrize("recency, reference", [(None, "floored"), (20.0, "floored"), (20.0, "user"), (20.0, "global")])
def test_tuned_gated_refitted_and_served_matrices_agree_with_cap(
    tmp_path: Path, recency: float | None, reference: str
) -> None:
    """One MatrixSpec for the split's train part (search), the gate's fold-in rows, the refit and the
    served fold-in cells: with [matrix] cap set, all of them are capped the same way; the recency
    clock (per user, floored, global) is the spec's in all of them."""
    from scalerec.data.matrix import MatrixSpec, cell_options, shape_cells
    from scalerec.data.snapshot import take_snapshot
    from scalerec.models import make_model
    from scalerec.registry import Manifest
    from scalerec.training.pipeline import full_matrix

    settings, ds = tiny_store(tmp_path / "data", settings={"matrix": {"cap": 3.0, "recency_reference": reference}})
    result = train(settings, TrainOptions(models=["itemknn"], trials=1), store=ds)
    loaded = Registry(settings).load()
    snapshot = take_snapshot(ds)
    model = make_model("itemknn", **{**loaded.model.get_params(), "recency_half_life_days": recency})
    overrides = model.matrix_overrides()
    spec = MatrixSpec.from_settings(settings, overrides)
    assert spec.cap == (1.0 if recency else 3.0) and spec.recency_reference == reference

    # refitted: the registered (production) matrix is the spec's matrix of the snapshot
    assert result.version is not None
    manifest = Manifest.from_dict(result.version.manifest())
    assert manifest.matrix == MatrixSpec.from_settings(settings, loaded.model.matrix_overrides())
    assert manifest.matrix.cap == 3.0 and manifest.snapshot_end == snapshot.end
    assert _same_cells(loaded.matrix, manifest.matrix.build(snapshot.events))
    refit = full_matrix(snapshot, settings, **overrides)
    assert _same_cells(refit, spec.build(snapshot.events))
    assert float(refit.matrix.data.max()) == pytest.approx(spec.cap)  # the cap binds on this data

    _assert_tuned_and_gated_rows_follow_the_spec(snapshot, settings, spec, model, loaded)

    # served: fold-in histories are summed weights shaped by the manifest's cell convention
    served = manifest.matrix
    assert cell_options(result.version.manifest()) == served.cells() == {"binary": False, "cap": 3.0}
    raw = served.counts().build(snapshot.events, user_ids=loaded.matrix.user_ids, item_ids=loaded.matrix.item_ids)
    assert float(raw.matrix.data.max()) > 3.0
    shaped = raw.matrix.copy()
    shape_cells(shaped.data, **cell_options(result.version.manifest()))
    assert (abs(shaped - loaded.matrix.matrix) > 1e-5).nnz == 0

    # served fold-in of a new user: their events are their newest, so the row the service builds
    # (rating rule applied, no decay) is the spec's row of those events at any recency clock
    from scalerec.serving.realtime import event_type_weights, history_from_arrays
    from scalerec.serving.state import event_values, history_row

    posted = snapshot.events.filter(snapshot.events["user_id"] == loaded.matrix.user_ids[0]).with_columns(
        user_id=pl.lit("fresh"), timestamp=pl.lit(snapshot.end))
    recorded = Manifest.from_dict(result.version.manifest()).matrix.with_overrides(overrides)
    st = SimpleNamespace(ratings=recorded.ratings(), cells=recorded.cells(), n_items=len(loaded.matrix.item_ids))
    types, values = posted["event_type"].to_numpy(), posted["value"].to_numpy()
    fresh = history_from_arrays(posted["item_id"].to_numpy(), types, event_values(st, types, values),
                                loaded.matrix.item_ids, event_type_weights(recorded.event_types, None))
    served_row = history_row(st, fresh.cols, fresh.weights).toarray()
    built_row = recorded.build(posted, item_ids=loaded.matrix.item_ids).matrix.toarray()
    assert built_row.sum() > 0 and np.allclose(served_row, built_row, atol=1e-5)


@pytest.mark.parametrize("recency", [None, 20.0])
def test_normalised_cells_agree_when_tuned_gated_refitted_and_served(tmp_path: Path, recency: float | None) -> None:
    """[matrix] normalise: the strongest type's weight (purchase 10) is the cell unit, fixed once from
    the data and recorded, so the split's train part, the gate's rows, the refit and the served
    fold-in all divide by it before the cap (a view counts 0.1, a fresh purchase 1)."""
    from scalerec.data.matrix import MatrixSpec, shape_cells
    from scalerec.data.snapshot import take_snapshot
    from scalerec.models import make_model
    from scalerec.registry import Manifest
    from scalerec.serving.realtime import event_type_weights, history_from_arrays
    from scalerec.serving.state import event_values, history_row
    from scalerec.training.pipeline import full_matrix

    settings, ds = tiny_store(tmp_path / "data", settings={"matrix": {"normalise": True, "cap": 0.5}})
    train(settings, TrainOptions(models=["itemknn"], trials=1), store=ds)
    loaded = Registry(settings).load()
    snapshot = take_snapshot(ds)
    model = make_model("itemknn", **{**loaded.model.get_params(), "recency_half_life_days": recency})
    overrides = model.matrix_overrides()
    spec = MatrixSpec.from_settings(settings, overrides).resolved(snapshot.events)
    assert spec.cell_unit == 10.0 and spec.cells()["cell_unit"] == 10.0

    # recorded: the manifest's spec carries the unit; serving's cell convention divides by it
    manifest = Manifest.from_dict(loaded.manifest)
    assert manifest.matrix == MatrixSpec.from_settings(settings, loaded.model.matrix_overrides()).resolved(snapshot.events)
    assert manifest.matrix.cells() == {"binary": False, "cap": 0.5, "cell_unit": 10.0}
    assert _same_cells(loaded.matrix, manifest.matrix.build(snapshot.events))
    raw = manifest.matrix.counts().build(snapshot.events, user_ids=loaded.matrix.user_ids,
                                         item_ids=loaded.matrix.item_ids)
    shaped = raw.matrix.copy()
    shape_cells(shaped.data, **manifest.matrix.cells())
    assert (abs(shaped - loaded.matrix.matrix) > 1e-5).nnz == 0
    assert np.isclose(loaded.matrix.matrix.data, 0.1).any() and float(loaded.matrix.matrix.data.max()) == 0.5

    # refitted and tuned: the same unit on the whole snapshot and on the part before the cut-off
    refit = full_matrix(snapshot, settings, **overrides)
    assert _same_cells(refit, spec.build(snapshot.events))
    _assert_tuned_and_gated_rows_follow_the_spec(snapshot, settings, spec, model, loaded)

    # served fold-in of a new user: raw event weights summed, then divided by the recorded unit
    posted = snapshot.events.filter(snapshot.events["user_id"] == loaded.matrix.user_ids[0]).with_columns(
        user_id=pl.lit("fresh"), timestamp=pl.lit(snapshot.end))
    recorded = manifest.matrix.with_overrides(overrides)
    st = SimpleNamespace(ratings=recorded.ratings(), cells=recorded.cells(), n_items=len(loaded.matrix.item_ids))
    types, values = posted["event_type"].to_numpy(), posted["value"].to_numpy()
    fresh = history_from_arrays(posted["item_id"].to_numpy(), types, event_values(st, types, values),
                                loaded.matrix.item_ids, event_type_weights(recorded.event_types, None))
    served_row = history_row(st, fresh.cols, fresh.weights).toarray()
    built_row = recorded.build(posted, item_ids=loaded.matrix.item_ids).matrix.toarray()
    assert built_row.sum() > 0 and np.allclose(served_row, built_row, atol=1e-5)


def test_a_training_whose_lease_is_stolen_stops_before_writing_a_version(store, monkeypatch) -> None:
    # another machine took the `train` lease (this one stalled past its expiry): the run stops at
    # its next step with a typed error, and no version (nor a half-written one) is left
    from test_lease import short_leases, steal_lease

    from scalerec.errors import LeaseLostError

    settings, ds = store
    held = short_leases(monkeypatch)
    stolen: list[str] = []

    def steal_after_the_first_trial(event) -> None:
        if event.stage == "search" and event.done >= 1 and not stolen:
            stolen.append(event.stage)
            steal_lease(ds.catalog, "train", held)

    with pytest.raises(LeaseLostError, match="'train' lease expired"):
        train(settings, TrainOptions(models=["popular", "ease"], trials=4), store=ds, progress=steal_after_the_first_trial)
    assert stolen
    assert _versions_on_disk(settings) == [] and Registry(settings).list() == []
    assert ds.catalog.lease_holder("train")[0] == "other-machine:1:thief", "the new holder keeps its lease"
