"""The auto protocol: a hold-out sized by the data, a validation part carved from the training part,
the record of what was chosen (split, manifest, JSON, report), degenerate data, train's split options."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from scalerec.config import Settings
from scalerec.data.snapshot import take_snapshot
from scalerec.errors import EmptyDataError, ValidationError
from scalerec.evaluation.holdout import Sizing, auto_protocol
from scalerec.evaluation.protocol import ProtocolRecord
from scalerec.evaluation.splits import Split, make_protocol, make_split
from scalerec.registry import Manifest, Registry
from scalerec.training import TrainOptions, train
from test_train_cmds import _cli, data_dir  # noqa: F401 - the CLI fixture
from test_pipeline import tiny_store

START = datetime(2025, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _small_gate_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    # the tiny stores here hold fewer test users than the default gate bar (100): the gate's refusal
    # is tested in tests/training/test_gate.py, these tests are about the protocol
    monkeypatch.setenv("SCALEREC_TRAINING__MIN_GATE_USERS", "20")


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> pl.DataFrame:
    """The events of a small synthetic shop (150 users, 60 items, 60 days), activity spread evenly."""
    settings, store = tiny_store(tmp_path_factory.mktemp("shop") / "data")
    events = take_snapshot(store).events
    store.close()
    return events


def front_loaded(events: pl.DataFrame, *, late_share: float = 0.1, span_days: float = 1.0, seed: int = 0) -> pl.DataFrame:
    """The same events with activity front-loaded: all but ``late_share`` of the users do everything
    within ``span_days`` of a start drawn in the first third of the period (they come, rate, leave);
    the rest keep their times. Most events fall in the first third."""
    ts = events["timestamp"].dt.epoch("us").to_numpy()
    lo, hi = ts.min(), ts.max()
    users = np.sort(events["user_id"].drop_nulls().unique().to_numpy())
    rng = np.random.default_rng(seed)
    late = set(rng.choice(users, size=max(1, int(late_share * len(users))), replace=False).tolist())
    starts = dict(zip(users.tolist(), lo + rng.random(len(users)) * (hi - lo) / 3))
    uid = events["user_id"].to_list()
    frac = (ts - lo) / max(1, hi - lo)
    span = span_days * 86_400e6
    new = np.array([t if (u is None or u in late) else starts[u] + f * span for u, t, f in zip(uid, ts, frac)])
    return events.with_columns(pl.Series("timestamp", new.astype(np.int64)).cast(pl.Datetime("us", "UTC")))


def _pairs(split: Split, m, rows=None) -> set[tuple[str, str]]:
    """(user id, item id) of the stored cells of ``m`` (rows are ``split.train`` users)."""
    m = m.tocoo()
    users, items = np.asarray(split.train.user_ids).astype(str), np.asarray(split.train.item_ids).astype(str)
    return set(zip(users[m.row].tolist(), items[m.col].tolist()))


def _assert_test_users_have_history(split: Split) -> None:
    history = np.diff(split.train.matrix.indptr)[split.test_users]
    assert len(split.test_users) and (history > 0).all()


def _assert_apart(outer: Split, inner: Split) -> None:
    """Nothing of the test part reaches the validation split (its training part nor its held-out part)."""
    test = _pairs(outer, outer.test)
    assert test
    assert not test & _pairs(inner, inner.train.matrix)
    assert not test & _pairs(inner, inner.test)
    # the validation split's users and items are the test split's training ones
    assert set(np.asarray(inner.train.user_ids).astype(str)) <= set(np.asarray(outer.train.user_ids).astype(str))


# ---------------------------------------------------------------------------------- sizing
def test_auto_takes_the_smallest_recent_window_with_enough_users(shop: pl.DataFrame) -> None:
    outer, inner = make_protocol("auto", shop, settings=Settings())
    p = outer.protocol
    assert p is not None and p.rule == "temporal" and inner.protocol is p
    n_users = p.settings["users"]
    target = Sizing().target(n_users)
    assert 100 < n_users <= 150 and target == int(0.2 * n_users)  # the 1,000 default is capped by what the data has
    assert p.settings["target_users"] == target
    assert p.test.users == len(outer.test_users) >= target
    assert p.test.share >= 0.1 - 1e-9 and p.test.start == outer.info["test_start"]
    # the validation window ends where the test window starts
    assert inner.info["test_end"] == outer.info["test_start"] and p.validation.users == len(inner.test_users)
    assert p.validation.end == p.test.start
    _assert_test_users_have_history(outer)
    _assert_apart(outer, inner)


def test_a_front_loaded_shop_falls_back_to_each_users_newest_items(shop: pl.DataFrame) -> None:
    events = front_loaded(shop)
    ts = events["timestamp"]
    third = ts.min() + (ts.max() - ts.min()) / 3
    assert (ts < third).mean() > 0.8  # most events in the first third
    outer, inner = auto_protocol(events, settings=Settings())
    p = outer.protocol
    assert p.rule == "leave-last-share", p.reason
    assert "no recent window" in p.reason and "users" in p.reason
    # every user with two items or more is evaluated, each keeping training history
    multi = events.group_by("user_id").agg(pl.col("item_id").n_unique().alias("n")).filter(pl.col("n") >= 2).height
    # (less the few whose newest items nobody else has in training)
    assert 0.95 * multi <= len(outer.test_users) <= multi and p.test.start is None
    _assert_test_users_have_history(outer)
    _assert_apart(outer, inner)
    # the same data under the old default (the last 30 days): a handful of users decide
    temporal = make_split("temporal", events, settings=Settings(), test_days=30)
    assert len(temporal.test_users) < len(outer.test_users) / 3


def test_a_demo_store_plus_three_live_events_is_not_judged_on_one_user(shop: pl.DataFrame) -> None:
    now = shop["timestamp"].max() + timedelta(days=200)
    user = shop["user_id"].drop_nulls()[0]
    seen = set(shop.filter(pl.col("user_id") == user)["item_id"].to_list())
    new_items = [i for i in shop["item_id"].unique().sort().to_list() if i not in seen][:3]
    live = pl.DataFrame({
        "user_id": [user] * 3, "item_id": new_items, "event_type": ["purchase"] * 3,
        "timestamp": [now] * 3, "value": [1.0] * 3,
    }).with_columns(pl.col("timestamp").cast(shop["timestamp"].dtype), pl.col("value").cast(shop["value"].dtype))
    events = pl.concat([shop, live.select(shop.columns)], how="diagonal_relaxed")
    old = make_split("temporal", events, settings=Settings(), test_days=30)
    assert len(old.test_users) == 1  # what the old default evaluated on
    outer, _ = make_protocol("auto", events, settings=Settings())
    assert outer.protocol.rule == "temporal" and len(outer.test_users) >= 30
    assert outer.protocol.test.start < shop["timestamp"].max()  # the window reaches back into the shop's data


def test_events_without_time_order_are_held_out_at_random(shop: pl.DataFrame) -> None:
    events = shop.with_columns(pl.lit(START).cast(shop["timestamp"].dtype).alias("timestamp"))
    outer, inner = make_protocol("auto", events, settings=Settings(), seed=3)
    assert outer.protocol.rule == "random" and "same time" in outer.protocol.reason
    _assert_test_users_have_history(outer)
    _assert_apart(outer, inner)


def _events(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame({
        "user_id": [u for u, _, _ in rows], "item_id": [i for _, i, _ in rows], "event_type": ["purchase"] * len(rows),
        "timestamp": [START + timedelta(days=d) for _, _, d in rows], "value": [1.0] * len(rows),
    }).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))


def test_a_single_user_is_a_clear_error_not_a_zero_score() -> None:
    one = _events([("u1", f"i{j}", j) for j in range(20)])
    with pytest.raises(EmptyDataError, match=r"1 user\(s\).*several users"):
        make_protocol("auto", one, settings=Settings())


def test_too_few_users_in_any_window_uses_per_user_hold_out() -> None:
    # 40 users each active on one day early; one late user: no window holds the 8 users wanted
    rows = [(f"u{u}", f"i{(u + j) % 30}", u % 10) for u in range(40) for j in range(4)]
    rows += [("late", f"i{j}", 50 + j) for j in range(25)]
    outer, _ = make_protocol("auto", _events(rows), settings=Settings())
    assert outer.protocol.rule == "leave-last-share" and 35 <= len(outer.test_users) <= 41


def test_data_with_no_user_to_evaluate_is_refused_with_the_reason() -> None:
    rows = [(f"u{u}", f"i{u}-{j}", u * 3 + j) for u in range(3) for j in range(3)]  # nobody shares an item
    with pytest.raises(EmptyDataError, match="no held-out item is known from training"):
        make_protocol("auto", _events(rows), settings=Settings())


def test_fewer_users_than_a_decision_needs_is_refused(shop: pl.DataFrame) -> None:
    # 12 users wanted and possible, but the newest items of most of them are unknown to training
    rows = [(f"u{u}", f"i{j}", u * 3 + j) for u in range(12) for j in range(3)]
    rows = [(u, i if int(u[1:]) < 2 else f"{i}-{u}", d) if i == "i2" else (u, i, d) for u, i, d in rows]
    rows += [("anchor", f"i{j}", 0) for j in range(4)]  # knows i2 in training: only u0 and u1 are evaluable
    with pytest.raises(EmptyDataError, match="no model choice made on so few users"):
        make_protocol("auto", _events(rows), settings=Settings(training={"max_test_user_share": 1.0}))


def test_sizing_settings_are_checked_and_read() -> None:
    with pytest.raises(ValidationError):
        Sizing.from_settings(Settings(training={"holdout_share": 0.4, "max_holdout_share": 0.3}))
    assert Sizing.from_settings(Settings(training={"min_test_users": 7})).target(10_000) == 7
    assert Settings().training.split == "auto"


def test_named_splits_carve_validation_the_same_way(shop: pl.DataFrame) -> None:
    for name, opts in [("temporal", {"test_days": 10}), ("leave-last", {"k": 1}), ("random", {"ratios": (0.8, 0.2)})]:
        outer, inner = make_protocol(name, shop, settings=Settings(), **opts)
        assert outer.protocol.rule == name and outer.protocol.validation.users == len(inner.test_users) > 0
        _assert_apart(outer, inner)
    outer, inner = make_protocol("temporal", shop, settings=Settings(), test_days=10, valid_days=5)
    assert inner.info["test_days"] == 5.0 and inner.info["test_end"] == outer.info["test_start"]


# ---------------------------------------------------------------------------------- training
def test_training_searches_on_validation_and_scores_the_choice_once_on_test(tmp_path: Path, monkeypatch) -> None:
    from scalerec.training import pipeline

    settings, ds = tiny_store(tmp_path / "data")
    primed: list[Split] = []
    real_prime = pipeline.prime_split
    monkeypatch.setattr(pipeline, "prime_split", lambda spec, split: (primed.append(split), real_prime(spec, split)))
    result = train(settings, TrainOptions(models=["popular", "itemknn"], trials=2), store=ds)
    outer, _, spec = pipeline.make_run_protocol(take_snapshot(ds), settings, TrainOptions())
    assert len(primed) == 1 and spec.options["part"] == "validation"
    _assert_apart(outer, primed[0])  # the test users' held-out interactions never reach the search
    m = Manifest.from_dict(result.version.manifest())
    assert m.protocol is not None and m.protocol.to_dict() == result.protocol
    assert m.test_metrics == result.metrics and m.validation_metrics == result.validation_metrics
    assert m.score == pytest.approx(result.metrics["ndcg@20"])
    assert result.promotion["on"] == "test" and result.promotion["n_users"] == len(outer.test_users)
    assert Registry(settings).production().score == pytest.approx(result.metrics["ndcg@20"])


def test_the_gate_compares_paired_per_user_figures(tmp_path: Path) -> None:
    from scalerec.models import make_model
    from scalerec.training.pipeline import compare_on_test, score_model

    settings, ds = tiny_store(tmp_path / "data")
    outer, _ = make_protocol("auto", take_snapshot(ds).events, settings=settings)
    a = score_model(make_model("popular").fit(outer.train), outer, "ndcg@20")
    b = score_model(make_model("itemknn").fit(outer.train), outer, "ndcg@20")
    assert a.per_user["ndcg@20"].shape == (len(outer.test_users),)
    assert a.per_user["ndcg@20"].mean() == pytest.approx(a.value("ndcg@20"))
    d = compare_on_test(a, b, "ndcg@20", tolerance=0.0)
    assert d["candidate_score"] == a.value("ndcg@20") and d["production_score"] == b.value("ndcg@20")
    b.users = b.users[::-1].copy()
    if len(b.users) > 1:
        with pytest.raises(ValidationError, match="different users"):
            compare_on_test(a, b, "ndcg@20", tolerance=0.0)


def test_manifest_protocol_round_trips_and_old_manifests_still_read() -> None:
    old = Manifest.from_dict({"model": {"family": "popular"}, "primary_metric": "ndcg@20",
                              "metrics": {"temporal": {"ndcg@20": 0.3}}})
    assert old.protocol is None and old.score == 0.3 and "protocol" not in old.to_dict()
    record = {"split": "auto", "rule": "temporal", "reason": "r", "fold_in": False,
              "test": {"start": "2025-01-01T00:00:00+00:00", "end": "2025-01-11T00:00:00+00:00", "events": 10,
                       "train_events": 90, "users": 4, "interactions": 6},
              "validation": None, "settings": {"holdout_share": 0.1}, "options": {}, "warnings": []}
    new = Manifest.from_dict({"model": {"family": "popular"}, "primary_metric": "ndcg@20", "protocol": record,
                              "metrics": {"validation": {"ndcg@20": 0.5}, "test": {"ndcg@20": 0.2}}})
    assert isinstance(new.protocol, ProtocolRecord) and new.protocol.test.users == 4
    assert new.score == 0.2  # the test figure, not the validation one
    again = Manifest.from_dict(new.to_dict())
    assert again.protocol.to_dict() == new.protocol.to_dict() and again.protocol.test.share == 0.1
    assert new.to_dict()["protocol"]["test"]["days"] == 10.0


# ---------------------------------------------------------------------------------- CLI
def test_train_json_and_output_carry_the_protocol(data_dir: Path) -> None:
    r = _cli(data_dir, "train", "--trials", "1", "--models", "popular", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["protocol"]["split"] == "auto" and out["protocol"]["rule"] == "temporal"
    assert out["protocol"]["test"]["users"] > 0 and out["protocol"]["validation"]["users"] > 0
    assert set(out["metrics"]) == {"test", "validation"}
    r = _cli(data_dir, "train", "--trials", "1", "--models", "popular")
    assert r.exit_code == 0, r.output
    assert "protocol: auto -> temporal" in r.output and "validation:" in r.output and "ndcg@20 test" in r.output
    shown = json.loads(_cli(data_dir, "models", "show", Registry(data_dir).production().version, "--json").output)
    assert set(shown["scores"]) == {"test", "validation"} and shown["manifest"]["protocol"]["rule"] == "temporal"


def test_train_takes_evaluates_split_options(data_dir: Path) -> None:
    r = _cli(data_dir, "train", "--trials", "1", "--models", "popular", "--split", "random", "--ratios", "0.7,0.3",
             "--seed", "3", "--json")
    assert r.exit_code == 0, r.output
    p = json.loads(r.output)["protocol"]
    assert p["rule"] == "random" and p["options"]["ratios"] == [0.7, 0.3] and p["options"]["seed"] == 3
    r = _cli(data_dir, "train", "--trials", "1", "--models", "popular", "--test-days", "10", "--json")
    p = json.loads(r.output)["protocol"]
    assert p["rule"] == "temporal" and p["test"]["days"] == pytest.approx(10.0)  # --test-days alone: a fixed window
    r = _cli(data_dir, "train", "--models", "popular", "--split", "auto", "--test-days", "10")
    assert isinstance(r.exception, ValidationError) and "sizes its window from the data" in str(r.exception)
    r = _cli(data_dir, "train", "--models", "popular", "--split", "temporal", "--ratios", "0.5,0.5")
    assert isinstance(r.exception, ValidationError) and "--ratios does not apply" in str(r.exception)
    r = _cli(data_dir, "train", "--help")
    assert "auto | temporal | leave-last" in r.output and "'auto'" in r.output


def test_evaluate_prints_and_reports_the_protocol(data_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.html"
    r = _cli(data_dir, "evaluate", "--models", "popular", "--k", "5", "--json", "--report", str(report))
    assert r.exit_code == 0, r.output
    split = json.loads(r.output)["split"]
    assert split["name"] == "auto" and split["protocol"]["rule"] == "temporal"
    assert split["protocol"]["test"]["users"] == split["n_test_users"]
    text = report.read_text()
    assert "<h2>Protocol</h2>" in text and "temporal" in text and "smallest window" in text
    r = _cli(data_dir, "evaluate", "--models", "popular", "--k", "5")
    assert r.exit_code == 0 and "protocol: auto -> temporal" in r.output
