"""One contract suite run against every model family (the Recommender ABC's promises)."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import scipy.sparse as sp

from scalerec.data.matrix import InteractionMatrix
from scalerec.errors import (
    EmptyDataError,
    NotFittedError,
    StorageError,
    UnknownItemError,
    UnknownUserError,
    ValidationError,
)
from scalerec.models import MODELS, Recommender, make_model

N_USERS, N_ITEMS = 60, 40

# Small, fast hyperparameters per family; every registry family must appear here.
CASES = {
    "popular": {},
    "popular-weighted": {"weighted": True},
    "trending": {"half_life_days": 3.0},
    "itemknn": {"neighbors": 10},
    "itemknn-bm25": {"similarity": "bm25", "neighbors": None},
    "rp3beta": {"neighbors": 10, "alpha": 0.8, "beta": 0.4},
    "rp3beta-normalized": {"neighbors": None, "beta": 0.0, "normalize": True},
    "ease": {"l2": 10.0},
    "als": {"factors": 8, "iterations": 6, "alpha": 2.0, "regularization": 0.1},
    "bpr": {"factors": 8, "iterations": 60, "learning_rate": 0.05, "num_threads": 1},
}
# Fold-in of a training row reproduces recommend() exactly, except for factor models whose
# training solves differ from the fold-in solve: there the mean top-10 overlap must reach this.
FOLD_IN_OVERLAP = {"als": 0.9, "bpr": 0.75}


def family(case: str) -> str:
    return case.split("-")[0]


def interactions(n_users: int = N_USERS, n_items: int = N_ITEMS, seed: int = 7) -> sp.csr_matrix:
    """Three user groups each preferring a third of the items, popularity-skewed, weights 1-3."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 3, n_users)
    item_group = np.arange(n_items) % 3
    pop = 1.0 / np.sqrt(1 + np.arange(n_items))
    p = np.where(groups[:, None] == item_group[None, :], 0.35, 0.04) * (0.5 + pop[None, :])
    dense = (rng.random((n_users, n_items)) < p) * rng.integers(1, 4, (n_users, n_items))
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] += 1  # nobody is empty
    return sp.csr_matrix(dense.astype(np.float32))


def as_interaction_matrix(X: sp.csr_matrix) -> InteractionMatrix:
    return InteractionMatrix(
        matrix=X,
        user_ids=np.array([f"u{i:03d}" for i in range(X.shape[0])]),
        item_ids=np.array([f"i{j:03d}" for j in range(X.shape[1])]),
    )


@pytest.fixture(scope="module")
def X() -> sp.csr_matrix:
    return interactions()


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def fitted(case: str, X: sp.csr_matrix) -> Recommender:
    return make_model(family(case), **CASES[case]).fit(as_interaction_matrix(X))


