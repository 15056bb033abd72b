"""Distributed ALS: the numpy shard kernels against implicit's, and the Ray fit against the single-machine ALS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from _ray_cluster import Killer, ray_cluster  # noqa: F401  (fixture)
from scalerec.cluster.als import DistributedALS, make_shards, solve_cg, solve_exact, training_loss
from scalerec.errors import ValidationError
from scalerec.models.als import ALS
from scalerec.models.base import Recommender

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "online-retail"
CSV = DATA / "online_retail.csv.gz"


def _matrix(n_users: int = 600, n_items: int = 300, density: float = 0.03, seed: int = 0, dislikes: bool = False):
    """Integer-weighted implicit feedback with skewed item popularity (and some negative cells)."""
    rng = np.random.default_rng(seed)
    nnz = int(n_users * n_items * density)
    users = rng.integers(0, n_users, nnz)
    items = np.minimum((rng.pareto(1.5, nnz) * n_items / 8).astype(np.int64), n_items - 1)
    C = sp.csr_matrix((rng.integers(1, 6, nnz).astype(np.float32), (users, items)), shape=(n_users, n_items))
    C.sum_duplicates()
    if dislikes:
        C.data[::9] *= -1
    return C


# ---------------------------------------------------------------------------------- kernels (no Ray)
def test_shards_are_contiguous_balanced_and_rebuild_the_matrix() -> None:
    C = _matrix()
    shards = make_shards(C, 4)
    assert [s.start for s in shards][0] == 0 and shards[-1].stop == C.shape[0]
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
    rebuilt = sp.vstack(
        [sp.csr_matrix((s.data, s.cols[s.local], s.indptr), shape=(s.rows, C.shape[1])) for s in shards]
    )
    assert (rebuilt != C).nnz == 0
    work = [s.nnz + s.rows for s in shards]
    assert max(work) < 1.5 * (sum(work) / len(work))
    assert len(make_shards(C[:3], 10)) == 3  # never more shards than rows


@pytest.mark.parametrize("reg,scale", [(0.5, 1.0), (1.0, 0.1)])
def test_cg_kernel_is_implicits_conjugate_gradient_step(reg: float, scale: float) -> None:
    from implicit.cpu import _als
    from implicit.cpu.als import least_squares_cg as reference_cg

    C = _matrix(dislikes=True) * np.float32(2.0)
    rng = np.random.default_rng(1)
    f = 16
    X0 = rng.random((C.shape[0], f), dtype=np.float32) * np.float32(scale)
    Y = rng.random((C.shape[1], f), dtype=np.float32) * np.float32(scale)
    native = X0.copy()
    _als.least_squares_cg(C, native, Y, reg, num_threads=1, cg_steps=3)
    exact = X0.astype(np.float64)  # implicit's pure-Python CG in float64: the rounding-free answer
    reference_cg(C, exact, Y.astype(np.float64), reg, cg_steps=3)
    gram = Y.T.astype(np.float64) @ Y + reg * np.eye(f)
    got = np.concatenate([solve_cg(s, X0[s.start : s.stop], Y[s.cols], gram, 3) for s in make_shards(C, 3)])
    # Three CG steps amplify float32 rounding; ours must be as close to the float64 answer as
    # implicit's own float32 kernel is.
    assert np.abs(got - exact).max() <= 2 * np.abs(native - exact).max() + 1e-6
    np.testing.assert_allclose(got, native, atol=1e-3 * np.abs(exact).max())


def test_exact_kernel_is_implicits_cholesky_solve() -> None:
    from implicit.cpu import _als

    C = _matrix(dislikes=True) * np.float32(2.0)
    rng = np.random.default_rng(2)
    f, reg = 16, 0.1
    Y = rng.random((C.shape[1], f), dtype=np.float32)
    expected = np.zeros((C.shape[0], f), dtype=np.float32)
    _als.least_squares(C, expected, Y, reg, num_threads=1)
    gram = Y.T.astype(np.float64) @ Y + reg * np.eye(f)
    got = np.concatenate([solve_exact(s, Y[s.cols], gram) for s in make_shards(C, 2)])
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_training_loss_is_implicits() -> None:
    from implicit.cpu import _als

    C = _matrix(dislikes=True)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(C.shape[0], 8)).astype(np.float32)
    Y = rng.normal(size=(C.shape[1], 8)).astype(np.float32)
    assert training_loss(C, X, Y, 0.3) == pytest.approx(_als.calculate_loss(C, X, Y, 0.3, num_threads=1), rel=1e-5)


# ---------------------------------------------------------------------------------- on the cluster
@pytest.fixture(scope="module")
def reference():
    """The single-machine ALS (implicit) on the test matrix: the model the cluster must reproduce."""
    C = _matrix(n_users=800, n_items=400)
    params = dict(factors=16, regularization=0.05, alpha=2.0, iterations=8, random_state=5)
    return C, params, ALS(**params).fit(C)


@pytest.mark.ray
def test_distributed_fit_matches_the_single_machine_model(ray_cluster, reference) -> None:  # noqa: F811
    C, params, local = reference
    seen: list[tuple[int, int]] = []
    model = DistributedALS(**params, shards=3, calculate_training_loss=True).fit(
        C, progress=lambda done, total: seen.append((done, total))
    )
    assert seen[-1] == (8, 8) and len(seen) == 8
    # set-up (worker start included) and each iteration are reported apart
    assert len(model.shard_stats_["iteration_s"]) == 8 and model.shard_stats_["setup_s"] > 0
    assert model.shard_stats_["user_shards"] == 3 and model.shard_stats_["item_shards"] == 3
    Ca = C * np.float32(params["alpha"])
    loss_local = training_loss(Ca, local.user_factors_, local.item_factors_, params["regularization"])
    loss_cluster = training_loss(Ca, model.user_factors_, model.item_factors_, params["regularization"])
    assert loss_cluster == pytest.approx(loss_local, rel=1e-3)
    assert model.loss_history_[-1] == pytest.approx(loss_cluster, rel=1e-6)
    assert model.loss_history_[-1] < model.loss_history_[0]
    scale = np.abs(local.user_factors_).max()
    np.testing.assert_allclose(model.user_factors_, local.user_factors_, atol=0.02 * scale)
    ids_local, _ = local.recommend(np.arange(50), 10, exclude=C[:50])
    ids_cluster, _ = model.recommend(np.arange(50), 10, exclude=C[:50])
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_local, ids_cluster)])
    assert overlap > 0.9


@pytest.mark.ray
def test_shard_count_and_exact_solver_keep_the_objective(ray_cluster, reference) -> None:  # noqa: F811
    C, params, local = reference
    one = DistributedALS(**params, shards=1).fit(C)
    many = DistributedALS(**params, shards=5).fit(C)
    np.testing.assert_allclose(many.item_factors_, one.item_factors_, atol=1e-3 * np.abs(one.item_factors_).max())
    exact = DistributedALS(**params, shards=2, solver="cholesky").fit(C)
    Ca, reg = C * np.float32(params["alpha"]), params["regularization"]
    assert training_loss(Ca, exact.user_factors_, exact.item_factors_, reg) == pytest.approx(
        training_loss(Ca, local.user_factors_, local.item_factors_, reg), rel=0.01
    )


@pytest.mark.ray
def test_a_cluster_trained_model_saves_and_serves_as_plain_als(ray_cluster, reference, tmp_path: Path) -> None:  # noqa: F811
    C, params, _ = reference
    model = DistributedALS(**params, shards=2).fit(C)
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert type(loaded) is ALS and loaded.get_params() == ALS(**params).get_params()
    a, sa = model.recommend(np.arange(20), 5, exclude=C[:20])
    b, sb = loaded.recommend(np.arange(20), 5, exclude=C[:20])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sa, sb)


@pytest.mark.ray
def test_a_worker_killed_mid_training_is_retried_with_the_same_result(ray_cluster) -> None:  # noqa: F811
    C = _matrix(n_users=3000, n_items=800, density=0.02, seed=4)
    params = dict(factors=32, iterations=6, random_state=1, shards=2)
    clean = DistributedALS(**params).fit(C)
    with Killer("_solve_task") as killer:
        faulted = DistributedALS(**params).fit(C)
    assert killer.killed, "the chaos thread found no running shard task to kill"
    np.testing.assert_array_equal(faulted.user_factors_, clean.user_factors_)
    np.testing.assert_array_equal(faulted.item_factors_, clean.item_factors_)


@pytest.mark.ray
def test_warm_up_starts_one_worker_per_cluster_cpu_and_runs_the_kernel(ray_cluster) -> None:  # noqa: F811
    import ray

    from scalerec.cluster.als import _warm_task
    from scalerec.cluster.ray_executor import cluster_cpus

    warm = ray.remote(_warm_task).options(num_cpus=1, scheduling_strategy="SPREAD")  # as fit() starts them
    pids = ray.get([warm.remote() for _ in range(cluster_cpus())])
    assert len(set(pids)) == cluster_cpus() == 2  # the fixture's two 1-CPU nodes


def test_bad_options_are_refused_before_any_work() -> None:
    C = _matrix(n_users=20, n_items=10, density=0.3)
    with pytest.raises(ValidationError, match="solver"):
        DistributedALS(solver="lu").fit(C)
    with pytest.raises(ValidationError, match="shards"):
        DistributedALS(shards=0).fit(C)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not CSV.is_file(), reason=f"Online Retail data not found at {CSV}")
def test_online_retail_protocol_loss_and_recall_match_single_machine_within_1pct(
    ray_cluster, tmp_path: Path  # noqa: F811
) -> None:
    from scalerec.config import Settings
    from scalerec.data.importers import import_file
    from scalerec.data.store import DataStore
    from scalerec.datasets.online_retail import online_retail_protocol
    from scalerec.evaluation import evaluate

    store = DataStore.open(Settings(data={"dir": tmp_path}))
    import_file(store, "events", CSV, preset="online-retail")
    split = online_retail_protocol(store)
    params = dict(factors=64, regularization=0.01, alpha=1.0, iterations=15, random_state=0)
    local = ALS(**params).fit(split.train)
    cluster = DistributedALS(**params).fit(split.train)
    X = split.train.matrix
    loss_local = training_loss(X, local.user_factors_, local.item_factors_, 0.01)
    loss_cluster = training_loss(X, cluster.user_factors_, cluster.item_factors_, 0.01)
    assert loss_cluster == pytest.approx(loss_local, rel=0.01)
    r_local = evaluate(local, split, k=20, metrics=("recall",))["recall@20"]
    r_cluster = evaluate(cluster, split, k=20, metrics=("recall",))["recall@20"]
    assert r_cluster == pytest.approx(r_local, rel=0.01)
    assert r_local == pytest.approx(0.0962, abs=0.01)  # the dataset README's implicit figure
