"""The reliability suite (issue 17): every test here is marked ``reliability``; shared store and counts."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from _serving_fixtures import build_store

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # before `-m` selection: `-m reliability` (and run_suite's core part, `not ray`) sees the mark
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def rel_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic store with one trained ALS version and one key per role (keys in keys.json)."""
    from scalerec.config import Settings
    from scalerec.serving.auth import ApiKeyStore

    d = tmp_path_factory.mktemp("reliability-base") / "data"
    build_store(d)
    keys_store = ApiKeyStore.from_settings(Settings(data={"dir": d}))
    keys = {role: keys_store.create(role, f"rel-{role}")[0] for role in ("read", "write", "admin")}
    (d.parent / "keys.json").write_text(json.dumps(keys))
    return d


@dataclass
class Store:
    dir: Path
    keys: dict[str, str]

    def settings(self):  # noqa: ANN201
        from scalerec.config import Settings

        return Settings(data={"dir": self.dir})

    def h(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@pytest.fixture
def rel_store(rel_base: Path, tmp_path: Path) -> Store:
    """A private copy of the base store (a test may write to it, kill a server on it)."""
    d = tmp_path / "data"
    shutil.copytree(rel_base, d)
    return Store(d, json.loads((rel_base.parent / "keys.json").read_text()))
