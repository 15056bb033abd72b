"""Ranking metrics against slow, obvious pure-Python reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from scalerec.errors import ValidationError
from scalerec.evaluation.metrics import (
    coverage,
    hit_rate_at_k,
    hits_at_k,
    item_popularity_percentile,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    popularity_bias,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
)

# ---- reference implementations: one user at a time, lists and sets, textbook formulas ----------


def ref_precision(recs: list[int], rel: set[int], k: int) -> float:
    return sum(1 for r in recs[:k] if r in rel) / k


def ref_recall(recs: list[int], rel: set[int], k: int) -> float:
    if not rel:
        return 0.0
    return sum(1 for r in recs[:k] if r in rel) / len(rel)


def ref_ndcg(recs: list[int], rel: set[int], k: int) -> float:
    dcg = 0.0
    for i, r in enumerate(recs[:k]):
        if r in rel:
            dcg += 1.0 / math.log2(i + 2)
    idcg = 0.0
    for i in range(min(len(rel), k)):
        idcg += 1.0 / math.log2(i + 2)
    return dcg / idcg if idcg > 0 else 0.0


def ref_map(recs: list[int], rel: set[int], k: int) -> float:
    if not rel:
        return 0.0
    found = 0
    total = 0.0
    for i, r in enumerate(recs[:k]):
        if r in rel:
            found += 1
            total += found / (i + 1)
    return total / min(len(rel), k)


def ref_mrr(recs: list[int], rel: set[int], k: int) -> float:
    for i, r in enumerate(recs[:k]):
        if r in rel:
            return 1.0 / (i + 1)
    return 0.0


def ref_hit_rate(recs: list[int], rel: set[int], k: int) -> float:
    return 1.0 if any(r in rel for r in recs[:k]) else 0.0


def ref_coverage(all_recs: list[list[int]], n_items: int, k: int) -> float:
    seen = set()
    for recs in all_recs:
        for r in recs[:k]:
            if r >= 0:
                seen.add(r)
    return len(seen) / n_items


def ref_popularity_percentile(counts: list[int]) -> list[float]:
    # percentile = (average 0-based rank among items sorted by count) / (n - 1)
    n = len(counts)
    out = []
    for c in counts:
        below = sum(1 for x in counts if x < c)
        equal = sum(1 for x in counts if x == c)
        avg_rank = below + (equal - 1) / 2
        out.append(avg_rank / (n - 1))
    return out


REFERENCE = {
    "precision": (precision_at_k, ref_precision),
    "recall": (recall_at_k, ref_recall),
    "ndcg": (ndcg_at_k, ref_ndcg),
    "map": (map_at_k, ref_map),
    "mrr": (mrr_at_k, ref_mrr),
    "hit_rate": (hit_rate_at_k, ref_hit_rate),
}


def random_fixture(seed: int, n_users: int = 40, n_items: int = 30, n: int = 12):
    """Random top-n lists (distinct items, some rows padded with -1) and a random relevant csr."""
    rng = np.random.default_rng(seed)
    top = np.full((n_users, n), -1, dtype=np.int64)
    for u in range(n_users):
        length = int(rng.integers(0, n + 1)) if u % 5 == 0 else n
        top[u, :length] = rng.choice(n_items, size=length, replace=False)
    density = rng.uniform(0.02, 0.4)
    rel = sp.random(n_users, n_items, density=density, format="csr", random_state=rng)
    rel.data[:] = 1.0
    return top, rel


def as_lists(top: np.ndarray, rel: sp.csr_matrix):
    recs = [[int(x) for x in row if x >= 0] + [-1] * int((row < 0).sum()) for row in top]
    rels = [set(rel.indices[rel.indptr[u] : rel.indptr[u + 1]].tolist()) for u in range(rel.shape[0])]
    return recs, rels


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_metric_matches_reference(name: str, seed: int) -> None:
    fast, ref = REFERENCE[name]
    top, rel = random_fixture(seed)
    recs, rels = as_lists(top, rel)
    for k in (1, 3, 5, 12):
        expected = np.array([ref(r, s, k) for r, s in zip(recs, rels)])
        per_user = fast(top, rel, k, per_user=True)
        np.testing.assert_allclose(per_user, expected, rtol=1e-12, atol=1e-12)
        assert fast(top, rel, k) == pytest.approx(expected.mean(), abs=1e-12)


def test_ranking_metrics_many_k_match_single_calls() -> None:
    top, rel = random_fixture(123, n_users=25)
    names = tuple(sorted(REFERENCE))
    together = ranking_metrics(top, rel, (2, 5, 10), names)
    assert set(together) == {f"{n}@{k}" for n in names for k in (2, 5, 10)}
    for name in names:
        fast, _ = REFERENCE[name]
        for k in (2, 5, 10):
            np.testing.assert_allclose(together[f"{name}@{k}"], fast(top, rel, k, per_user=True))


def test_hits_ignore_padding_and_explicit_zeros() -> None:
    top = np.array([[0, -1, 2], [1, 2, -1]])
    # an explicitly stored zero is not relevant
    rel = sp.csr_matrix((np.array([1.0, 0.0, 1.0]), np.array([0, 2, 2]), np.array([0, 2, 3])), shape=(2, 3))
    hits = hits_at_k(top, rel, 3)
    np.testing.assert_array_equal(hits, [[True, False, False], [False, True, False]])


def test_hand_computed_example() -> None:
    # one user, relevant {1, 3}; ranks: 1 -> item 3 (hit), 2 -> item 0, 3 -> item 1 (hit)
    top = np.array([[3, 0, 1]])
    rel = sp.csr_matrix(([1.0, 1.0], ([0, 0], [1, 3])), shape=(1, 5))
    assert recall_at_k(top, rel, 3) == pytest.approx(1.0)
    assert precision_at_k(top, rel, 3) == pytest.approx(2 / 3)
    assert ndcg_at_k(top, rel, 3) == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))
    assert map_at_k(top, rel, 3) == pytest.approx((1 + 2 / 3) / 2)
    assert mrr_at_k(top, rel, 2) == pytest.approx(1.0)
    assert hit_rate_at_k(top[:, 1:], rel, 1) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_coverage_and_popularity_bias_match_reference(seed: int) -> None:
    top, rel = random_fixture(seed)
    n_items = rel.shape[1]
    recs, _ = as_lists(top, rel)
    for k in (1, 5, 12):
        assert coverage(top, n_items, k) == pytest.approx(ref_coverage([list(r) for r in top.tolist()], n_items, k))
    rng = np.random.default_rng(seed)
    train = sp.random(50, n_items, density=0.2, format="csr", random_state=rng)
    counts = [int(c) for c in np.diff(train.tocsc().indptr)]
    pct = item_popularity_percentile(train)
    np.testing.assert_allclose(pct, ref_popularity_percentile(counts))
    for k in (3, 12):
        chosen = [pct[r] for row in top.tolist() for r in row[:k] if r >= 0]
        assert popularity_bias(top, pct, k) == pytest.approx(sum(chosen) / len(chosen))
    del recs


def test_bad_arguments_raise_validation_errors() -> None:
    top, rel = random_fixture(0)
    with pytest.raises(ValidationError, match="k=13"):
        recall_at_k(top, rel, 13)
    with pytest.raises(ValidationError, match="positive integer"):
        recall_at_k(top, rel, 0)
    with pytest.raises(ValidationError, match="aligned"):
        recall_at_k(top[:3], rel, 5)
    with pytest.raises(ValidationError, match="unknown ranking metrics"):
        ranking_metrics(top, rel, (5,), ("auc",))
