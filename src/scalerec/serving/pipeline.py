"""The ranking pipeline behind every list: candidates -> filter -> rerank -> per-group cap -> pins ->
backfill -> render.

Each stage is a :data:`Stage`, ``(Request, Candidates) -> Candidates``: it returns a new
:class:`Candidates` (or the one it got, unchanged) and never mutates its input, because
memoised lists are shared between requests. The retrieval stages run with a growing ``k``
until ``n`` items survive the filter and the cap; the finishing stages run once. ``rerank`` is
an identity slot: a learned reranker (or merchandising rules) plugs in with
:meth:`Pipeline.with_rerank` without touching retrieval, filters or backfill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from scalerec.models.base import EmbeddingRecommender
from scalerec.serving.filters import ItemFilter, cap_per_group
from scalerec.serving.state import LiveState

#: Memoised non-personal lists (per filter and n) kept per live state before the memo is cleared.
LIST_CACHE_MAX = 256

_NO_ITEMS = np.zeros(0, np.int64)
_NO_SCORES = np.zeros(0, np.float32)
_NO_ITEMS.flags.writeable = False
_NO_SCORES.flags.writeable = False


def _no_items() -> np.ndarray:
    return _NO_ITEMS


@dataclass(slots=True)
class Request:
    """One list request resolved against a live state: what may be served and where candidates come from.

    ``allowed`` already excludes what the request excludes (filters, seen items, the pins);
    ``query`` is a prepared query of the state's retriever (None: lists made of ``fills`` only);
    ``pins`` are eligible item columns placed first; ``fills`` name the fallback orderings
    ("trending", "popular") that top the list up to ``n``, in turn.
    """

    live: LiveState
    n: int
    flt: ItemFilter
    allowed: np.ndarray
    query: Any = None
    reason: str = "model"  # the reason of retrieved items
    pins: np.ndarray = field(default_factory=_no_items)
    fills: tuple[str, ...] = ()
    seeds: np.ndarray = field(default_factory=_no_items)  # items an anonymous session touched (for its reasons)
    context: dict[str, str] = field(default_factory=dict)  # request context (the rules' $context)
    placement: str | None = None  # the named placement (or where the list is shown, as the caller said)
    variant: str | None = None  # the experiment variant serving this request (None: no experiment)
    fetch: int = 0  # retrieve at least this many candidates (stages that reorder beyond the top n)
    user_id: str | None = None  # whose personal list this is (None: similar items, fallbacks, sessions)
    subject: int = -1  # the item column a similar-items list is about (-1: not such a list)


@dataclass(slots=True)
class Candidates:
    """A ranked list being assembled: item columns, scores and reasons (parallel), best first."""

    ids: np.ndarray  # int64 item columns
    scores: np.ndarray  # float32
    reasons: list[str]
    k: int = 0  # how many the retriever was asked for
    backfilled: int = 0  # items added from fallback orderings
    rendered: tuple[list[str], list[dict[str, Any]]] | None = None  # (item ids, response items) when final

    def __len__(self) -> int:
        return len(self.ids)


Stage = Callable[[Request, Candidates], Candidates]


def empty() -> Candidates:
    return Candidates(_NO_ITEMS, _NO_SCORES, [])


def _keep(c: Candidates, keep: np.ndarray) -> Candidates:
    """The entries of ``c`` where the bool mask ``keep`` is set, order kept."""
    idx = np.flatnonzero(keep)
    reasons = c.reasons
    if reasons and reasons.count(reasons[0]) == len(reasons):  # one reason for all: no per-entry copy
        kept = [reasons[0]] * len(idx)
    else:
        kept = [reasons[i] for i in idx.tolist()]
    return Candidates(c.ids[idx], c.scores[idx], kept, c.k, c.backfilled)


# ---------------------------------------------------------------------- retrieval stages (growing k)
def retrieve(req: Request, c: Candidates) -> Candidates:
    """The retriever's top ``c.k`` for the request's query among allowed items."""
    ids, scores = req.live.model.retriever.search(req.query, c.k, req.allowed)
    return Candidates(ids, scores, [req.reason] * len(ids), c.k)


def filter_allowed(req: Request, c: Candidates) -> Candidates:
    """Drop padding, non-finite scores and anything not allowed (defence in depth: retrievers
    return allowed items only, but a filtered item must never leak)."""
    ids = c.ids
    keep = ids >= 0
    if keep.all():  # the usual case: no padding, so no clamped copy of the ids
        keep = req.allowed[ids] & np.isfinite(c.scores)
    else:
        keep &= req.allowed[np.maximum(ids, 0)] & np.isfinite(c.scores)
    return c if keep.all() else _keep(c, keep)


def rerank(req: Request, c: Candidates) -> Candidates:
    """The reranking slot: identity until a learned reranker or merchandising rules plug in."""
    return c


def cap_per_category(req: Request, c: Candidates) -> Candidates:
    """At most ``max_per_category`` items per primary category, rank order kept."""
    k = req.flt.max_per_category
    if k is None or len(c.ids) == 0:
        return c
    keep = cap_per_group(c.ids, req.live.items.primary_category, k)
    return c if keep.all() else _keep(c, keep)


# ---------------------------------------------------------------------- finishing stages (once)
def explain_by_seeds(req: Request, c: Candidates) -> Candidates:
    """Reasons ``similar_to:<item>`` naming the session item each result is closest to (cosine of
    item vectors); unchanged for models without them."""
    st = req.live.model
    model = st.model
    if not isinstance(model, EmbeddingRecommender) or not len(c.ids) or not len(req.seeds):
        return c
    vecs = np.asarray(model.item_factors_)  # a plain view: np.memmap indexing pays bookkeeping per call
    a = np.asarray(vecs[c.ids], dtype=np.float32)
    b = np.asarray(vecs[req.seeds], dtype=np.float32)
    sim = (a @ b.T) / (np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :] + 1e-12)
    best = st.item_ids[req.seeds[sim.argmax(axis=1)]].tolist()
    return Candidates(c.ids, c.scores, [f"similar_to:{s}" for s in best], c.k, c.backfilled)


def pin(req: Request, c: Candidates) -> Candidates:
    """The request's pinned (boosted) items first, in the given order."""
    pins = req.pins
    if len(pins) == 0:
        return c
    return Candidates(
        np.r_[pins, c.ids], np.r_[np.ones(len(pins), np.float32), c.scores].astype(np.float32),
        ["boosted"] * len(pins) + c.reasons, c.k, c.backfilled,
    )


