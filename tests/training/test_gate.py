"""The promotion gate: a paired test on the same users, and a refusal to decide on too little evidence."""

from __future__ import annotations

import re

from scalerec.config import Settings

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from scalerec.cli import app
from scalerec.data.snapshot import take_snapshot
from scalerec.registry import Registry
from scalerec.training import TrainOptions, train
from scalerec.training.gate import REFUSING_RULES, gate_decision
from scalerec.data.schema import EVENT_SCHEMA
from test_pipeline import START, tiny_store

runner = CliRunner()


def per_user(rng: np.random.Generator, n: int) -> np.ndarray:
    """Zero-inflated values in [0, 1] shaped like a per-user NDCG@20."""
    return (rng.random(n) < 0.3) * rng.beta(2.0, 3.0, n)


def _gate(cand: np.ndarray, prod: np.ndarray, **kw):
    return gate_decision(float(cand.mean()), float(prod.mean()), tolerance=kw.pop("tolerance", 0.0),
                         candidate_values=cand, production_values=prod, metric="ndcg@20", min_users=100, **kw)


def test_a_truly_better_candidate_is_promoted() -> None:
    rng = np.random.default_rng(1)
    prod = per_user(rng, 1500)
    cand = np.clip(prod + (rng.random(1500) < 0.2) * rng.uniform(0.05, 0.3, 1500), 0, 1)
    d = _gate(cand, prod)
    assert d["promoted"] and d["gate_passed"] and not d["refused"] and d["rule"] == "better"
    assert d["n_users"] == 1500 and d["metric"] == "ndcg@20"
    # the record keeps both means and intervals and the paired difference with its interval
    for side, values in (("candidate", cand), ("production", prod)):
        assert d[side]["mean"] == pytest.approx(values.mean())
        assert d[side]["low"] < d[side]["mean"] < d[side]["high"]
    assert d["difference"]["mean"] == pytest.approx(cand.mean() - prod.mean())
    assert 0 < d["difference"]["low"] < d["difference"]["mean"] < d["difference"]["high"]


def test_a_clearly_worse_candidate_keeps_production() -> None:
    rng = np.random.default_rng(2)
    prod = per_user(rng, 1500)
    cand = prod * 0.5
    d = _gate(cand, prod, tolerance=0.02)
    assert not d["promoted"] and not d["gate_passed"] and not d["refused"] and d["rule"] == "worse"
    assert d["difference"]["high"] < 0
    forced = _gate(cand, prod, tolerance=0.02, force=True)
    assert forced["promoted"] and forced["forced"] and forced["reason"].startswith("forced")


def test_a_noisy_tie_keeps_production_without_refusing() -> None:
    rng = np.random.default_rng(3)
    base = per_user(rng, 400)
    noise = rng.normal(0.0, 0.08, (2, 400))
    prod, cand = np.clip(base + noise[0], 0, 1), np.clip(base + noise[1], 0, 1)
    d = _gate(cand, prod, tolerance=0.0)
    # enough users were weighed: keeping production is a decision, not a refusal (train exits 0)
    assert d["rule"] == "undecided" and not d["refused"] and not d["promoted"] and not d["gate_passed"]
    assert d["rule"] not in REFUSING_RULES
    assert d["margin"]["low"] < 0 < d["margin"]["high"]
    assert "neither" in d["reason"] and "production kept" in d["reason"]
    # a generous tolerance turns the same tie into "not worse"
    assert _gate(cand, prod, tolerance=0.5)["rule"] == "not worse"


def test_a_retrain_that_ties_production_is_promoted_at_the_default_tolerance() -> None:
    # a retrain on fresher data that ranks as well as production, user by user up to small noise:
    # at tolerance 0 it cannot be shown "not worse"; the default non-inferiority margin promotes it
    rng = np.random.default_rng(8)
    prod = per_user(rng, 1500)
    cand = np.clip(prod + rng.normal(0.0, 0.01, 1500) * (prod > 0), 0, 1)
    assert _gate(cand, prod, tolerance=0.0)["rule"] == "undecided"
    d = _gate(cand, prod, tolerance=Settings().training.promotion_tolerance)
    assert d["rule"] == "not worse" and d["promoted"] and not d["refused"]


def test_identical_per_user_values_pass_at_zero_tolerance() -> None:
    prod = per_user(np.random.default_rng(4), 300)
    assert _gate(prod.copy(), prod)["rule"] == "not worse"


def test_lower_is_better_metrics_are_oriented() -> None:
    rng = np.random.default_rng(5)
    prod = rng.uniform(0.6, 0.9, 500)
    d = gate_decision(0.5, float(prod.mean()), tolerance=0.0, higher_is_better=False,
                      candidate_values=prod - 0.2, production_values=prod, min_users=100)
    assert d["rule"] == "better" and d["promoted"]


