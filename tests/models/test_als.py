"""ALS and BPR against implicit's own models (same seed), and the exact fold-in solve."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking

from scalerec.models import ALS, BPR
from scalerec.models.als import solve_users


def tiny(seed: int = 11, shape: tuple[int, int] = (80, 35)) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random(shape) < 0.2) * rng.integers(1, 5, shape)
    dense[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] += 1
    return sp.csr_matrix(dense.astype(np.float32))


@pytest.fixture(scope="module")
def X() -> sp.csr_matrix:
    return tiny()


@pytest.mark.parametrize("alpha", [1.0, 4.0])
def test_als_equals_implicit_factors_and_recommendations(X: sp.csr_matrix, alpha: float) -> None:
    params = dict(factors=6, regularization=0.05, alpha=alpha, iterations=7, random_state=3)
    ours = ALS(**params).fit(X)
    ref = AlternatingLeastSquares(**params)
    ref.fit(X, show_progress=False)
    np.testing.assert_allclose(ours.user_factors_, ref.user_factors, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.item_factors_, ref.item_factors, rtol=1e-5, atol=1e-6)
    users = np.arange(X.shape[0])
    ids, scores = ours.recommend(users, 10, exclude=X)
    ref_ids, ref_scores = ref.recommend(users, X, N=10, filter_already_liked_items=True)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
    assert (ids == ref_ids).mean() > 0.98  # equal up to the order of tied scores


@pytest.mark.parametrize("alpha", [1.0, 0.5, 3.0])
def test_fold_in_is_implicits_exact_least_squares(X: sp.csr_matrix, alpha: float) -> None:
    model = ALS(factors=6, alpha=alpha, iterations=5, regularization=0.1).fit(X)
    ref = AlternatingLeastSquares(factors=6, alpha=alpha, regularization=0.1)
    ref.user_factors, ref.item_factors = model.user_factors_.copy(), model.item_factors_.copy()
    history = X[:25].copy()
    history.data = history.data * np.linspace(0.5, 2.0, history.nnz, dtype=np.float32)
    expected = ref.recalculate_user(np.arange(25), history)
    np.testing.assert_allclose(model.fold_in(history), expected, rtol=1e-3, atol=1e-5)


def test_solve_users_handles_dislikes_and_empty_rows(X: sp.csr_matrix) -> None:
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((X.shape[1], 4)).astype(np.float32)
    history = X[:6].tolil()
    history[0, 3] = -2.0  # a dislike: confidence 2, preference 0
    history[4, :] = 0
    history = history.tocsr()
    history.eliminate_zeros()
    got = solve_users(Y, Y.T.astype(np.float64) @ Y + 0.3 * np.eye(4), history, 1.5)
    Y64 = Y.astype(np.float64)
    for u in range(6):
        row = history[u]
        if row.nnz == 0:
            assert (got[u] == 0).all()
            continue
        c = 1.5 * row.toarray().ravel()
        conf = np.where(c != 0, np.abs(c), 1.0)
        pref = (c > 0).astype(np.float64)
        A = Y64.T @ (conf[:, None] * Y64) + 0.3 * np.eye(4)
        np.testing.assert_allclose(got[u], np.linalg.solve(A, Y64.T @ (conf * pref)), rtol=1e-4, atol=1e-6)
    # One row at a time (the serving path for a single history) solves the same systems.
    for u in range(6):
        np.testing.assert_allclose(solve_users(Y, Y.T.astype(np.float64) @ Y + 0.3 * np.eye(4), history[u], 1.5)[0],
                                   got[u], rtol=1e-5, atol=1e-7)


def test_bpr_equals_implicit_with_one_thread(X: sp.csr_matrix) -> None:
    params = dict(factors=6, learning_rate=0.05, regularization=0.01, iterations=20, random_state=5)
    ours = BPR(**params, num_threads=1).fit(X)
    ref = BayesianPersonalizedRanking(**params, num_threads=1)
    ref.fit(X, show_progress=False)
    np.testing.assert_array_equal(ours.item_factors_, ref.item_factors)
    np.testing.assert_array_equal(ours.user_factors_, ref.user_factors)
    assert ours.item_factors_.shape[1] == 7 and (ours.user_factors_[:, -1] == 1).all()
    users = np.arange(X.shape[0])
    ids, scores = ours.recommend(users, 10, exclude=X)
    ref_ids, ref_scores = ref.recommend(users, X, N=10)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)


def test_bpr_fold_in_keeps_the_bias_and_the_trained_length(X: sp.csr_matrix) -> None:
    model = BPR(factors=6, iterations=30, num_threads=1).fit(X)
    folded = model.fold_in(X[:10])
    assert (folded[:, -1] == 1).all()
    np.testing.assert_allclose(np.linalg.norm(folded[:, :-1], axis=1), model.user_norm_, rtol=1e-5)


def test_similar_items_is_cosine_of_item_factors(X: sp.csr_matrix) -> None:
    model = ALS(factors=6, iterations=4).fit(X)
    V = model.item_factors_.astype(np.float64)
    Vn = V / np.linalg.norm(V, axis=1, keepdims=True)
    cos = Vn @ Vn.T
    np.fill_diagonal(cos, -np.inf)
    ids, scores = model.similar_items(np.arange(X.shape[1]), 5)
    np.testing.assert_allclose(scores, -np.sort(-cos, axis=1)[:, :5], rtol=1e-4, atol=1e-5)


def test_seeded_bpr_with_default_threads_is_reproducible() -> None:
    # Large enough that Hogwild SGD over several threads races on shared item rows (it did on 2 cores).
    X = sp.random(5000, 800, density=0.02, format="csr", random_state=2, dtype=np.float32)
    X.data[:] = 1.0
    params = dict(factors=16, iterations=10, random_state=7)
    first, second = BPR(**params).fit(X), BPR(**params).fit(X)
    np.testing.assert_array_equal(first.item_factors_, second.item_factors_)
    np.testing.assert_array_equal(first.user_factors_, second.user_factors_)
    assert BPR(random_state=7).sgd_threads() == 1
    assert BPR(random_state=None).sgd_threads() == 0 and BPR(random_state=7, num_threads=3).sgd_threads() == 3
