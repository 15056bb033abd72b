"""The search itself: data-scaled spaces, the defaults first, pruning of iterative fits (in-process and
in worker processes), successive halving over families, determinism by seed, the rounds in the report."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import scipy.sparse as sp
from optuna.trial import TrialState

from scalerec.config import Settings
from scalerec.data.snapshot import take_snapshot
from scalerec.data.store import DataStore
from scalerec.datasets.synth import generate_store
from scalerec.execution import LocalExecutor
from scalerec.models import MODELS
from scalerec.models.space import DataStats, factor_choices
from scalerec.training import TrainOptions, train
from scalerec.training.pipeline import make_run_split
from scalerec.training.tuning import (
    PruneRule,
    SplitSpec,
    TrialTask,
    _default_params,
    data_stats,
    halving_rounds,
    load_report,
    load_schedules,
    prime_split,
    run_trial,
    search_families,
    storage_url,
    tune_family,
)

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
METRIC = "ndcg@20"


def _shop(path: Path, **settings: Any) -> tuple[Settings, DataStore]:
    """A synthetic shop where personalisation pays: item-kNN clearly beats most-popular on it."""
    s = Settings(data={"dir": path}, **settings)
    store = DataStore.open(s)
    generate_store(store, n_users=300, n_items=120, n_events=15000, seed=7, days=60, start=START)
    return s, store


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, DataStore]:
    return _shop(tmp_path_factory.mktemp("shop") / "data")


@pytest.fixture(scope="module")
def split_and_spec(shop):
    settings, store = shop
    snapshot = take_snapshot(store)
    split, spec = make_run_split(snapshot, settings, TrainOptions())
    prime_split(spec, split)
    return split, spec, snapshot


def _distributions(family: str, stats: DataStats | None) -> dict[str, Any]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    MODELS[family].search_space(trial, stats)
    return dict(trial.distributions)


def _stats(n_users: int, n_items: int, density: float) -> DataStats:
    X = sp.random(n_users, n_items, density=density, format="csr", dtype=np.float32, random_state=0)
    X.data[:] = 1.0
    return DataStats.from_matrix(X, memory_bytes=24 * 1024**3)


# ------------------------------------------------------------------------------------ spaces
def test_search_spaces_scale_with_the_data() -> None:
    small, large = _stats(200, 40, 0.1), _stats(20_000, 4000, 0.005)
    assert small.n_items == 40 and large.mean_items_per_user == pytest.approx(20, rel=0.05)
    assert large.gram_diag_mean == pytest.approx(large.nnz / large.n_items)
    s, g = _distributions("ease", small)["l2"], _distributions("ease", large)["l2"]
    # λ relative to mean(diag(XᵀX)): 1e-2..1e2 times it
    assert (s.low, s.high) == pytest.approx((small.gram_diag_mean * 1e-2, small.gram_diag_mean * 1e2))
    assert g.high / s.high == pytest.approx(large.gram_diag_mean / small.gram_diag_mean)
    for family in ("itemknn", "rp3beta"):
        assert _distributions(family, small)["neighbors"].high == 40  # up to the catalogue
        assert _distributions(family, large)["neighbors"].high == 4000
    als_small, als_large = _distributions("als", small), _distributions("als", large)
    assert max(als_small["factors"].choices) == 64  # half of 40 items: only the default survives
    assert 512 in als_large["factors"].choices
    assert als_large["regularization"].high > als_small["regularization"].high  # longer histories
    # without stats: the fixed ranges of before
    assert _distributions("ease", None)["l2"].high == 1e4


def _trial_distributions(family: str, stats: DataStats, **params: Any) -> dict[str, Any]:
    """The distributions of one trial of ``family`` enqueued with ``params`` (signals included)."""
    from scalerec.training.tuning import trial_params

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(params)
    trial = study.ask()
    trial_params(MODELS[family], trial, stats)
    return dict(trial.distributions)


def test_a_data_scaled_range_follows_the_matrix_the_trial_trains_on(split_and_spec) -> None:
    """EASE's λ and ALS's α are scaled to the trial's own cells (recency cap, cell convention), not the
    configured matrix's: a decayed or normalised matrix has other values than the raw weighted counts."""
    split, _, snapshot = split_and_spec
    stats = data_stats(split, events=snapshot.events, settings=Settings())
    assert "normalise" in stats.signals  # the shop's purchases weigh other than 1
    raw = split.train.matrix
    assert stats.gram_diag_mean == pytest.approx(float(raw.data.astype(np.float64) @ raw.data) / raw.shape[1])
    seen = set()
    for params in ({"recency_half_life_days": None, "normalise": None}, {"recency_half_life_days": 30.0, "normalise": None},
                   {"recency_half_life_days": 30.0, "normalise": True}):
        cells = split.train_for(MODELS["ease"](**params)).matrix.data.astype(np.float64)
        gram = float(cells @ cells) / raw.shape[1]  # mean(diag(XᵀX)) of the matrix this trial fits
        l2 = _trial_distributions("ease", stats, **params)["l2"]
        assert (l2.low, l2.high) == pytest.approx((gram * 1e-2, gram * 1e2), rel=1e-6)
        alpha = _trial_distributions("als", stats, **params)["alpha"]
        assert (alpha.low, alpha.high) == pytest.approx((0.5 / np.abs(cells).mean(), 100 / np.abs(cells).mean()), rel=1e-5)
        seen.add(round(gram, 6))
    assert len(seen) == 3  # three different matrices, three different ranges