def assert_same_ranking(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    """Equal lists, allowing two items to swap only where their scores tie (BLAS rounding)."""
    (ids_a, sc_a), (ids_b, sc_b) = a, b
    assert ids_a.shape == ids_b.shape
    np.testing.assert_allclose(sc_a, sc_b, rtol=1e-5, atol=1e-6)
    differ = ids_a != ids_b
    if differ.any():
        # a swapped pair must be (near) tied in score
        assert np.allclose(sc_a[differ], sc_b[differ], rtol=1e-5, atol=1e-6)
        assert (np.sort(ids_a, axis=1) == np.sort(ids_b, axis=1)).mean() > 0.95


def is_memory_mapped(a: np.ndarray) -> bool:
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base
    return False


def test_every_family_is_covered() -> None:
    assert {family(c) for c in CASES} == set(MODELS) == {
        "popular", "trending", "itemknn", "rp3beta", "ease", "als", "bpr"
    }


def test_make_model_rejects_unknown_family_and_parameters() -> None:
    with pytest.raises(ValidationError, match="als, bpr, ease, itemknn, popular, rp3beta, trending"):
        make_model("svd")
    with pytest.raises(ValidationError, match="no_such_param"):
        make_model("ease", no_such_param=1)


def test_hyperparameters_stored_as_given_and_nothing_learned(case: str) -> None:
    model = make_model(family(case), **CASES[case])
    params = model.get_params()
    for k, v in CASES[case].items():
        assert params[k] == v
    assert not [k for k in vars(model) if k.endswith("_")]
    assert json.loads(json.dumps(params)) == params  # serialisable for params.json
    assert repr(model).startswith(type(model).__name__ + "(")


def test_unfitted_model_raises(case: str, X: sp.csr_matrix, tmp_path) -> None:
    model = make_model(family(case), **CASES[case])
    with pytest.raises(NotFittedError, match="fit"):
        model.recommend(np.array([0]), 5)
    with pytest.raises(NotFittedError):
        model.recommend_history(X[:1], 5)
    with pytest.raises(NotFittedError):
        model.similar_items(np.array([0]), 5)
    with pytest.raises(NotFittedError):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_empty_matrix_is_refused(case: str) -> None:
    with pytest.raises(EmptyDataError):
        make_model(family(case), **CASES[case]).fit(sp.csr_matrix((5, 4), dtype=np.float32))


def test_fit_reports_progress_to_the_end(case: str, X: sp.csr_matrix) -> None:
    calls: list[tuple[int, int]] = []
    model = make_model(family(case), **CASES[case])
    assert model.fit(X, progress=lambda done, total: calls.append((done, total))) is model
    assert calls and calls[-1][0] == calls[-1][1]
    assert (model.n_users_, model.n_items_) == X.shape


def test_output_shapes_types_and_order(fitted: Recommender, X: sp.csr_matrix) -> None:
    users = np.arange(N_USERS)
    ids, scores = fitted.recommend(users, 10, exclude=X)
    assert ids.shape == scores.shape == (N_USERS, 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert ((ids >= 0) & (ids < N_ITEMS)).all()
    assert (np.diff(scores, axis=1) <= 0).all()
    assert all(len(set(row)) == 10 for row in ids.tolist())


def test_batch_equals_single_user_and_any_block_size(fitted: Recommender, X: sp.csr_matrix) -> None:
    users = np.array([5, 0, 59, 5, 17])
    batch = fitted.recommend(users, 8, exclude=X[users])
    for row, u in enumerate(users):
        single = fitted.recommend(np.array([u]), 8, exclude=X[[u]])
        assert_same_ranking((batch[0][row : row + 1], batch[1][row : row + 1]), single)
    fitted.block_bytes = 4 * N_ITEMS * 2  # two rows per block
    try:
        assert_same_ranking(fitted.recommend(users, 8, exclude=X[users]), batch)
    finally:
        del fitted.block_bytes


def test_excluded_and_non_candidate_items_never_appear(fitted: Recommender, X: sp.csr_matrix) -> None:
    users = np.arange(N_USERS)
    ids, _ = fitted.recommend(users, 15, exclude=X)
    seen = X.toarray() > 0
    assert not seen[users[:, None], ids].any()

    candidates = np.array([3, 3, 7, 11, 20, 21, 22, 38])
    ids, scores = fitted.recommend(users, 5, exclude=X, candidates=candidates)
    valid = ids >= 0
    assert np.isin(ids[valid], candidates).all()
    assert not seen[np.broadcast_to(users[:, None], ids.shape)[valid], ids[valid]].any()
    # a row lists every candidate it has not seen, up to n
    eligible = (~seen[:, np.unique(candidates)]).sum(axis=1)
    assert (valid.sum(axis=1) == np.minimum(eligible, 5)).all()
    assert np.isneginf(scores[~valid]).all()


def test_n_larger_than_catalogue_pads(fitted: Recommender, X: sp.csr_matrix) -> None:
    users = np.array([0, 1, 2])
    ids, scores = fitted.recommend(users, N_ITEMS + 7, exclude=X[users])
    n_seen = np.diff(X[users].indptr)
    valid = ids >= 0
    assert (valid.sum(axis=1) == N_ITEMS - n_seen).all()
    # padding is at the end and consistent
    assert (valid[:, :-1] >= valid[:, 1:]).all()
    assert np.isneginf(scores[~valid]).all() and np.isfinite(scores[valid]).all()
    sim_ids, sim_scores = fitted.similar_items(np.array([0, 1]), N_ITEMS + 3)
    assert sim_ids.shape == (2, N_ITEMS + 3)
    assert ((sim_ids >= 0).sum(axis=1) <= N_ITEMS - 1).all()
    assert np.isneginf(sim_scores[sim_ids < 0]).all()


def test_unknown_ids_and_bad_arguments_raise_typed_errors(fitted: Recommender, X: sp.csr_matrix) -> None:
    with pytest.raises(UnknownUserError, match="recommend_history"):
        fitted.recommend(np.array([0, N_USERS]), 5)
    with pytest.raises(UnknownUserError):
        fitted.recommend(np.array([-1]), 5)
    with pytest.raises(UnknownItemError):
        fitted.recommend(np.array([0]), 5, candidates=np.array([1, N_ITEMS]))
    with pytest.raises(UnknownItemError):
        fitted.similar_items(np.array([N_ITEMS]), 5)
    with pytest.raises(UnknownItemError):
        fitted.recommend_history(X[:2], 5, candidates=np.array([-3]))
    with pytest.raises(ValidationError, match="exclude"):
        fitted.recommend(np.array([0, 1]), 5, exclude=X[:3])
    with pytest.raises(ValidationError, match="columns"):
        fitted.recommend_history(sp.csr_matrix((1, N_ITEMS + 1), dtype=np.float32), 5)
    with pytest.raises(ValidationError, match="integer"):
        fitted.recommend(np.array([0.5]), 5)
    with pytest.raises(ValidationError, match="positive"):
        fitted.recommend(np.array([0]), 0)


def test_empty_request_gives_empty_result(fitted: Recommender) -> None:
    ids, scores = fitted.recommend(np.array([], dtype=np.int64), 5)
    assert ids.shape == scores.shape == (0, 5)


def test_similar_items_never_returns_the_item_itself(fitted: Recommender) -> None:
    items = np.arange(N_ITEMS)
    ids, _ = fitted.similar_items(items, 10)
    assert not (ids == items[:, None]).any()
    ids, _ = fitted.similar_items(items, 3, candidates=np.array([0, 1, 2, 3]))
    assert np.isin(ids[ids >= 0], [0, 1, 2, 3]).all() and not (ids == items[:, None]).any()


def test_fold_in_of_a_training_row_matches_recommend(case: str, fitted: Recommender, X: sp.csr_matrix) -> None:
    users = np.arange(N_USERS)
    trained = fitted.recommend(users, 10, exclude=X)
    folded = fitted.recommend_history(X, 10, exclude=X)
    if family(case) in FOLD_IN_OVERLAP:
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(trained[0], folded[0])])
        assert overlap >= FOLD_IN_OVERLAP[family(case)]
    else:
        assert_same_ranking(folded, trained)
    # a user with no history still gets a full, valid list
    ids, _ = fitted.recommend_history(sp.csr_matrix((1, N_ITEMS), dtype=np.float32), 5)
    assert ((ids >= 0) & (ids < N_ITEMS)).all()


