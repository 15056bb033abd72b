"""RP3beta against a dense reference of the random-walk formula, pruning, normalisation and blocks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scalerec.errors import ModelCapacityError, ValidationError
from scalerec.models import EASE, RP3beta, make_model
from scalerec.models.rp3beta import top_per_row


def tiny(seed: int = 3, shape: tuple[int, int] = (60, 22)) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random(shape) < 0.25) * rng.integers(1, 4, shape)
    dense[:, -1] = 0  # an item nobody has: no neighbours, penalty 0
    return sp.csr_matrix(dense.astype(np.float32))


def dense_rp3beta(X: sp.csr_matrix, alpha: float, beta: float, k: int | None = None,
                  normalize: bool = False) -> np.ndarray:
    """Dacrema et al.'s RP3beta written densely in float64, straight from the formula."""
    D = np.maximum(X.toarray().astype(np.float64), 0.0)
    rows = D.sum(axis=1, keepdims=True)
    # powers of stored entries only (0 ** 0 stays 0), as scipy's sparse power in the reference code
    p_ui = np.divide(D, rows, out=np.zeros_like(D), where=rows > 0)
    p_ui = np.power(p_ui, alpha, out=np.zeros_like(p_ui), where=p_ui > 0)
    B = (D > 0).T.astype(np.float64)
    deg = B.sum(axis=1, keepdims=True)
    p_iu = np.divide(B, deg, out=np.zeros_like(B), where=deg > 0)
    p_iu = np.power(p_iu, alpha, out=np.zeros_like(p_iu), where=p_iu > 0)
    penalty = np.divide(1.0, deg.ravel() ** beta, out=np.zeros(B.shape[0]), where=deg.ravel() > 0)
    W = (p_iu @ p_ui) * penalty[None, :]
    np.fill_diagonal(W, 0.0)
    if k is not None:
        kth = -np.sort(-W, axis=1)[:, k - 1 : k]
        W = np.where(W >= kth, W, 0.0)
    if normalize:
        s = W.sum(axis=1, keepdims=True)
        W = np.divide(W, s, out=np.zeros_like(W), where=s > 0)
    return W


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.6, 0.3), (1.4, 1.1), (0.0, 0.5)])
def test_similarity_equals_dense_formula(alpha: float, beta: float) -> None:
    X = tiny()
    model = RP3beta(neighbors=None, alpha=alpha, beta=beta).fit(X)
    np.testing.assert_allclose(model.similarity_.toarray(), dense_rp3beta(X, alpha, beta), rtol=2e-5, atol=1e-7)
    assert model.similarity_.dtype == np.float32
    assert model.similarity_.diagonal().max() == 0.0


def test_blocks_of_any_size_give_the_same_graph_and_report_each_block() -> None:
    X = tiny()
    whole = RP3beta(neighbors=6, alpha=0.8, beta=0.4).fit(X).similarity_
    model = RP3beta(neighbors=6, alpha=0.8, beta=0.4)
    model.fit_block_bytes = 4 * X.shape[1] * 5  # five item rows per block
    calls: list[tuple[int, int]] = []
    model.fit(X, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)]  # 22 items in blocks of 5
    np.testing.assert_array_equal(model.similarity_.toarray(), whole.toarray())


@pytest.mark.parametrize("normalize", [False, True])
def test_pruning_keeps_the_k_largest_and_normalises_after(normalize: bool) -> None:
    X = tiny(seed=11, shape=(80, 30))
    k = 4
    W = RP3beta(neighbors=k, alpha=0.9, beta=0.5, normalize=normalize).fit(X).similarity_
    assert (np.diff(W.indptr) <= k).all()
    full = dense_rp3beta(X, 0.9, 0.5)
    got = W.toarray()
    for i in range(full.shape[0]):
        expect = np.sort(full[i][full[i] > 0])[::-1][:k]
        kept = np.sort(got[i][got[i] > 0])[::-1]
        if normalize and expect.size:
            expect = expect / expect.sum()
        np.testing.assert_allclose(kept, expect, rtol=2e-5)
    if normalize:
        sums = np.asarray(W.sum(axis=1)).ravel()
        np.testing.assert_allclose(sums[sums > 0], 1.0, rtol=1e-5)