def test_factor_choices_respect_memory_and_keep_the_default() -> None:
    tight = replace(_stats(20_000, 4000, 0.005), memory_bytes=200 * 1024**2)
    assert max(factor_choices(tight, 64)) < 512 and 64 in factor_choices(tight, 64)
    assert 100 in factor_choices(_stats(200, 40, 0.1), 100)


@pytest.mark.parametrize("family", ["itemknn", "rp3beta", "ease", "als", "bpr", "trending"])
def test_the_defaults_are_the_first_trial_even_outside_a_small_space(family, split_and_spec, tmp_path) -> None:
    split, spec, _ = split_and_spec
    stats = data_stats(split)
    res = tune_family(family, storage=storage_url(tmp_path), name=f"{family}-x-y", split_spec=spec,
                      executor=LocalExecutor(1), n_trials=2, deadline=None, metric=METRIC, stats=stats)
    first = optuna.load_study(study_name=f"{family}-x-y", storage=storage_url(tmp_path)).trials[0]
    assert first.user_attrs.get("default")
    defaults = _default_params(MODELS[family])
    assert {k: defaults[k] for k in first.params} == first.params  # e.g. 100 neighbours of 120 items
    assert res.best_value >= res.default_value


def test_the_recency_design_sits_at_the_holdout_scale() -> None:
    from scalerec.models.base import RECENCY_CHOICES
    from scalerec.models.space import recency_design
    from scalerec.training.tuning import _design

    base = _stats(50, 30, 0.2)
    assert recency_design(replace(base, holdout_days=25.7), RECENCY_CHOICES) == 30.0
    assert recency_design(replace(base, holdout_days=9.0), RECENCY_CHOICES) == 14.0
    assert recency_design(replace(base, holdout_days=400.0), RECENCY_CHOICES) == 365.0
    assert recency_design(base, RECENCY_CHOICES) is None  # a per-user hold-out has no horizon
    ease = _default_params(MODELS["ease"])
    assert _design(MODELS["ease"], ease, replace(base, holdout_days=25.7)) == [
        ({**ease, "recency_half_life_days": 30.0}, "recency at the hold-out scale")]
    assert _design(MODELS["ease"], ease, base) == []
    assert _design(MODELS["popular"], _default_params(MODELS["popular"]), replace(base, holdout_days=25.7)) == []


