"""Evaluate fitted models on a Split (full-catalogue top-k in user blocks) and compare families."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from scalerec.errors import NotFittedError, ValidationError
from scalerec.evaluation.metrics import (
    RANKING_METRICS,
    item_popularity_percentile,
    ranking_metrics,
)
from scalerec.evaluation.splits import Split
from scalerec.evaluation.stats import Interval, bootstrap_intervals

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from scalerec.models.base import Recommender

__all__ = [
    "ALL_METRICS", "ComparisonResult", "Evaluation", "ModelResult", "compare", "evaluate", "evaluate_per_user",
    "parse_metric_key",
]

#: Catalogue-level metrics computed beside the per-user ranking metrics.
CATALOGUE_METRICS = ("coverage", "popularity_bias")
ALL_METRICS: tuple[str, ...] = tuple(RANKING_METRICS) + CATALOGUE_METRICS
#: Metrics where smaller is better (everything else: larger is better).
LOWER_IS_BETTER = frozenset({"popularity_bias"})

#: ``progress(done, total)`` over evaluated users.
Progress = Callable[[int, int], None]


def _check_ks(k: int | Iterable[int], n_items: int) -> tuple[int, ...]:
    ks = (k,) if isinstance(k, (int, np.integer)) else tuple(k)
    if not ks:
        raise ValidationError("give at least one cut-off k")
    for value in ks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValidationError(f"k must be a positive integer; got {value!r}")
        if value > n_items:
            raise ValidationError(
                f"k={value} is larger than the catalogue: the training data has only {n_items} items; "
                f"use k <= {n_items}"
            )
    return tuple(sorted({int(v) for v in ks}))


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(metrics))
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown or not names:
        raise ValidationError(f"unknown metrics {unknown}; choose from {', '.join(ALL_METRICS)}")
    return names


def parse_metric_key(key: str) -> tuple[str, int]:
    """``"ndcg@20"`` -> ("ndcg", 20)."""
    name, _, k = key.partition("@")
    if name not in ALL_METRICS or not k.isdigit():
        raise ValidationError(f"metric key {key!r} must look like 'ndcg@20'; metrics: {', '.join(ALL_METRICS)}")
    return name, int(k)


@dataclass
class Evaluation:
    """One evaluation pass: metric means and the per-user values they are the means of.

    ``per_user[key]`` is float [n_users] for ranking metrics, in the order of ``users`` (the
    split's evaluated rows), so two models evaluated on one split pair up user by user.
    Catalogue metrics keep what their intervals are resampled from (``_catalogue``).
    """

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    recommend_s: float = 0.0
    _catalogue: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_users(self) -> int:
        return int(len(self.users))

    def intervals(self, *, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0) -> dict[str, Interval]:
        """Bootstrap-over-users interval of every metric (same seeded resamples for all of them)."""
        if not self.n_users:
            return {}
        ratios = {k: v for k, v in self._catalogue.items() if isinstance(v, tuple)}
        cover = {k: v for k, v in self._catalogue.items() if sp.issparse(v)}
        out = bootstrap_intervals(
            self.per_user, confidence=confidence, n_boot=n_boot, seed=seed, ratios=ratios, coverage=cover
        )
        return {key: out[key] for key in self.metrics if key in out}


def _evaluate(
    model: "Recommender",
    split: Split,
    ks: tuple[int, ...],
    names: tuple[str, ...],
    on: str,
    block_users: int,
    progress: Progress | None,
    *,
    catalogue_detail: bool = False,
) -> Evaluation:
    """Metric means, per-user values and the seconds spent inside the model's recommend calls.

    ``catalogue_detail`` also keeps per-user popularity sums and the recommended items (for the
    catalogue metrics' intervals).
    """
    relevant, rows = split.relevant(on)
    n_items = split.train.n_items
    model_items = getattr(model, "n_items_", None)
    if model_items is None:
        raise NotFittedError(f"{type(model).__name__} is not fitted: fit it on split.train before evaluate()")
    if model_items != n_items:
        raise ValidationError(
            f"{type(model).__name__} was fitted on {model_items} items but the split has {n_items}: "
            "fit it on this split's training matrix (split.train)"
        )
    n = max(ks)
    ranking = tuple(m for m in names if m in RANKING_METRICS)
    parts: dict[str, list[np.ndarray]] = {f"{m}@{k}": [] for k in ks for m in ranking}
    recommended = {k: np.zeros(n_items, dtype=bool) for k in ks}
    pop_sum = dict.fromkeys(ks, 0.0)
    pop_count = dict.fromkeys(ks, 0)
    percentile = item_popularity_percentile(split.train.matrix) if "popularity_bias" in names else None
    detail = catalogue_detail and any(m in CATALOGUE_METRICS for m in names)
    # the catalogue metrics' resampling detail, kept per block in its final compact form (a user's valid
    # top-k items as int32 CSR pieces, popularity as per-user sums): no all-users lists or COO temporaries
    cover_len: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    cover_items: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    pop_num: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    pop_slots: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    recommend_s = 0.0
    total = len(rows)
    for start in range(0, total, block_users):  # one iteration per block of users
        block = rows[start : start + block_users]
        history = split.history(block, on=on)
        t0 = time.perf_counter()
        if split.strong_generalisation:
            ids, _ = model.recommend_history(history, n, exclude=history)
        else:
            ids, _ = model.recommend(block, n, exclude=history)
        recommend_s += time.perf_counter() - t0
        ids = np.asarray(ids)
        if ids.shape != (len(block), n):
            raise ValidationError(
                f"{type(model).__name__} returned recommendations of shape {ids.shape}, expected {(len(block), n)}"
            )
        if ranking:
            for key, values in ranking_metrics(ids, relevant[block], ks, ranking).items():
                parts[key].append(values)
        if detail:
            _keep_detail(np.where((ids >= 0) & (ids < n_items), ids, -1).astype(np.int32), ks,
                         "coverage" in names, percentile, cover_len, cover_items, pop_num, pop_slots)
        for k in ks:
            top = ids[:, :k]
            top = top[(top >= 0) & (top < n_items)]
            recommended[k][top] = True
            if percentile is not None:
                pop_sum[k] += float(percentile[top].sum())
                pop_count[k] += int(top.size)
        if progress is not None:
            progress(min(start + block_users, total), total)
    per_user = {key: np.concatenate(p) if p else np.zeros(0) for key, p in parts.items()}
    out: dict[str, float] = {}
    for k in ks:
        for m in names:
            key = f"{m}@{k}"
            if m in RANKING_METRICS:
                out[key] = float(per_user[key].mean()) if total else 0.0
            elif m == "coverage":
                out[key] = float(recommended[k].sum() / n_items)
            elif m == "popularity_bias":
                out[key] = pop_sum[k] / pop_count[k] if pop_count[k] else 0.0
    catalogue: dict[str, Any] = {}
    if detail and total:
        for k in ks:
            if "coverage" in names:
                lengths = np.concatenate(cover_len[k])
                indptr = np.zeros(total + 1, dtype=np.int64)
                np.cumsum(lengths, out=indptr[1:])
                indices = np.concatenate(cover_items[k])
                cover_len[k] = cover_items[k] = []
                catalogue[f"coverage@{k}"] = sp.csr_matrix(
                    (np.ones(indices.size, dtype=np.float32), indices, indptr), shape=(total, n_items)
                )
            if percentile is not None:
                slots = np.concatenate(pop_slots[k])
                if slots.sum() > 0:
                    catalogue[f"popularity_bias@{k}"] = (np.concatenate(pop_num[k]), slots)
    return Evaluation(out, per_user, np.asarray(rows), recommend_s, catalogue)


def _keep_detail(
    top_block: np.ndarray,
    ks: tuple[int, ...],
    coverage: bool,
    percentile: np.ndarray | None,
    cover_len: dict[int, list[np.ndarray]],
    cover_items: dict[int, list[np.ndarray]],
    pop_num: dict[int, list[np.ndarray]],
    pop_slots: dict[int, list[np.ndarray]],
) -> None:
    """One block's share of the catalogue metrics' resampling detail (``top_block``: int32 ids, -1 = none)."""
    for k in ks:
        top = top_block[:, :k]
        valid = top >= 0
        if coverage:  # row-major order: the block's rows of the users x items CSR of recommended items
            cover_len[k].append(valid.sum(axis=1))
            cover_items[k].append(top[valid])
        if percentile is not None:
            pop_num[k].append(np.where(valid, percentile[np.maximum(top, 0)], 0.0).sum(axis=1))
            pop_slots[k].append(valid.sum(axis=1).astype(np.float64))


def evaluate(
    model: "Recommender",
    split: Split,
    *,
    k: int | Iterable[int] = (20,),
    metrics: Sequence[str] = ALL_METRICS,
    on: str = "test",
    block_users: int = 2048,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Mean metrics of a fitted ``model`` over the split's test (or ``on="valid"``) users.

    Full-catalogue ranking: for blocks of ``block_users`` users the model returns its top max(k)
    items with the users' known items (training rows; fold-in rows for held-out users) excluded.
    Returns ``{"<metric>@<k>": value}``: ranking metrics averaged over users, ``coverage@k`` the
    share of the catalogue recommended to anyone, ``popularity_bias@k`` the mean popularity
    percentile of recommended items (0..1).
    """
    return evaluate_per_user(
        model, split, k=k, metrics=metrics, on=on, block_users=block_users, progress=progress, catalogue_detail=False
    ).metrics


def evaluate_per_user(
    model: "Recommender",
    split: Split,
    *,
    k: int | Iterable[int] = (20,),
    metrics: Sequence[str] = ALL_METRICS,
    on: str = "test",
    block_users: int = 2048,
    progress: Progress | None = None,
    catalogue_detail: bool = True,
) -> Evaluation:
    """:func:`evaluate` in one pass that also keeps the per-user values (for intervals, paired tests);
    ``catalogue_detail`` also keeps what the catalogue metrics' intervals are resampled from."""
    ks = _check_ks(k, split.train.n_items)
    names = check_metrics(metrics)
    if block_users < 1:
        raise ValidationError(f"block_users must be >= 1; got {block_users}")
    return _evaluate(model, split, ks, names, on, block_users, progress, catalogue_detail=catalogue_detail)


@dataclass
class ModelResult:
    """One model's row of a comparison: its metrics and timings (seconds)."""

    name: str
    family: str
    params: dict[str, Any]
    metrics: dict[str, float]
    fit_s: float
    recommend_s: float
    n_users: int
    #: the hyperparameters that differ from the family's defaults (what the table shows)
    changed_params: dict[str, Any] = field(default_factory=dict)
    #: {"ndcg@20": {"mean", "low", "high", "n_users"}}: bootstrap-over-users intervals (empty: none)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "params": self.params,
            "metrics": self.metrics,
            "intervals": self.intervals,
            "fit_s": self.fit_s,
            "recommend_s": self.recommend_s,
            "n_users": self.n_users,
            "changed_params": self.changed_params,
        }


@dataclass
class ComparisonResult:
    """Metrics and timings of several models on one split, in the order they were given."""

    split: dict[str, Any]
    ks: tuple[int, ...]
    metric_names: tuple[str, ...]
    results: list[ModelResult] = field(default_factory=list)
    attribution: str | None = None
    on: str = "test"
    #: {"confidence", "bootstrap_samples", "seed"} of the intervals, None when none were computed
    uncertainty: dict[str, Any] | None = None

    @property
    def metric_keys(self) -> list[str]:
        return [f"{m}@{k}" for k in self.ks for m in self.metric_names]

    def best(self, key: str) -> ModelResult:
        """The model with the best value of ``key`` (e.g. "ndcg@20")."""
        name, _ = parse_metric_key(key)
        if not self.results:
            raise ValidationError("the comparison has no results")
        sign = -1.0 if name in LOWER_IS_BETTER else 1.0
        return max(self.results, key=lambda r: sign * r.metrics.get(key, float("-inf")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "on": self.on,
            "k": list(self.ks),
            "metrics": list(self.metric_names),
            "models": [r.to_dict() for r in self.results],
            "attribution": self.attribution,
            "uncertainty": self.uncertainty,
        }

    def table(self, *, title: str | None = None, transpose: bool | None = None) -> "Table":
        """A rich table of metrics and timings; the best value of each metric in bold green.

        One row per model, or — with many metric columns (``transpose`` None picks) — one row
        per metric and one column per model, which stays readable in a terminal.
        """
        from rich.table import Table

        keys = self.metric_keys
        if transpose is None:
            transpose = len(keys) > 2
        split = self.split
        # The licence attribution is printed by the caller under the table: as a caption it
        # would wrap to the table's (narrow) width.
        level = f", {self.uncertainty['confidence']:.0%} intervals over users" if self.uncertainty else ""
        table = Table(
            title=title or f"split {split.get('name', '?')} ({self.on}): {split.get('n_test_users', '?')} users, "
            f"{split.get('n_items', '?')} items{level}"
        )
        best = {key: self.best(key).name for key in keys} if len(self.results) > 1 else {}

        def cell(r: ModelResult, key: str) -> str:
            text = format_value(r.metrics[key], r.intervals.get(key))
            return f"[bold green]{text}[/]" if best.get(key) == r.name else text

        if transpose:
            table.add_column("metric", style="bold")
            for r in self.results:
                table.add_column(r.name, justify="right", overflow="fold", max_width=max(10, 60 // len(self.results)))
            for key in keys:
                table.add_row(key, *(cell(r, key) for r in self.results))
            table.add_section()
            table.add_row("fit s", *(f"{r.fit_s:.2f}" for r in self.results))
            table.add_row("recommend s", *(f"{r.recommend_s:.2f}" for r in self.results))
            table.add_row(
                "params", *(", ".join(f"{k}={v}" for k, v in r.changed_params.items()) or "defaults" for r in self.results)
            )
            return table
        table.add_column("model", style="bold")
        table.add_column("params", overflow="fold", max_width=24)
        for key in keys:
            table.add_column(key, justify="right")
        table.add_column("fit s", justify="right")
        table.add_column("recommend s", justify="right")
        for r in self.results:
            params = ", ".join(f"{k}={v}" for k, v in r.changed_params.items()) or "defaults"
            table.add_row(r.name, params, *(cell(r, key) for key in keys), f"{r.fit_s:.2f}", f"{r.recommend_s:.2f}")
        return table


def compare(
    models: Mapping[str, "Recommender"],
    split: Split,
    k: int | Iterable[int] = (20,),
    *,
    metrics: Sequence[str] = ALL_METRICS,
    on: str = "test",
    block_users: int = 2048,
    progress: Callable[[str, str], None] | None = None,
    confidence: float = 0.95,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> ComparisonResult:
    """Fit each model on ``split.train`` and evaluate it; timings in seconds (wall clock).

    Every metric gets a ``confidence`` interval from ``bootstrap_samples`` resamples of the
    evaluated users (seeded: the same users are drawn for every model); 0 samples: no intervals.
    ``progress(name, stage)`` is called with stage "fit" / "evaluate" / "done" per model. Errors of
    a model (e.g. ModelCapacityError from EASE on a large catalogue) propagate unchanged.
    """
    if not models:
        raise ValidationError("compare needs at least one model")
    ks = _check_ks(k, split.train.n_items)
    names = check_metrics(metrics)
    uncertainty = (
        {"confidence": float(confidence), "bootstrap_samples": int(bootstrap_samples), "seed": int(seed)}
        if bootstrap_samples else None
    )
    result = ComparisonResult(
        split=split.summary(), ks=ks, metric_names=names, attribution=split.attribution, on=on,
        uncertainty=uncertainty,
    )
    n_users = len(split.relevant(on)[1])
    for name, model in models.items():
        if progress is not None:
            progress(name, "fit")
        train = split.train_for(model)
        t0 = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - t0
        if progress is not None:
            progress(name, "evaluate")
        ev = _evaluate(model, split, ks, names, on, block_users, None, catalogue_detail=bool(bootstrap_samples))
        intervals = (
            {key: iv.to_dict() for key, iv in ev.intervals(confidence=confidence, n_boot=bootstrap_samples, seed=seed).items()}
            if bootstrap_samples else {}
        )
        params = _jsonable(model.get_params()) if hasattr(model, "get_params") else {}
        result.results.append(
            ModelResult(
                name=name,
                family=getattr(model, "family", "") or type(model).__name__,
                params=params,
                changed_params=_changed(model, params),
                metrics=ev.metrics,
                fit_s=fit_s,
                recommend_s=ev.recommend_s,
                n_users=n_users,
                intervals=intervals,
            )
        )
        if progress is not None:
            progress(name, "done")
    return result


def format_value(value: float, interval: Mapping[str, Any] | None = None) -> str:
    """``0.1276 [0.118, 0.137]``: a figure and, when known, its interval (3 decimals suffice for it)."""
    text = f"{value:.4f}"
    if interval and interval.get("low") is not None and interval.get("high") is not None:
        text += f" [{interval['low']:.3f}, {interval['high']:.3f}]"
    return text


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, (np.generic,)):
            value = value.item()
        out[key] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)
    return out


def _changed(model: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters that differ from the defaults of the model's ``__init__``."""
    import inspect

    try:
        signature = inspect.signature(type(model).__init__)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return dict(params)
    defaults = {p.name: p.default for p in signature.parameters.values() if p.default is not inspect.Parameter.empty}
    return {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
