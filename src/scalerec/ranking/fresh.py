"""Fresh item statistics at serving: the ranker's item features as of the request, not of training.

Training computes views / carts / purchases over 1, 7 and 30 days, 30-day conversion, event count,
reviews and age as of each query's cut-off (:func:`~scalerec.ranking.features.item_stats_as_of`).
The served bundle keeps the 30 days before its data end as counts per (item, kind, hour before the
end) (:func:`hour_counts_as_of`, a few entries per item and hour, never the events themselves).
:class:`FreshItemStats` holds the version's item block (float32, one row per item) and:

- adds the events the catalogue acknowledged since the data end, read by pending-event id range
  only when the pending head moved (as :class:`~scalerec.serving.realtime.FreshUsers` does), as
  increments of the rows they touch on a copy of the block;
- rebuilds the block from the hour counts and the fresh events every :data:`SLIDE_S`, so the
  windows slide: with no new events, at a whole number of hours after the data end it equals
  ``item_stats_as_of(now)`` exactly; in between, training's events are counted to the hour.

Both run on one updater thread per served version, which publishes each new block (read-only) by
one reference swap. A request reads the current block and, when the pending stamp moved, wakes the
updater; it computes nothing (the updater counts a new event within a pass, not on that request).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from scalerec.ranking import features as F

log = logging.getLogger(__name__)

HOUR_US = 3_600_000_000
#: hours of training's events kept (the longest window)
HOURS = max(F.WINDOWS) * 24
#: seconds between rebuilds of the block (the windows slide by at most this much between them)
SLIDE_S = 60.0
#: kind codes: the counted kinds of features.ITEM_KINDS, then reviews (value = stars)
REVIEW = len(F.ITEM_KINDS)
_TYPE_CODE = {t: c for c, (_, types) in enumerate(F.ITEM_KINDS) for t in types} | {t: REVIEW for t in F.REVIEW_TYPES}
_NEVER = np.iinfo(np.int64).max
#: the item block's columns these statistics fill (the first ones, in ranker.ITEM_FEATURES order)
COLUMNS = (*(f"{n}_{w}d" for n, _ in F.ITEM_KINDS for w in F.WINDOWS),
           "conversion_30d", "events_all", "review_count", "rating_mean", "age_days")


def kind_codes(types: Any) -> np.ndarray:
    """int8 kind codes of event types (-1: not counted)."""
    s = types.cast(pl.String) if isinstance(types, pl.Series) else pl.Series(np.asarray(types).astype(str))
    return s.replace_strict(_TYPE_CODE, default=-1, return_dtype=pl.Int8).to_numpy()


@dataclass
class HourCounts:
    """Training's item events before ``t`` as serving needs them: counted kinds of the last
    :data:`HOURS` hours per (item, kind, hour before ``t``), and per item the all-time event count,
    review count and star sum, and start (launch, else first event; int64 max unknown)."""

    t: int
    item: np.ndarray  # int32
    kind: np.ndarray  # int8
    hour: np.ndarray  # int16: floor((t - timestamp) / 1 h)
    n: np.ndarray  # float32 events
    events_all: np.ndarray
    review_count: np.ndarray
    review_sum: np.ndarray  # float64
    start_us: np.ndarray  # int64

    def save(self, path: Path) -> None:
        np.savez(path, t=np.int64(self.t), item=self.item, kind=self.kind, hour=self.hour, n=self.n,
                 events_all=self.events_all, review_count=self.review_count, review_sum=self.review_sum,
                 start_us=self.start_us)

    @classmethod
    def load(cls, path: Path) -> "HourCounts":
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: (int(z[k]) if k == "t" else z[k]) for k in z.files})


def hour_counts_as_of(ev: pl.DataFrame, t: int, n_items: int, launch_us: np.ndarray) -> HourCounts:
    """:class:`HourCounts` of the event frame's events strictly before ``t``."""
    past = F.before(ev, t)
    i = past["i"].to_numpy().astype(np.int64)
    ts = past["t"].to_numpy()
    code = kind_codes(past["type"])
    keep = (code >= 0) & (code < REVIEW) & (t - ts < HOURS * HOUR_US)
    key = (i[keep] * REVIEW + code[keep]) * HOURS + (t - ts[keep]) // HOUR_US
    uniq, n = np.unique(key, return_counts=True)
    rev = code == REVIEW
    first = np.full(n_items, _NEVER)
    np.minimum.at(first, i, ts)
    return HourCounts(
        t=int(t), item=(uniq // (REVIEW * HOURS)).astype(np.int32), kind=(uniq // HOURS % REVIEW).astype(np.int8),
        hour=(uniq % HOURS).astype(np.int16), n=n.astype(np.float32),
        events_all=np.bincount(i, minlength=n_items)[:n_items].astype(np.float32),
        review_count=np.bincount(i[rev], minlength=n_items)[:n_items].astype(np.float32),
        review_sum=np.bincount(i[rev], weights=past["value"].to_numpy()[rev].astype(np.float64), minlength=n_items)[:n_items],
        start_us=np.where(launch_us >= 0, launch_us, first).astype(np.int64),
    )


def window_counts(base: HourCounts, shift: int, n_items: int) -> dict[str, np.ndarray]:
    """Training's part of each kind's window counts ``shift`` whole hours after its end (float64)."""
    out: dict[str, np.ndarray] = {}
    for code, (name, _) in enumerate(F.ITEM_KINDS):
        in_base = base.kind == code
        for w in F.WINDOWS:
            b = in_base & (base.hour < 24 * w - shift)
            out[f"{name}_{w}d"] = np.bincount(base.item[b], weights=base.n[b], minlength=n_items)[:n_items]
    return out


def stats_at(base: HourCounts, now: int, fi: np.ndarray, fk: np.ndarray, ft: np.ndarray, fv: np.ndarray,
             n_items: int, windows: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The item statistics of :data:`COLUMNS` at ``now`` from ``base`` plus fresh events (item
    columns ``fi``, kind codes ``fk``, times ``ft``, values ``fv``), those before ``now`` only;
    ``windows``: :func:`window_counts` at this hour's shift, when the caller keeps it."""
    shift = max(0, (now - base.t) // HOUR_US)
    if windows is None:
        windows = window_counts(base, shift, n_items)
    past = ft < now
    age = now - ft
    out: dict[str, np.ndarray] = {}
    for code, (name, _) in enumerate(F.ITEM_KINDS):
        in_fresh = past & (fk == code)
        for w in F.WINDOWS:
            f = in_fresh & (age < w * F.US_PER_DAY)
            out[f"{name}_{w}d"] = (windows[f"{name}_{w}d"] + np.bincount(fi[f], minlength=n_items)[:n_items]).astype(np.float32)
    out["conversion_30d"] = out["purchases_30d"] / (out["views_30d"] + 1.0)
    out["events_all"] = base.events_all + np.bincount(fi[past], minlength=n_items)[:n_items].astype(np.float32)
    rev = past & (fk == REVIEW)
    cnt = base.review_count + np.bincount(fi[rev], minlength=n_items)[:n_items].astype(np.float32)
    tot = base.review_sum + np.bincount(fi[rev], weights=fv[rev], minlength=n_items)[:n_items]
    out["review_count"] = cnt
    out["rating_mean"] = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan).astype(np.float32)
    first = np.full(n_items, _NEVER)
    np.minimum.at(first, fi[past], ft[past])
    start = np.where(base.start_us < _NEVER, base.start_us, first)
    out["age_days"] = np.where(start < _NEVER, (now - start) / F.US_PER_DAY, np.nan).astype(np.float32)
    return out


class FreshItemStats:
    """A version's item block kept current from the acknowledged events (see the module docstring).

    ``block``: the bundle's item block (its first columns are :data:`COLUMNS`; copied, never written);
    ``cols``: item ids -> the version's item columns (-1 unknown); ``catalog``: the change-feed store
    to follow (None: no fresh events, the windows still slide); ``start``: run the updater thread
    (False: only :meth:`refresh` updates, as tests with a stepped clock do).

    One updater thread per served version reads the new events and rebuilds; every block it
    publishes is a new read-only array swapped in by one reference assignment, so a request that
    holds a block keeps a consistent one (never half of an update) and never computes any of it."""

    def __init__(self, base: HourCounts, block: np.ndarray, cols: Callable[[Any], np.ndarray],
                 catalog: Any = None, clock: Callable[[], float] = time.time, start: bool = True) -> None:
        self.base, self.n_items, self._cols, self._catalog, self._clock = base, block.shape[0], cols, catalog, clock
        self._template = block
        self._lock = threading.Lock()  # one updater at a time (the thread, or a caller of refresh)
        self._done = threading.Condition()  # notified when the cursor moves (caught_up waits on it)
        self._wake = threading.Event()  # a request saw the pending stamp move
        self._stop = threading.Event()
        self._fresh: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._stamp = getattr(catalog, "pending_stamp", None)
        self._seen_stamp: bytes | None = None
        self._cursor = 0
        self._block = block
        self._built_at = -np.inf
        self._windows: tuple[int, dict[str, np.ndarray]] | None = None  # (hour shift, window_counts)
        with self._lock:
            self._read_new()
            self._rebuild()
        self._thread: threading.Thread | None = None
        if start:
            # the thread holds only a weak reference: a dropped version's updater ends on its own
            self._thread = threading.Thread(target=_updater, args=(weakref.ref(self), self._stop, self._wake),
                                            name="scalerec-fresh-items", daemon=True)
            self._thread.start()

    @property
    def n_fresh(self) -> int:
        """How many acknowledged events since the data end were added."""
        return sum(len(f[0]) for f in self._fresh)

    def block(self) -> np.ndarray:
        """The current item block (float32 [n_items, cols], read-only). The request path: reads the
        pending stamp (a mapped file) and wakes the updater when it moved; computes nothing."""
        if self._stamp is not None and self._thread is not None and self._stamp() != self._seen_stamp:
            self._wake.set()
        return self._block

    def refresh(self, rebuild: bool = False) -> None:
        """One pass of the updater: reads the events acknowledged since the last pass when the
        pending head may have moved (adds them to a copy of the block), and rebuilds the block when
        :data:`SLIDE_S` passed since the last rebuild (or ``rebuild``)."""
        from scalerec.serving.realtime import STAMP_RECHECK_S

        with self._lock:
            stamp = self._stamp() if self._stamp is not None else None
            moved = self._catalog is not None and (stamp is None or stamp != self._seen_stamp
                                                    or time.monotonic() >= self._recheck_at)
            due = rebuild or time.monotonic() - self._built_at >= SLIDE_S
            new = None
            if moved:
                self._seen_stamp, self._recheck_at = stamp, time.monotonic() + STAMP_RECHECK_S
                new = self._read_new()
            if due:
                self._rebuild()
            elif new is not None:
                self._add(*new)
        with self._done:
            self._done.notify_all()

    def caught_up(self, timeout: float | None = None) -> bool:
        """Wait until the block counts every event acknowledged before this call (the catalogue's
        pending head now); False if ``timeout`` seconds passed first."""
        if self._catalog is None:
            return True
        head = self._catalog.pending_head()
        if self._thread is None:
            self.refresh()
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._cursor >= head, timeout)

    def close(self) -> None:
        """Stop the updater thread (the current block stays readable)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # ---------------------------------------------------------------- under the lock
    def _read_new(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        self._recheck_at = time.monotonic()
        if self._catalog is None:
            return None
        head = self._catalog.pending_head()
        if head <= self._cursor:
            return None
        rows = self._catalog.item_events_between(self._cursor, head, self.base.t)
        new = None
        if rows:
            items, types, stamps, values = zip(*rows)
            i = self._cols(np.asarray(items, dtype=object))
            k = kind_codes(np.asarray(types, dtype=object))
            ok = (i >= 0) & (i < self.n_items)
            new = (i[ok].astype(np.int64), k[ok], np.asarray(stamps, np.int64)[ok], np.asarray(values, np.float64)[ok])
            if len(new[0]):
                self._fresh.append(new)
            else:
                new = None
        self._cursor = head  # after the events are kept: caught_up never returns before they count
        return new

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self._fresh:
            return (np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64), np.zeros(0, np.float64))
        if len(self._fresh) > 1:  # one chunk again: a rebuild reads them all
            self._fresh = [tuple(np.concatenate(c) for c in zip(*self._fresh))]  # type: ignore[list-item]
        return self._fresh[0]

    def _publish(self, block: np.ndarray) -> None:
        block.flags.writeable = False  # a published block is never written again (readers hold it)
        self._block = block  # one reference swap: readers see the old or the new block

    def _rebuild(self) -> None:
        now = int(self._clock() * 1_000_000)
        shift = max(0, (now - self.base.t) // HOUR_US)
        if self._windows is None or self._windows[0] != shift:  # training's part moves by whole hours only
            self._windows = (shift, window_counts(self.base, shift, self.n_items))
        stats = stats_at(self.base, now, *self._arrays(), self.n_items, windows=self._windows[1])
        block = self._template.copy()
        for j, name in enumerate(COLUMNS):
            block[:, j] = stats[name]
        self._publish(block)
        self._built_at = time.monotonic()

    def _add(self, i: np.ndarray, k: np.ndarray, t: np.ndarray, v: np.ndarray) -> None:
        """The new events' increments on a copy of the block, then published (events stamped after
        now wait for the next rebuild)."""
        now = int(self._clock() * 1_000_000)
        ok = t < now
        i, k, age, v = i[ok], k[ok], now - t[ok], v[ok]
        if not len(i):
            return
        b, pos = self._block.copy(), {c: j for j, c in enumerate(COLUMNS)}
        for code, (name, _) in enumerate(F.ITEM_KINDS):
            for w in F.WINDOWS:
                m = (k == code) & (age < w * F.US_PER_DAY)
                np.add.at(b[:, pos[f"{name}_{w}d"]], i[m], 1.0)
        np.add.at(b[:, pos["events_all"]], i, 1.0)
        touched = np.unique(i)
        b[touched, pos["conversion_30d"]] = b[touched, pos["purchases_30d"]] / (b[touched, pos["views_30d"]] + 1.0)
        rev = k == REVIEW
        if rev.any():
            cnt, mean = b[:, pos["review_count"]], b[:, pos["rating_mean"]]
            ri = np.unique(i[rev])
            tot = np.nan_to_num(mean[ri].astype(np.float64)) * cnt[ri]
            add_n = np.bincount(i[rev], minlength=self.n_items)[ri]
            add_s = np.bincount(i[rev], weights=v[rev], minlength=self.n_items)[ri]
            cnt[ri] += add_n
            mean[ri] = ((tot + add_s) / cnt[ri]).astype(np.float32)
        ages = b[:, pos["age_days"]]
        unborn = touched[np.isnan(ages[touched])]  # no launch date nor event before: born with its first event
        if len(unborn):
            first = np.full(self.n_items, _NEVER)
            np.minimum.at(first, i, now - age)
            ages[unborn] = ((now - first[unborn]) / F.US_PER_DAY).astype(np.float32)
        self._publish(b)


def _updater(ref: "weakref.ref[FreshItemStats]", stop: threading.Event, wake: threading.Event) -> None:
    """The updater thread: a pass when a request saw the stamp move, else every second (the
    pending head's recheck, for writers that do not stamp), until stopped or the stats are dropped."""
    from scalerec.serving.realtime import STAMP_RECHECK_S

    while not stop.is_set():
        wake.wait(STAMP_RECHECK_S)
        wake.clear()
        stats = ref()
        if stats is None or stop.is_set():
            return
        try:
            stats.refresh()
        except Exception:  # never let the updater die: requests keep the last block
            log.exception("fresh item statistics: update failed; serving the last block")
        del stats