def test_queued_design_trials_run_before_a_family_is_judged_even_past_the_deadline(split_and_spec, tmp_path) -> None:
    import time

    split, spec, snapshot = split_and_spec
    stats = data_stats(split, events=snapshot.events, settings=Settings())
    assert stats.holdout_days is not None and stats.holdout_days > 0  # the shop's auto protocol is a time window
    res = tune_family("ease", storage=storage_url(tmp_path), name="ease-x-y", split_spec=spec,
                      executor=LocalExecutor(1), n_trials=10, deadline=time.monotonic() - 1, metric=METRIC, stats=stats)
    trials = optuna.load_study(study_name="ease-x-y", storage=storage_url(tmp_path)).trials
    assert res.trials_new == 2 and res.stopped == "time budget reached"
    assert trials[0].user_attrs.get("default") and trials[0].params["recency_half_life_days"] is None
    assert trials[1].user_attrs.get("design") and trials[1].params["recency_half_life_days"] is not None
    assert trials[1].params["normalise"] is None  # the configured cell convention; the sampler tries the other


def test_the_search_tries_the_signal_choices_the_data_supports(split_and_spec, tmp_path) -> None:
    split = split_and_spec[0]
    choices = {"rating_rule": (None, "raw", "binary", "centered"), "recency_reference": (None, "user", "global")}
    out = _search(Settings(data={"dir": tmp_path}), split_and_spec, ["itemknn"], trials=6,
                  stats=replace(data_stats(split), signals=choices))
    (study,) = load_report(tmp_path)
    default = next(t for t in study["trials"] if t["default"])
    assert default["params"]["rating_rule"] is None and default["params"]["recency_reference"] is None
    assert all(set(choices) <= set(t["params"]) for t in study["trials"])
    tried = {(t["params"]["rating_rule"], t["params"]["recency_reference"]) for t in study["trials"]}
    assert len(tried) > 1  # the sampler moves off the configured signals
    best = out.families[0].best_params
    assert set(choices) <= set(best)
    model = MODELS["itemknn"](**best)  # the chosen signals become the model's matrix overrides
    assert {k: best[k] for k in choices if best[k] is not None}.items() <= model.matrix_overrides().items()


def test_train_on_ratings_searches_the_rating_rule_and_records_the_choice(tmp_path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
    from test_matrix_signals import noisy_ratings

    from scalerec.data.importers import import_file

    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in noisy_ratings()))
    settings = Settings(data={"dir": tmp_path / "store"}, training={"min_gate_users": 10})
    store = DataStore.open(settings)
    import_file(store, "events", path, preset="movielens")
    r = train(settings, TrainOptions(models=["ease"], trials=4, promote=False), store=store)
    store.close()
    assert "rating_rule" in r.best_params
    signals = r.version.manifest()["search"]["signals"]
    assert signals["offered"]["rating_rule"] == [None, "raw", "binary", "centered"]
    assert signals["chosen"] == {"rating_rule": r.best_params["rating_rule"]}


def test_the_cell_convention_is_a_signal_choice_where_type_weights_differ_from_1() -> None:
    from scalerec.training.tuning import signal_choices

    assert signal_choices({"cell_unit": 10.0, "normalise": False})["normalise"] == (None, True)
    assert signal_choices({"cell_unit": 10.0, "normalise": True})["normalise"] == (None, False)
    assert "normalise" not in signal_choices({"cell_unit": 1.0})  # ratings / unit weights: the same cells
    assert "normalise" not in signal_choices({"cell_unit": None})


def test_train_searches_the_cell_convention_and_tune_refit_manifest_and_serving_agree(tmp_path) -> None:
    from scalerec.data.matrix import MatrixSpec, matrix_from_settings
    from scalerec.registry import Manifest
    from scalerec.serving.state import data_conventions

    settings, store = _shop(tmp_path / "data")  # view 1, cart 4, purchase 10: the strongest type is 10
    r = train(settings, TrainOptions(models=["ease"], trials=4, promote=False), store=store)
    study = load_report(settings.data.dir)[0]
    assert all(t["params"]["normalise"] in (None, True) for t in study["trials"])  # searched by every trial
    manifest = r.version.manifest()
    signals = manifest["search"]["signals"]
    assert signals["offered"]["normalise"] == [None, True]
    chosen = signals["chosen"]["normalise"]
    assert chosen == r.best_params["normalise"]
    spec = Manifest.from_dict(manifest).matrix
    # the refit's matrix, the manifest's spec and serving's fold-in cells read the events the same way
    assert spec.normalise is bool(chosen) and (spec.cell_unit == 10.0 if chosen else spec.cell_unit is None)
    assert data_conventions(manifest)[1].get("cell_unit") == spec.cell_unit
    refit = matrix_from_settings(store, settings, **MODELS["ease"](**r.best_params).matrix_overrides())
    again = spec.build(store)
    store.close()
    assert np.array_equal(refit.user_ids, again.user_ids)
    np.testing.assert_allclose(refit.matrix.toarray(), again.matrix.toarray(), rtol=1e-6)
    # a unit resolved for normalised cells is dropped when a model asks for the raw ones
    resolved = MatrixSpec.from_settings(Settings(matrix={"normalise": True})).resolved(again_events(settings))
    assert resolved.cell_unit == 10.0 and resolved.with_overrides({"normalise": False}).cell_unit is None