def backfill(req: Request, c: Candidates) -> Candidates:
    """Top the list up to ``n`` from each of the request's fallback orderings in turn, filters kept."""
    for which in req.fills:
        c = _fill(req, c, which)
    return c


def _fill(req: Request, c: Candidates, which: str) -> Candidates:
    n = req.n
    if len(c.ids) >= n:
        return c
    st = req.live.model
    order = st.trending_order if which == "trending" else st.popular_order
    allowed = req.allowed
    taken = np.zeros(st.n_items, dtype=bool)
    taken[c.ids] = True
    need = n - len(c.ids)
    cap = req.flt.max_per_category
    if cap is None:
        # Scan the ordering in growing chunks: the first eligible items are usually near its top.
        start, step, parts, found = 0, max(64, 4 * need), [], 0
        while start < len(order) and found < need:
            chunk = order[start : start + step]
            hit = chunk[allowed[chunk] & ~taken[chunk]]
            parts.append(hit)
            found += len(hit)
            start += step
            step *= 4
        extra = np.concatenate(parts) if parts else order[:0]
    else:
        extra = order[allowed[order] & ~taken[order]]
        both = np.concatenate([c.ids, extra])
        keep = cap_per_group(both, req.live.items.primary_category, cap)
        extra = extra[keep[len(c.ids):]]
    extra = extra[:need]
    if len(extra) == 0:
        return c
    fill_scores = (st.trending if which == "trending" else st.popular)[extra]
    return Candidates(
        np.concatenate([c.ids, extra]),
        np.concatenate([c.scores, fill_scores.astype(np.float32)]),
        c.reasons + [which] * len(extra),
        c.k,
        c.backfilled + len(extra),
    )


def render(req: Request, c: Candidates) -> Candidates:
    """The list's item ids and response items ({item_id, score, reason}); scores rounded to 6 places."""
    item_ids = req.live.model.item_ids[c.ids].tolist() if len(c.ids) else []
    scores = c.scores.astype(np.float64)
    if not np.isfinite(scores).all():
        scores = np.nan_to_num(scores, neginf=0.0, posinf=0.0)
    scores = scores.round(6).tolist()
    items = [{"item_id": i, "score": s, "reason": r} for i, s, r in zip(item_ids, scores, c.reasons)]
    return Candidates(c.ids, c.scores, c.reasons, c.k, c.backfilled, (item_ids, items))


