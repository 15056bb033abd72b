"""The training pipeline: snapshot -> matrix -> split -> tune -> refit -> gate -> register."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

import scalerec
from scalerec.data.lease import hold_lease
from scalerec.data.snapshot import Snapshot, data_fingerprint, event_count, take_snapshot  # noqa: F401 - old import path
from scalerec.errors import ConflictError, ScalerecError, ValidationError
from scalerec.training.gate import gate_decision, gate_options  # noqa: F401 - gate_decision: old import path
from scalerec.training.tuning import (  # noqa: F401 - tune_family: old import path
    SCHEDULE_PREFIX,
    FamilyResult,
    SearchEvent,
    SplitSpec,
    data_stats,
    get_split,
    parse_metric,
    prime_split,
    search_families,
    storage_url,
    study_name,
    tune_family,
)

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from scalerec.execution import Executor
    from scalerec.config import Settings
    from scalerec.models.space import DataStats
    from scalerec.training.tuning import SearchOutcome
    from scalerec.data.matrix import InteractionMatrix
    from scalerec.evaluation.splits import Split
    from scalerec.models.base import Recommender
    from scalerec.registry import Manifest, ModelVersion, Registry

#: Serving's trending fallback: events of the last TRENDING_WINDOW_DAYS, halved every TRENDING_HALF_LIFE_DAYS.
TRENDING_HALF_LIFE_DAYS = 7.0
TRENDING_WINDOW_DAYS = 30.0


@dataclass
class ProgressEvent:
    """One step of a long stage: ``done`` of ``total`` units (total None when unknown).

    Stages: "snapshot", "split", "search" (units: trials of ``family``), "select", "fit", "evaluate",
    "gate", "rank" (the ranking stage), "register". ``detail`` is a short human-readable note.
    """

    stage: str
    done: float
    total: float | None
    detail: str = ""
    family: str | None = None
    best: float | None = None


ProgressFn = Callable[[ProgressEvent], None]


@dataclass
class TrainOptions:
    """What ``scalerec train`` was asked to do; None means "from settings.training"."""

    models: list[str] | None = None
    trials: int | None = None
    minutes: float | None = None
    jobs: int | None = None
    metric: str | None = None
    split: str | None = None
    test_days: float | None = None
    valid_days: float | None = None
    #: random split: (train, test) or (train, valid, test)
    ratios: tuple[float, ...] | None = None
    #: leave-last split: items held out per user
    leave_k: int | None = None
    #: users split: share of users held out
    test_fraction: float | None = None
    if_new_events: int | None = None
    force: bool = False
    promote: bool = True
    #: seed of the TPE sampler and of the random / users splits
    seed: int = 0


@dataclass
class TrainResult:
    """What a training run did: registered a version (and maybe promoted it) or skipped."""

    status: str  # "registered" | "skipped"
    reason: str
    version: "ModelVersion | None" = None
    families: list[FamilyResult] = field(default_factory=list)
    best_family: str | None = None
    best_params: dict[str, Any] | None = None
    metric: str = "ndcg@20"
    #: the chosen configuration scored once on the test part (fitted on the training part)
    metrics: dict[str, float] = field(default_factory=dict)
    #: its score on the validation part, where the search chose it
    validation_metrics: dict[str, float] = field(default_factory=dict)
    #: {"test" | "validation": {"ndcg@20": {"mean", "low", "high", "n_users"}}}: seeded bootstrap
    #: intervals of the ranking metrics, plus "confidence", "bootstrap_samples", "seed" (empty: none)
    intervals: dict[str, Any] = field(default_factory=dict)
    #: what was held out and why (ProtocolRecord.to_dict())
    protocol: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    promotion: dict[str, Any] = field(default_factory=dict)
    fit_s: float = 0.0
    peak_rss_bytes: int = 0
    snapshot: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    new_events: int | None = None
    #: the ranking stage's manifest section (status active / refused / skipped and why)
    ranking: dict[str, Any] = field(default_factory=dict)
    #: why the chosen family won (training.select.choose_family's record; manifest "search.selection")
    selection: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- measuring
@contextlib.contextmanager
def measure_peak_rss(interval_s: float = 0.02) -> Iterator[dict[str, int]]:
    """Peak resident memory (bytes) of this process during the block, in ``out["peak_rss_bytes"]``
    (and its resident memory when the block starts, in ``out["start_rss_bytes"]``).

    A psutil sampler thread records the highest RSS every ``interval_s``; when the block raises
    the process-wide high-water mark (``ru_maxrss``), that exact figure is used instead, so short
    spikes between samples are not missed.
    """
    import psutil

    proc = psutil.Process()
    out = {"peak_rss_bytes": int(proc.memory_info().rss)}
    out["start_rss_bytes"] = out["peak_rss_bytes"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            out["peak_rss_bytes"] = max(out["peak_rss_bytes"], int(proc.memory_info().rss))

    before_hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    thread = threading.Thread(target=sample, name="peak-rss", daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak_rss_bytes"] = max(out["peak_rss_bytes"], int(proc.memory_info().rss))
        after_hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if after_hwm > before_hwm:  # Linux reports KiB
            out["peak_rss_bytes"] = max(out["peak_rss_bytes"], int(after_hwm) * 1024)


# ---------------------------------------------------------------------------------- data
def _split_options(settings: "Settings", options: TrainOptions) -> tuple[str, dict[str, Any]]:
    """(split name, options) of a run: the flags of TrainOptions mapped as `evaluate` maps them."""
    from scalerec.evaluation.splits import resolve_split_options

    name, opts = resolve_split_options(
        options.split or settings.training.split, test_days=options.test_days, valid_days=options.valid_days,
        leave_k=options.leave_k, ratios=options.ratios, test_fraction=options.test_fraction, seed=options.seed,
        default_test_days=settings.training.test_days, explicit=options.split is not None,
    )
    return name, {k: v for k, v in opts.items() if v is not None}


def make_run_protocol(
    snapshot: Snapshot, settings: "Settings", options: TrainOptions
) -> tuple["Split", "Split", SplitSpec]:
    """(test split, validation split, spec): the search tunes on the validation split, which worker
    processes rebuild from the spec; the chosen configuration is scored once on the test split."""
    from scalerec.evaluation.splits import make_protocol

    name, opts = _split_options(settings, options)
    outer, inner = make_protocol(name, snapshot.events, settings=settings, **opts)
    opts = {**opts, "part": "validation"}
    key = hashlib.sha256(f"{snapshot.fingerprint}|{name}|{sorted(opts.items())}".encode()).hexdigest()[:16]
    spec = SplitSpec(key=key, name=name, options=opts, settings=settings.model_dump(mode="json"))
    return outer, inner, spec


def make_second_fold(inner: "Split", settings: "Settings", options: TrainOptions) -> "Split":
    """The run protocol's second validation fold, disjoint from its validation split ``inner``
    (``evaluation.splits.second_fold``): where training.select re-scores families tied on validation."""
    from scalerec.evaluation.splits import second_fold

    name, opts = _split_options(settings, options)
    return second_fold(name, inner, settings=settings, **opts)


def make_run_split(snapshot: Snapshot, settings: "Settings", options: TrainOptions) -> tuple["Split", SplitSpec]:
    """The split the search tunes on (the validation split) and the spec worker processes rebuild it from."""
    _, inner, spec = make_run_protocol(snapshot, settings, options)
    return inner, spec


def full_matrix(snapshot: Snapshot, settings: "Settings", **overrides: Any) -> "InteractionMatrix":
    """The all-data matrix of the snapshot with the [matrix] settings (plus a model's overrides)."""
    from scalerec.data.matrix import matrix_from_settings

    return matrix_from_settings(snapshot.events, settings, **overrides)


def fallback_scores(snapshot: Snapshot, settings: "Settings", item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(popular, trending) float32 per item of ``item_ids`` for serving's fallbacks.

    popular: column sums of the all-data weighted counts; trending: the same over the last
    30 days with a 7-day half-life (both on this vocabulary, so they align with the model).
    """
    from scalerec.data.matrix import MatrixSpec

    counts = MatrixSpec.from_settings(settings).counts()
    pop = counts.build(snapshot.events, item_ids=item_ids).matrix
    trend = counts.with_overrides(
        {"window_days": TRENDING_WINDOW_DAYS, "half_life_days": TRENDING_HALF_LIFE_DAYS}
    ).build(snapshot.events, item_ids=item_ids).matrix
    return (
        np.asarray(pop.sum(axis=0), dtype=np.float32).ravel(),
        np.asarray(trend.sum(axis=0), dtype=np.float32).ravel(),
    )


# ---------------------------------------------------------------------------------- the gate
class _VocabAdapter:
    """Presents a loaded production model on the split's item index (for evaluate()).

    Users are given to the production model as fold-in histories: their rows of the split's
    training matrix mapped to production's items. Only items both know can be recommended;
    items production never saw simply cannot be, as in serving.
    """

    def __init__(self, loaded: Any, split: "Split") -> None:
        self.model = loaded.model
        self.split = split
        prod_items = np.asarray(loaded.matrix.item_ids).astype(str)
        split_items = np.asarray(split.train.item_ids).astype(str)
        self.to_prod = loaded.matrix.item_index(split_items)  # split col -> prod col (-1)
        self.to_split = np.full(len(prod_items), -1, dtype=np.int64)
        known = self.to_prod >= 0
        self.to_split[self.to_prod[known]] = np.flatnonzero(known)
        self.candidates = np.flatnonzero(self.to_split >= 0)
        self.n_prod = len(prod_items)
        self.n_items_ = split.train.n_items  # it answers on the split's item index
        # The users' split-training rows built the way this model learns (e.g. recency-weighted).
        self.history = split.train_for(self.model).matrix

    def _map(self, m: sp.spmatrix | None) -> sp.csr_matrix | None:
        if m is None:
            return None
        m = sp.coo_matrix(m)
        cols = self.to_prod[m.col]
        keep = cols >= 0
        return sp.csr_matrix((m.data[keep], (m.row[keep], cols[keep])), shape=(m.shape[0], self.n_prod), dtype=np.float32)

    def recommend_history(self, history: sp.spmatrix, n: int, *, exclude: Any = None, candidates: Any = None):
        hist = self._map(history)
        ids, scores = self.model.recommend_history(hist, n, exclude=self._map(exclude), candidates=self.candidates)
        return np.where(ids >= 0, self.to_split[np.maximum(ids, 0)], -1), scores

    def recommend(self, users: Any, n: int, *, exclude: Any = None, candidates: Any = None):
        users = np.asarray(users, dtype=np.int64)
        return self.recommend_history(self.history[users], n, exclude=exclude)


@dataclass
class Scores:
    """A model's figures on one split part: means, and per-user values of the ranking metrics
    aligned with the part's evaluated users (``users``), for paired comparisons."""

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    #: the evaluation pass, when it kept the catalogue metrics' resampling detail (their intervals)
    evaluation: Any = None

    def value(self, metric: str) -> float:
        return float(self.metrics[metric])


def score_model(model: Any, split: "Split", metric: str, *, on: str = "test", progress: Callable[[int, int], None] | None = None,
                catalogue_detail: bool = False) -> Scores:
    """Scores of a fitted ``model`` on ``split`` (the trial metrics at the primary metric's k);
    ``catalogue_detail`` keeps what coverage's and popularity bias's intervals resample."""
    from scalerec.evaluation.evaluate import evaluate_per_user
    from scalerec.training.tuning import TRIAL_METRICS

    name, k, _ = parse_metric(metric)
    names = tuple(dict.fromkeys((*TRIAL_METRICS, name)))
    # the gate pairs per-user ranking metrics: the catalogue metrics' detail only for the reported intervals
    ev = evaluate_per_user(model, split, k=(k,), metrics=names, on=on, progress=progress, catalogue_detail=catalogue_detail)
    means, per_user = ev.metrics, ev.per_user
    return Scores(means, per_user, np.asarray(split.relevant(on)[1]), ev if catalogue_detail else None)


def uncertainty_options(settings: "Settings") -> dict[str, Any] | None:
    """``{"confidence", "n_boot", "seed"}`` of the trials' and the test score's intervals ([evaluation]); None when switched off."""
    ev = settings.evaluation
    return None if ev.bootstrap_samples <= 0 else {"confidence": ev.confidence, "n_boot": ev.bootstrap_samples, "seed": ev.seed}


def score_intervals(scores: Scores, uncertainty: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Seeded bootstrap intervals of the metrics of ``scores`` (the catalogue ones when their detail was
    kept; empty when switched off or no users)."""
    from scalerec.evaluation.stats import bootstrap_intervals

    if uncertainty is None or not len(scores.users):
        return {}
    if scores.evaluation is not None:
        return {k: iv.to_dict() for k, iv in scores.evaluation.intervals(**uncertainty).items()}
    return {k: iv.to_dict() for k, iv in bootstrap_intervals(scores.per_user, **uncertainty).items()}


def fit_and_score(
    family: str, params: dict[str, Any], split: "Split", metric: str, *,
    progress: Callable[[str, int, int], None] | None = None, catalogue_detail: bool = False,
) -> tuple[Any, Scores]:
    """Fit ``family(**params)`` on the split's training part and score it on its test part."""
    from scalerec.models import make_model

    model = make_model(family, **params)
    fit_cb = (lambda d, t: progress("fit", d, t)) if progress else None
    model.fit(split.train_for(model), progress=fit_cb)
    eval_cb = (lambda d, t: progress("evaluate", d, t)) if progress else None
    return model, score_model(model, split, metric, progress=eval_cb, catalogue_detail=catalogue_detail)


def compare_on_test(
    candidate: Scores,
    production: Scores | None,
    metric: str,
    *,
    tolerance: float,
    higher_is_better: bool = True,
    force: bool = False,
    production_version: str | None = None,
    method: str | None = None,
    note: str | None = None,
    gate_opts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The promotion gate on the test part: the one place candidate and production are compared.

    Both were scored on the same evaluated users (``Scores.per_user`` aligned on ``users``), so
    a paired test or confidence interval can be computed here from the per-user arrays.
    """
    if production is not None and not np.array_equal(candidate.users, production.users):
        raise ValidationError("candidate and production were scored on different users; the gate compares paired figures")
    decision = gate_decision(
        candidate.value(metric), None if production is None else production.value(metric),
        tolerance=tolerance, higher_is_better=higher_is_better, force=force,
        production_version=production_version, method=method, note=note,
        candidate_values=candidate.per_user.get(metric),
        production_values=None if production is None else production.per_user.get(metric),
        metric=metric, **(gate_opts or {}),
    )
    decision["on"] = "test"
    decision["n_users"] = int(len(candidate.users))
    return decision


def production_score(
    registry: "Registry",
    split: "Split",
    metric: str,
    *,
    split_start: datetime | None,
    progress: ProgressFn | None = None,
) -> tuple[Scores | None, str | None, str | None, str | None]:
    """Scores of the production version on ``split``'s test part: (scores, version, method, note).

    Fairness: the candidate's score comes from a model fitted on the split's training part
    only. If production was trained only on data before the split's held-out window (its
    snapshot ends before ``split_start``), the production artefact itself is evaluated
    ("artifact": its users folded in from their split-training rows, on the items it knows).
    Otherwise the artefact has seen the held-out events and would be scored unfairly high, so its
    recipe — class and parameters from its manifest — is refitted on the split's training part
    and evaluated the same way as the candidate ("recipe"). A production that cannot be loaded
    or refitted yields (None, version, None, why) and the candidate passes the gate.
    """
    prod = registry.production()
    if prod is None:
        return None, None, None, None
    try:
        manifest = prod.typed_manifest()
        snap_end_dt = manifest.snapshot_end
        if split_start is not None and snap_end_dt is not None and snap_end_dt < split_start:
            loaded = registry.load(prod.version)
            adapter = _VocabAdapter(loaded, split)

            def eval_progress(done: int, total: int) -> None:
                _emit(progress, "evaluate", done, total, f"production {prod.version} on the test part")

            return score_model(adapter, split, metric, progress=eval_progress), prod.version, "artifact", None
        family, params = manifest.family, manifest.params
        _emit(progress, "gate", 0, 1, f"refitting production {prod.version} ({family}) on the training part")

        def step(stage: str, done: int, total: int) -> None:
            # its fit shows on the gate's bar (the "fit" bar is the candidate's refit)
            _emit(progress, "gate" if stage == "fit" else "evaluate", done, total,
                  f"production {prod.version} ({family}) on the test part")

        _, scores = fit_and_score(family, params, split, metric, progress=step)
        return scores, prod.version, "recipe", None
    except ScalerecError as exc:
        return None, prod.version, None, f"production {prod.version} cannot be evaluated: {exc.message}"


# ---------------------------------------------------------------------------------- locking
@contextlib.contextmanager
def training_lock(catalog: Any) -> Iterator[Any]:
    """One training at a time across every machine sharing the catalogue: its ``train`` lease
    (renewed while training runs; a crashed run's lease expires, at once on its own machine).
    Yields the lease: ``lease.check()`` raises LeaseLostError once another holder took it."""
    with hold_lease(catalog, "train", blocking=False) as lease:
        if not lease:
            raise ConflictError(f"another training is running (lease held by {lease.other}); wait for it to finish")
        yield lease


def _lease_checked(progress: ProgressFn | None, lease: Any) -> ProgressFn:
    """``progress`` that first checks the lease: every step of a training (trial, fit block, gate,
    register step) is a point where a run that lost its lease stops, before writing anything."""

    def checked(event: ProgressEvent) -> None:
        lease.check()
        if progress is not None:
            progress(event)

    return checked


# ---------------------------------------------------------------------------------- the pipeline
def _emit(progress: ProgressFn | None, *args: Any, **kwargs: Any) -> None:
    if progress is not None:
        progress(ProgressEvent(*args, **kwargs))


def resolve_families(settings: "Settings", models: list[str] | None) -> list[str]:
    from scalerec.models import MODELS

    families = list(models) if models else list(settings.models.enabled)
    unknown = [f for f in families if f not in MODELS]
    if unknown:
        raise ValidationError(f"unknown model families {unknown}; choose from {', '.join(sorted(MODELS))}")
    if not families:
        raise ValidationError("no model family to train: pass --models or set [models] enabled")
    return list(dict.fromkeys(families))


def train(
    settings: "Settings",
    options: TrainOptions | None = None,
    *,
    store: Any = None,
    executor: "Executor | None" = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Run the whole pipeline once and return what it did.

    With ``options.if_new_events`` it first checks that at least that many events arrived since
    the production version's snapshot, else returns status "skipped". Ctrl-C (KeyboardInterrupt)
    leaves no version and no temporary files; finished trials stay in tuning.db and the next run
    resumes the search.
    """
    from scalerec.execution import get_executor
    from scalerec.data.store import DataStore
    from scalerec.registry import Registry

    options = options or TrainOptions()
    cfg = settings.training
    data_dir = Path(settings.data.dir)
    metric = (options.metric or cfg.primary_metric).lower()
    _, _, higher = parse_metric(metric)
    families = resolve_families(settings, options.models)
    jobs = options.jobs or cfg.jobs
    minutes = options.minutes if options.minutes is not None else cfg.timeout_minutes
    trials = options.trials if options.trials is not None else (None if options.minutes is not None else cfg.trials)
    if trials is None and minutes is None:
        trials = cfg.trials
    if trials is not None and trials < 1:
        raise ValidationError(f"--trials must be >= 1, got {trials}")
    if minutes is not None and minutes <= 0:
        raise ValidationError(f"--minutes must be > 0, got {minutes}")

    timings: dict[str, float] = {}
    if store is None:
        with DataStore.open(settings) as own_store:  # closed again when the run ends
            return train(settings, options, store=own_store, executor=executor, progress=progress)
    registry = Registry(settings)

    with training_lock(store.catalog) as lease:
        progress = _lease_checked(progress, lease)
        if options.if_new_events is not None:
            from scalerec.training.retrain import should_retrain

            decision = should_retrain(settings, options.if_new_events, store=store, registry=registry)
            if not decision.retrain:
                return TrainResult(status="skipped", reason=decision.reason, metric=metric, new_events=decision.new_events)

        t = time.perf_counter()
        _emit(progress, "snapshot", 0, 1, "reading events")
        snapshot = take_snapshot(store)
        _emit(progress, "snapshot", 1, 1, f"{snapshot.event_count:,} events")
        timings["snapshot_s"] = time.perf_counter() - t

        t = time.perf_counter()
        _emit(progress, "split", 0, 1, "building the split")
        split, search_split, spec = make_run_protocol(snapshot, settings, options)
        assert split.protocol is not None
        protocol = split.protocol
        _emit(progress, "split", 1, 1, f"{protocol.rule}: {len(split.test_users):,} test users, "
              f"{len(search_split.test_users):,} validation users")
        timings["split_s"] = time.perf_counter() - t

        work = data_dir / "tmp" / f"train-{uuid.uuid4().hex[:12]}"
        own_executor = executor is None
        executor = executor or get_executor(settings, jobs)
        warnings = list(protocol.warnings)
        try:
            from dataclasses import replace

            from scalerec.execution import LocalExecutor

            if not isinstance(executor, LocalExecutor):  # a cluster: workers get the events through its object store
                spec = replace(spec, events_ref=executor.share(snapshot.events))
            elif executor.jobs > 1:
                # Local worker processes rebuild the split from a Parquet copy of the snapshot.
                work.mkdir(parents=True, exist_ok=True)
                events_path = work / "events.parquet"
                snapshot.events.write_parquet(events_path, compression="zstd")
                spec = replace(spec, events_path=str(events_path))
            # The search sees the validation split only: its events end before the test part.
            prime_split(spec, search_split)
            outcome = _search(
                families, settings, snapshot, spec, executor, trials, minutes, metric, "test", options.seed, progress
            )
            families_out = outcome.families
            uncertainty = uncertainty_options(settings)
            timings["search_s"] = sum(f.wall_s for f in families_out)

            ok = [f for f in families_out if f.best_value is not None]
            if not ok:
                errors = "; ".join(f"{f.family}: {f.error}" for f in families_out)
                raise ScalerecError(f"every model family failed to train: {errors}")
            # The validation leader, unless another family ties it there (training.select: a second fold, then parsimony).
            from scalerec.training.select import choose_family

            t = time.perf_counter()
            best, selection = choose_family(
                ok, search_split, lambda: make_second_fold(search_split, settings, options), metric,
                fit_score=fit_and_score, higher=higher, tie_break=cfg.tie_break, uncertainty=uncertainty,
                progress=lambda what: _emit(progress, "select", 0, 1, what),
            )
            timings["select_s"] = time.perf_counter() - t
            _emit(progress, "select", 1, 1, f"{best.family} (by {selection['decided_by']})")  # why: in the summary
            assert best.best_params is not None and best.best_value is not None
            if all(float(f.best_value) == 0.0 for f in ok):  # type: ignore[arg-type]
                warnings.append(f"every family scored {metric} 0 on the validation part: the choice of "
                                f"{best.family} is arbitrary")

            # The chosen configuration, fitted on the test split's training part, scored once on its test part.
            t = time.perf_counter()

            def test_step(stage: str, done: int, total: int) -> None:
                _emit(progress, "evaluate", done, total, f"{best.family} on the test part", family=best.family)

            _, test_scores = fit_and_score(best.family, best.best_params, split, metric, progress=test_step,
                                           catalogue_detail=uncertainty is not None)
            intervals: dict[str, Any] = {}
            if uncertainty is not None:
                intervals = {"test": score_intervals(test_scores, uncertainty), "validation": dict(best.best_intervals),
                             "confidence": uncertainty["confidence"], "bootstrap_samples": uncertainty["n_boot"],
                             "seed": uncertainty["seed"]}
            timings["test_s"] = time.perf_counter() - t

            # Refit the winner on all data of the window (on the cluster when it has a twin).
            from scalerec.models import make_model

            t = time.perf_counter()
            model = make_model(best.family, **best.best_params)
            model = executor.adapt_model(model)
            _emit(progress, "fit", 0, None, f"refitting {best.family} on all data")
            with measure_peak_rss() as mem:
                t_fit = time.perf_counter()
                matrix = full_matrix(snapshot, settings, **model.matrix_overrides())

                def fit_progress(done: int, total: int) -> None:
                    _emit(progress, "fit", done, total, f"{best.family}", family=best.family)

                model.fit(matrix, progress=fit_progress)
                fit_s = time.perf_counter() - t_fit
            _emit(progress, "fit", 1, 1, f"{best.family} fitted in {fit_s:.1f}s", family=best.family)
            timings["refit_s"] = time.perf_counter() - t
        finally:
            if own_executor:
                executor.shutdown(cancel=True)
            shutil.rmtree(work, ignore_errors=True)

        # Gate: production on the same test part, judged the same way as the candidate.
        t = time.perf_counter()
        _emit(progress, "gate", 0, 1, "comparing with production on the test part")
        prod_scores, prod_version, method, note = production_score(
            registry, split, metric, split_start=_held_out_start(split), progress=progress
        )
        decision = compare_on_test(
            test_scores, prod_scores, metric,
            tolerance=cfg.promotion_tolerance,
            higher_is_better=higher,
            force=options.force,
            production_version=prod_version,
            method=method,
            note=note,
            gate_opts=gate_options(settings),
        )
        if test_scores.value(metric) == 0.0:
            warnings.append(f"the chosen model scored {metric} 0 on the test part ({len(split.test_users)} users)")
        if not options.promote:
            decision["promoted"] = False
            decision["reason"] = f"not promoted (--no-promote); gate: {decision['reason']}"
        _emit(progress, "gate", 1, 1, decision["reason"])
        timings["gate_s"] = time.perf_counter() - t

        # The ranking stage: learned over the chosen family's candidates, gated against it alone.
        t = time.perf_counter()
        from scalerec.ranking.ranker import train_ranker

        _emit(progress, "rank", 0, 1, "features, LambdaRank, gate")
        with measure_peak_rss() as rank_mem:  # the stage's own peak: capacity projects it apart from the refit's
            ranking = train_ranker(
                settings, store, snapshot.events, family=best.family, params=best.best_params,
                user_ids=matrix.user_ids, item_ids=matrix.item_ids, test_start=_held_out_start(split), metric=metric,
                force=options.force,
            )
        ranking.section.update(rss_start_bytes=rank_mem["start_rss_bytes"], peak_rss_bytes=rank_mem["peak_rss_bytes"])
        _emit(progress, "rank", 1, 1, f"ranking stage {ranking.section['status']}")  # the reason: in the summary
        timings["ranking_s"] = time.perf_counter() - t
        protocol.warnings = list(dict.fromkeys(warnings))

        t = time.perf_counter()
        popular, trending = fallback_scores(snapshot, settings, matrix.item_ids)
        manifest = _manifest(
            model, best, families_out, snapshot, split, settings, metric, test_scores.metrics, matrix, fit_s,
            mem["peak_rss_bytes"], decision, options, jobs, trials, minutes, intervals, outcome.stats, selection,
        )
        manifest.extra["ranking"] = _jsonable(ranking.section)

        def reg_progress(done: int, total: int) -> None:
            if done < total:  # the last step comes after the version's commit: nothing left to stop
                _emit(progress, "register", done, total, "writing the version")

        lease.check()  # the last point before anything is written
        version = registry.register(
            model=model, matrix=matrix, manifest=manifest, popular=popular, trending=trending, progress=reg_progress,
            write_extra=ranking.write,
        )
        if decision["promoted"]:
            version = registry.promote(version.version, force=options.force)
        else:
            registry.prune()
        timings["register_s"] = time.perf_counter() - t
        _emit(progress, "register", 1, 1, f"registered {version.version} ({version.stage})")

    return TrainResult(
        status="registered",
        reason=decision["reason"],
        version=version,
        families=families_out,
        best_family=best.family,
        best_params=best.best_params,
        metric=metric,
        metrics=dict(test_scores.metrics),
        validation_metrics=dict(best.best_metrics),
        intervals=intervals,
        protocol=protocol.to_dict(),
        warnings=protocol.warnings,
        promotion=decision,
        fit_s=fit_s,
        peak_rss_bytes=int(mem["peak_rss_bytes"]),
        snapshot=snapshot.describe(),
        split=split.summary(),
        timings=timings,
        ranking=ranking.section,
        selection=selection,
    )


def _held_out_start(split: "Split") -> datetime | None:
    """Start of the split's test window (temporal hold-outs), else None."""
    value = (split.info or {}).get("test_start")
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value if isinstance(value, datetime) else None


def fixed_params(family: str, settings: "Settings") -> dict[str, Any]:
    """Model keyword arguments that come from the settings rather than the search."""
    if family == "ease":
        return {"max_items": settings.models.ease_max_items}
    return {}


def _search(
    families: list[str],
    settings: "Settings",
    snapshot: Snapshot,
    spec: SplitSpec,
    executor: "Executor",
    trials: int | None,
    minutes: float | None,
    metric: str,
    on: str,
    seed: int,
    progress: ProgressFn | None,
) -> "SearchOutcome":
    """Tune the families by successive halving (training.tuning.search_families) within the budget."""
    url = storage_url(Path(settings.data.dir))
    config = {
        "split": spec.name,
        "split_options": spec.options,
        "metric": metric,
        "on": on,
        "matrix": settings.matrix.model_dump(mode="json"),
        "events": settings.events.model_dump(mode="json"),
    }

    def on_event(ev: SearchEvent) -> None:
        _emit(progress, "search", ev.done, ev.total, ev.family, family=ev.family, best=ev.best)

    outcome = search_families(
        families,
        storage=url,
        names={family: study_name(family, snapshot.fingerprint, config) for family in families},
        schedule=study_name(SCHEDULE_PREFIX, snapshot.fingerprint, config),
        split_spec=spec,
        executor=executor,
        n_trials=trials,
        minutes=minutes,
        metric=metric,
        on=on,
        seed=seed,
        fixed={family: fixed_params(family, settings) for family in families},
        stats=data_stats(get_split(spec), events=snapshot.events, settings=settings),
        progress=on_event,
        uncertainty=uncertainty_options(settings),
    )
    return outcome


def _manifest(
    model: "Recommender",
    best: FamilyResult,
    families: list[FamilyResult],
    snapshot: Snapshot,
    split: "Split",
    settings: "Settings",
    metric: str,
    test_metrics: dict[str, float],
    matrix: "InteractionMatrix",
    fit_s: float,
    peak_rss_bytes: int,
    decision: dict[str, Any],
    options: TrainOptions,
    jobs: int,
    trials: int | None,
    minutes: float | None,
    intervals: dict[str, Any] | None = None,
    stats: "DataStats | None" = None,
    selection: dict[str, Any] | None = None,
) -> "Manifest":
    import platform

    from scalerec.data.matrix import MatrixSpec
    from scalerec.models import MODELS
    from scalerec.registry import Manifest

    klass = MODELS.get(best.family, type(model))  # a cluster twin saves as its base family
    overrides = model.matrix_overrides()
    return Manifest(
        family=best.family,
        model_class=f"{klass.__module__}.{klass.__qualname__}",
        params=model.get_params(),
        matrix_overrides=overrides,
        matrix=MatrixSpec.from_settings(settings, overrides).resolved(snapshot.events),  # rating scale recorded
        matrix_settings=settings.matrix.model_dump(mode="json"),
        snapshot_start=snapshot.min_timestamp,
        snapshot_end=snapshot.end,
        fingerprint=snapshot.fingerprint,
        event_count=snapshot.event_count,
        data_extra={
            **{k: v for k, v in snapshot.describe().items()
               if k not in ("event_count", "min_timestamp", "max_timestamp", "fingerprint")},
            "n_users": matrix.n_users,
            "n_items": matrix.n_items,
            "nnz": matrix.nnz,
        },
        primary_metric=metric,
        metrics={"test": dict(test_metrics), "validation": dict(best.best_metrics)},
        protocol=split.protocol,
        fit_seconds=round(fit_s, 4),
        peak_rss_bytes=int(peak_rss_bytes),
        promotion=decision,
        extra={
            # beside "metrics" (whose parts map a metric to one number): {"test" | "validation": {key: interval}}
            **({"intervals": _jsonable(intervals)} if intervals else {}),
            "split": {**_jsonable({k: v for k, v in split.summary().items() if k != "protocol"}), "scored_on": "test"},
            "search": {
                "budget": {"trials": trials, "minutes": minutes, "jobs": jobs},
                "families": {f.family: _jsonable(f.to_dict()) for f in families},
                # the signal choices the data supported (searched by every family) and the winner's pick
                # (None: the [matrix] setting); the matrix it was fitted on is "data.matrix_spec"
                "signals": {
                    "offered": _jsonable(stats.signals) if stats is not None else {},
                    "chosen": {k: (best.best_params or {}).get(k) for k in (stats.signals if stats is not None else {})},
                },
                "holdout_days": stats.holdout_days if stats is not None else None,
                # why this family won: the validation leader, or the tie rule's figures (training.select)
                "selection": _jsonable(selection or {}),
            },
            "scalerec_version": scalerec.__version__,
            "python": platform.python_version(),
            "trained_at": datetime.now(timezone.utc).isoformat(),
        },
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value
