"""The serving layout of the ranking bundle gives what training computes: the same candidates as
ranker.candidate_frame and the same feature rows as ranker.assemble, for known users, anonymous
sessions, with and without a weather, on the trained synthetic shop."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scalerec.ranking.candidates import RANKS, SOURCES, Block
from scalerec.ranking.ranker import CROSS_SCORES, assemble, candidate_frame, columns, request_context
from scalerec.ranking.tables import Rows

NOW = 1_733_100_000 * 1_000_000


@pytest.fixture
def served(app):
    st = app.service.live.model
    b = app.service.ranking.bundle(st)
    assert b is not None
    return st, b, app.settings.ranking


def _request(st, b, cfg, row: int, session: np.ndarray, weather: str | None):
    allowed = np.ones(st.n_items, bool)
    if row >= 0:
        allowed[b.asof.seen[row].indices] = False
    query = st.retriever.user_query(row) if row >= 0 else None
    if query is None:  # an anonymous session: CF candidates from its items' fold-in
        from scalerec.serving.state import history_row

        query = st.retriever.history_query(history_row(st, session, np.ones(len(session), np.float32)))
    ids, scores = st.retriever.search(query, cfg.cf_candidates, allowed)
    ctx = request_context({"weather": weather} if weather else {}, b.world, NOW)
    seeds = b.tables.seeds(row, session)
    return allowed, np.asarray(ids, np.int64), np.asarray(scores, np.float32), ctx, seeds


def _training_side(st, b, cfg, row, ids, scores, allowed, ctx, seeds):
    recent = sp.csr_matrix((seeds[1], (np.zeros(len(seeds[0]), int), seeds[0])), shape=(1, st.n_items))
    cand = candidate_frame(b.asof, b.world, cfg, np.array([row]), Block("cf", ids[None, :], scores[None, :]), NOW,
                           allowed=allowed, recent=recent, ban_seen=False, weather=ctx["weather"].astype(np.int64))
    return columns(cand)


CASES = [(5, 0, "rain"), (17, 0, None), (40, 2, "sun"), (-1, 3, "rain")]  # (user row, session items, weather)


@pytest.mark.parametrize("row,n_session,weather", CASES)
def test_serving_candidates_and_features_equal_trainings(served, row, n_session, weather) -> None:
    st, b, cfg = served
    cfg = cfg.model_copy(update={"cooc_candidates": 5000, "content_candidates": 5000, "segment_candidates": 5000,
                                 "context_candidates": 5000})  # nothing cut: the sets must agree exactly
    session = np.arange(10, 10 + n_session, dtype=np.int64)
    allowed, ids, scores, ctx, seeds = _request(st, b, cfg, row, session, weather)
    fast = b.tables.candidates(cfg, row, ids, scores, seeds, allowed, NOW, int(ctx["weather"][0]))
    ref = _training_side(st, b, cfg, row, ids, scores, allowed, ctx, seeds)
    order = np.argsort(ref["i"])
    np.testing.assert_array_equal(fast["i"], ref["i"][order])
    for s in (*SOURCES, *RANKS, *CROSS_SCORES):
        np.testing.assert_array_equal(np.isfinite(fast[s]), np.isfinite(ref[s][order]), err_msg=s)
        np.testing.assert_allclose(fast[s], ref[s][order], rtol=1e-5, equal_nan=True, err_msg=s)
    assert np.isfinite(fast["cooc"]).any() and np.isfinite(fast["content"]).any()
    assert (fast["cooc_score"] > 0).any() and (fast["content_sim"] > 0).any()
    assert np.isfinite(fast["segment"]).any() == (row >= 0)
    assert np.isfinite(fast["context"]).any() == (weather is not None)  # a weather lifts some category
    x = b.tables.features(fast, row, ctx)
    x_ref = assemble(b.asof, b.world, fast, np.array([row]), ctx)
    np.testing.assert_array_equal(x, x_ref)  # bit for bit, NaN where training has NaN


@pytest.mark.parametrize("row,n_session,weather", CASES[:2])
def test_sized_sources_keep_trainings_best_scores(served, row, n_session, weather) -> None:
    st, b, cfg = served
    allowed, ids, scores, ctx, seeds = _request(st, b, cfg, row, np.arange(n_session), weather)
    fast = b.tables.candidates(cfg, row, ids, scores, seeds, allowed, NOW, int(ctx["weather"][0]))
    ref = _training_side(st, b, cfg, row, ids, scores, allowed, ctx, seeds)
    for s in SOURCES:  # the same k best scores per source (which of several tied items fills the last slot may differ)
        got, want = np.sort(fast[s][np.isfinite(fast[s])]), np.sort(ref[s][np.isfinite(ref[s])])
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=s)
        r = f"{s}_rank"  # ranks 0.. k-1 of the proposed items
        np.testing.assert_array_equal(np.sort(fast[r][np.isfinite(fast[r])]), np.arange(np.isfinite(fast[s]).sum()), err_msg=r)
        np.testing.assert_array_equal(np.sort(ref[r][np.isfinite(ref[r])]), np.arange(np.isfinite(ref[s]).sum()), err_msg=r)


def test_rows_read_a_csr_matrix() -> None:
    m = sp.csr_matrix(np.array([[0, 2, 0, 1], [0, 0, 0, 0], [3, 0, 4, 0]], np.float32))
    rows = Rows.of(m)
    np.testing.assert_array_equal(rows.lookup(2, np.array([0, 1, 2, 3, 2])), [3, 0, 4, 0, 4])
    np.testing.assert_array_equal(rows.lookup(1, np.array([0, 3])), [0, 0])
    cols, vals = rows.combine(np.array([0, 2, 1]), np.array([1.0, 0.5, 7.0], np.float32))
    want = np.array([1.0, 0.5, 7.0], np.float32) @ m[[0, 2, 1]].toarray()
    np.testing.assert_array_equal(cols, np.flatnonzero(want))
    np.testing.assert_allclose(vals, want[want != 0])
    pos, c, v = rows.entries(np.array([2, 0]))
    assert pos.tolist() == [0, 0, 1, 1] and c.tolist() == [0, 2, 1, 3] and v.tolist() == [3, 4, 2, 1]


def test_a_known_users_day_counts_are_as_of_the_request(app, served) -> None:
    """Tenure, recency and days since the item or its category served at a later time equal
    training's features as of that time (the version's data end plus the days since, for a user
    with no event after it), not the frozen ones of the data end."""
    from scalerec.ranking.ranker import as_of, build_world
    from scalerec.ranking.stage import DAY_COLUMNS, days_to_now

    st, b, cfg = served
    store = app.service.store
    _, ev = build_world(store, app.settings, st.user_ids, st.item_ids, store)
    later = b.asof.t + 3 * 86_400_000_000 + 3_600_000_000  # three days and an hour after the data end
    d_later = as_of(ev, later, b.world, cfg)
    for row in (5, 17):
        allowed, ids, scores, ctx, seeds = _request(st, b, cfg, row, np.zeros(0, np.int64), "rain")
        fast = b.tables.candidates(cfg, row, ids, scores, seeds, allowed, later, int(ctx["weather"][0]))
        x = b.tables.features(fast, row, ctx)
        frozen = x[:, DAY_COLUMNS].copy()
        days_to_now(x, b.asof.t, later)
        want = assemble(d_later, b.world, fast, np.array([row]), ctx)[:, DAY_COLUMNS]
        np.testing.assert_allclose(x[:, DAY_COLUMNS], want, rtol=1e-5, equal_nan=True)
        assert np.isfinite(want).any() and not np.allclose(frozen[np.isfinite(frozen)], want[np.isfinite(want)])