def again_events(settings: Settings):
    from scalerec.data.snapshot import take_snapshot

    store = DataStore.open(settings)
    try:
        return take_snapshot(store).events
    finally:
        store.close()


# ------------------------------------------------------------------------------------ pruning
def test_prune_rule_is_the_median_rule() -> None:
    rule = PruneRule(higher=True, medians={2: 0.3})
    assert rule.prunes(2, {2: 0.1}) and not rule.prunes(2, {2: 0.4})
    assert not rule.prunes(4, {4: 0.0})  # no median at that checkpoint yet
    assert PruneRule(higher=False, medians={2: 0.3}).prunes(2, {2: 0.5})


def test_a_bad_configuration_is_pruned_in_the_worker(split_and_spec) -> None:
    _, spec, _ = split_and_spec
    good = run_trial(TrialTask("als", {"iterations": 15}, spec, METRIC, "test", PruneRule(higher=True, medians={2: 0.0})))
    assert not good.pruned and list(good.intermediate) == [2, 4, 8] and good.intermediate[2] > 0
    # the median of completed trials at checkpoint 2 is what a good configuration reaches there
    bad = {"regularization": 1e5, "iterations": 15}
    rule = PruneRule(higher=True, medians={2: good.intermediate[2]})
    res = run_trial(TrialTask("als", bad, spec, METRIC, "test", rule))
    assert res.pruned and res.value is None and list(res.intermediate) == [2] and res.error is None
    assert res.intermediate[2] < good.intermediate[2]


@pytest.mark.parametrize("jobs", [1, 2])
def test_pruned_trial_is_recorded_and_counts_in_the_budget(jobs, split_and_spec, tmp_path) -> None:
    split, spec, snapshot = split_and_spec
    if jobs > 1:  # worker processes rebuild the split from a Parquet copy of the events
        path = tmp_path / "events.parquet"
        snapshot.events.write_parquet(path)
        spec = replace(spec, events_path=str(path))
        prime_split(spec, split)
    url, name = storage_url(tmp_path), "als-prune-test"
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    for extra in range(6):  # good configurations (the same first 8 iterations) that report their checkpoints
        study.enqueue_trial({"factors": 32, "regularization": 0.01, "alpha": 1.0, "iterations": 10 + extra,
                             "recency_half_life_days": None})
    study.enqueue_trial({"factors": 32, "regularization": 1e5, "alpha": 1.0, "iterations": 15,
                         "recency_half_life_days": None})
    with LocalExecutor(jobs) as ex:
        res = tune_family("als", storage=url, name=name, split_spec=spec, executor=ex, n_trials=7,
                          deadline=None, metric=METRIC, stats=data_stats(split))
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert [t.state for t in trials[:6]] == [TrialState.COMPLETE] * 6
    assert all(set(t.intermediate_values) == {2, 4, 8} for t in trials[:6])
    assert trials[6].state == TrialState.PRUNED and trials[6].params["regularization"] == 1e5
    assert trials[6].user_attrs["pruned_at"] == 2
    assert res.trials_pruned == 1 and res.trials_total == 7 and res.stopped == "trial budget reached"
    (report,) = load_report(tmp_path)
    assert report["trials"][6]["state"] == "pruned" and report["trials"][6]["pruned_at"] == 2


