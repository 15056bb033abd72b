"""Item-kNN against brute-force dense similarity and implicit's BM25 recommender."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.nearest_neighbours import BM25Recommender

from scalerec.models import ItemKNN
from scalerec.models.knn import prune_rows


def tiny(seed: int = 5, shape: tuple[int, int] = (70, 25)) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random(shape) < 0.25) * rng.integers(1, 4, shape)
    return sp.csr_matrix(dense.astype(np.float32))


def dense_cosine(X: sp.csr_matrix, k: int | None) -> np.ndarray:
    D = X.toarray().astype(np.float64)
    norms = np.linalg.norm(D, axis=0)
    Dn = D / np.where(norms > 0, norms, 1.0)
    S = Dn.T @ Dn
    np.fill_diagonal(S, 0.0)
    if k is not None:
        kth = -np.sort(-S, axis=1)[:, k - 1 : k]
        S = np.where(S >= kth, S, 0.0)
    return S


@pytest.mark.parametrize("k", [None, 4])
def test_cosine_similarity_equals_brute_force(k: int | None) -> None:
    X = tiny()
    model = ItemKNN(similarity="cosine", neighbors=k).fit(X)
    S = dense_cosine(X, k)
    np.testing.assert_allclose(model.similarity_.toarray(), S, atol=1e-6)
    if k is not None:
        assert (np.diff(model.similarity_.indptr) <= k).all()


def test_scores_are_history_times_similarity() -> None:
    X = tiny()
    model = ItemKNN(neighbors=None).fit(X)
    D = X.toarray()
    scores = D @ dense_cosine(X, None)
    scores[D > 0] = -np.inf
    ids, got = model.recommend(np.arange(X.shape[0]), 6, exclude=X)
    np.testing.assert_allclose(got, -np.sort(-scores, axis=1)[:, :6], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Method expects CSR input")
def test_bm25_matches_implicit_off_diagonal() -> None:
    X = tiny()
    ours = ItemKNN(similarity="bm25", neighbors=None, bm25_k1=1.2, bm25_b=0.75).fit(X)
    ref = BM25Recommender(K=X.shape[1], K1=1.2, B=0.75)
    ref.fit(X.astype(np.float64), show_progress=False)
    expected = ref.similarity.toarray()
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(ours.similarity_.toarray(), expected, rtol=1e-5, atol=1e-6)


def test_negative_cells_take_no_part_in_similarity() -> None:
    X = tiny().tolil()
    X[0, 0] = -5.0
    X = X.tocsr()
    positive = X.multiply(X > 0).tocsr()
    a = ItemKNN(neighbors=None).fit(X).similarity_.toarray()
    b = ItemKNN(neighbors=None).fit(positive).similarity_.toarray()
    np.testing.assert_allclose(a, b)


def test_prune_rows_keeps_the_k_largest_per_row() -> None:
    rng = np.random.default_rng(0)
    dense = np.where(rng.random((30, 20)) < 0.5, rng.random((30, 20)), 0.0)
    pruned = prune_rows(sp.csr_matrix(dense), 3).toarray()
    for row, orig in zip(pruned, dense):
        nz = orig[orig > 0]
        assert np.count_nonzero(row) == min(3, nz.size)
        np.testing.assert_allclose(np.sort(row[row > 0]), np.sort(nz)[-3:])


def test_similar_items_are_the_nearest_neighbours() -> None:
    X = tiny()
    model = ItemKNN(neighbors=5).fit(X)
    S = dense_cosine(X, None)
    ids, scores = model.similar_items(np.arange(X.shape[1]), 5)
    np.testing.assert_allclose(scores, -np.sort(-S, axis=1)[:, :5], rtol=1e-5, atol=1e-6)
