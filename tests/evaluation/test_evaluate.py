"""evaluate() and compare() with real models on small splits, checked against a by-hand computation."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import numpy as np
import pytest
from rich.console import Console

from scalerec.errors import ModelCapacityError, NotFittedError, ValidationError
from scalerec.evaluation import compare, evaluate, split_temporal, split_users
from scalerec.models import make_model
from test_splits import T0, events_table


def popularity_rows(seed: int = 0) -> list[tuple]:
    """Training: item iJ is viewed by the first 12 - J users (distinct popularity); test: random new items."""
    rng = np.random.default_rng(seed)
    rows = [(f"u{u:02d}", f"i{j:02d}", "view", float(rng.uniform(0, 50))) for j in range(12) for u in range(12 - j)]
    rows += [(f"u{rng.integers(12):02d}", f"i{rng.integers(12):02d}", "view", float(rng.uniform(60, 70)))
             for _ in range(40)]
    return rows


def reference_popular(split, k: int) -> dict[str, float]:
    """Most-popular top-k per test user by hand: distinct-user counts, own items removed."""
    train = split.train.matrix.toarray() > 0
    pop = train.sum(axis=0)
    hist = split.fold_in.toarray() > 0 if split.strong_generalisation else train
    recalls, ndcgs = [], []
    for u in split.test_users:
        order = [j for j in sorted(range(len(pop)), key=lambda j: -pop[j]) if not hist[u, j]][:k]
        relevant = set(np.flatnonzero(split.test[u].toarray().ravel()))
        hits = [j in relevant for j in order]
        recalls.append(sum(hits) / len(relevant))
        dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
        ndcgs.append(dcg / idcg)
    return {f"recall@{k}": float(np.mean(recalls)), f"ndcg@{k}": float(np.mean(ndcgs))}


@pytest.fixture(scope="module")
def split():
    return split_temporal(events_table(popularity_rows()), test_days=15)


def test_evaluate_most_popular_matches_hand_computation(split) -> None:
    assert len(split.test_users) > 3
    model = make_model("popular").fit(split.train)
    got = evaluate(model, split, k=(3, 5), metrics=("recall", "ndcg"))
    assert set(got) == {"recall@3", "ndcg@3", "recall@5", "ndcg@5"}
    for k in (3, 5):
        for key, value in reference_popular(split, k).items():
            assert got[key] == pytest.approx(value, abs=1e-12)


def test_evaluate_is_independent_of_block_size_and_reports_progress(split) -> None:
    model = make_model("itemknn", neighbors=None).fit(split.train)
    calls: list[tuple[int, int]] = []
    small = evaluate(model, split, k=4, block_users=1, progress=lambda d, t: calls.append((d, t)))
    big = evaluate(model, split, k=4, block_users=10_000)
    assert small == pytest.approx(big)
    assert calls[-1] == (len(split.test_users), len(split.test_users)) and len(calls) == len(split.test_users)
    assert 0 < small["coverage@4"] <= 1 and 0 <= small["popularity_bias@4"] <= 1


def test_catalogue_detail_kept_per_block_equals_the_all_users_lists(split) -> None:
    """Coverage's and popularity bias's resampling detail, kept block by block, gives the metrics and
    intervals of the all-users lists built at once (the old path, rebuilt here as the reference)."""
    import scipy.sparse as sp

    from scalerec.evaluation.evaluate import evaluate_per_user
    from scalerec.evaluation.metrics import item_popularity_percentile
    from scalerec.evaluation.stats import bootstrap_intervals

    model = make_model("itemknn", neighbors=None).fit(split.train)
    blocks = evaluate_per_user(model, split, k=(3, 5), block_users=2)
    whole = evaluate_per_user(model, split, k=(3, 5), block_users=10_000)
    # the means sum over blocks (rounding differs); the per-user detail and so the intervals do not
    assert blocks.metrics == pytest.approx(whole.metrics) and blocks.intervals() == whole.intervals()

    rows = split.test_users
    ids, _ = model.recommend(rows, 5, exclude=split.history(rows))
    top_all = np.where((ids >= 0) & (ids < split.train.n_items), ids, -1)
    percentile = item_popularity_percentile(split.train.matrix)
    ratios, cover = {}, {}
    for k in (3, 5):
        top = top_all[:, :k]
        valid = top >= 0
        r, c = np.nonzero(valid)
        cover[f"coverage@{k}"] = sp.csr_matrix((np.ones(len(r)), (r, top[r, c])), shape=(len(rows), split.train.n_items))
        ratios[f"popularity_bias@{k}"] = (np.where(valid, percentile[np.maximum(top, 0)], 0.0).sum(axis=1),
                                          valid.sum(axis=1).astype(np.float64))
    reference = bootstrap_intervals(blocks.per_user, ratios=ratios, coverage=cover)
    assert blocks.intervals() == {key: reference[key] for key in blocks.metrics}
    assert {key for key in blocks.metrics if key.startswith(("coverage", "popularity"))} == set(cover) | set(ratios)


def test_evaluate_on_held_out_users_uses_fold_in() -> None:
    strong = split_users(events_table(popularity_rows(1)), test_fraction=0.4, seed=0)
    model = make_model("ease", l2=5.0).fit(strong.train)
    got = evaluate(model, strong, k=3, metrics=("recall", "hit_rate"))
    # EASE by hand: B = I - P / diag(P), P = (X'X + l2 I)^-1; held-out scores = fold-in history @ B
    X = strong.train.matrix.toarray().astype(np.float64)
    P = np.linalg.inv(X.T @ X + 5.0 * np.eye(X.shape[1]))
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    history = strong.fold_in.toarray()
    recalls, hit_rates = [], []
    for u in strong.test_users:
        scores = history[u] @ B
        scores[history[u] > 0] = -np.inf
        top = np.argsort(-scores, kind="stable")[:3]
        relevant = set(np.flatnonzero(strong.test[u].toarray().ravel()))
        hits = sum(int(j in relevant) for j in top)
        recalls.append(hits / len(relevant))
        hit_rates.append(float(hits > 0))
    assert got["recall@3"] == pytest.approx(np.mean(recalls), abs=1e-12)
    assert got["hit_rate@3"] == pytest.approx(np.mean(hit_rates), abs=1e-12)


def test_evaluate_rejects_bad_k_and_metrics(split) -> None:
    model = make_model("popular").fit(split.train)
    with pytest.raises(ValidationError, match="larger than the catalogue"):
        evaluate(model, split, k=split.train.n_items + 1)
    with pytest.raises(ValidationError, match="unknown metrics"):
        evaluate(model, split, k=3, metrics=("auc",))
    with pytest.raises(ValidationError, match="no validation part"):
        evaluate(model, split, k=3, on="valid")
    with pytest.raises(NotFittedError):
        evaluate(make_model("popular"), split, k=3)
    other = split_temporal(events_table(popularity_rows()[:30] + [("u00", "extra", "view", 80.0)]), test_days=40)
    with pytest.raises(ValidationError, match="fitted on"):
        evaluate(make_model("popular").fit(other.train), split, k=3)


def test_compare_collects_metrics_timings_and_renders(split) -> None:
    models = {"pop": make_model("popular"), "knn": make_model("itemknn"), "ease": make_model("ease", l2=10.0)}
    result = compare(models, split, k=(3, 5))
    assert [r.name for r in result.results] == ["pop", "knn", "ease"]
    for r in result.results:
        assert r.fit_s >= 0 and r.recommend_s >= 0 and r.n_users == len(split.test_users)
        assert set(r.metrics) == set(result.metric_keys)
    assert result.results[2].params["l2"] == 10.0
    data = json.loads(json.dumps(result.to_dict()))
    assert data["split"]["name"] == "temporal" and len(data["models"]) == 3
    best = result.best("ndcg@5")
    assert best.metrics["ndcg@5"] == max(r.metrics["ndcg@5"] for r in result.results)
    console = Console(record=True, width=200)
    console.print(result.table())
    text = console.export_text()
    assert all(name in text for name in ("pop", "knn", "ease", "ndcg@5", "fit s"))


def test_compare_lets_capacity_errors_through(split) -> None:
    with pytest.raises(ModelCapacityError, match="EASE refuses"):
        compare({"ease": make_model("ease", max_items=3)}, split, k=3)


def test_trending_gets_a_decayed_training_matrix() -> None:
    rows = [("a", "x", "view", 0.0), ("b", "x", "view", 10.0), ("a", "y", "view", 19.0), ("b", "y", "view", 30.0)]
    the_split = split_temporal(events_table(rows), test_days=10)  # train ends at day 20
    model = make_model("trending", half_life_days=10.0)
    decayed = the_split.train_for(model)
    assert list(decayed.user_ids) == list(the_split.train.user_ids)
    assert list(decayed.item_ids) == list(the_split.train.item_ids)
    a, x = int(decayed.user_index(["a"])[0]), int(decayed.item_index(["x"])[0])
    # a view (weight 1) 20 days before the end of training, half-life 10 days: 1 * 0.5 ** 2
    assert decayed.matrix[a, x] == pytest.approx(0.25, rel=1e-5)
    assert the_split.train_for(make_model("popular")) is the_split.train
    assert the_split.info["train_end"] == T0 + timedelta(days=20)
