"""Signals shaped for ranking: the recency clock (per user / floored / global) and explicit ratings
(rules, relevance, manifest, fold-in, the search's data-dependent choices, MovieLens end to end)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from scalerec.config import Settings
from scalerec.data.matrix import MatrixSpec, RatingRule, signal_stats
from scalerec.errors import ValidationError
from scalerec.models import make_model

Y1 = datetime(2021, 1, 1, tzinfo=timezone.utc)
Y3 = datetime(2023, 1, 1, tzinfo=timezone.utc)


def _frame(rows: list[tuple[str, str, str, datetime, float]]) -> pl.DataFrame:
    users, items, types, ts, values = zip(*rows)
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "event_type": types, "timestamp": ts, "value": values},
        schema={"user_id": pl.String, "item_id": pl.String, "event_type": pl.String,
                "timestamp": pl.Datetime("us", "UTC"), "value": pl.Float32},
    )


def _two_eras(n_users: int = 40, seed: int = 0) -> pl.DataFrame:
    """Half the users active only in year 1, half only in year 3 (a few purchases each)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = Y1 if u < n_users // 2 else Y3
        for _ in range(6):
            day = float(rng.uniform(0, 60))
            rows.append((f"u{u}", f"i{rng.integers(0, 30)}", "purchase", start + timedelta(days=day), 1.0))
    return _frame(rows)


# ---------------------------------------------------------------------- the recency clock
@pytest.mark.parametrize("reference", ["user", "floored"])
def test_no_active_user_loses_their_history_row(reference: str) -> None:
    events = _two_eras()
    users = np.sort(events.get_column("user_id").unique().to_numpy().astype(str))
    spec = MatrixSpec.from_settings(Settings(), {"half_life_days": 4.0, "cap": 1.0, "recency_reference": reference})
    m = spec.build(events, user_ids=users).matrix
    assert (np.asarray(m.max(axis=1).todense()).ravel() > 0).all()
    assert float(m.data.min()) > 0


def test_the_global_clock_reproduces_the_all_zero_rows() -> None:
    events = _two_eras()
    users = np.sort(events.get_column("user_id").unique().to_numpy().astype(str))
    spec = MatrixSpec.from_settings(Settings(), {"half_life_days": 4.0, "cap": 1.0, "recency_reference": "global"})
    m = spec.build(events, user_ids=users).matrix
    empty = users[np.asarray(abs(m).max(axis=1).todense()).ravel() == 0]  # 0.5 ** 180 is 0 in float32
    assert len(empty) == 20 and all(int(u[1:]) < 20 for u in empty)  # exactly the year-1 users


def test_floored_keeps_recent_users_on_the_global_clock_and_rescales_old_ones() -> None:
    events = _two_eras()
    users = np.sort(events.get_column("user_id").unique().to_numpy().astype(str))
    build = {r: MatrixSpec(event_types=Settings().events.types, half_life_days=4.0, recency_reference=r)
             .build(events, user_ids=users).matrix.toarray() for r in ("global", "floored", "user")}
    recent = np.array([int(u[1:]) >= 20 for u in users])
    np.testing.assert_allclose(build["floored"][recent], build["global"][recent], rtol=1e-5)
    # an old user's row is their per-user row times one factor: the same ranking input
    for row in np.flatnonzero(~recent):
        f, u = build["floored"][row], build["user"][row]
        ratio = f[u > 0] / u[u > 0]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
        assert ratio[0] == pytest.approx(2.0 ** -20, rel=1e-4)


def test_settings_default_is_floored_and_bad_references_are_refused() -> None:
    assert MatrixSpec.from_settings(Settings()).recency_reference == "floored"
    assert MatrixSpec().recency_reference == "global"  # what specs recorded before the field meant
    with pytest.raises(ValidationError, match="recency_reference"):
        MatrixSpec(recency_reference="yesterday")
    with pytest.raises(ValidationError, match="recency_reference"):
        make_model("ease", recency_reference="yesterday").fit(sp.eye(3, format="csr", dtype=np.float32))


# ---------------------------------------------------------------------- ratings
def _ratings(values: list[float], user: str = "u1") -> pl.DataFrame:
    return _frame([(user, f"i{k}", "rating", Y3 + timedelta(hours=k), v) for k, v in enumerate(values)])


