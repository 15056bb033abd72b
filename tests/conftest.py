"""Session checks shared by every test module."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Test modules mirror the package (tests/<package>/test_<module>.py) and share fixtures by module
# name (from test_pipeline import tiny_store): every test folder is importable from every other.
for _folder in sorted(p for p in Path(__file__).resolve().parent.rglob("*") if p.is_dir() and not p.name.startswith(("_", "."))):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

ONLINE_RETAIL = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "online-retail" / "online_retail.csv.gz"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Tests on the real Online Retail data skip where it is absent (a bare clone on a laptop), but
    # CI has ../shared beside the clone: there, a missing file must fail the run, not skip it.
    if os.environ.get("CI") and not ONLINE_RETAIL.is_file():
        pytest.exit(f"CI run without the Online Retail data at {ONLINE_RETAIL}; shared/ must sit beside the clone", returncode=1)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL cluster for the session (tests/_servers.py); fails under CI when
    it cannot start, skips elsewhere."""
    from _servers import PostgresServer, unavailable

    try:
        server = PostgresServer().start()
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        unavailable(f"cannot start a PostgreSQL server: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-compatible server on loopback for the session (credentials: test/test)."""
    from _servers import S3Server, unavailable

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    try:
        server = S3Server().start()
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        unavailable(f"cannot start an S3-compatible server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    """A catalogue URL on the session's PostgreSQL server with a fresh, empty schema."""
    return request.getfixturevalue("postgres_server").new_schema_url()


#: Every catalogue backend the contract suite (tests/data/test_catalog.py) runs against: id -> URL for a
#: test (given its request, for server fixtures). A new backend is one entry here.
CATALOG_BACKENDS = {
    "sqlite-file": lambda request: f"sqlite:///{request.getfixturevalue('tmp_path') / 'catalog.db'}",
    "sqlite-memory": lambda request: "sqlite:///:memory:",
    "postgresql": lambda request: request.getfixturevalue("postgres_url"),
}


@pytest.fixture(params=list(CATALOG_BACKENDS))
def catalog_url(request: pytest.FixtureRequest) -> str:
    return CATALOG_BACKENDS[request.param](request)


@pytest.fixture
def catalog(catalog_url: str):
    """An empty catalogue store of each backend in CATALOG_BACKENDS."""
    from scalerec.data.catalog import open_catalog

    store = open_catalog(catalog_url)
    yield store
    store.close()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test on the Ray cluster fixture belongs to the `ray` part of the suite (its own pytest
    # process, see run_suite.py) even where its author forgot the mark: `-m` selection runs after this.
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()) and item.get_closest_marker("ray") is None:
            item.add_marker(pytest.mark.ray)