def test_save_load_round_trip_is_identical(fitted: Recommender, X: sp.csr_matrix, tmp_path) -> None:
    users = np.arange(N_USERS)
    path = tmp_path / "model"
    fitted.save(path)
    assert (path / "params.json").is_file() and list(path.glob("*.npy"))
    for loaded in (Recommender.load(path), type(fitted).load(path, mmap=False)):
        assert type(loaded) is type(fitted)
        assert loaded.get_params() == fitted.get_params()
        for a, b in [
            (loaded.recommend(users, 10, exclude=X), fitted.recommend(users, 10, exclude=X)),
            (loaded.recommend_history(X[:7], 6), fitted.recommend_history(X[:7], 6)),
            (loaded.similar_items(np.arange(5), 4), fitted.similar_items(np.arange(5), 4)),
        ]:
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    mapped = Recommender.load(path, mmap=True)
    arrays = [v for k, v in vars(mapped).items() if k.endswith("_") and isinstance(v, np.ndarray)]
    arrays += [v.data for k, v in vars(mapped).items() if k.endswith("_") and sp.issparse(v)]
    assert arrays and all(is_memory_mapped(a) for a in arrays)
    # saving again replaces the directory in one step and leaves no temporary files beside it
    fitted.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_load_errors_are_typed(fitted: Recommender, tmp_path) -> None:
    with pytest.raises(StorageError, match="params.json"):
        Recommender.load(tmp_path / "nothing-here")
    fitted.save(tmp_path / "m")
    other = next(k for k in MODELS.values() if not isinstance(fitted, k))
    with pytest.raises(StorageError, match="not a"):
        other.load(tmp_path / "m")


def test_search_space_gives_valid_hyperparameters(case: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    klass = MODELS[family(case)]
    for _ in range(3):
        params = klass.search_space(study.ask())
        assert params and set(params) <= set(klass._param_names())
        model = make_model(family(case), **params)
        model._validate_params()  # suggestions are inside the accepted ranges


def test_invalid_hyperparameters_fail_at_fit_not_init(X: sp.csr_matrix) -> None:
    bad = {
        "trending": {"half_life_days": -1.0},
        "itemknn": {"similarity": "jaccard"},
        "rp3beta": {"beta": -0.5},
        "ease": {"l2": 0.0},
        "als": {"factors": 0},
        "bpr": {"learning_rate": 0.0},
    }
    for name, params in bad.items():
        model = make_model(name, **params)  # no logic in __init__
        with pytest.raises(ValidationError):
            model.fit(X)


def test_fit_is_deterministic(case: str, fitted: Recommender, X: sp.csr_matrix) -> None:
    again = make_model(family(case), **CASES[case]).fit(X)
    users = np.arange(N_USERS)
    assert_same_ranking(again.recommend(users, 10, exclude=X), fitted.recommend(users, 10, exclude=X))