def test_the_median_rule_waits_for_fewer_trials_at_small_budgets() -> None:
    from scalerec.training.tuning import PRUNE_MIN_STARTUP, PRUNE_STARTUP_TRIALS, prune_startup

    assert [prune_startup(n) for n in (1, 6, 12, 16, 40, 1000)] == [PRUNE_MIN_STARTUP, 2, 3, 4, 5, PRUNE_STARTUP_TRIALS]
    assert prune_startup(None) == PRUNE_STARTUP_TRIALS


def test_an_iterative_family_is_pruned_within_a_small_budget(split_and_spec, tmp_path) -> None:
    out = _search(Settings(data={"dir": tmp_path}), split_and_spec, ["als"], trials=5)
    (als,) = out.families
    (study,) = load_report(tmp_path)
    pruned = [t for t in study["trials"] if t["state"] == "pruned"]
    assert als.trials_total == 5 and als.trials_pruned == len(pruned) >= 1  # waiting for 5 completed, it could not fire
    stored = optuna.load_study(study_name=study["study"], storage=storage_url(tmp_path)).trials
    complete = [t for t in stored if t.state == TrialState.COMPLETE]
    assert complete and all(t.intermediate_values for t in complete)  # every fit reported its checkpoints
    for t in (t for t in stored if t.state == TrialState.PRUNED):
        # stopped at a checkpoint where it was behind the completed trials' median
        assert t.user_attrs["pruned_at"] == max(t.intermediate_values) and t.user_attrs["pruned_at"] < t.params["iterations"]


# ------------------------------------------------------------------------------------ halving
def test_halving_rounds() -> None:
    assert [halving_rounds(n) for n in (1, 2, 3, 4, 5, 7, 8)] == [1, 2, 3, 3, 4, 4, 4]


def _search(settings: Settings, split_and_spec, families: list[str], trials: int, seed: int = 0, **kw: Any):
    split, spec, _ = split_and_spec
    url = storage_url(Path(settings.data.dir))
    return search_families(
        families, storage=url, names={f: f"{f}-fp-conf" for f in families}, schedule="search-fp-conf",
        split_spec=spec, executor=kw.pop("executor", None) or LocalExecutor(1), n_trials=trials, minutes=None, metric=METRIC,
        seed=seed, stats=kw.pop("stats", data_stats(split)), **kw,
    )


def test_trials_carry_seeded_bootstrap_intervals(split_and_spec, tmp_path) -> None:
    split = split_and_spec[0]

    def intervals(root: Path, seed: int) -> list[dict[str, Any]]:
        root.mkdir()
        out = _search(Settings(data={"dir": root}), split_and_spec, ["itemknn"], trials=2,
                      uncertainty={"confidence": 0.9, "n_boot": 300, "seed": seed})
        (study,) = load_report(root)
        assert out.families[0].best_intervals == study["best"]["intervals"]
        return [t["intervals"] for t in study["trials"]]

    first = intervals(tmp_path / "a", 3)
    for trial in first:
        iv = trial[METRIC]
        assert iv["low"] <= iv["mean"] <= iv["high"] and iv["low"] < iv["high"]
        assert iv["n_users"] == len(split.relevant("test")[1])  # the validation part's users
        assert set(trial) >= {"recall@20", "precision@20", "ndcg@20", "coverage@20", "popularity_bias@20"}
        for key in ("coverage@20", "popularity_bias@20"):  # catalogue figures: resampled over the same users
            assert 0.0 <= trial[key]["low"] <= trial[key]["mean"] <= trial[key]["high"] <= 1.0
        assert trial["coverage@20"]["low"] < trial["coverage@20"]["high"]
    assert intervals(tmp_path / "b", 3) == first  # seeded: the same intervals again
    assert intervals(tmp_path / "c", 4) != first


