"""The Online Retail reference protocol on the real file: 1,271 test users, reference figures reproduced."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from scalerec.config import Settings
from scalerec.data.importers import import_file
from scalerec.data.store import DataStore
from scalerec.datasets.online_retail import online_retail_protocol
from scalerec.evaluation import evaluate
from scalerec.models import make_model

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "online-retail"
CSV = DATA / "online_retail.csv.gz"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CSV.is_file(), reason=f"Online Retail data not found at {CSV}"),
]


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    store = DataStore.open(Settings(data={"dir": tmp_path_factory.mktemp("online-retail")}))
    import_file(store, "events", CSV, preset="online-retail")
    return online_retail_protocol(store)


def test_protocol_has_the_readme_test_users(protocol) -> None:
    assert len(protocol.test_users) == 1271
    # max(InvoiceDate) 2011-12-09 12:50 minus 30 days (the README's "20:46" would leave 1,265 users)
    assert protocol.info["test_start"] == datetime(2011, 11, 9, 12, 50, tzinfo=timezone.utc)
    # every test user has training interactions and only new, known items are relevant
    test_rows = protocol.test[protocol.test_users]
    train_rows = protocol.train.matrix[protocol.test_users]
    assert (train_rows.getnnz(axis=1) > 0).all()
    assert test_rows.multiply(train_rows).nnz == 0
    assert set(protocol.train.matrix.data) == {1.0}


def test_most_popular_reproduces_the_reference(protocol) -> None:
    metrics = evaluate(make_model("popular").fit(protocol.train), protocol, k=20, metrics=("recall", "ndcg"))
    assert metrics["recall@20"] == pytest.approx(0.0369, abs=0.005)
    assert metrics["ndcg@20"] == pytest.approx(0.0394, abs=0.005)


def test_ease_reproduces_the_reference(protocol) -> None:
    metrics = evaluate(make_model("ease", l2=500.0).fit(protocol.train), protocol, k=20, metrics=("recall", "ndcg"))
    assert metrics["recall@20"] == pytest.approx(0.1063, abs=0.005)
    assert metrics["ndcg@20"] == pytest.approx(0.1055, abs=0.005)


def test_recency_weighted_ease_reaches_the_quality_goal(protocol) -> None:
    # The goal for the best model is Recall@20 >= 0.110; binary EASE tops out at 0.106.
    # Recency weighting (cells = min(1, decayed purchase count), built from training events only
    # through the model's matrix_overrides) is an ordinary hyperparameter any user can set.
    model = make_model("ease", l2=300.0, recency_half_life_days=45.0)
    train = protocol.train_for(model)
    assert train.matrix.data.max() <= 1.0 and train.matrix.data.min() < 1.0
    assert (train.user_ids == protocol.train.user_ids).all() and (train.item_ids == protocol.train.item_ids).all()
    metrics = evaluate(model.fit(train), protocol, k=20, metrics=("recall", "ndcg"))
    assert metrics["recall@20"] >= 0.110
    binary = evaluate(make_model("ease", l2=300.0).fit(protocol.train), protocol, k=20, metrics=("recall",))
    assert metrics["recall@20"] > binary["recall@20"] + 0.01
