"""Serving before any model exists: popular/trending are counted from the store's events (with
the catalogue's filters); personal lists stay 503 naming `scalerec train`."""

from __future__ import annotations

import collections

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from scalerec.config import Settings
from scalerec.data.store import DataStore
from scalerec.data.validate import validate_events, validate_items
from scalerec.serving.http.app import create_app
from scalerec.serving.service import RecommendService
from scalerec.serving.state import NO_MODEL_VERSION


@pytest.fixture
def no_model(tmp_path):
    settings = Settings(data={"dir": tmp_path / "shop"})
    store = DataStore.open(settings)
    rows = [("u1", "mug"), ("u2", "mug"), ("u3", "mug"), ("u1", "lamp"), ("u2", "lamp"), ("u3", "desk")]
    events, rejects = validate_events(pa.table({
        "user_id": [u for u, _ in rows], "item_id": [i for _, i in rows], "event_type": ["purchase"] * len(rows),
        "timestamp": [f"2024-03-0{k + 1} 10:00" for k in range(len(rows))],
    }), settings)
    assert rejects.num_rows == 0
    store.log.append(events)
    items, _ = validate_items(pa.table({"item_id": ["mug", "lamp", "desk"], "categories": [["kitchen"], ["home"], ["office"]]}))
    store.catalog.upsert_items(items)
    store.close()
    service = RecommendService(settings)
    client = TestClient(create_app(service, watch=False, insecure_dev=True), raise_server_exceptions=False)
    yield client, rows
    service.close()


def test_popular_and_trending_answer_from_the_events_without_a_model(no_model):
    client, rows = no_model
    counts = collections.Counter(i for _, i in rows)
    for which in ("popular", "trending"):
        r = client.get(f"/v1/{which}?n=3")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == NO_MODEL_VERSION
        assert [x["item_id"] for x in body["items"]] == [i for i, _ in counts.most_common()]
    r = client.get("/v1/popular?n=3&category=home")
    assert [x["item_id"] for x in r.json()["items"]] == ["lamp"]


def test_personal_lists_stay_unavailable_and_say_how_to_train(no_model):
    client, _ = no_model
    r = client.get("/v1/users/u1/recommendations")
    assert r.status_code == 503 and "scalerec train" in r.json()["error"]["message"]


def test_no_events_at_all_is_a_503_naming_the_import(tmp_path):
    settings = Settings(data={"dir": tmp_path / "empty"})
    DataStore.open(settings).close()
    service = RecommendService(settings)
    try:
        client = TestClient(create_app(service, watch=False, insecure_dev=True), raise_server_exceptions=False)
        r = client.get("/v1/popular")
        assert r.status_code == 503 and "import events" in r.json()["error"]["message"]
    finally:
        service.close()
