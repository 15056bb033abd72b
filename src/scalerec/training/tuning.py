"""Hyperparameter search: one resumable Optuna study per model family in ``<data_dir>/tuning.db``.

The budget is shared across families by successive halving (:func:`search_families`): every
family gets a few trials, the better half by validation score goes on with about twice as
many, and so on. Search spaces see :class:`~scalerec.models.space.DataStats` of the training
matrix. Iterative models (ALS, BPR) report the metric at doubling iteration checkpoints and are
pruned in the worker by the median rule over the study's completed trials, shipped with the task
(the trial object lives in the driver, and the worker may be another process or a Ray node).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from datetime import datetime
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalerec.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from scalerec.execution import Executor
    from scalerec.evaluation.splits import Split
    from scalerec.models.space import DataStats

#: Optuna study names: ``<family>-<data fingerprint>-<search config hash>``
STUDY_SEP = "-"
#: A family stops early after this many trials in a row that re-propose an evaluated configuration.
MAX_DUPLICATES_IN_A_ROW = 5
#: Metrics recorded per trial (the primary one is always added).
TRIAL_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage", "popularity_bias")
#: Completed trials reporting a checkpoint before the median rule may prune at it: Optuna's MedianPruner
#: default for a long study; smaller budgets use fewer (:func:`prune_startup`), down to PRUNE_MIN_STARTUP.
PRUNE_STARTUP_TRIALS = 5
PRUNE_MIN_STARTUP = 2


def prune_startup(expected_trials: float | None) -> int:
    """Completed trials the median rule waits for, scaled to the trials a family is expected to get:
    a quarter of them, between PRUNE_MIN_STARTUP and PRUNE_STARTUP_TRIALS (at 5 the rule never fired
    in a search of a few trials per family). None (no estimate yet): PRUNE_STARTUP_TRIALS."""
    if expected_trials is None or not math.isfinite(expected_trials):
        return PRUNE_STARTUP_TRIALS
    return int(max(PRUNE_MIN_STARTUP, min(PRUNE_STARTUP_TRIALS, expected_trials // 4)))
#: Name prefix of the study that records the round schedule of each search (not a model family).
SCHEDULE_PREFIX = "search"


def storage_url(data_dir: Path) -> str:
    """SQLAlchemy URL of the tuning database ``<data_dir>/tuning.db``."""
    return f"sqlite:///{Path(data_dir).resolve() / 'tuning.db'}"


def open_storage(url: str) -> "optuna.storages.BaseStorage":
    """An Optuna RDB storage that waits for the sqlite lock instead of failing at once."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def study_name(family: str, fingerprint: str, config: dict[str, Any]) -> str:
    """``<family>-<fingerprint[:12]>-<hash of the search config[:8]>``.

    The same family on the same data with the same split/metric resumes the same study; any
    change (new events, another split or metric) starts a new one, since their scores are not
    comparable.
    """
    conf = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return STUDY_SEP.join((family, fingerprint[:12], conf))


def parse_metric(key: str) -> tuple[str, int, bool]:
    """``"ndcg@20"`` -> ("ndcg", 20, higher_is_better)."""
    from scalerec.evaluation.evaluate import LOWER_IS_BETTER, parse_metric_key

    name, k = parse_metric_key(key.lower())
    return name, k, name not in LOWER_IS_BETTER


