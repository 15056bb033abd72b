"""Distributed item-kNN on a local two-node cluster: the same similarity matrix as ItemKNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from _ray_cluster import ray_cluster  # noqa: F401  (fixture)
from scalerec.models.base import Recommender
from scalerec.models.knn import ItemKNN

pytestmark = pytest.mark.ray


def _matrix() -> sp.csr_matrix:
    # Continuous weights: no two similarities tie, so the k-th neighbour is unambiguous.
    C = sp.random(1500, 400, density=0.03, format="csr", random_state=3, dtype=np.float32)
    C.data = (C.data * 5 + 0.1).astype(np.float32)
    return C


@pytest.mark.parametrize("similarity,neighbors", [("cosine", 10), ("cosine", None), ("bm25", 25)])
def test_block_fit_gives_itemknns_similarity(ray_cluster, similarity: str, neighbors: int | None) -> None:  # noqa: F811
    from scalerec.cluster.knn import DistributedItemKNN

    C = _matrix()
    local = ItemKNN(similarity=similarity, neighbors=neighbors).fit(C)
    seen: list[tuple[int, int]] = []
    model = DistributedItemKNN(similarity=similarity, neighbors=neighbors, block_items=37).fit(
        C, progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (11, 11)  # ceil(400 / 37) blocks
    A, B = local.similarity_, model.similarity_
    np.testing.assert_array_equal(A.indptr, B.indptr)
    np.testing.assert_array_equal(A.indices, B.indices)
    np.testing.assert_allclose(A.data, B.data, rtol=1e-6)
    ids_a, _ = local.recommend(np.arange(30), 10, exclude=C[:30])
    ids_b, _ = model.recommend(np.arange(30), 10, exclude=C[:30])
    np.testing.assert_array_equal(ids_a, ids_b)


def test_saved_twin_loads_as_itemknn(ray_cluster, tmp_path: Path) -> None:  # noqa: F811
    from scalerec.cluster.knn import DistributedItemKNN

    model = DistributedItemKNN(neighbors=5).fit(_matrix())
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert type(loaded) is ItemKNN
    assert (loaded.similarity_ != model.similarity_).nnz == 0
