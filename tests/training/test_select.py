"""Choosing between the search's finalists (training.select): a tie on validation goes to a second fold,
which replaces the leader only when it shows another family better; a clear leader is left alone."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
import scipy.sparse as sp

from scalerec.config import Settings
from scalerec.data.snapshot import take_snapshot
from scalerec.evaluation.splits import make_protocol, second_fold
from scalerec.models import MODELS
from scalerec.models.popular import MostPopular
from scalerec.training.pipeline import fit_and_score
from scalerec.training.select import choose_family
from scalerec.training.tuning import FamilyResult
from test_pipeline import LeastPopular, tiny_store

UNCERTAINTY = {"confidence": 0.95, "n_boot": 200, "seed": 0}
METRIC = "ndcg@20"


class FoldSensitivePopular(MostPopular):
    """Ranks exactly as most-popular on a training matrix of at least ``min_users`` rows, least-popular
    first on a smaller one: tied with most-popular on the validation part, worse on the second fold
    (whose training part is the validation part's, less its window)."""

    family = "popular_fold"
    min_users = 0

    def _fit(self, X: sp.csr_matrix, progress: Any) -> None:
        super()._fit(X, progress)
        if X.shape[0] < self.min_users:
            self.popularity_ = -self.popularity_


@pytest.fixture(autouse=True)
def _families(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, FoldSensitivePopular.family, FoldSensitivePopular)
    monkeypatch.setitem(MODELS, LeastPopular.family, LeastPopular)


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> tuple[Any, Any, Settings, pl.DataFrame]:
    """(validation split, its second fold's builder, settings, events) of the auto protocol on a small shop."""
    settings, store = tiny_store(tmp_path_factory.mktemp("select") / "data")
    events: pl.DataFrame = take_snapshot(store).events
    store.close()
    _, inner = make_protocol("auto", events, settings=settings)
    return inner, (lambda: second_fold("auto", inner, settings=settings)), settings, events


def _result(family: str, value: float, low: float, high: float, params: dict[str, Any] | None = None) -> FamilyResult:
    return FamilyResult(family=family, study=f"{family}-study", best_value=value, best_params=params or {},
                        best_intervals={METRIC: {"mean": value, "low": low, "high": high, "n_users": 30}})


def test_a_tie_on_validation_is_settled_by_the_second_fold(parts, monkeypatch) -> None:
    inner, fold, *_ = parts
    monkeypatch.setattr(FoldSensitivePopular, "min_users", inner.train.n_users)  # fold 2 trains on fewer users
    # the leader leads on validation by a hair (as a best-of-many trial does) and ranks as the other there
    leader = _result("popular_fold", 0.1001, 0.08, 0.12)
    plain = _result("popular", 0.1000, 0.08, 0.12)
    winner, rec = choose_family([leader, plain], inner, fold, METRIC, uncertainty=UNCERTAINTY, fit_score=fit_and_score)
    assert rec["leader"] == "popular_fold"
    f = rec["finalists"]
    # the same rankings on the validation users: a paired difference of exactly 0, a tie
    assert f["popular"]["paired_validation"]["low"] == f["popular"]["paired_validation"]["high"] == 0.0
    assert f["popular"]["tied_on_validation"]
    # on the second fold the leader turns out worse: the contender is shown better and wins
    assert f["popular"]["paired_second_fold"]["low"] > 0 and f["popular"]["better_on_second_fold"]
    assert winner is plain and rec["chosen"] == "popular" and rec["decided_by"] == "second fold"
    for family in ("popular", "popular_fold"):  # both folds' figures, each with its interval
        for part in ("validation", "second_fold"):
            iv = f[family][part]
            assert iv["low"] <= iv["mean"] <= iv["high"] and iv["n_users"] > 0
    # the second fold is recorded: a window ending where the validation window starts
    assert rec["second_fold"]["end"] == inner.info["test_start"].isoformat() and rec["second_fold"]["users"] > 0
    # deterministic for a seed
    assert choose_family([leader, plain], inner, fold, METRIC, uncertainty=UNCERTAINTY, fit_score=fit_and_score)[1] == rec


def test_a_tie_the_second_fold_cannot_settle_keeps_the_leader(parts) -> None:
    inner, fold, *_ = parts
    # identical on both folds (min_users 0: most-popular everywhere): no evidence against the leader
    leader, plain = _result("popular_fold", 0.1001, 0.08, 0.12), _result("popular", 0.1000, 0.08, 0.12)
    winner, rec = choose_family([leader, plain], inner, fold, METRIC, uncertainty=UNCERTAINTY, fit_score=fit_and_score)
    assert winner is leader and rec["decided_by"] == "validation" and "shows none" in rec["reason"]
    assert rec["finalists"]["popular"]["tied_on_validation"]
    assert rec["finalists"]["popular"]["paired_second_fold"]["low"] == 0.0 == rec["finalists"]["popular"]["paired_second_fold"]["high"]


def test_a_clearly_better_leader_is_not_overruled(parts) -> None:
    inner, fold, *_ = parts
    built: list[int] = []

    def counted_fold():
        built.append(1)
        return fold()

    leader = _result("itemknn", 0.30, 0.25, 0.35)
    # a worse model whose own interval (made wide here) reaches the leader: refitted, then shown worse
    worse = _result("worst", 0.05, 0.0, 0.31)
    winner, rec = choose_family([worse, leader], inner, counted_fold, METRIC, uncertainty=UNCERTAINTY, fit_score=fit_and_score)
    assert winner is leader and rec["decided_by"] == "validation"
    paired = rec["finalists"]["worst"]["paired_validation"]
    assert paired["high"] < 0 and not rec["finalists"]["worst"]["tied_on_validation"]
    assert not built and "second_fold" not in rec  # no second fold needed, none built


def test_the_leader_rule_and_a_family_out_of_reach_need_no_refit(parts) -> None:
    inner, fold, *_ = parts
    def no_fit(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing to refit")

    leader, plain = _result("popular_fold", 0.1001, 0.08, 0.12), _result("popular", 0.1000, 0.08, 0.12)
    winner, rec = choose_family([leader, plain], inner, fold, METRIC, tie_break="leader", uncertainty=UNCERTAINTY, fit_score=no_fit)
    assert winner is leader and rec["decided_by"] == "validation"
    far = _result("popular", 0.05, 0.04, 0.06)  # its interval stops short of the leader's 0.1001
    winner, rec = choose_family([leader, far], inner, fold, METRIC, uncertainty=UNCERTAINTY, fit_score=no_fit)
    assert winner is leader and "reaches" in rec["reason"] and not rec["finalists"]


def test_second_folds_are_disjoint_from_the_validation_part(parts) -> None:
    inner, fold, settings, events = parts
    from test_holdout import _assert_apart, front_loaded

    second = fold()  # auto, temporal: the window before the validation window
    assert second.info["test_end"] == inner.info["test_start"] and second.info["rule"] == "temporal"
    _assert_apart(inner, second)
    _, valid = make_protocol("auto", front_loaded(events), settings=settings)  # each user's newest items
    assert valid.info["rule"] == "leave-last-share"
    _assert_apart(valid, second_fold("auto", valid, settings=settings))
    for name, opts in [("temporal", {"test_days": 10}), ("leave-last", {"k": 1}), ("random", {"ratios": (0.8, 0.2)})]:
        _, valid = make_protocol(name, events, settings=settings, **opts)
        _assert_apart(valid, second_fold(name, valid, settings=settings, **opts))