def test_too_few_users_refuses_and_names_the_count_and_the_setting() -> None:
    prod = per_user(np.random.default_rng(6), 30)
    d = _gate(prod + 0.5, prod)
    assert d["rule"] == "too few users" and d["refused"] and not d["promoted"] and d["rule"] in REFUSING_RULES
    assert "30 held-out user(s)" in d["reason"] and "min_gate_users = 100" in d["reason"]


def test_without_production_the_first_model_is_promoted_and_the_record_says_so() -> None:
    d = gate_decision(0.01, None, tolerance=0.0, candidate_values=np.zeros(1), min_users=100)
    assert d["promoted"] and d["rule"] == "no production" and not d["refused"]


def test_without_per_user_values_the_means_are_compared() -> None:
    d = gate_decision(0.10, 0.10, tolerance=0.0)
    assert d["rule"] == "means only" and d["promoted"]


# ---------------------------------------------------------------------------------- pipeline and CLI
def _live_events(store, n: int = 3, days_after: int = 75) -> str:
    """``n`` events of one known user ``days_after`` days after the synthetic store's start."""
    events = take_snapshot(store).events
    user = str(events["user_id"].drop_nulls()[0])
    items = [str(i) for i in events["item_id"].unique().sort()[:n]]
    ts = START + timedelta(days=days_after)
    store.log.append(pa.table(
        {
            "user_id": pa.array([user] * n, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "event_type": pa.array(["purchase"] * n, pa.string()),
            "timestamp": pa.array([ts + timedelta(minutes=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
            "value": pa.array([1.0] * n, pa.float32()),
            "session_id": pa.nulls(n, pa.string()),
            "recommendation_id": pa.nulls(n, pa.string()),
            "context": pa.nulls(n, EVENT_SCHEMA.field("context").type),
        },
        schema=EVENT_SCHEMA,
    ))
    return user


def test_demo_store_plus_three_live_events_is_never_judged_on_one_user(tmp_path: Path) -> None:
    # the README demo: a synthetic store is trained, then 3 live events arrive much later; a fixed
    # last-30-days window held one user scoring 0.0000 for both models, the auto protocol does not
    settings, ds = tiny_store(tmp_path / "d", days=40)
    first = train(settings, TrainOptions(models=["popular"], trials=1), store=ds)
    assert first.promotion["rule"] == "no production" and first.version.stage == "production"
    _live_events(ds)
    second = train(settings, TrainOptions(models=["popular"], trials=1), store=ds)
    p = second.promotion
    assert p["n_users"] >= settings.training.min_gate_users and p["rule"] != "too few users"
    assert second.version.manifest()["promotion"]["n_users"] == p["n_users"]
    # with a bar above what the data holds, the same store is refused, not decided on a handful of users
    strict = Settings(data={"dir": settings.data.dir}, training={"min_gate_users": p["n_users"] + 1})
    third = train(strict, TrainOptions(models=["popular"], trials=1), store=ds)
    assert third.promotion["rule"] == "too few users" and third.promotion["refused"]
    assert not third.promotion["promoted"] and third.version.stage == "candidate"


def test_cli_train_exits_non_zero_on_a_refusal_unless_forced(tmp_path: Path) -> None:
    settings, ds = tiny_store(tmp_path / "d")  # fewer test users than 100; the CLI uses the default min_gate_users (100)
    ds.close()
    d = str(settings.data.dir)
    first = runner.invoke(app, ["-d", d, "train", "--trials", "1", "--models", "popular"])
    assert first.exit_code == 0, first.output
    refused = runner.invoke(app, ["-d", d, "train", "--trials", "1", "--models", "popular"])
    assert refused.exit_code == 3, refused.output
    assert re.search(r"only \d+ held-out user\(s\)", refused.stderr) and "min_gate_users = 100" in refused.stderr
    assert "--force" in refused.stderr
    reg = Registry(settings)
    assert len(reg.list()) == 2 and reg.production().version == reg.list()[0].version
    forced = runner.invoke(app, ["-d", d, "train", "--trials", "1", "--models", "popular", "--force"])
    assert forced.exit_code == 0, forced.output
    assert reg.production().forced
    # a lower threshold lets the same store decide
    ok = runner.invoke(app, ["-d", d, "train", "--trials", "1", "--models", "popular"],
                       env={"SCALEREC_TRAINING__MIN_GATE_USERS": "20"})
    assert ok.exit_code == 0, ok.output


