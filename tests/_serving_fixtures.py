"""Shared fixtures of the serving tests: one small synthetic store with a trained ALS version,
built once per session and copied per test, plus the real app over it with API keys."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scalerec.config import Settings

N_USERS, N_ITEMS, N_EVENTS = 300, 150, 20_000


def build_store(data_dir: Path, *, family: str = "als") -> Settings:
    """Synthetic shop + one trained, promoted version of ``family`` (a few seconds)."""
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.training.pipeline import TrainOptions, train

    settings = Settings(data={"dir": data_dir})
    store = DataStore.open(settings)
    generate_store(store, n_users=N_USERS, n_items=N_ITEMS, n_events=N_EVENTS, seed=7, days=60)
    result = train(settings, TrainOptions(models=[family], trials=1), store=store)
    assert result.status == "registered" and result.version is not None
    store.close()
    return settings


def train_version(settings: Settings, family: str) -> Any:
    """Train and promote (forced) one more version of ``family``; returns its ModelVersion."""
    from scalerec.registry import Registry
    from scalerec.training.pipeline import TrainOptions, train

    result = train(settings, TrainOptions(models=[family], trials=1, promote=False))
    Registry(settings).promote(result.version.version, force=True)
    return result.version


@pytest.fixture(scope="session")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serving-base") / "data"
    build_store(d)
    return d


@dataclass
class Api:
    """The real app over a private copy of the base store, with one key per role."""

    client: Any
    service: Any
    settings: Settings
    keys: dict[str, str]

    def h(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def get(self, url: str, role: str = "read", **kw: Any) -> Any:
        return self.client.get(url, headers=self.h(role), **kw)

    def post(self, url: str, role: str = "write", **kw: Any) -> Any:
        return self.client.post(url, headers=self.h(role), **kw)


def make_api(base: Path, tmp_path: Path, **serving: Any) -> Api:
    from fastapi.testclient import TestClient

    from scalerec.serving.auth import ApiKeyStore
    from scalerec.serving.http.app import create_app
    from scalerec.serving.service import RecommendService

    d = tmp_path / "data"
    shutil.copytree(base, d)
    settings = Settings(data={"dir": d}, serving=serving)
    keys_store = ApiKeyStore.from_settings(settings)
    keys = {role: keys_store.create(role, f"test-{role}")[0] for role in ("read", "write", "admin")}
    service = RecommendService(settings)
    app = create_app(service, watch=False)
    client = TestClient(app, raise_server_exceptions=False)
    return Api(client, service, settings, keys)


@pytest.fixture(params=["exact", "hnsw"])
def api(request: pytest.FixtureRequest, base_store: Path, tmp_path: Path) -> Any:
    """The app with exact retrieval, and with FAISS HNSW (threshold below the catalogue size)."""
    limit = 10_000 if request.param == "exact" else 50
    a = make_api(base_store, tmp_path, exact_index_max_items=limit)
    yield a
    a.service.close()


@pytest.fixture
def api1(base_store: Path, tmp_path: Path) -> Any:
    """The app once (exact retrieval), for tests that do not depend on the index."""
    a = make_api(base_store, tmp_path)
    yield a
    a.service.close()