def signal_choices(stats: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """Matrix hyperparameters worth searching on this data (``data.matrix.signal_stats``): the rating
    rule when the data has ratings of several values, the recency clock when the users' last
    events lie over a year apart, the cell convention (``normalise``: the other one than
    configured) when the strongest positive type weight present (``cell_unit``) is not 1, so
    normalising changes the cells; None (the configured [matrix] value) first in each."""
    out: dict[str, tuple[Any, ...]] = {}
    if stats.get("rating_values", 0) > 1:
        out["rating_rule"] = (None, "raw", "binary", "centered")
    if stats.get("user_last_spread_days", 0.0) > 365.0:
        out["recency_reference"] = (None, "user", "global")
    unit = stats.get("cell_unit")
    # Whether type weights should count is shop-dependent (BENCHMARKS.md, "Cell convention"): decided per data.
    if unit is not None and unit > 0 and not math.isclose(unit, 1.0):
        out["normalise"] = (None, not bool(stats.get("normalise", False)))
    return out


# ---------------------------------------------------------------------------------- worker side
@dataclass(frozen=True)
class SplitSpec:
    """How a worker process rebuilds the split: events (a Parquet snapshot), splitter, options.

    Splits hold closures (to rebuild training matrices), so they are recomputed in each worker
    once and cached by ``key`` rather than pickled. In-process runs prime the cache directly.
    """

    key: str
    name: str
    options: dict[str, Any]
    settings: dict[str, Any]
    events_path: str | None = None
    #: a handle with ``.get()`` (e.g. RayExecutor.share) to the events frame, for remote workers
    events_ref: Any = None

    def build(self) -> "Split":
        import polars as pl

        from scalerec.config import Settings
        from scalerec.evaluation.splits import make_split

        if self.events_ref is not None:
            events = self.events_ref.get()
        elif self.events_path is not None:
            events = pl.read_parquet(self.events_path)
        else:
            raise ValidationError(f"split {self.key} was not shared with worker processes (no events snapshot)")
        return make_split(self.name, events, settings=Settings(**self.settings), **self.options)


_SPLITS: dict[str, "Split"] = {}


def prime_split(spec: SplitSpec, split: "Split") -> None:
    """Make ``split`` available to in-process trials under ``spec.key`` (no recomputation)."""
    _SPLITS[spec.key] = split


def get_split(spec: SplitSpec) -> "Split":
    split = _SPLITS.get(spec.key)
    if split is None:
        _SPLITS.clear()  # one training at a time per worker: drop older splits
        split = _SPLITS[spec.key] = spec.build()
    return split


@dataclass(frozen=True)
class PruneRule:
    """Optuna's median rule, evaluated in the worker: stop a trial whose best intermediate value so
    far is worse than the median of the study's completed trials at the same checkpoint.

    ``medians`` holds only the checkpoints that enough completed trials reported (:func:`prune_startup`).
    """

    higher: bool
    medians: dict[int, float] = field(default_factory=dict)

    def prunes(self, step: int, history: dict[int, float]) -> bool:
        ref = self.medians.get(step)
        if ref is None or not history:
            return False
        values = [v for v in history.values() if math.isfinite(v)]
        if not values:
            return True
        best = max(values) if self.higher else min(values)
        return best < ref if self.higher else best > ref


class TrialPruned(Exception):
    """Raised inside a fit's checkpoint callback to stop a trial the prune rule rejects."""


@dataclass(frozen=True)
class TrialTask:
    """One configuration to fit and evaluate (picklable: sent to worker processes)."""

    family: str
    params: dict[str, Any]
    split: SplitSpec
    metric: str
    on: str = "test"
    prune: PruneRule | None = None
    #: ``{"confidence", "n_boot", "seed"}`` of the trial's bootstrap intervals; None = none
    uncertainty: dict[str, Any] | None = None


@dataclass
class TrialResult:
    value: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    fit_s: float = 0.0
    eval_s: float = 0.0
    error: str | None = None
    #: metric at each checkpoint iteration of an iterative fit
    intermediate: dict[int, float] = field(default_factory=dict)
    pruned: bool = False
    #: ``{"ndcg@20": {"mean", "low", "high", "n_users"}}``: seeded bootstrap-over-users intervals of
    #: the ranking metrics and of coverage and popularity bias (the same resamples)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)


def fit_and_evaluate(
    family: str,
    params: dict[str, Any],
    split: "Split",
    metric: str,
    *,
    on: str = "test",
    progress: Callable[[str, int, int], None] | None = None,
    report: Callable[[int, float], None] | None = None,
    uncertainty: dict[str, Any] | None = None,
) -> tuple[Any, TrialResult]:
    """Fit ``family(**params)`` on the split's training matrix and evaluate it; (model, result).

    ``progress(stage, done, total)`` with stage "fit" or "evaluate". ``report(iteration, value)``
    receives the metric at each checkpoint of an iterative fit (ALS, BPR; others never call it)
    and may raise TrialPruned to stop it. ``uncertainty`` (``{"confidence", "n_boot", "seed"}``)
    adds seeded bootstrap intervals of every metric (coverage and popularity bias too). Raises what the model raises.
    """
    from scalerec.evaluation.evaluate import evaluate, evaluate_per_user
    from scalerec.models import make_model
    from scalerec.models.als import IterativeFit

    name, k, _ = parse_metric(metric)
    model = make_model(family, **params)
    t0 = time.perf_counter()
    fit_cb = (lambda d, t: progress("fit", d, t)) if progress else None
    train = split.train_for(model)
    if report is not None and isinstance(model, IterativeFit):

        def checkpoint(iteration: int) -> None:
            value = evaluate(model, split, k=(k,), metrics=(name,), on=on)[metric]
            report(iteration, float(value))

        model.fit_reporting(train, checkpoint, progress=fit_cb)
    else:
        model.fit(train, progress=fit_cb)
    fit_s = time.perf_counter() - t0
    names = tuple(dict.fromkeys((*TRIAL_METRICS, name)))
    eval_cb = (lambda d, t: progress("evaluate", d, t)) if progress else None
    t1 = time.perf_counter()
    wanted = uncertainty is not None and uncertainty.get("n_boot", 0) > 0
    ev = evaluate_per_user(model, split, k=(k,), metrics=names, on=on, progress=eval_cb, catalogue_detail=wanted)
    metrics = ev.metrics
    intervals: dict[str, dict[str, Any]] = {}
    if wanted:
        intervals = {key: iv.to_dict() for key, iv in ev.intervals(**uncertainty).items()}
    eval_s = time.perf_counter() - t1
    return model, TrialResult(value=float(metrics[metric]), metrics=metrics, fit_s=fit_s, eval_s=eval_s,
                              intervals=intervals)


def run_trial(task: TrialTask) -> TrialResult:
    """Worker entry point: fit and evaluate one configuration; model errors become a failed result.

    A configuration the model refuses (ModelCapacityError, a diverging fit, out of memory) is a
    failed trial, not a failed search.
    """
    intermediate: dict[int, float] = {}

    def report(step: int, value: float) -> None:
        intermediate[step] = value
        if task.prune is not None and task.prune.prunes(step, intermediate):
            raise TrialPruned(step)

    t0 = time.perf_counter()
    try:
        split = get_split(task.split)
        _, result = fit_and_evaluate(task.family, task.params, split, task.metric, on=task.on, report=report,
                                     uncertainty=task.uncertainty)
    except TrialPruned:
        return TrialResult(value=None, fit_s=time.perf_counter() - t0, intermediate=intermediate, pruned=True)
    except Exception as exc:  # noqa: BLE001 - reported on the trial; all trials failing is reported per family
        return TrialResult(value=None, error=f"{type(exc).__name__}: {exc}", intermediate=intermediate)
    result.intermediate = intermediate
    if result.value is None or not math.isfinite(result.value):
        result.error = f"metric {task.metric} is {result.value}"
        result.value = None
    return result


# ---------------------------------------------------------------------------------- parent side
@dataclass
class FamilyResult:
    """Outcome of the search for one model family."""

    family: str
    study: str
    trials_total: int = 0
    trials_new: int = 0
    trials_failed: int = 0
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    #: the best trial's intervals on the validation part (TrialResult.intervals)
    best_intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_value: float | None = None
    default_params: dict[str, Any] | None = None
    default_metrics: dict[str, float] = field(default_factory=dict)
    default_intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_s: float = 0.0
    stopped: str = ""
    error: str | None = None
    trials_pruned: int = 0
    #: rounds of the family schedule this family took part in
    rounds: int = 0
    #: why successive halving stopped giving this family trials ("" while it stays in)
    dropped: str = ""

    def absorb(self, later: "FamilyResult") -> None:
        """Fold the result of a later round into this one (counts add up; the rest is the latest)."""
        for name in ("trials_new", "trials_failed", "trials_pruned", "wall_s"):
            setattr(self, name, getattr(self, name) + getattr(later, name))
        for name in ("study", "trials_total", "best_value", "best_params", "best_metrics", "best_intervals",
                     "default_value", "default_params", "default_metrics", "default_intervals", "stopped", "error"):
            setattr(self, name, getattr(later, name))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


@dataclass
class SearchEvent:
    """Progress of a search: ``done`` of ``total`` trials of ``family`` finished (total may be None)."""

    family: str
    done: int
    total: int | None
    best: float | None
    last: TrialResult | None = None


def _simple(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _default_params(klass: type) -> dict[str, Any]:
    """Keyword defaults of a model class that an Optuna trial can hold (None, bool, numbers, str)."""
    import inspect

    sig = inspect.signature(klass.__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty and _simple(p.default)
    }


def trial_params(klass: type, trial: "optuna.Trial", stats: "DataStats | None") -> dict[str, Any]:
    """The model kwargs a trial suggests: the one place the per-trial parameters are built.

    Used to launch trials, to fit the class defaults into the space and to replay a finished
    trial's parameters, so anything added here applies to all three alike. Beside the family's own
    space, every family searches the signal choices this data supports (``stats.signals``: the
    rating rule, the recency clock; None = the [matrix] setting).
    """
    from scalerec.models.base import suggest_signals

    signals = family_signals(klass, stats)
    # the signal choices first: a space scaled to the data reads them (models.base.trial_stats)
    chosen = suggest_signals(trial, signals) if signals else {}
    return {**klass.search_space(trial, stats), **chosen}


def family_signals(klass: type, stats: "DataStats | None") -> dict[str, tuple[Any, ...]]:
    """The signal choices a family searches: all the data offers, but the cell convention only where
    cells are capped by recency weighting (families with a half-life), where it changes what a model
    learns; a plain sum rescaled by one constant ranks the same (most popular, say)."""
    if stats is None:
        return {}
    has_recency = "recency_half_life_days" in _default_params(klass)
    return {k: v for k, v in stats.signals.items() if k != "normalise" or has_recency}


def _probe_defaults(klass: type, stats: "DataStats | None" = None) -> dict[str, Any] | None:
    """The class defaults restricted to what its search space suggests, or None if they don't fit it."""
    import optuna

    defaults = {**_default_params(klass), **{name: None for name in family_signals(klass, stats)}}
    probe = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    probe.enqueue_trial(defaults)
    trial = probe.ask()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial_params(klass, trial, stats)
    except (ValueError, TypeError):
        return None
    return {k: v for k, v in trial.params.items()}


def _design(klass: type, defaults: dict[str, Any] | None, stats: "DataStats | None") -> list[tuple[dict[str, Any], str]]:
    """Configurations tried right after the defaults, before the family is first judged: the
    defaults with recency weighting at the hold-out window's scale (when the family has a
    half-life, its default is none, and the part scored on is a time window). Successive halving
    ranks families after few trials, so each is judged on its defaults with and without the
    signal the data's protocol says may matter, not on the defaults alone."""
    from scalerec.models.base import RECENCY_CHOICES
    from scalerec.models.space import recency_design

    if defaults is None or "recency_half_life_days" not in defaults or defaults["recency_half_life_days"] is not None:
        return []
    half_life = recency_design(stats, RECENCY_CHOICES)
    if half_life is None:
        return []
    # The other cell convention is left to the sampler: a second queued trial per family took round 1's
    # sampled one, and no run showed it paying (BENCHMARKS.md, issue 10, "The cell convention searched").
    return [({**defaults, "recency_half_life_days": half_life}, "recency at the hold-out scale")]


def _initial_trials(klass: type, stats: "DataStats | None") -> int:
    """Trials a new study queues before the sampler's own: the defaults (when they fit the space) and the design."""
    defaults = _probe_defaults(klass, stats)
    return (0 if defaults is None else 1) + len(_design(klass, defaults, stats))


def _params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _queued(study: "optuna.Study") -> bool:
    """Enqueued configurations still waiting to run."""
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _finished(trial: "optuna.trial.FrozenTrial") -> bool:
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted", False)


def tune_family(
    family: str,
    *,
    storage: str,
    name: str,
    split_spec: SplitSpec,
    executor: "Executor",
    n_trials: int | None,
    deadline: float | None,
    metric: str,
    on: str = "test",
    seed: int = 0,
    fixed: dict[str, Any] | None = None,
    progress: Callable[[SearchEvent], None] | None = None,
    stats: "DataStats | None" = None,
    startup_trials: int | None = None,
    round_number: int | None = None,
    uncertainty: dict[str, Any] | None = None,
    expected_trials: int | None = None,
) -> FamilyResult:
    """Run (or resume) the Optuna study ``name`` for ``family`` until it holds ``n_trials`` finished
    trials or ``deadline`` (``time.monotonic()`` seconds) passes.

    TPE sampler seeded with ``seed`` + trials already in the study (a resumed search does not
    replay the same random start); the configuration of the model's defaults is tried first; up
    to ``executor.jobs`` trials run at once (asked and told here, fitted by the executor).
    Trials left RUNNING by an interrupted run are marked failed and their configurations retried
    first. On Ctrl-C the running trials are marked interrupted (retried next time) and the
    KeyboardInterrupt propagates. ``fixed`` are keyword arguments given to every configuration
    (e.g. EASE's ``max_items`` from the settings), not searched. ``stats`` scale the search space;
    ``startup_trials`` is TPE's random start (default from ``n_trials``); ``round_number`` is
    recorded on each trial (successive halving). Iterative fits report checkpoints; pruned
    trials count against ``n_trials``. ``uncertainty`` (``{"confidence", "n_boot", "seed"}``) puts
    seeded bootstrap intervals on each trial's metrics (user attribute ``intervals``).
    ``expected_trials`` (default ``n_trials``; with only a deadline, estimated from the trials'
    durations) scales how many completed trials the median rule waits for (:func:`prune_startup`).
    """
    import optuna
    from optuna.trial import TrialState

    from scalerec.models import MODELS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    klass = MODELS[family]
    fixed_params = dict(fixed or {})
    _, _, higher = parse_metric(metric)
    started = time.monotonic()
    store = open_storage(storage)
    new_study = name not in optuna.study.get_all_study_names(store)
    jobs = max(1, int(getattr(executor, "jobs", 1)))
    n_before = 0 if new_study else len(optuna.load_study(study_name=name, storage=store).trials)
    budget = n_trials if n_trials is not None else 10_000
    sampler = optuna.samplers.TPESampler(
        seed=seed + n_before,
        n_startup_trials=startup_trials if startup_trials is not None else max(3, min(10, budget // 3)),
        constant_liar=jobs > 1,
    )
    study = optuna.create_study(
        study_name=name,
        storage=store,
        sampler=sampler,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=prune_startup(expected_trials or n_trials)),  # applied by PruneRule
        direction="maximize" if higher else "minimize",
        load_if_exists=True,
    )
    result = FamilyResult(family=family, study=name)
    if new_study:
        study.set_user_attr("family", family)
        study.set_user_attr("metric", metric)
        defaults = _probe_defaults(klass, stats)
        if defaults is not None:
            study.enqueue_trial(defaults, user_attrs={"default": True})
        # Warm start: new data means a new study, but the last search's winner is a strong guess.
        previous = _previous_best(store, name)
        if previous is not None and _params_key(previous) != _params_key(defaults or {}):
            study.enqueue_trial(previous, user_attrs={"warm_start": True})
        queued = {_params_key(p) for p in (defaults, previous) if p is not None}
        for params, why in _design(klass, defaults, stats):
            if _params_key(params) not in queued:
                study.enqueue_trial(params, user_attrs={"design": why})
    # Trials left RUNNING belong to a run that died (training holds a lock, so none is live).
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        optuna.trial.Trial(study, t._trial_id).set_user_attr("interrupted", True)
        study.tell(t.number, state=TrialState.FAIL)
        _requeue(study, t.params, {k: v for k, v in t.user_attrs.items() if k != "interrupted"})

    seen: dict[str, TrialResult] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        seen[_params_key(t.params)] = TrialResult(value=t.value, metrics=t.user_attrs.get("metrics", {}),
                                                  intervals=t.user_attrs.get("intervals", {}))
    done = sum(1 for t in study.get_trials(deepcopy=False) if _finished(t))
    # Trials launched and not yet told, in launch order. They are told oldest first, and only when a
    # slot is needed: each ask then sees exactly the trials launched ``jobs`` or more asks before it
    # (the rest as constant-liar running ones), whichever finished first, so the sampler's
    # proposals, the prune medians and the duplicate checks are the same for a seed at any --jobs.
    untold: list[tuple["optuna.Trial", Future[TrialResult]]] = []
    launching: "optuna.Trial | None" = None
    duplicates = 0
    stop = ""
    durations: list[float] = []  # seconds of this run's fitted trials

    def _startup() -> int:
        if expected_trials is not None or n_trials is not None:
            return prune_startup(expected_trials or n_trials)
        if deadline is not None and durations:
            return prune_startup(done + max(0.0, deadline - time.monotonic()) / max(1e-3, sum(durations) / len(durations)))
        return PRUNE_STARTUP_TRIALS

    def _emit(last: TrialResult | None) -> None:
        if progress is not None:
            best = _best_value(study)
            progress(SearchEvent(family, done, n_trials, best, last))

    def _record(trial: "optuna.Trial", res: TrialResult) -> None:
        nonlocal done
        trial.set_user_attr("metrics", res.metrics)
        if res.intervals:
            trial.set_user_attr("intervals", res.intervals)
        trial.set_user_attr("fit_s", round(res.fit_s, 4))
        trial.set_user_attr("eval_s", round(res.eval_s, 4))
        if round_number is not None:
            trial.set_user_attr("round", round_number)
        for step, value in sorted(res.intermediate.items()):
            trial.report(value, step)
        if not trial.user_attrs.get("duplicate"):
            durations.append(res.fit_s + res.eval_s)
        if res.pruned:
            trial.set_user_attr("pruned_at", max(res.intermediate))
            study.tell(trial, state=TrialState.PRUNED)
            result.trials_pruned += 1
        elif res.error is not None or res.value is None:
            trial.set_user_attr("error", res.error)
            study.tell(trial, state=TrialState.FAIL)
            result.trials_failed += 1
        else:
            study.tell(trial, res.value)
            seen.setdefault(_params_key(trial.params), res)
        done += 1
        result.trials_new += 1
        _emit(res)

    def _tell_oldest() -> None:
        trial, fut = untold[0]
        try:
            res = fut.result()  # waits for it (the others keep running)
        except Exception as exc:  # a worker died (killed, out of memory): the trial failed
            res = TrialResult(value=None, error=f"{type(exc).__name__}: {exc}")
        untold.pop(0)
        _record(trial, res)

    _emit(None)
    try:
        while True:
            if len(untold) >= jobs:
                _tell_oldest()  # free a slot: the oldest trial's, so the order of tells is the order of asks
                continue
            if not stop and done + len(untold) < budget:
                # At least one trial per family even when the time is up, so every family has a result;
                # queued ones (defaults, design, warm start, retries) too: a family is judged on them.
                if deadline is not None and time.monotonic() >= deadline and (done or untold) and not _queued(study):
                    stop = "time budget reached"
                elif duplicates >= MAX_DUPLICATES_IN_A_ROW:
                    stop = "search space exhausted (the sampler only repeats evaluated configurations)"
                else:
                    trial = study.ask()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # out-of-range enqueued defaults are intended
                        try:
                            params = trial_params(klass, trial, stats)
                        except ValueError as exc:  # e.g. a warm-start value the space no longer allows
                            _record(trial, TrialResult(value=None, error=f"search space: {exc}"))  # counts: no endless loop
                            continue
                    key = _params_key(trial.params)
                    if key in seen:
                        # TPE re-proposed a configuration already evaluated: reuse its score, no refit.
                        duplicates += 1
                        trial.set_user_attr("duplicate", True)
                        _record(trial, replace(seen[key], intermediate={}))  # its checkpoints are already in the study
                        continue
                    duplicates = 0
                    launching = trial  # in-process executors run the trial inside submit()
                    task = TrialTask(family, {**fixed_params, **params}, split_spec, metric, on,
                                     _prune_rule(study, higher, _startup()), uncertainty)
                    untold.append((trial, executor.submit(run_trial, task)))
                    launching = None
                    continue
            if not untold:
                break
            _tell_oldest()
    except BaseException:
        interrupted = [(fut, trial) for trial, fut in untold] + ([(None, launching)] if launching is not None else [])
        for fut, trial in interrupted:
            if fut is not None:
                fut.cancel()
            try:
                trial.set_user_attr("interrupted", True)
                study.tell(trial, state=TrialState.FAIL)
                _requeue(study, trial.params, {k: v for k, v in trial.user_attrs.items() if k != "interrupted"})
            except Exception:  # the interrupt matters more than bookkeeping; resume re-checks
                pass
        raise

    result.stopped = stop or ("trial budget reached" if done >= budget else "")
    result.trials_total = sum(1 for t in study.get_trials(deepcopy=False) if _finished(t))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        result.best_value = best.value
        result.best_params = {**fixed_params, **_model_params(klass, best.params, stats)}
        result.best_metrics = dict(best.user_attrs.get("metrics", {}))
        result.best_intervals = dict(best.user_attrs.get("intervals", {}))
        defaults = [t for t in complete if t.user_attrs.get("default")]
        if defaults:
            result.default_value = defaults[0].value
            result.default_metrics = dict(defaults[0].user_attrs.get("metrics", {}))
            result.default_intervals = dict(defaults[0].user_attrs.get("intervals", {}))
            result.default_params = {**fixed_params, **_model_params(klass, defaults[0].params, stats)}
    else:
        errors = [t.user_attrs.get("error") for t in study.get_trials(deepcopy=False) if t.user_attrs.get("error")]
        result.error = errors[-1] if errors else "no trial completed"
    result.wall_s = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------- the family schedule
@dataclass
class SearchRound:
    """One round of successive halving: per family the trials it got and whether it goes on.

    ``families[name]`` = ``{"trials", "pruned", "failed", "best", "kept", "reason"}`` (``trials``:
    finished in this round, pruned ones included; ``best``: its best score after the round).
    """

    number: int
    families: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SearchOutcome:
    """Every family's result (in the order given), the rounds that produced them, the data statistics."""

    families: list[FamilyResult]
    rounds: list[SearchRound]
    stats: "DataStats | None" = None


def halving_rounds(n_families: int) -> int:
    """Rounds of successive halving for ``n_families``: halve until one is left (1 for a single family)."""
    return 1 if n_families <= 1 else math.ceil(math.log2(n_families)) + 1


def data_stats(split: "Split", *, events: Any = None, settings: Any = None) -> "DataStats":
    """DataStats of the split's training matrix; explicit when the events hold a type whose value is used
    (ratings); the scored part's window length when it is a time window; the signal choices the
    events support (``signal_choices(signal_stats(events))``, with the [matrix] rating types, the
    data's cell unit and the configured ``normalise``); the split's rebuild, so each trial's space is scaled to
    the matrix it trains on (``DataStats.for_overrides``)."""
    from scalerec.models.space import DataStats

    explicit = False
    signals: dict[str, tuple[Any, ...]] = {}
    if events is not None and settings is not None and "event_type" in getattr(events, "columns", ()):
        from scalerec.data.matrix import cell_unit_of, signal_stats

        valued = {name for name, t in settings.events.types.items() if t.use_value}
        explicit = bool(valued & set(events["event_type"].unique().to_list()))
        unknown = settings.events.unknown_type_weight if settings.events.allow_unknown_types else None
        found = signal_stats(events, tuple(settings.matrix.rating_types))
        found.update(cell_unit=cell_unit_of(events, settings.events.types, unknown), normalise=settings.matrix.normalise)
        signals = signal_choices(found)
    info = split.info or {}
    days = info.get("test_days") if "test_start" in info else None
    return DataStats.from_matrix(split.train, explicit=explicit, holdout_days=days, signals=signals,
                                 rebuild=split.rebuild_train)


def search_families(
    families: list[str],
    *,
    storage: str,
    names: dict[str, str],
    schedule: str,
    split_spec: SplitSpec,
    executor: "Executor",
    n_trials: int | None,
    minutes: float | None,
    metric: str,
    on: str = "test",
    seed: int = 0,
    fixed: dict[str, dict[str, Any]] | None = None,
    stats: "DataStats | None" = None,
    progress: Callable[[SearchEvent], None] | None = None,
    uncertainty: dict[str, Any] | None = None,
) -> SearchOutcome:
    """Tune ``families`` by successive halving within ``n_trials`` per family (as a total: n_trials x
    families finished trials across their studies) and/or ``minutes``.

    Each round splits what is left of the budget evenly over the rounds to come and the families
    still in; after a round the better half (by best score so far; families without a completed
    trial first out) goes on, so the survivors get about twice the trials each round. A family
    whose space is exhausted stays in the ranking but gets no more trials. Deterministic for a
    seed: the schedule depends only on the scores, and each round's TPE sampler is seeded from
    ``seed`` and the trials already in the study. ``names[family]`` is its study; ``schedule``
    the study that records the rounds for ``scalerec tune report``.
    """
    import optuna

    from scalerec.models import MODELS

    if not families:
        return SearchOutcome([], [], stats)
    for family in families:
        if family not in MODELS:
            raise ValidationError(f"unknown model family {family!r}; choose from {', '.join(sorted(MODELS))}")
    _, _, higher = parse_metric(metric)
    sign = 1.0 if higher else -1.0
    store = open_storage(storage)
    existing = set(optuna.study.get_all_study_names(store))
    done = {f: _count_finished(store, names[f]) if names[f] in existing else 0 for f in families}
    total = None if n_trials is None else n_trials * len(families) - sum(done.values())
    startup = max(3, min(10, (n_trials if n_trials is not None else 10_000) // 3))
    end = time.monotonic() + minutes * 60 if minutes is not None else None
    n_rounds = halving_rounds(len(families))
    results = {f: FamilyResult(family=f, study=names[f]) for f in families}
    alive = list(families)
    exhausted: set[str] = set()
    rounds: list[SearchRound] = []
    for r in range(n_rounds):
        active = [f for f in alive if f not in exhausted]
        if not active:
            break
        last = r == n_rounds - 1
        shares = _round_shares(active, total, n_rounds - r, last)
        if r == 0 and shares is not None and total is not None:
            # First judged on the defaults and the design trial: give each new study room for both
            # when the whole budget allows it (never more trials than asked for).
            wanted = {f: max(shares[f], _initial_trials(MODELS[f], stats)) if done[f] == 0 else shares[f] for f in active}
            if sum(wanted.values()) <= max(0, total):
                shares = wanted
        rnd = SearchRound(number=r + 1)
        # Every family of a round gets the same slice of it, whatever the ones before it overran
        # (one slow trial cannot be cut short): the ranking after the round compares like with like.
        # Later rounds start from what is left of the whole budget.
        slice_s = None if end is None else max(0.0, end - time.monotonic()) / (n_rounds - r) / len(active)
        for family in active:
            deadline = None
            if slice_s is not None:
                deadline = min(time.monotonic() + slice_s, end)  # type: ignore[operator]
            target = None if shares is None else done[family] + shares[family]
            res = tune_family(
                family,
                storage=storage,
                name=names[family],
                split_spec=split_spec,
                executor=executor,
                n_trials=target,
                deadline=deadline,
                metric=metric,
                on=on,
                seed=seed,
                fixed=(fixed or {}).get(family),
                progress=progress,
                stats=stats,
                startup_trials=startup,
                round_number=r + 1,
                uncertainty=uncertainty,
                expected_trials=n_trials,  # the per-family share of the budget: halving gives the best more
            )
            results[family].absorb(res)
            results[family].rounds += 1
            done[family] = res.trials_total
            if total is not None:
                total -= res.trials_new
            if "exhausted" in res.stopped:
                exhausted.add(family)
            rnd.families[family] = {
                "trials": res.trials_new, "pruned": res.trials_pruned, "failed": res.trials_failed,
                "best": res.best_value, "kept": True, "reason": res.stopped,
            }
        if not last:
            ranked = sorted(
                (f for f in alive if results[f].best_value is not None),
                key=lambda f: -sign * float(results[f].best_value),  # type: ignore[arg-type]
            )  # stable: ties keep the order families were given in
            keep = max(1, math.ceil(len(alive) / 2))
            for place, family in enumerate(ranked, 1):
                if place > keep:
                    why = (f"dropped after round {r + 1}: {metric} {results[family].best_value:.4f} ranked "
                           f"{place} of {len(alive)} (the best {keep} go on)")
                    results[family].dropped = why
            for family in alive:
                if results[family].best_value is None:
                    results[family].dropped = f"dropped after round {r + 1}: no trial completed ({results[family].error})"
            for family, info in rnd.families.items():
                if results[family].dropped:
                    info["kept"], info["reason"] = False, results[family].dropped
            alive = [f for f in ranked[:keep]]
        rounds.append(rnd)
    outcome = SearchOutcome([results[f] for f in families], rounds, stats)
    _save_schedule(store, schedule, outcome, n_trials=n_trials, minutes=minutes, seed=seed)
    return outcome


def _round_shares(active: list[str], remaining: int | None, rounds_left: int, last: bool) -> dict[str, int] | None:
    """New trials per family this round: an even part of what is left per round to come; the last
    round gives out the rest (the remainder to the families listed first: the better ones)."""
    if remaining is None:
        return None
    remaining = max(0, remaining)
    if last:
        base, extra = divmod(remaining, len(active))
        return {f: base + (1 if i < extra else 0) for i, f in enumerate(active)}
    each = remaining // (rounds_left * len(active))
    each = max(each, 1 if remaining >= len(active) else 0)
    return {f: each for f in active}


def _count_finished(store: "optuna.storages.BaseStorage", name: str) -> int:
    import optuna

    study = optuna.load_study(study_name=name, storage=store)
    return sum(1 for t in study.get_trials(deepcopy=False) if _finished(t))


def _save_schedule(
    store: "optuna.storages.BaseStorage", name: str, outcome: SearchOutcome, *,
    n_trials: int | None, minutes: float | None, seed: int,
) -> None:
    """Append this search's rounds to the schedule study ``name`` (user attributes only, no trials)."""
    import optuna

    study = optuna.create_study(study_name=name, storage=store, load_if_exists=True)
    study.set_user_attr("kind", "schedule")
    runs = list(study.user_attrs.get("runs", []))
    runs.append({
        "started": datetime.now().isoformat(timespec="seconds"),
        "budget": {"trials": n_trials, "minutes": minutes},
        "seed": seed,
        "stats": outcome.stats.to_dict() if outcome.stats is not None else None,
        "rounds": [{"round": r.number, "families": r.families} for r in outcome.rounds],
    })
    study.set_user_attr("runs", runs)


def load_schedules(data_dir: Path) -> list[dict[str, Any]]:
    """The recorded searches of ``<data_dir>/tuning.db``: ``[{"schedule", "started", "budget", "seed", "rounds"}]``, oldest first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not (Path(data_dir) / "tuning.db").is_file():
        return []
    store = open_storage(storage_url(Path(data_dir)))
    out = []
    for summary in optuna.study.get_all_study_summaries(store, include_best_trial=False):
        if summary.user_attrs.get("kind") == "schedule":
            out.extend({"schedule": summary.study_name, **run} for run in summary.user_attrs.get("runs", []))
    return sorted(out, key=lambda run: run["started"])


def _previous_best(store: "optuna.storages.BaseStorage", name: str) -> dict[str, Any] | None:
    """Best params of the most recent other study of the same family and search config, if any.

    Study names are ``<family>-<fingerprint>-<config>``: same family and config, other data.
    """
    import optuna

    family, _, rest = name.partition(STUDY_SEP)
    config = rest.rpartition(STUDY_SEP)[2]
    candidates = [
        s for s in optuna.study.get_all_study_summaries(store, include_best_trial=True)
        if s.study_name != name and s.study_name.startswith(family + STUDY_SEP)
        and s.study_name.endswith(STUDY_SEP + config) and s.best_trial is not None
    ]
    if not candidates:
        return None
    latest = max(candidates, key=lambda s: s.datetime_start or datetime.min)
    return dict(latest.best_trial.params)  # type: ignore[union-attr]


def _requeue(study: "optuna.Study", params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    """Queue an interrupted configuration to run first next time (once, however often it was cut)."""
    from optuna.trial import TrialState

    key = _params_key(params)
    if any(_params_key(t.params) == key for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))):
        return
    study.enqueue_trial(params, user_attrs=user_attrs)


def _model_params(klass: type, params: dict[str, Any], stats: "DataStats | None" = None) -> dict[str, Any]:
    """The ``__init__`` kwargs of a trial: replay the search space on its fixed parameters.

    A search space may add constants or derived values beside the suggested ones, so the trial's
    params alone are not always the model's kwargs.
    """
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trial_params(klass, optuna.trial.FixedTrial(dict(params)), stats)


def _prune_rule(study: "optuna.Study", higher: bool, startup: int = PRUNE_STARTUP_TRIALS) -> PruneRule:
    """The median of the completed trials' intermediate values at each checkpoint ``startup`` of them reported."""
    import statistics

    from optuna.trial import TrialState

    by_step: dict[int, list[float]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for step, value in t.intermediate_values.items():
            if math.isfinite(value):
                by_step.setdefault(int(step), []).append(float(value))
    medians = {s: statistics.median(v) for s, v in by_step.items() if len(v) >= startup}
    return PruneRule(higher=higher, medians=medians)


def _best_value(study: "optuna.Study") -> float | None:
    try:
        return float(study.best_value)
    except ValueError:  # no completed trial yet
        return None


def load_report(data_dir: Path, family: str | None = None) -> list[dict[str, Any]]:
    """Every study of ``<data_dir>/tuning.db`` (optionally one family): its trials and best one.

    Returns ``[{"study", "family", "metric", "direction", "trials": [...], "best": {...} | None}]``,
    trials as ``{"number", "state", "value", "params", "fit_s", "default", "error", "round", "pruned_at", "intervals", "metrics"}``,
    rounds as ``{"started", "round", "trials", "pruned", "failed", "best", "kept", "reason"}``.
    """
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = Path(data_dir) / "tuning.db"
    if not path.is_file():
        return []
    store = open_storage(storage_url(Path(data_dir)))
    out: list[dict[str, Any]] = []
    summaries = optuna.study.get_all_study_summaries(store, include_best_trial=False)
    schedules = {s.study_name.partition(STUDY_SEP)[2]: s.user_attrs.get("runs", [])
                 for s in summaries if s.user_attrs.get("kind") == "schedule"}
    for summary in summaries:
        if summary.user_attrs.get("kind") == "schedule":
            continue
        fam = summary.user_attrs.get("family") or summary.study_name.split(STUDY_SEP)[0]
        if family is not None and fam != family:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        trials = []
        for t in study.get_trials(deepcopy=False):
            trials.append(
                {
                    "number": t.number,
                    "state": t.state.name.lower(),
                    "value": t.value,
                    "params": t.params,
                    "fit_s": t.user_attrs.get("fit_s"),
                    "default": bool(t.user_attrs.get("default")),
                    "duplicate": bool(t.user_attrs.get("duplicate")),
                    "error": t.user_attrs.get("error"),
                    "round": t.user_attrs.get("round"),
                    "pruned_at": t.user_attrs.get("pruned_at"),
                    "intervals": t.user_attrs.get("intervals", {}),
                    "metrics": t.user_attrs.get("metrics", {}),
                    "started": t.datetime_start.isoformat() if t.datetime_start else None,
                }
            )
        best = None
        if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            b = study.best_trial
            best = {"number": b.number, "value": b.value, "params": b.params, "metrics": b.user_attrs.get("metrics", {}),
                    "intervals": b.user_attrs.get("intervals", {})}
        out.append(
            {
                "study": summary.study_name,
                "family": fam,
                "metric": summary.user_attrs.get("metric"),
                "direction": summary.direction.name.lower() if summary.direction else None,
                "started": summary.datetime_start.isoformat() if summary.datetime_start else None,
                "trials": trials,
                "best": best,
                # this family's part in each recorded search over the same data and config
                "rounds": [
                    {"started": run["started"], "round": r["round"], **r["families"][fam]}
                    for run in schedules.get(summary.study_name.partition(STUDY_SEP)[2], [])
                    for r in run["rounds"] if fam in r["families"]
                ],
            }
        )
    return out
