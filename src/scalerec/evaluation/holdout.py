"""The ``auto`` split: a hold-out sized by the data, with the rule that fired recorded.

Temporal first: the smallest recent window holding ``holdout_share`` of the events AND at least
``min_test_users`` users (capped at ``max_test_user_share`` of the users) with a new item in it
and a training history. When no window up to ``max_holdout_share`` of the events gives that many
users (activity front-loaded, a window dominated by a few users, live events after old ones),
each user's newest ``holdout_share`` of items is held out instead (leave-last-share), or random
items when the events carry no time order. Test users always keep training history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from scalerec.config import Settings
from scalerec.errors import EmptyDataError, ValidationError
from scalerec.evaluation.protocol import PartRecord, ProtocolRecord
from scalerec.evaluation.splits import (
    Split,
    _attach_part,
    _MatrixOptions,
    _pair_ranks,
    _pairwise_split,
    _split_temporal,
    load_events,
    split_random,
)

__all__ = ["Sizing", "auto_protocol", "earlier_fold", "size_window", "split_auto"]

#: Window sizes tried, as shares of the events between holdout_share and max_holdout_share.
N_CANDIDATES = 24
#: Fewer evaluated users than this (or min_test_users when smaller) is no basis for a decision.
MIN_DECISION_USERS = 10
#: Below this many test users the record warns that small differences are noise.
FEW_USERS = 100


@dataclass(frozen=True)
class Sizing:
    """The [training] settings that size the auto protocol."""

    holdout_share: float = 0.1
    min_test_users: int = 1000
    max_test_user_share: float = 0.2
    max_holdout_share: float = 0.3

    @classmethod
    def from_settings(cls, settings: Settings | None, **overrides: Any) -> "Sizing":
        t = (settings or Settings()).training
        values = {
            "holdout_share": t.holdout_share, "min_test_users": t.min_test_users,
            "max_test_user_share": t.max_test_user_share, "max_holdout_share": t.max_holdout_share,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        out = cls(**values)
        if not 0 < out.holdout_share < 1 or not out.holdout_share <= out.max_holdout_share < 1:
            raise ValidationError(
                f"holdout_share ({out.holdout_share}) and max_holdout_share ({out.max_holdout_share}) must satisfy "
                "0 < holdout_share <= max_holdout_share < 1"
            )
        if out.min_test_users < 1 or not 0 < out.max_test_user_share <= 1:
            raise ValidationError("min_test_users must be >= 1 and max_test_user_share in (0, 1]")
        return out

    def target(self, n_users: int) -> int:
        """Test users wanted: min_test_users, at most max_test_user_share of the users (at least 1)."""
        return max(1, min(self.min_test_users, int(self.max_test_user_share * n_users)))

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class Window:
    """A candidate test window: its start, event share and estimated evaluable users."""

    start: datetime
    share: float
    users: int


def _to_us(col: pl.Series) -> np.ndarray:
    return col.dt.epoch("us").to_numpy()


def size_window(df: pl.DataFrame, sizing: Sizing, target: int) -> tuple[Window | None, list[Window]]:
    """(the smallest window with >= ``target`` users, every candidate tried) over the usable events ``df``.

    A user counts for a window starting at t when they have an event before t and a (user, item)
    pair first seen at or after t whose item was known before t: what the temporal split evaluates.
    """
    ts = np.sort(_to_us(df.get_column("timestamp")))
    pairs = df.group_by("user_id", "item_id").agg(pl.col("timestamp").min().alias("t"))
    pairs = pairs.with_columns(
        pl.col("t").min().over("user_id").alias("u"), pl.col("t").min().over("item_id").alias("i"),
        pl.col("user_id").rank("dense").alias("code"),
    )
    pt, ut, it = _to_us(pairs["t"]), _to_us(pairs["u"]), _to_us(pairs["i"])
    code = pairs["code"].to_numpy()
    tried: list[Window] = []
    for share in np.linspace(sizing.holdout_share, sizing.max_holdout_share, N_CANDIDATES):
        t = ts[min(len(ts) - 1, int(np.floor((1.0 - share) * len(ts))))]
        if t <= ts[0]:
            break  # nothing would be left to train on
        mask = (pt >= t) & (it < t) & (ut < t)
        users = int(np.unique(code[mask]).size)
        start = pl.Series([t]).cast(pl.Datetime("us", "UTC"))[0]
        tried.append(Window(start, float((ts >= t).mean()), users))
        if users >= target:
            return tried[-1], tried
    return None, tried


def _leave_last_share(df: pl.DataFrame, opts: _MatrixOptions, share: float) -> Split:
    """Each user with >= 2 distinct items holds out their newest round(n * share) items (1 .. n-1)."""
    pairs = _pair_ranks(df).with_columns(
        pl.when(pl.col("n_pairs") < 2).then(0).otherwise(
            pl.min_horizontal(
                pl.max_horizontal((pl.col("n_pairs") * share + 0.5).floor().cast(pl.Int64), pl.lit(1)),
                pl.col("n_pairs") - 1,
            )
        ).alias("_n_test")
    ).with_columns(
        pl.when(pl.col("rank_from_last") < pl.col("_n_test")).then(pl.lit("test")).otherwise(pl.lit("train")).alias("part")
    )
    return _pairwise_split(
        _attach_part(df, pairs), opts, "auto", {"holdout_share": share},
        "no held-out item is known from training (too few users with several items sharing items); "
        "import more events",
    )


def _usable_users(df: pl.DataFrame) -> tuple[int, int]:
    """(users, users with >= 2 distinct items)."""
    per_user = df.group_by("user_id").agg(pl.col("item_id").n_unique().alias("n"))
    return per_user.height, int((per_user["n"] >= 2).sum())


def _check_decidable(split: Split, floor: int, what: str) -> None:
    n = len(split.test_users)
    if n < floor:
        raise EmptyDataError(
            f"{what} has only {n} user(s) to evaluate on (fewer than {floor}): no model choice made on so "
            "few users means anything; import more events (or lower [training] min_test_users)",
            details={"test_users": n, "needed": floor},
        )


def auto_protocol(
    events: Any,
    *,
    settings: Settings | None = None,
    seed: int = 0,
    holdout_share: float | None = None,
    min_test_users: int | None = None,
    max_test_user_share: float | None = None,
    max_holdout_share: float | None = None,
    validation: bool = True,
) -> tuple[Split, Split | None]:
    """(test split, validation split carved from its training part), both carrying the protocol record
    (``validation=False``: no validation split, None)."""
    sizing = Sizing.from_settings(
        settings, holdout_share=holdout_share, min_test_users=min_test_users,
        max_test_user_share=max_test_user_share, max_holdout_share=max_holdout_share,
    )
    opts = _MatrixOptions.for_split(settings)
    raw = load_events(events)
    df = opts.usable(raw)
    if df.height == 0:
        raise EmptyDataError(
            "no events to split: the data has no events with a user id of a configured type; "
            "import events first (`scalerec import events FILE`)"
        )
    n_users, n_multi = _usable_users(df)
    if n_users < 2 or n_multi == 0:
        raise EmptyDataError(
            f"the data has {n_users} user(s) and {n_multi} with more than one item: a recommender needs "
            "several users with several items each to be trained and evaluated; import more events",
            details={"users": n_users, "users_with_2_items": n_multi},
        )
    target = sizing.target(n_users)
    floor = min(MIN_DECISION_USERS, target, n_multi)
    record_settings = {**sizing.to_dict(), "target_users": target, "users": n_users, "seed": int(seed)}
    end = df.get_column("timestamp").max()
    start = df.get_column("timestamp").min()
    warnings: list[str] = []
    window, tried = (None, []) if end == start else size_window(df, sizing, target)
    outer = inner = None
    if window is not None:
        days = (end - window.start).total_seconds() / 86400
        outer = _split_temporal(raw, opts, test_days=days, valid_days=None, now=end, exclude_seen=True)
        if len(outer.test_users) >= target:
            rule = "temporal"
            reason = (
                f"the newest {window.share:.1%} of the events (since {window.start:%Y-%m-%d %H:%M} UTC) is the "
                f"smallest window holding {sizing.holdout_share:.0%} of the events and {target:,} users with "
                "a new item and a training history"
            )
            if validation:
                inner = _carve(rule, raw, opts, sizing, outer, target, seed, settings)
        else:
            outer = None
    if outer is None:
        if end == start:
            rule, reason = "random", "all events carry the same time, so there is no order to hold the newest out by"
            outer = split_random(df, ratios=(1 - sizing.holdout_share, sizing.holdout_share), seed=seed, settings=settings)
        else:
            best = max(tried, key=lambda w: w.users, default=None)
            seen = (f"the best window (newest {best.share:.1%} of the events, since {best.start:%Y-%m-%d}) holds "
                    f"{best.users:,} users" if best else "no window leaves events to train on")
            rule = "leave-last-share"
            reason = (
                f"no recent window of {sizing.holdout_share:.0%}..{sizing.max_holdout_share:.0%} of the events holds "
                f"{target:,} users with a new item and a training history ({seen}); each user's newest "
                f"{sizing.holdout_share:.0%} of items is held out instead"
            )
            outer = _leave_last_share(df, opts, sizing.holdout_share)
        if validation:
            inner = _carve(rule, raw, opts, sizing, outer, target, seed, settings)
    assert outer is not None and (inner is not None or not validation)
    _check_decidable(outer, floor, f"the auto protocol ({rule})")
    if inner is not None:
        _check_decidable(inner, floor, f"the validation part of the auto protocol ({rule})")
    if len(outer.test_users) < FEW_USERS:
        warnings.append(f"only {len(outer.test_users)} test users: differences of a few points are noise")
    parts = [outer] if inner is None else [outer, inner]
    record = ProtocolRecord(
        split="auto", rule=rule, reason=reason, test=PartRecord.of(outer),
        validation=None if inner is None else PartRecord.of(inner),
        settings=record_settings, warnings=warnings,
        options={"test_days": round(float(outer.info["test_days"]), 4)} if "test_days" in outer.info else {},
    )
    for part in parts:
        part.name, part.info["rule"], part.protocol = "auto", rule, record
    return outer, inner


def _carve(rule: str, raw: pl.DataFrame, opts: _MatrixOptions, sizing: Sizing, outer: Split, target: int, seed: int,
           settings: Settings | None) -> Split:
    """The part carved from ``outer``'s training part by ``rule``: how the validation part is cut from the
    test split, and how a second fold is cut from the validation split (:func:`earlier_fold`)."""
    if rule == "temporal":
        return _temporal_validation(raw, opts, sizing, outer, min(target, len(outer.test_users)))
    if rule == "random":
        return split_random(outer.train_events, ratios=(1 - sizing.holdout_share, sizing.holdout_share), seed=seed,
                            settings=settings)
    return _leave_last_share(outer.train_events, opts, sizing.holdout_share)


def earlier_fold(inner: Split, *, settings: Settings | None = None) -> Split:
    """A second validation fold, disjoint from the auto protocol's validation split ``inner``: the same rule
    carving it from ``inner``'s training part (a temporal window ending where the validation window starts,
    sized the same way; each user's next-newest share of items; a random share of the rest). Raises
    EmptyDataError when it holds too few users to decide anything on."""
    record = inner.protocol
    if record is None or record.split != "auto" or inner.train_events is None:
        raise ValidationError("earlier_fold takes the validation split of the auto protocol (split_auto(part='validation'))")
    kept = {k: v for k, v in record.settings.items() if k in Sizing.__dataclass_fields__}
    sizing = Sizing(**kept)
    target = int(record.settings.get("target_users", sizing.min_test_users))
    opts = _MatrixOptions.for_split(settings)
    fold = _carve(record.rule, inner.train_events, opts, sizing, inner, target, int(record.settings.get("seed", 0)),
                  settings)
    _check_decidable(fold, min(MIN_DECISION_USERS, target), f"the second validation fold ({record.rule})")
    fold.name, fold.info["rule"] = "auto", record.rule
    return fold


def _temporal_validation(raw: pl.DataFrame, opts: _MatrixOptions, sizing: Sizing, outer: Split, target: int) -> Split:
    """The validation window: sized the same way on the events before the test window, ending at its start."""
    test_start = outer.info["test_start"]
    before = raw.filter(pl.col("timestamp") < test_start)
    usable = opts.usable(before)
    window, tried = size_window(usable, sizing, target)
    if window is None:  # the earlier period is quieter: take its best window rather than change the rule
        window = max(tried, key=lambda w: w.users, default=None)
    days = (test_start - window.start).total_seconds() / 86400 if window else float(outer.info["test_days"])
    return _split_temporal(before, opts, test_days=days, valid_days=None, now=test_start, exclude_seen=True)


def split_auto(events: Any, *, part: str = "test", settings: Settings | None = None, **options: Any) -> Split:
    """The auto protocol's test split (``part="validation"``: its validation split)."""
    if part not in ("test", "validation"):
        raise ValidationError(f"part must be 'test' or 'validation', not {part!r}")
    outer, inner = auto_protocol(events, settings=settings, validation=part == "validation", **options)
    return outer if inner is None else inner