@pytest.mark.parametrize(
    "scale, positive, negative",
    [((1, 2, 3, 4, 5), (4, 5), (1, 2, 3)), ((0.5, 1, 2, 3, 3.5, 4.5, 5), (3.5, 4.5, 5), (0.5, 1, 2, 3)),
     ((1, 2, 5, 6, 7, 10), (7, 10), (1, 2, 5, 6))],
)
def test_default_rule_keeps_only_the_upper_part_of_the_observed_scale(scale, positive, negative) -> None:
    events = _ratings(list(scale))
    m = MatrixSpec.from_settings(Settings()).build(events)
    kept = {float(scale[int(i[1:])]) for i in m.item_ids[m.matrix.indices]}
    assert kept == {float(v) for v in positive} and not kept & {float(v) for v in negative}
    assert set(m.matrix.data.tolist()) == {1.0}  # a positive rating is one unit of the type's weight


def test_rules_raw_binary_threshold_and_centered() -> None:
    events = _ratings([1, 2, 4, 5])
    types = Settings().events.types

    def cells(**kw: object) -> list[float]:
        m = MatrixSpec(event_types=types, **kw).build(events, item_ids=np.array(["i0", "i1", "i2", "i3"]))
        return m.matrix.toarray().ravel().tolist()

    assert cells(rating_rule="raw") == [1, 2, 4, 5]
    assert cells(rating_rule="binary") == [1, 1, 1, 1]
    assert cells(rating_rule="threshold", rating_threshold=4.0) == [0, 0, 1, 1]
    assert cells(rating_rule="centered") == [0, 0, 1, 2]  # mean 3
    # a negative weight lets a low rating cancel other positive events on the item
    viewed = pl.concat([events, _frame([("u1", "i0", "view", Y3, 1.0), ("u1", "i1", "view", Y3, 1.0)])])
    m = MatrixSpec(event_types=types, rating_rule="threshold", rating_threshold=4.0,
                   rating_negative_weight=1.0).build(viewed)
    assert sorted(m.item_ids[m.matrix.indices].tolist()) == ["i2", "i3"]
    with pytest.raises(ValidationError, match="rating_rule"):
        MatrixSpec(rating_rule="stars")


def test_relevant_test_items_exclude_low_ratings_whatever_the_training_rule() -> None:
    from scalerec.evaluation.splits import split_temporal

    rows = [(f"u{u}", f"i{i}", "rating", Y3 + timedelta(days=i), 5.0) for u in range(5) for i in range(5)]
    rows += [(f"u{u}", f"i{i}", "rating", Y3 + timedelta(days=40), 1.0 if i % 2 else 5.0)
             for u in range(5) for i in range(5, 9)]
    rows += [(f"u{u}", f"i{i}", "rating", Y3 + timedelta(days=i), 4.0) for u in range(5, 8) for i in range(9)]
    events = _frame(rows)
    for rule in ("threshold", "raw"):
        split = split_temporal(events, test_days=10, settings=Settings(matrix={"rating_rule": rule}))
        relevant = split.train.item_ids[split.test.indices]
        assert set(relevant.tolist()) == {"i6", "i8"}  # the 5-star test ratings; the 1-star ones are not relevant


def test_the_rule_and_the_scale_round_trip_through_the_manifest() -> None:
    from scalerec.registry.manifest import Manifest

    spec = MatrixSpec.from_settings(Settings(matrix={"rating_negative_weight": 0.5}), {"rating_rule": "centered"})
    resolved = spec.resolved(_ratings([0.5, 3.0, 5.0]))
    assert resolved.rating_scale == (0.5, 5.0) and spec.rating_scale is None
    assert MatrixSpec.from_dict(resolved.to_dict()) == resolved
    back = Manifest.from_dict({"data": {"matrix_spec": resolved.to_dict()}, "model": {}}).matrix
    assert back == resolved and back.ratings() == resolved.ratings()
    old = Manifest.from_dict({"data": {"matrix_spec": {"binary": True}}, "model": {}}).matrix
    assert old.rating_rule == "raw" and old.recency_reference == "global"  # older manifests: as trained


@pytest.mark.parametrize("rule", ["threshold", "raw", "binary", "centered"])
def test_fold_in_shapes_a_posted_rating_like_the_training_matrix(rule: str) -> None:
    from scalerec.serving.realtime import event_type_weights, history_from_arrays
    from scalerec.serving.state import event_values, history_row

    settings = Settings(matrix={"rating_rule": rule})
    training = _ratings([1, 2, 3, 4, 5, 5], user="old")
    spec = MatrixSpec.from_settings(settings).resolved(training)
    items = np.array([f"i{k}" for k in range(6)])
    posted = [("i0", "rating", 1.0), ("i1", "rating", 2.0), ("i3", "rating", 4.0), ("i4", "rating", 5.0),
              ("i4", "view", 1.0), ("i5", "purchase", 1.0)]
    st = SimpleNamespace(ratings=spec.ratings(), cells=spec.cells(), n_items=len(items))
    it, ty, va = zip(*posted)
    fresh = history_from_arrays(it, ty, event_values(st, ty, va), items, event_type_weights(spec.event_types, None))
    served = history_row(st, fresh.cols, fresh.weights).toarray().ravel()
    built = spec.build(_frame([("new", i, t, Y3, v) for i, t, v in posted]), item_ids=items).matrix.toarray().ravel()
    np.testing.assert_allclose(served, built, rtol=1e-6)
    if rule == "threshold":
        assert served[0] == served[1] == 0 and served[3] == 1.0