def test_successive_halving_drops_the_worse_family_and_gives_the_winner_more(split_and_spec, tmp_path) -> None:
    out = _search(Settings(data={"dir": tmp_path}), split_and_spec, ["popular", "itemknn"], trials=4)
    popular, knn = out.families
    assert popular.dropped.startswith("dropped after round 1") and "ranked 2 of 2" in popular.dropped
    assert not knn.dropped and knn.best_value > popular.best_value
    # 2 x 4 trials: 2 each in round 1 (defaults, then TPE), the other 4 to item-kNN in round 2
    assert (popular.trials_total, knn.trials_total) == (2, 6)
    assert [sorted(r.families) for r in out.rounds] == [["itemknn", "popular"], ["itemknn"]]
    assert out.rounds[0].families["popular"]["kept"] is False
    (run,) = load_schedules(tmp_path)
    assert run["rounds"][1]["families"]["itemknn"]["trials"] == 4 and run["budget"]["trials"] == 4
    by_family = {st["family"]: st for st in load_report(tmp_path)}
    assert "search" not in by_family  # the schedule study is not a family
    assert [r["round"] for r in by_family["itemknn"]["rounds"]] == [1, 2]
    assert [t["round"] for t in by_family["itemknn"]["trials"]] == [1, 1, 2, 2, 2, 2]


def test_the_search_is_deterministic_for_a_seed(split_and_spec, tmp_path) -> None:
    families = ["itemknn", "ease", "als"]

    def trials_of(root: Path, seed: int) -> list[Any]:
        root.mkdir()
        out = _search(Settings(data={"dir": root}), split_and_spec, families, trials=4, seed=seed)
        report = load_report(root)
        schedule = [(r.number, sorted((f, i["trials"], i["kept"]) for f, i in r.families.items())) for r in out.rounds]
        return [schedule] + [(st["family"], [(t["state"], t["params"], t["value"]) for t in st["trials"]]) for st in report]

    first = trials_of(tmp_path / "a", 11)
    assert trials_of(tmp_path / "b", 11) == first
    assert trials_of(tmp_path / "c", 12) != first  # the seed does steer the samplers


class _SteppedClock:
    """A monotonic clock that an executor moves on by a fixed cost per trial: a machine where each trial
    takes ``cost`` seconds, without waiting for them (tests never depend on the wall clock)."""

    def __init__(self, inner: Any, cost: float) -> None:
        import time

        self.now, self.cost, self.inner, self.jobs = 1000.0, cost, inner, 1
        self.perf_counter = time.perf_counter

    def monotonic(self) -> float:
        return self.now

    def submit(self, fn, *args):
        self.now += self.cost
        return self.inner.submit(fn, *args)


def test_a_time_budget_changes_how_far_a_family_gets_not_what_it_tries(split_and_spec, tmp_path, monkeypatch) -> None:
    """What docs/training.md claims for --minutes: a slower machine gets fewer trials of the same sequence."""
    import scalerec.training.tuning as tuning

    split, spec, snapshot = split_and_spec
    stats = data_stats(split, events=snapshot.events, settings=Settings())

    def tried(root: Path, cost: float) -> list[Any]:
        root.mkdir()
        clock = _SteppedClock(LocalExecutor(1), cost)
        monkeypatch.setattr(tuning, "time", clock)
        url = storage_url(root)
        search_families(["itemknn"], storage=url, names={"itemknn": "itemknn-fp-conf"}, schedule="search-fp-conf",
                        split_spec=spec, executor=clock, n_trials=None, minutes=0.1, metric=METRIC, seed=3, stats=stats)
        return [(t["params"], t["value"]) for t in load_report(root)[0]["trials"]]

    fast, slow = tried(tmp_path / "fast", 1.0), tried(tmp_path / "slow", 3.0)  # 6 s: 6 trials against 2
    assert len(slow) < len(fast)
    assert [p for p, _ in fast[:len(slow)]] == [p for p, _ in slow]  # the slow run tried a prefix of the same sequence
    np.testing.assert_allclose([v for _, v in fast[:len(slow)]], [v for _, v in slow], rtol=1e-5)
    assert len({json.dumps(p, sort_keys=True) for p, _ in fast}) > len(slow)  # and the fast one went on past it


