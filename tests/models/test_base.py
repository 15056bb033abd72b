"""The shared machinery of the Recommender base: top-k selection, masking, atomic save."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scalerec.models import MostPopular, Recommender
from scalerec.models.base import _mask_rows, top_k


def reference_top_k(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Full sort by (-score, column); -inf entries become -1 padding."""
    b, m = scores.shape
    cols = np.broadcast_to(np.arange(m), scores.shape)
    order = np.lexsort((cols, -scores), axis=1)
    ids = np.full((b, n), -1, dtype=np.int64)
    vals = np.full((b, n), -np.inf, dtype=np.float32)
    k = min(n, m)
    ids[:, :k] = order[:, :k]
    vals[:, :k] = np.take_along_axis(scores, order[:, :k], axis=1)
    ids[np.isneginf(vals)] = -1
    return ids, vals


@pytest.mark.parametrize("n", [1, 4, 29, 30, 45])
def test_top_k_equals_a_full_sort(n: int) -> None:
    rng = np.random.default_rng(n)
    scores = rng.standard_normal((40, 30)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[7] = -np.inf  # a row with nothing eligible
    ids, vals = top_k(scores, n)
    ref_ids, ref_vals = reference_top_k(scores, n)
    np.testing.assert_array_equal(vals, ref_vals)
    np.testing.assert_array_equal(ids, ref_ids)  # no ties in continuous scores


def test_top_k_lists_ties_by_column_and_keeps_scores_consistent() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (50, 30)).astype(np.float32)
    ids, vals = top_k(scores, 8)
    _, ref_vals = reference_top_k(scores, 8)
    np.testing.assert_array_equal(vals, ref_vals)  # the same scores are selected
    np.testing.assert_array_equal(np.take_along_axis(scores, ids, axis=1), vals)
    tied = (vals[:, 1:] == vals[:, :-1])
    assert (ids[:, 1:][tied] > ids[:, :-1][tied]).all()
    assert all(len(set(r)) == 8 for r in ids.tolist())


def test_mask_rows_sets_stored_entries_to_minus_infinity() -> None:
    block = np.zeros((3, 5), dtype=np.float32)
    rows = sp.csr_matrix(np.array([[1, 0, 0, 0, 2], [0, 0, 0, 0, 0], [0, 3, 0, 0, 0]], dtype=np.float32))
    _mask_rows(block, rows)
    np.testing.assert_array_equal(np.isneginf(block), rows.toarray() > 0)


def test_block_rows_bound_the_dense_block() -> None:
    model = MostPopular().fit(sp.csr_matrix(np.ones((3, 1000), dtype=np.float32)))
    assert model.block_rows() == min(model.max_block_rows, model.block_bytes // 4000)
    model.block_bytes = 4000 * 3
    assert model.block_rows() == 3


def test_interrupted_save_leaves_the_old_model_and_no_temporary_files(tmp_path, monkeypatch) -> None:
    X = sp.csr_matrix(np.eye(4, dtype=np.float32))
    old = MostPopular().fit(X)
    old.save(tmp_path / "m")
    new = MostPopular(weighted=True).fit(X * 5)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "m")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert Recommender.load(tmp_path / "m").get_params() == {"weighted": False}


def _als_with_ties(integer: bool):
    """A fitted ALS whose factors are replaced: small integers (exact, order-free sums: many exact
    ties) or the fitted floats with a few long vectors; several blocks either way."""
    from scalerec.models import make_model

    rng = np.random.default_rng(3)
    X = sp.random(60, 40, density=0.15, format="csr", dtype=np.float32, random_state=4)
    X.data[:] = 1.0
    model = make_model("als", factors=8, iterations=2).fit(X)
    if integer:
        model.user_factors_ = rng.integers(-3, 4, model.user_factors_.shape).astype(np.float32)
        model.item_factors_ = rng.integers(-3, 4, model.item_factors_.shape).astype(np.float32)
    else:
        V = np.array(model.item_factors_)
        V[rng.random(len(V)) < 0.1] *= 3.0  # a few long vectors: scanned first
        model.item_factors_ = V
    model.block_bytes = 4 * 40 * 7  # 7 users per block
    return model, X


@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("n", [3, 10, 45])
def test_batch_recommend_in_scan_order_equals_a_full_sort(n: int, integer: bool) -> None:
    model, X = _als_with_ties(integer)
    users = np.arange(X.shape[0])
    ids, vals = model.recommend(users, n, exclude=X)
    scores = np.asarray(model.user_factors_) @ model.item_factors_.T
    _mask_rows(scores, X)
    ref_ids, ref_vals = reference_top_k(scores, n)
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-6)  # BLAS rounds by column position
    if integer:  # exact ties: the same scores, listed by item index (which tied item makes the cut is unspecified)
        valid = ids >= 0
        np.testing.assert_array_equal(np.take_along_axis(scores, np.maximum(ids, 0), 1)[valid], vals[valid])
        tied = (vals[:, 1:] == vals[:, :-1]) & valid[:, 1:]
        assert tied.any() and (ids[:, 1:][tied] > ids[:, :-1][tied]).all()
        assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in ids)
    else:
        np.testing.assert_array_equal(ids, ref_ids)
    assert not (X[users[:, None], np.maximum(ids, 0)].toarray() * (ids >= 0)).any()  # history excluded


def test_scan_order_follows_a_new_item_factor_array() -> None:
    model, X = _als_with_ties(True)
    model.recommend(np.arange(5), 5)
    model.item_factors_ = -model.item_factors_  # e.g. a refit: the cached scan order must not be reused
    _, vals = model.recommend(np.arange(5), 5)
    _, ref_vals = reference_top_k(np.asarray(model.user_factors_[:5]) @ model.item_factors_.T, 5)
    np.testing.assert_array_equal(vals, ref_vals)
