"""EASE against the closed form computed directly with numpy, and its capacity limit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scalerec.config import Settings
from scalerec.errors import ModelCapacityError
from scalerec.models import EASE


def tiny(seed: int = 3, shape: tuple[int, int] = (50, 30)) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random(shape) < 0.2) * rng.integers(1, 3, shape)
    return sp.csr_matrix(dense.astype(np.float32))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weights_equal_the_closed_form(dtype: str) -> None:
    X = tiny()
    lam = 7.5
    D = X.toarray().astype(np.float64)
    P = np.linalg.inv(D.T @ D + lam * np.eye(D.shape[1]))
    B = np.eye(D.shape[1]) - P / np.diag(P)[None, :]
    model = EASE(l2=lam, dtype=dtype).fit(X)
    assert model.B_.dtype == np.float32
    np.testing.assert_allclose(model.B_, B, atol=1e-6 if dtype == "float64" else 1e-4)
    assert (np.diag(model.B_) == 0).all()


def test_recommendations_are_the_top_of_x_times_b() -> None:
    X = tiny()
    model = EASE(l2=5.0).fit(X)
    D = X.toarray()
    scores = D @ model.B_.astype(np.float64)
    scores[D > 0] = -np.inf
    ids, got = model.recommend(np.arange(X.shape[0]), 5, exclude=X)
    expected = np.sort(scores, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(scores, ids, axis=1), expected, rtol=1e-5, atol=1e-6)


def test_blocked_helpers_match_dense_linear_algebra() -> None:
    from scalerec.models.ease import _gram, _weights_from_inverse

    X = tiny(shape=(80, 45))
    D = X.toarray().astype(np.float64)
    np.testing.assert_array_equal(_gram(X, np.dtype("float64"), block=7), D.T @ D)
    P = np.linalg.inv(D.T @ D + 3 * np.eye(45))
    upper_only = np.triu(P) + np.tril(np.full_like(P, np.nan), -1)  # potri leaves the lower triangle
    B = np.eye(45) - P / np.diag(P)[None, :]
    np.testing.assert_allclose(_weights_from_inverse(upper_only, block=8), B, atol=1e-7)


def test_refuses_large_catalogues_naming_the_alternatives() -> None:
    X = tiny()
    with pytest.raises(ModelCapacityError, match="item-kNN.*ALS") as err:
        EASE(max_items=29).fit(X)
    assert "30" in err.value.message and err.value.status == 422
    assert not hasattr(EASE(max_items=29), "B_")
    EASE(max_items=30).fit(X)  # the limit itself is allowed


def test_default_limit_comes_from_settings() -> None:
    from scalerec.models.ease import _default_max_items

    assert _default_max_items() == Settings().models.ease_max_items == 20_000
    assert EASE().get_params()["max_items"] is None