class _ShuffledExecutor:
    """Runs trials on ``jobs`` threads, each after a random pause: trials finish in an order that
    differs from their launch order, and from run to run (the completion order a process pool under load gives)."""

    def __init__(self, jobs: int, seed: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.jobs, self._rng, self._pool = jobs, np.random.default_rng(seed), ThreadPoolExecutor(jobs)

    def submit(self, fn, *args):
        import time

        pause = float(self._rng.uniform(0.0, 0.1))
        return self._pool.submit(lambda: (time.sleep(pause), fn(*args))[1])

    def shutdown(self) -> None:
        self._pool.shutdown()


def test_the_search_is_deterministic_for_a_seed_with_parallel_trials(split_and_spec, tmp_path) -> None:
    # ALS: each launch carries prune medians of the trials told so far, so what was told when matters
    families = ["als"]

    def run(root: Path, order_seed: int) -> tuple[list[Any], list[Any]]:
        root.mkdir()
        ex = _ShuffledExecutor(3, order_seed)
        try:
            out = _search(Settings(data={"dir": root}), split_and_spec, families, trials=12, seed=5, executor=ex)
        finally:
            ex.shutdown()
        report = load_report(root)
        trials = [(st["family"], t["number"], t["state"], t["params"]) for st in report for t in st["trials"]]
        values = [t["value"] if t["value"] is not None else np.nan for st in report for t in st["trials"]]
        chosen = [(f.family, f.best_params, f.trials_total, f.dropped) for f in out.families]
        return [chosen, trials], values

    first, first_values = run(tmp_path / "a", 0)
    for order_seed in (1,):
        again, values = run(tmp_path / f"r{order_seed}", order_seed)
        assert again == first  # same proposals, states and chosen configuration whatever finished first
        np.testing.assert_allclose(values, first_values, rtol=1e-5)
    assert len({json.dumps(t[3], sort_keys=True) for t in first[1]}) > 4  # the sampler really proposed several


def test_train_records_rounds_and_tune_report_shows_them(tmp_path) -> None:
    from typer.testing import CliRunner

    from scalerec.cli import app

    settings, store = _shop(tmp_path / "data")
    r = train(settings, TrainOptions(models=["popular", "itemknn", "ease"], trials=3, promote=False), store=store)
    store.close()
    assert sum(f.trials_total for f in r.families) == 9
    # three families: two go on after round 1, one after round 2
    assert sorted(f.rounds for f in r.families) == [1, 2, 3] and r.best_family != "popular"
    assert sum(1 for f in r.families if f.dropped) == 2
    base = ["--data-dir", str(settings.data.dir), "tune", "report"]
    out = CliRunner().invoke(app, base, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "search of" in out.output and "dropped after round 1" in out.output and "pruned" in out.output
    studies = json.loads(CliRunner().invoke(app, [*base, "--json"]).output)
    assert all(st["rounds"] for st in studies)
    # intervals (the [evaluation] defaults: 95%, seeded) on every completed trial, the test score and the manifest
    done = [t for st in studies for t in st["trials"] if t["state"] == "complete"]
    assert done and all(t["intervals"][METRIC]["low"] <= t["value"] <= t["intervals"][METRIC]["high"] for t in done)
    assert re.search(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]", out.output)  # value [low, high] in the table
    for key in ("coverage@20", "popularity_bias@20"):  # on the test part and the chosen trial, in the manifest too
        iv = r.intervals["test"][key]
        assert iv["low"] <= r.metrics[key] <= iv["high"] and key in r.intervals["validation"]
        assert r.version.manifest()["intervals"]["test"][key] == iv
    assert "coverage" in out.output and "popularity" in out.output  # columns of the best-per-family table
    test_iv, val_iv = r.intervals["test"][METRIC], r.intervals["validation"][METRIC]
    assert test_iv["low"] <= r.metrics[METRIC] <= test_iv["high"] and test_iv["mean"] == pytest.approx(r.metrics[METRIC])
    assert val_iv["mean"] == pytest.approx(r.validation_metrics[METRIC]) and r.intervals["confidence"] == 0.95
    manifest = r.version.manifest()
    assert manifest["intervals"]["test"][METRIC] == pytest.approx(test_iv)
    assert manifest["intervals"]["validation"][METRIC] == pytest.approx(val_iv)
