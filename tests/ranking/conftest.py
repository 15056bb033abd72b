"""The trained synthetic shop the ranking tests share (trained once per session: ~30 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalerec.config import Settings

RANKING = {"min_queries": 50, "max_queries": 1500, "trees": 60, "learning_windows": 2}  # two: the stacking, at half the cost


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.training.pipeline import TrainOptions, train

    d = tmp_path_factory.mktemp("ranking-shop") / "data"
    settings = Settings(data={"dir": d}, ranking=RANKING)
    store = DataStore.open(settings)
    generate_store(store, n_users=1500, n_items=300, n_events=150_000, seed=11, days=90,
                   start="2024-09-01", reviews=0.2)
    result = train(settings, TrainOptions(models=["als"], trials=1), store=store)
    store.close()
    assert result.ranking["status"] == "active", result.ranking["reason"]
    return d


@pytest.fixture
def app(shop: Path, tmp_path: Path):
    from _serving_fixtures import make_api

    a = make_api(shop, tmp_path)
    yield a
    a.service.close()