# ---------------------------------------------------------------------- models and the search
def test_matrix_hyperparameters_pass_through_models() -> None:
    model = make_model("ease", rating_rule="binary")
    assert model.matrix_overrides() == {"rating_rule": "binary"}
    assert make_model("itemknn", recency_half_life_days=30, recency_reference="user").matrix_overrides() == {
        "half_life_days": 30.0, "cap": 1.0, "binary": False, "recency_reference": "user"}
    assert model.get_params()["rating_rule"] == "binary"
    assert "rating_rule" not in make_model("ease").get_params()
    model.set_params(rating_rule="centered")
    assert model.rating_rule == "centered"
    with pytest.raises(ValidationError, match="rating_rule"):
        make_model("ease", rating_rule="stars").fit(sp.eye(3, format="csr", dtype=np.float32))


def test_matrix_hyperparameters_survive_save_and_load(tmp_path: Path) -> None:
    import scipy.sparse as sp

    from scalerec.models.base import Recommender

    X = sp.random(20, 15, density=0.3, format="csr", dtype=np.float32, random_state=0)
    make_model("ease", l2=10.0, rating_rule="raw", recency_reference="global").fit(X).save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert loaded.rating_rule == "raw" and loaded.recency_reference == "global"


def test_search_adds_the_rating_rule_only_for_rating_data() -> None:
    import optuna

    from scalerec.models.base import suggest_signals
    from scalerec.training.tuning import signal_choices

    shop = signal_stats(_frame([("u1", "i1", "purchase", Y3, 1.0), ("u2", "i2", "view", Y3, 1.0)]))
    assert signal_choices(shop) == {}
    same = signal_stats(_ratings([5, 5, 5]))
    assert same["rating_values"] == 1 and signal_choices(same) == {}
    stars = signal_stats(_ratings([1, 3, 5]))
    assert set(signal_choices(stars)) == {"rating_rule"}
    assert set(signal_choices(signal_stats(_two_eras()))) == {"recency_reference"}
    trial = optuna.create_study().ask()
    params = suggest_signals(trial, signal_choices(stars))
    assert params["rating_rule"] in (None, "raw", "binary", "centered")


# ---------------------------------------------------------------------- MovieLens end to end
def noisy_ratings(n_users: int = 120, n_items: int = 40, seed: int = 0) -> list[tuple[int, int, float, int]]:
    """(user, movie, stars, unix time): two taste groups; each user rates 8 of their group's films
    4-5 stars and 6 of the other group's 1-2 stars (watched, disliked: noise for ranking). The last
    10 days hold 3 more in-group 4-5s and 2 out-group 1-2s per user, so the truth is the group."""
    rng = np.random.default_rng(seed)
    half = n_items // 2
    t0 = int(Y3.timestamp())
    rows = []
    for u in range(n_users):
        own = np.arange(half) + (half if u % 2 else 0)
        other = np.arange(half) + (0 if u % 2 else half)
        liked = rng.choice(own, 11, replace=False)
        disliked = rng.choice(other, 8, replace=False)
        for k, item in enumerate(liked):
            day = 20 + k if k < 8 else 52 + k
            rows.append((u, int(item), float(rng.choice([4.0, 4.5, 5.0])), t0 + day * 86_400 + u))
        for k, item in enumerate(disliked):
            day = 10 + k if k < 6 else 55 + k
            rows.append((u, int(item), float(rng.choice([1.0, 1.5, 2.0])), t0 + day * 86_400 + u))
    return rows


def test_movielens_import_and_evaluate_default_rule_beats_raw(tmp_path: Path) -> None:
    from scalerec.data.importers import import_file
    from scalerec.data.store import DataStore
    from scalerec.evaluation.splits import make_split
    from scalerec.training.tuning import fit_and_evaluate

    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{r},{t}\n" for u, i, r, t in noisy_ratings()))
    settings = Settings(data={"dir": tmp_path / "store"})
    store = DataStore.open(settings)
    import_file(store, "events", path, preset="movielens")
    split = make_split("temporal", store, settings=settings, test_days=10)
    scores = {rule: fit_and_evaluate("ease", {"l2": 10.0, "rating_rule": rule}, split, "ndcg@10")[1].value
              for rule in (None, "raw")}
    assert scores[None] > scores["raw"] + 0.02, scores