def test_recommend_scores_are_history_times_graph() -> None:
    X = tiny()
    model = RP3beta(neighbors=None, alpha=0.7, beta=0.6).fit(X)
    D = X.toarray()
    scores = D @ dense_rp3beta(X, 0.7, 0.6)
    scores[D > 0] = -np.inf
    _, got = model.recommend(np.arange(X.shape[0]), 5, exclude=X)
    np.testing.assert_allclose(got, -np.sort(-scores, axis=1)[:, :5], rtol=1e-5, atol=1e-7)
    sim_ids, _ = model.similar_items(np.array([0, 1]), 3)
    W = dense_rp3beta(X, 0.7, 0.6)
    for row, i in zip(sim_ids, [0, 1]):
        assert set(row[row >= 0]) <= set(np.flatnonzero(W[i] > 0))
        assert W[i, row[0]] == pytest.approx(W[i].max(), rel=1e-5)


def test_popularity_penalty_lowers_popular_items() -> None:
    X = tiny(seed=5, shape=(120, 25))
    pop = np.diff(X.tocsc().indptr)
    plain = RP3beta(neighbors=None, beta=0.0).fit(X).similarity_.toarray()
    penalised = RP3beta(neighbors=None, beta=1.0).fit(X).similarity_.toarray()
    ratio = np.divide(penalised, plain, out=np.zeros_like(plain), where=plain > 0)
    expected = np.broadcast_to(1.0 / np.maximum(pop, 1), plain.shape)
    np.testing.assert_allclose(ratio[plain > 0], expected[plain > 0], rtol=1e-5)


def test_negative_cells_take_no_part_in_the_graph() -> None:
    X = tiny().tolil()
    X[0, 0] = -5.0
    X = X.tocsr()
    positive = X.multiply(X > 0).tocsr()
    a = RP3beta(neighbors=None, beta=0.5).fit(X).similarity_.toarray()
    b = RP3beta(neighbors=None, beta=0.5).fit(positive).similarity_.toarray()
    np.testing.assert_allclose(a, b)


def test_fits_a_catalogue_ease_refuses() -> None:
    X = tiny(shape=(40, 30))
    with pytest.raises(ModelCapacityError):
        EASE(max_items=20).fit(X)
    assert RP3beta(neighbors=5).fit(X).similarity_.shape == (30, 30)


@pytest.mark.parametrize(
    "params",
    [{"neighbors": 0}, {"neighbors": 2.5}, {"neighbors": True}, {"alpha": -0.1}, {"beta": float("nan")},
     {"beta": -1.0}, {"normalize": "yes"}, {"recency_half_life_days": 0}],
)
def test_bad_hyperparameters_are_refused_at_fit(params: dict) -> None:
    model = make_model("rp3beta", **params)
    with pytest.raises(ValidationError, match="RP3beta|recency"):
        model.fit(tiny())


def test_recency_half_life_becomes_a_weighted_matrix() -> None:
    assert RP3beta().matrix_overrides() == {}
    assert RP3beta(recency_half_life_days=30).matrix_overrides() == {"half_life_days": 30.0, "cap": 1.0, "binary": False}


@pytest.mark.parametrize("k", [1, 3, 7, 50])
def test_top_per_row_equals_a_per_row_sort(k: int) -> None:
    rng = np.random.default_rng(k)
    # rows from empty to 40 entries (several length buckets), values drawn from a few levels: ties
    lengths = rng.integers(0, 41, 60)
    dense = np.zeros((60, 45), dtype=np.float32)
    for r, n in enumerate(lengths):
        dense[r, rng.choice(45, n, replace=False)] = rng.integers(1, 6, n) / 4
    block = sp.csr_matrix(dense)
    counts, cols, vals = top_per_row(block, k)
    assert counts.tolist() == np.minimum(lengths, k).tolist()
    start = 0
    for r in range(60):
        c, v = cols[start : start + counts[r]], vals[start : start + counts[r]]
        start += counts[r]
        row = dense[r]
        assert len(set(c.tolist())) == counts[r] and (row[c] > 0).all()
        np.testing.assert_array_equal(v, row[c])
        # the k largest values (which of equal values at the cut-off is kept is unspecified)
        np.testing.assert_array_equal(np.sort(v), np.sort(row[row > 0])[::-1][: counts[r]][::-1])
