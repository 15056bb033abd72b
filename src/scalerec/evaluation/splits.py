"""Train/test splitters over event logs: temporal, leave-last-k, random, held-out users, named protocols."""

from __future__ import annotations

import importlib

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from scalerec.config import EventType, Settings
from scalerec.data.matrix import InteractionMatrix, MatrixSpec, split_overrides
from scalerec.data.snapshot import SNAPSHOT_COLUMNS, load_events
from scalerec.errors import EmptyDataError, ValidationError
from scalerec.evaluation.protocol import PartRecord, ProtocolRecord
from scalerec.plugins import NamedRegistry

__all__ = [
    "SPLITS",
    "Split",
    "SPLIT_REGISTRY",
    "SplitEntry",
    "load_events",
    "make_protocol",
    "make_split",
    "resolve_split_options",
    "register_split",
    "second_fold",
    "split_entry",
    "split_names",
    "split_leave_last",
    "split_random",
    "split_temporal",
    "split_users",
]

#: The columns a splitter reads from the event log (nothing else is materialised).
SPLIT_COLUMNS = SNAPSHOT_COLUMNS


@dataclass
class Split:
    """A train matrix and the relevant items to predict, aligned to it.

    - ``train``: the matrix models are fitted on (n_users x n_items).
    - ``test``: csr of relevant items (1.0) with ``train.n_items`` columns. Rows are the train
      users, except with ``strong_generalisation`` where rows are the held-out users of
      ``fold_in_user_ids`` (not in ``train``).
    - ``test_users``: int rows of ``test`` with at least one relevant item (the users evaluated).
    - ``valid`` / ``valid_users``: optional validation relevance, same layout as ``test`` (for
      tuning on a model fitted on ``train``).
    - ``fold_in``: with ``strong_generalisation``, the held-out users' histories (rows aligned to
      ``test``), which models see through ``recommend_history``.
    - ``info``: what the split did (cut-offs, counts) for reports; ``attribution`` is shown
      wherever results on the data are shown (licence).
    """

    train: InteractionMatrix
    test: sp.csr_matrix
    test_users: np.ndarray
    valid: sp.csr_matrix | None = None
    valid_users: np.ndarray | None = None
    fold_in: sp.csr_matrix | None = None
    fold_in_user_ids: np.ndarray | None = None
    strong_generalisation: bool = False
    name: str = "custom"
    info: dict[str, Any] = field(default_factory=dict)
    attribution: str | None = None
    #: rebuilds the training matrix with build_matrix overrides on the same vocabulary
    rebuild_train: Callable[..., InteractionMatrix] | None = field(default=None, repr=False, compare=False)
    #: the events the training part was built from (a validation part is carved from them)
    train_events: pl.DataFrame | None = field(default=None, repr=False, compare=False)
    #: what was held out and why (``make_protocol`` and the auto split fill it in)
    protocol: ProtocolRecord | None = field(default=None, compare=False)

    def train_for(self, model: Any) -> InteractionMatrix:
        """The training matrix for ``model``: ``train``, or rebuilt with ``model.matrix_overrides()``.

        A model such as Trending needs time decay in its matrix; the rebuilt matrix keeps the
        rows and columns of ``train`` so the test part stays aligned.
        """
        overrides = getattr(model, "matrix_overrides", dict)()
        if not overrides:
            return self.train
        if self.rebuild_train is None:
            raise ValidationError(
                f"{type(model).__name__} needs a training matrix built with {overrides}, but split "
                f"{self.name!r} was made without its events; build it with a scalerec.evaluation splitter"
            )
        return self.rebuild_train(**overrides)

    def relevant(self, on: str = "test") -> tuple[sp.csr_matrix, np.ndarray]:
        """(relevant csr, evaluated rows) of the ``"test"`` or ``"valid"`` part."""
        if on == "test":
            return self.test, self.test_users
        if on == "valid":
            if self.valid is None or self.valid_users is None:
                raise ValidationError(f"split {self.name!r} has no validation part; evaluate on 'test'")
            return self.valid, self.valid_users
        raise ValidationError(f"on must be 'test' or 'valid', not {on!r}")

    def history(self, rows: np.ndarray, on: str = "test") -> sp.csr_matrix:
        """csr [len(rows), n_items]: what the evaluated users are known to have interacted with.

        These rows are excluded from their recommendations (and, for held-out users, are the
        fold-in histories given to the model). Evaluating ``"test"`` on a split with a
        validation part also excludes the validation items, which are known by then.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if self.strong_generalisation:
            assert self.fold_in is not None
            return self.fold_in[rows]
        known = self.train.matrix[rows]
        if on == "test" and self.valid is not None:
            known = sp.csr_matrix(known + self.valid[rows])
        return known

    def summary(self) -> dict[str, Any]:
        """Plain-data description (sizes, cut-offs) for JSON output and reports."""
        out: dict[str, Any] = {
            "name": self.name,
            "n_train_users": self.train.n_users,
            "n_items": self.train.n_items,
            "train_interactions": self.train.nnz,
            "n_test_users": int(len(self.test_users)),
            "test_interactions": int(self.test[self.test_users].nnz) if len(self.test_users) else 0,
            "strong_generalisation": self.strong_generalisation,
        }
        if self.valid_users is not None:
            out["n_valid_users"] = int(len(self.valid_users))
        out.update({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.info.items()})
        if self.protocol is not None:
            out["protocol"] = self.protocol.to_dict()
        return out


# ---- shared machinery -------------------------------------------------------------------------


@dataclass(frozen=True)
class _MatrixOptions(MatrixSpec):
    """A split's matrix spec (from settings, overridable per split) plus the event types that count
    as relevant in the held-out part."""

    relevant_types: tuple[str, ...] | None = None

    @classmethod
    def for_split(
        cls,
        settings: Settings | None,
        *,
        event_types: Mapping[str, EventType] | None = None,
        binary: bool | None = None,
        relevant_types: Sequence[str] | None = None,
    ) -> "_MatrixOptions":
        spec = MatrixSpec.from_settings(
            settings, {} if binary is None else {"binary": binary}, event_types=event_types
        )
        if relevant_types is not None:
            unknown = sorted(set(relevant_types) - set(spec.event_types))
            if unknown:
                raise ValidationError(
                    f"relevant event types {unknown} are not configured; configured: {sorted(spec.event_types)}"
                )
        return cls(**spec.build_kwargs(), relevant_types=tuple(relevant_types) if relevant_types is not None else None)

    @property
    def spec(self) -> MatrixSpec:
        """The matrix spec alone (without the split's relevance rule)."""
        return MatrixSpec(**self.build_kwargs())

    def usable(self, df: pl.DataFrame) -> pl.DataFrame:
        """Events that can become cells: a known user and (unless unknown types count) a known type."""
        df = df.filter(pl.col("user_id").is_not_null())
        if self.unknown_type_weight is None:
            df = df.filter(pl.col("event_type").is_in(list(self.event_types)))
        return df

    def train_matrix(self, df: pl.DataFrame, now: datetime | None, **overrides: Any) -> InteractionMatrix:
        """The training matrix of ``df``; ``overrides``: spec fields (a model's) and build keywords."""
        spec_part, where = split_overrides(overrides)
        return self.spec.with_overrides(spec_part).build(df.to_arrow(), now=now, **where)

    def rebuilder(
        self, df: pl.DataFrame, now: datetime | None, train: InteractionMatrix
    ) -> Callable[..., InteractionMatrix]:
        """A function rebuilding ``train`` from its events with overrides, on the same vocabulary."""

        def rebuild(**overrides: Any) -> InteractionMatrix:
            return self.train_matrix(
                df, now, **{**overrides, "user_ids": train.user_ids, "item_ids": train.item_ids,
                            "min_user_interactions": 1, "min_item_interactions": 1}
            )

        return rebuild

    def aligned(
        self, df: pl.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray, *, relevance: bool
    ) -> sp.csr_matrix:
        """csr [len(user_ids), len(item_ids)]: binary 1.0 cells of positive net weight when
        ``relevance`` (ratings below the threshold are not relevant: :meth:`MatrixSpec.relevance`), else summed weights shaped like training cells (binary / cap), as serving
        shapes a fold-in history."""
        if relevance and self.relevant_types is not None:
            df = df.filter(pl.col("event_type").is_in(list(self.relevant_types)))
        spec = self.relevance() if relevance else self.counts().with_overrides(self.cells())
        matrix = spec.build(df.to_arrow(), user_ids=user_ids, item_ids=item_ids).matrix
        return sp.csr_matrix(matrix)


def _minus(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    """Cells of ``a`` whose position is not stored (non-zero) in ``b``; same shape."""
    b_mask = b.copy()
    b_mask.data = np.ones_like(b_mask.data)
    out = sp.csr_matrix(a - a.multiply(b_mask))
    out.eliminate_zeros()
    out.sort_indices()
    return out


def _rows_with_items(m: sp.csr_matrix) -> np.ndarray:
    return np.flatnonzero(np.diff(m.indptr) > 0).astype(np.int64)


def _require_events(df: pl.DataFrame, what: str) -> None:
    if df.height == 0:
        raise EmptyDataError(
            f"no events to split for {what}: the data has no events with a user id of a configured "
            "type; import events first (`scalerec import events FILE`)"
        )


def _require_train(train: InteractionMatrix, what: str) -> None:
    if train.nnz == 0:
        raise EmptyDataError(f"the training part of {what} is empty: no interactions left to fit a model on")


def _require_users(users: np.ndarray, what: str, hint: str) -> None:
    if len(users) == 0:
        raise EmptyDataError(f"{what} has no test user with a relevant item known in training; {hint}")


def _pair_ranks(df: pl.DataFrame) -> pl.DataFrame:
    """Distinct (user, item) pairs with ``n_pairs`` per user and ``rank_from_last`` (0 = newest).

    Pairs are ordered by their first event's time (ties by item id), so "the last k" are the k
    items the user came to most recently; all events of a pair stay together (no pair leaks).
    """
    return (
        df.group_by("user_id", "item_id")
        .agg(pl.col("timestamp").min().alias("first_ts"))
        .sort(["user_id", "first_ts", "item_id"], descending=[False, True, True])
        .with_columns(
            pl.int_range(pl.len(), dtype=pl.Int64).over("user_id").alias("rank_from_last"),
            pl.len().over("user_id").cast(pl.Int64).alias("n_pairs"),
        )
    )


def _attach_part(df: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    return df.join(pairs.select("user_id", "item_id", "part"), on=["user_id", "item_id"], how="left")


def _pairwise_split(
    df: pl.DataFrame, opts: _MatrixOptions, name: str, info: dict[str, Any], hint: str
) -> Split:
    """Train/valid/test from events carrying a ``part`` column ("train" / "valid" / "test")."""
    train_df = df.filter(pl.col("part") == "train")
    train = opts.train_matrix(train_df, now=None)
    _require_train(train, name)
    seen = train.matrix
    test = _minus(
        opts.aligned(df.filter(pl.col("part") == "test"), train.user_ids, train.item_ids, relevance=True), seen
    )
    test_users = _rows_with_items(test)
    _require_users(test_users, f"the {name} split", hint)
    valid = valid_users = None
    if (df.get_column("part") == "valid").any():
        valid = _minus(
            opts.aligned(df.filter(pl.col("part") == "valid"), train.user_ids, train.item_ids, relevance=True), seen
        )
        valid_users = _rows_with_items(valid)
    info = {**info, "train_events": train_df.height, "test_events": int((df.get_column("part") == "test").sum())}
    return Split(
        train=train, test=test, test_users=test_users, valid=valid, valid_users=valid_users, name=name, info=info,
        rebuild_train=opts.rebuilder(train_df, None, train), train_events=train_df.drop("part"),
    )


def _to_datetime(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


# ---- the splitters ----------------------------------------------------------------------------


def split_temporal(
    events: Any,
    *,
    test_days: float,
    valid_days: float | None = None,
    now: datetime | None = None,
    exclude_seen: bool = True,
    relevant_types: Sequence[str] | None = None,
    settings: Settings | None = None,
    event_types: Mapping[str, EventType] | None = None,
    binary: bool | None = None,
) -> Split:
    """Global temporal hold-out: the last ``test_days`` days before ``now`` are the test window.

    ``now`` defaults to the newest event (of any type, anonymous included). Training is every
    event before the window (before the validation window of ``valid_days`` if given). A user's
    relevant items are those with positive net weight in the test window (only ``relevant_types``
    when given), restricted to users and items of the training matrix, and — with
    ``exclude_seen`` — not interacted with in training (or validation). Users without a relevant
    item are skipped. Weights and matrix options come from ``settings`` (overridable by
    ``event_types`` / ``binary``).
    """
    if not test_days > 0:
        raise ValidationError(f"test_days must be > 0; got {test_days!r}")
    if valid_days is not None and not valid_days > 0:
        raise ValidationError(f"valid_days must be > 0; got {valid_days!r}")
    opts = _MatrixOptions.for_split(settings, event_types=event_types, binary=binary, relevant_types=relevant_types)
    return _split_temporal(load_events(events), opts, test_days=test_days, valid_days=valid_days, now=now,
                           exclude_seen=exclude_seen)


def _split_temporal(
    raw: pl.DataFrame,
    opts: _MatrixOptions,
    *,
    test_days: float,
    valid_days: float | None,
    now: datetime | None,
    exclude_seen: bool,
) -> Split:
    _require_events(raw, "the temporal split")
    opts = opts.resolved(raw)  # one rating scale for the train part, the held-out part and the refit
    end = _to_datetime(now) if now is not None else raw.get_column("timestamp").max()
    assert isinstance(end, datetime)
    test_start = end - timedelta(days=test_days)
    train_end = test_start - timedelta(days=valid_days) if valid_days is not None else test_start
    df = opts.usable(raw).filter(pl.col("timestamp") <= end)
    _require_events(df, "the temporal split")
    ts = pl.col("timestamp")
    train_df = df.filter(ts < train_end)
    test_df = df.filter(ts >= test_start)
    window = f"test window {test_start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC (last {test_days:g} days)"
    if train_df.height == 0:
        first = df.get_column("timestamp").min()
        advice = ("every event carries the same time, so no window can hold the newest out: use --split auto or "
                  "--split random (--no-timestamps imports split that way)" if first == end else "use fewer --test-days")
        raise EmptyDataError(
            f"the training window (before {train_end:%Y-%m-%d %H:%M} UTC) has no events: all {df.height} "
            f"events fall in the {window}; {advice}"
        )
    if test_df.height == 0:
        raise EmptyDataError(f"the {window} has no events (of {df.height}); use more --test-days")
    train = opts.train_matrix(train_df, now=train_end)
    _require_train(train, f"the temporal split before {train_end:%Y-%m-%d %H:%M} UTC")
    test = opts.aligned(test_df, train.user_ids, train.item_ids, relevance=True)
    seen = train.matrix
    valid = valid_users = None
    if valid_days is not None:
        valid_df = df.filter((ts >= train_end) & (ts < test_start))
        valid = opts.aligned(valid_df, train.user_ids, train.item_ids, relevance=True)
        if exclude_seen:
            valid = _minus(valid, seen)
        valid_users = _rows_with_items(valid)
        # Everything the user did in the validation window is known by the time of the test window.
        seen = seen + opts.aligned(valid_df, train.user_ids, train.item_ids, relevance=False)
    if exclude_seen:
        test = _minus(test, seen)
    test_users = _rows_with_items(test)
    _require_users(
        test_users,
        f"the {window} ({test_df.height} events)",
        "its users or items never occur in training, or they only repeat training items; "
        "use more --test-days or exclude_seen=False",
    )
    info = {
        "test_start": test_start,
        "test_end": end,
        "train_end": train_end,
        "test_days": float(test_days),
        "train_events": train_df.height,
        "test_events": test_df.height,
        "exclude_seen": exclude_seen,
    }
    if valid_days is not None:
        info["valid_days"] = float(valid_days)
    return Split(
        train=train, test=test, test_users=test_users, valid=valid, valid_users=valid_users, name="temporal", info=info,
        rebuild_train=opts.rebuilder(train_df, train_end, train), train_events=train_df,
    )


def split_leave_last(
    events: Any,
    k: int = 1,
    *,
    valid_k: int = 0,
    relevant_types: Sequence[str] | None = None,
    settings: Settings | None = None,
    event_types: Mapping[str, EventType] | None = None,
    binary: bool | None = None,
) -> Split:
    """Per user, the ``k`` items reached most recently (by first interaction) are the test set.

    With ``valid_k``, the ``valid_k`` items before those are the validation set. Only users with
    more than ``k + valid_k`` distinct items are held out (the rest train fully), so every
    evaluated user keeps at least one training item. All events of a held-out (user, item) pair
    leave training.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValidationError(f"k (items held out per user) must be a positive integer; got {k!r}")
    if isinstance(valid_k, bool) or not isinstance(valid_k, (int, np.integer)) or valid_k < 0:
        raise ValidationError(f"valid_k must be a non-negative integer; got {valid_k!r}")
    opts = _MatrixOptions.for_split(settings, event_types=event_types, binary=binary, relevant_types=relevant_types)
    df = opts.usable(load_events(events))
    opts = opts.resolved(df)
    _require_events(df, "the leave-last split")
    held = k + valid_k
    pairs = _pair_ranks(df).with_columns(
        pl.when(pl.col("n_pairs") <= held)
        .then(pl.lit("train"))
        .when(pl.col("rank_from_last") < k)
        .then(pl.lit("test"))
        .when(pl.col("rank_from_last") < held)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
        .alias("part")
    )
    return _pairwise_split(
        _attach_part(df, pairs),
        opts,
        "leave-last",
        {"k": int(k), "valid_k": int(valid_k)},
        f"no user has more than {held} distinct items; use a smaller k",
    )


def split_random(
    events: Any,
    ratios: Sequence[float] = (0.8, 0.2),
    seed: int = 0,
    *,
    relevant_types: Sequence[str] | None = None,
    settings: Settings | None = None,
    event_types: Mapping[str, EventType] | None = None,
    binary: bool | None = None,
) -> Split:
    """Per-user random split of each user's distinct items into train / (valid /) test.

    ``ratios`` is (train, test) or (train, valid, test), summing to 1. A user with n items gets
    round(n * test) test and round(n * valid) validation items (half up), always keeping at least
    one training item. Deterministic for a given ``seed`` whatever the order of the events.
    """
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) not in (2, 3) or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6 or ratios[0] <= 0:
        raise ValidationError(
            f"ratios must be (train, test) or (train, valid, test), non-negative with train > 0, "
            f"summing to 1; got {ratios}"
        )
    r_valid = ratios[1] if len(ratios) == 3 else 0.0
    r_test = ratios[-1]
    opts = _MatrixOptions.for_split(settings, event_types=event_types, binary=binary, relevant_types=relevant_types)
    df = opts.usable(load_events(events))
    opts = opts.resolved(df)
    _require_events(df, "the random split")
    # Sorting the distinct pairs first makes the random keys independent of event order.
    pairs = df.select("user_id", "item_id").unique().sort(["user_id", "item_id"])
    rng = np.random.default_rng(seed)
    pairs = (
        pairs.with_columns(pl.Series("_key", rng.random(pairs.height)))
        .with_columns(
            pl.col("_key").rank("ordinal").over("user_id").cast(pl.Int64).sub(1).alias("_pos"),
            pl.len().over("user_id").cast(pl.Int64).alias("_n"),
        )
        .with_columns(
            pl.min_horizontal((pl.col("_n") * r_test + 0.5).floor().cast(pl.Int64), pl.col("_n") - 1).alias("_n_test"),
        )
        .with_columns(
            pl.min_horizontal(
                (pl.col("_n") * r_valid + 0.5).floor().cast(pl.Int64), pl.col("_n") - 1 - pl.col("_n_test")
            ).alias("_n_valid")
        )
        .with_columns(
            pl.when(pl.col("_pos") < pl.col("_n_test"))
            .then(pl.lit("test"))
            .when(pl.col("_pos") < pl.col("_n_test") + pl.col("_n_valid"))
            .then(pl.lit("valid"))
            .otherwise(pl.lit("train"))
            .alias("part")
        )
    )
    return _pairwise_split(
        _attach_part(df, pairs),
        opts,
        "random",
        {"ratios": list(ratios), "seed": int(seed)},
        "users need at least 2 distinct items to be held out; use a larger test ratio",
    )


def split_users(
    events: Any,
    test_fraction: float = 0.1,
    seed: int = 0,
    *,
    holdout_ratio: float = 0.2,
    relevant_types: Sequence[str] | None = None,
    settings: Settings | None = None,
    event_types: Mapping[str, EventType] | None = None,
    binary: bool | None = None,
) -> Split:
    """Strong generalisation: ``test_fraction`` of the users (with >= 2 items) leave training.

    Each held-out user's distinct items are ordered by first interaction; the newest
    round(n * holdout_ratio) (at least 1, at most n - 1) are the test set, the rest the fold-in
    history that models receive through ``recommend_history``. Items are the training matrix's.
    Rows of ``test`` / ``fold_in`` are the held-out users (``fold_in_user_ids``).
    """
    if not 0 < test_fraction < 1:
        raise ValidationError(f"test_fraction must be between 0 and 1 (exclusive); got {test_fraction!r}")
    if not 0 < holdout_ratio < 1:
        raise ValidationError(f"holdout_ratio must be between 0 and 1 (exclusive); got {holdout_ratio!r}")
    opts = _MatrixOptions.for_split(settings, event_types=event_types, binary=binary, relevant_types=relevant_types)
    df = opts.usable(load_events(events))
    opts = opts.resolved(df)
    _require_events(df, "the held-out-users split")
    pairs = _pair_ranks(df)
    users = pairs.group_by("user_id").agg(pl.col("n_pairs").first()).sort("user_id")
    n_users = users.height
    eligible = users.filter(pl.col("n_pairs") >= 2).get_column("user_id").to_numpy().astype(str)
    n_held = min(len(eligible), int(round(test_fraction * n_users)))
    if n_held == 0:
        raise EmptyDataError(
            f"no user can be held out: {n_users} users, {len(eligible)} with at least 2 distinct items, "
            f"test_fraction {test_fraction}; use a larger test_fraction or more data"
        )
    rng = np.random.default_rng(seed)
    held_ids = np.sort(rng.choice(eligible, size=n_held, replace=False))
    held = pl.DataFrame({"user_id": held_ids})
    pairs = pairs.join(held, on="user_id", how="semi").with_columns(
        pl.min_horizontal(
            pl.max_horizontal((pl.col("n_pairs") * holdout_ratio + 0.5).floor().cast(pl.Int64), pl.lit(1)),
            pl.col("n_pairs") - 1,
        ).alias("_n_test")
    ).with_columns(
        pl.when(pl.col("rank_from_last") < pl.col("_n_test"))
        .then(pl.lit("test"))
        .otherwise(pl.lit("fold_in"))
        .alias("part")
    )
    train_df = df.join(held, on="user_id", how="anti")
    train = opts.train_matrix(train_df, now=None)
    _require_train(train, "the held-out-users split")
    held_df = _attach_part(df.join(held, on="user_id", how="semi"), pairs)
    fold_in = opts.aligned(held_df.filter(pl.col("part") == "fold_in"), held_ids, train.item_ids, relevance=False)
    test = _minus(
        opts.aligned(held_df.filter(pl.col("part") == "test"), held_ids, train.item_ids, relevance=True), fold_in
    )
    # A user needs a history to fold in and something to find.
    has_history = np.diff(fold_in.indptr) > 0
    test_users = np.flatnonzero((np.diff(test.indptr) > 0) & has_history).astype(np.int64)
    _require_users(test_users, "the held-out-users split", "use a larger test_fraction")
    info = {
        "test_fraction": float(test_fraction),
        "holdout_ratio": float(holdout_ratio),
        "seed": int(seed),
        "n_held_out_users": int(n_held),
        "train_events": train_df.height,
        "test_events": int((held_df.get_column("part") == "test").sum()),
    }
    return Split(
        train=train,
        test=test,
        test_users=test_users,
        fold_in=fold_in,
        fold_in_user_ids=held_ids,
        strong_generalisation=True,
        name="users",
        info=info,
        rebuild_train=opts.rebuilder(train_df, None, train),
        train_events=train_df,
    )


# ---- named splits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitEntry:
    """A named split for ``--split NAME``: its function (events, **options) -> Split and what callers
    must know to call it: whether it reads the configuration (``uses_settings``), which of the
    shared options it takes, its test window when none is given, and other spellings of its name.
    """

    name: str
    fn: Callable[..., Split]
    #: False for a fixed protocol: it ignores the configuration's matrix settings (no ``settings``)
    uses_settings: bool = True
    #: option names it takes (informational for plug-ins; core splits document their own)
    options: tuple[str, ...] = ()
    #: its test window in days when the caller gives none (None: the configuration's training.test_days)
    default_test_days: float | None = None
    aliases: tuple[str, ...] = ()
    help: str = ""
    #: builds the (test, validation) pair itself (events, settings=, validation=, **options); None: carved by make_protocol
    protocol: Callable[..., Any] | None = None
    #: carves a second validation fold from its validation split (inner, settings=); None: the inner carving again
    second_fold: Callable[..., Any] | None = None


#: The named splits (core ones below, dataset protocols from scalerec.datasets).
SPLIT_REGISTRY: NamedRegistry[SplitEntry] = NamedRegistry(
    "split", lambda name, names: ValidationError(f"unknown split {name!r}; choose one of {', '.join(names)}")
)


def register_split(
    name: str,
    fn: Callable[..., Split],
    *,
    uses_settings: bool = True,
    options: Sequence[str] = (),
    default_test_days: float | None = None,
    aliases: Sequence[str] = (),
    help: str = "",
    protocol: Callable[..., Any] | None = None,
    second_fold: Callable[..., Any] | None = None,
) -> SplitEntry:
    """Make ``fn`` available as split ``name`` (``make_split``, ``scalerec evaluate/train --split``).

    Names and aliases match ignoring case and '_' vs '-'. Raises ConfigError when one is taken
    by another split; registering the same name again replaces it.
    """
    entry = SplitEntry(name, fn, uses_settings, tuple(options), default_test_days, tuple(aliases), help, protocol,
                       second_fold)
    return SPLIT_REGISTRY.add(name, entry, tuple(aliases))


def split_names() -> tuple[str, ...]:
    """Registered split names, core splits first."""
    return SPLIT_REGISTRY.names()


def split_entry(name: str) -> SplitEntry:
    """The split registered as ``name`` or one of its aliases; ValidationError naming the choices."""
    return SPLIT_REGISTRY.get(name)


class _SplitTable(Mapping[str, Callable[..., Split]]):
    """``SPLITS``: name -> function, a read-only view of the registry (plug-ins loaded on first use)."""

    def __getitem__(self, name: str) -> Callable[..., Split]:
        if name not in SPLIT_REGISTRY.names():
            raise KeyError(name)
        return SPLIT_REGISTRY.get(name).fn

    def __iter__(self):  # noqa: ANN204 - Mapping protocol
        return iter(SPLIT_REGISTRY.names())

    def __len__(self) -> int:
        return len(SPLIT_REGISTRY.names())


#: Named splits for ``scalerec evaluate --split NAME``: each takes (events, **options).
SPLITS: Mapping[str, Callable[..., Split]] = _SplitTable()

class _Deferred:
    """A splitter named "module:function", imported on first call: ``holdout`` builds on this
    module's splitters, so this module may only name it."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self._fn: Callable[..., Any] | None = None

    def __call__(self, events: Any, **options: Any) -> Any:
        if self._fn is None:
            module, attr = self.ref.split(":")
            self._fn = getattr(importlib.import_module(module), attr)
        return self._fn(events, **options)

    def __reduce__(self) -> tuple[Any, ...]:  # workers resolve it themselves
        return (_Deferred, (self.ref,))


#: The default protocol, chosen from the data (scalerec.evaluation.holdout.split_auto).
split_auto = _Deferred("scalerec.evaluation.holdout:split_auto")


register_split(
    "auto", split_auto, options=("seed", "part"), protocol=_Deferred("scalerec.evaluation.holdout:auto_protocol"),
    second_fold=_Deferred("scalerec.evaluation.holdout:earlier_fold"),
    help="chosen from the data: the newest window holding [training] holdout_share of the events and "
    "min_test_users users, else each user's newest items",
)
register_split("temporal", split_temporal, options=("test_days", "valid_days"), help="newest days held out")
register_split("leave-last", split_leave_last, options=("k", "valid_k"), help="each user's last items held out")
register_split("random", split_random, options=("ratios", "seed"), help="random interactions held out")
register_split("users", split_users, options=("test_fraction", "seed"), help="held-out users, folded in")


def make_split(
    name: str, events: Any, *, settings: Settings | None = None, part: str | None = None, **options: Any
) -> Split:
    """Run the named split on ``events``; options are that splitter's keywords.

    ``settings`` reaches splits that read the configuration and is left out for fixed protocols
    (``SplitEntry.uses_settings``), so callers need not know which is which. ``part="validation"``
    returns the validation split carved from the training part (``make_protocol``), whose test
    part is the validation part; ``part="test"`` the outer split of the same protocol.
    """
    if part is not None:
        if part not in ("test", "validation"):
            raise ValidationError(f"part must be 'test' or 'validation', not {part!r}")
        outer, inner = make_protocol(name, events, settings=settings, validation=part == "validation", **options)
        return outer if inner is None else inner
    entry = split_entry(name)
    if settings is not None and entry.uses_settings:
        options["settings"] = settings
    return entry.fn(events, **options)


def _outer_and_inner_options(name: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options of the test split and of the validation split carved from its training part.

    A validation setting of a core split (valid_days, valid_k, three ratios) sizes the carved
    part; without one the validation part is cut the same way as the test part.
    """
    outer, inner = dict(options), dict(options)
    if name == "temporal":
        valid_days = outer.pop("valid_days", None)
        inner.pop("valid_days", None)
        if valid_days is not None:
            inner["test_days"] = valid_days
    elif name == "leave-last":
        valid_k = outer.pop("valid_k", 0) or 0
        inner.pop("valid_k", None)
        if valid_k:
            inner["k"] = valid_k
    elif name == "random" and len(tuple(options.get("ratios", ()))) == 3:
        r_train, r_valid, r_test = (float(r) for r in options["ratios"])
        outer["ratios"] = (r_train + r_valid, r_test)
        inner["ratios"] = (r_train / (r_train + r_valid), r_valid / (r_train + r_valid))
    return outer, inner


def make_protocol(
    name: str, events: Any, *, settings: Settings | None = None, validation: bool = True, **options: Any
) -> tuple[Split, Split | None]:
    """(test split, validation split) of the named protocol, ``protocol`` record on both
    (``validation=False``: the test split alone, for an evaluation that tunes nothing).

    The validation split is carved from the test split's training events the same way (a
    temporal window ending where the test window starts, each user's newest remaining items,
    ...), so nothing of the test part reaches a search that tunes on it.
    """
    entry = split_entry(name)
    if entry.protocol is not None:
        return entry.protocol(events, settings=settings, validation=validation, **options)
    outer_opts, inner_opts = _outer_and_inner_options(entry.name, options)
    outer = make_split(entry.name, events, settings=settings, **(outer_opts if validation else options))
    reason = f"split {entry.name!r} was asked for (--split or [training] split)"
    kept = {k: v for k, v in (outer_opts if validation else options).items()
            if isinstance(v, (int, float, str, bool, list, tuple))}
    if not validation:
        outer.protocol = ProtocolRecord(split=entry.name, rule=entry.name, reason=reason, test=PartRecord.of(outer),
                                        fold_in=outer.strong_generalisation, options=kept)
        return outer, None
    if outer.train_events is None:
        raise ValidationError(f"split {entry.name!r} keeps no training events: a validation part cannot be carved from it")
    if "test_start" in outer.info and entry.name == "temporal":
        inner_opts["now"] = outer.info["test_start"]  # the validation window ends where the test window starts
    try:
        inner = make_split(entry.name, outer.train_events, settings=settings, **inner_opts)
    except EmptyDataError as exc:
        raise EmptyDataError(
            f"no validation part can be carved from the training part of split {entry.name!r}: {exc.message}"
        ) from None
    record = ProtocolRecord(
        split=entry.name, rule=entry.name, reason=reason, test=PartRecord.of(outer), validation=PartRecord.of(inner),
        fold_in=outer.strong_generalisation, options=kept,
    )
    outer.protocol = inner.protocol = record
    return outer, inner


def second_fold(name: str, inner: Split, *, settings: Settings | None = None, **options: Any) -> Split:
    """A second validation fold of protocol ``name``, disjoint from its validation split ``inner``: the
    validation part's own carving applied once more, to ``inner``'s training part (for temporal rules the
    window before the validation window). Raises EmptyDataError when nothing decidable can be carved."""
    entry = split_entry(name)
    if entry.second_fold is not None:
        return entry.second_fold(inner, settings=settings)
    if inner.train_events is None:
        raise ValidationError(f"split {entry.name!r} keeps no training events: no second fold can be carved")
    options = {k: v for k, v in options.items() if k != "part"}
    _, inner_opts = _outer_and_inner_options(entry.name, options)
    if "test_start" in inner.info and entry.name == "temporal":
        inner_opts["now"] = inner.info["test_start"]  # ends where the validation window starts
    return make_split(entry.name, inner.train_events, settings=settings, **inner_opts)


#: Splits whose options ``resolve_split_options`` maps from flags; plug-ins take what their entry declares.
CORE_SPLITS = ("auto", "temporal", "leave-last", "random", "users")


def resolve_split_options(
    split: str,
    *,
    test_days: float | None = None,
    valid_days: float | None = None,
    leave_k: int | None = None,
    ratios: Sequence[float] | str | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    default_test_days: float = 30.0,
    explicit: bool = True,
    strict: bool = True,
) -> tuple[str, dict[str, Any]]:
    """(split name, its keyword options) from the command-line flags of `train` and `evaluate`.

    ``explicit``: the split was named on the command line; when it was not (the configured
    default) and that default is ``auto``, a given ``test_days`` asks for a temporal window of
    that length. With ``strict`` a flag the split does not read is refused rather than silently ignored.
    """
    entry = split_entry(split)
    name = entry.name
    if name == "auto" and test_days is not None and not explicit:
        name = "temporal"
    if isinstance(ratios, str):
        try:
            ratios = tuple(float(v) for v in ratios.split(","))
        except ValueError:
            raise ValidationError(f"--ratios must be like 0.8,0.2 or 0.8,0.1,0.1; got {ratios!r}") from None
    given = {"--test-days": test_days, "--valid-days": valid_days, "--leave-k": leave_k, "--ratios": ratios,
             "--test-fraction": test_fraction}
    reads = {
        "auto": (), "temporal": ("--test-days", "--valid-days"), "leave-last": ("--leave-k",),
        "random": ("--ratios",), "users": ("--test-fraction",),
    }.get(name, ("--test-days",) if "test_days" in entry.options else ())
    stray = [flag for flag, value in given.items() if value is not None and flag not in reads]
    if stray and strict:
        hint = " (the auto split sizes its window from the data; use --split temporal for a fixed one)" if name == "auto" else ""
        raise ValidationError(f"{', '.join(stray)} does not apply to split {name!r}{hint}")
    if name not in CORE_SPLITS:  # a dataset protocol: only the options it declares
        days = test_days if test_days is not None else entry.default_test_days or default_test_days
        return name, ({"test_days": days} if "test_days" in entry.options else {})
    if name == "auto":
        return name, {"seed": seed}
    if name == "temporal":
        out: dict[str, Any] = {"test_days": test_days if test_days is not None else default_test_days}
        if valid_days is not None:
            out["valid_days"] = valid_days
        return name, out
    if name == "leave-last":
        return name, {"k": 1 if leave_k is None else leave_k}
    if name == "random":
        return name, {"ratios": tuple(ratios) if ratios is not None else (0.8, 0.2), "seed": seed}
    return name, {"test_fraction": 0.1 if test_fraction is None else test_fraction, "seed": seed}
