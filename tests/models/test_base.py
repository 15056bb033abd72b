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