# ---------------------------------------------------------------------- the pipeline
@dataclass(frozen=True)
class Pipeline:
    """Stages run in order: ``retrieval`` with a growing k (when the request has a query), then
    ``finish`` once. Immutable; ``with_*`` return a new pipeline."""

    retrieval: tuple[Stage, ...] = (retrieve, filter_allowed, rerank, cap_per_category)
    finish: tuple[Stage, ...] = (pin, backfill, render)

    def with_rerank(self, stage: Stage) -> "Pipeline":
        """This pipeline with ``stage`` in the rerank slot (after the filter, before the cap)."""
        return replace(self, retrieval=tuple(stage if s is rerank else s for s in self.retrieval))

    def with_finish_stage(self, stage: Stage, *, before: Stage) -> "Pipeline":
        """This pipeline with ``stage`` inserted in the finishing stages before ``before``."""
        at = self.finish.index(before)
        return replace(self, finish=(*self.finish[:at], stage, *self.finish[at:]))

    def with_last_stage(self, stage: Stage) -> "Pipeline":
        """This pipeline with ``stage`` after every finishing stage (it sees the rendered list)."""
        return replace(self, finish=(*self.finish, stage))

    def run(self, req: Request) -> Candidates:
        need = req.n - len(req.pins)
        c = self._retrieve(req, need) if req.query is not None and need > 0 else empty()
        for stage in self.finish:
            c = stage(req, c)
        return c

    def _retrieve(self, req: Request, need: int) -> Candidates:
        """Retrieval stages with a growing k until ``need`` items survive them.

        Starts at ``need`` (or x4, at least 50, with a per-category cap) and grows x4 until
        ``need`` remain or every allowed item was seen.
        """
        n_allowed = int(np.count_nonzero(req.allowed))
        if n_allowed == 0:
            return empty()
        k = min(need, n_allowed) if req.flt.max_per_category is None else min(n_allowed, max(4 * need, 50))
        k = max(k, min(n_allowed, req.fetch))
        while True:
            c = Candidates(_NO_ITEMS, _NO_SCORES, [], k)
            for stage in self.retrieval:
                c = stage(req, c)
            if len(c.ids) >= need or k >= n_allowed:
                if len(c.ids) <= need and c.k == k and c.scores.dtype == np.float32 and not c.backfilled:
                    return c  # as it is (a stage may recognise its own output)
                return Candidates(c.ids[:need], c.scores[:need].astype(np.float32), c.reasons[:need], k)
            k = min(n_allowed, k * 4)


DEFAULT = Pipeline()


def fallback_list(live: LiveState, which: str, n: int, flt: ItemFilter, pipeline: Pipeline = DEFAULT) -> Candidates:
    """The top-``n`` trending (then popular) or popular items under ``flt``, rendered.

    The same for every caller, so memoised on the live state (a catalogue change or a new model
    makes a new state, hence a fresh memo). The result is shared: never mutate it.
    """
    key = (which, n, flt)
    hit = live.lists.get(key)
    if hit is not None:
        return hit
    fills = ("trending", "popular") if which == "trending" else ("popular",)
    c = pipeline.run(Request(live, n, flt, live.items.mask(flt), fills=fills))
    if len(live.lists) >= LIST_CACHE_MAX:
        live.lists.clear()
    live.lists[key] = c
    return c


def resolve_pins(live: LiveState, item_ids: list[str] | None, allowed: np.ndarray, n: int) -> np.ndarray:
    """Columns of the eligible ones among ``item_ids`` (given order, no repeats, at most ``n``);
    they are cleared from ``allowed`` so retrieval does not repeat them."""
    if not item_ids:
        return _NO_ITEMS
    st = live.model
    cols = st.item_cols(item_ids)
    cols = cols[cols >= 0]
    cols = cols[allowed[cols]]
    _, first = np.unique(cols, return_index=True)
    cols = cols[np.sort(first)][:n].astype(np.int64)
    allowed[cols] = False
    return cols
