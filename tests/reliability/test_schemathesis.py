"""Schemathesis over the OpenAPI document of the real app on a real uvicorn on loopback: every check
enabled, a bounded and seeded number of examples per operation, zero server errors and zero check failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from _server import free_port
from _reliability import record

#: examples per operation and phase; with the stateful phase ~1,500 requests (~20 s on one core)
MAX_EXAMPLES = 40
SEED = 17


@pytest.fixture
def live_app(rel_store):  # noqa: ANN001, ANN201
    """The app under uvicorn in a thread; the failed-auth limiter lifted (schemathesis sends many
    invalid keys on purpose, and a 429 for every later request would leave the API untested)."""
    import uvicorn

    from scalerec.serving.auth import FailedAuthLimiter
    from scalerec.serving.http.app import create_app
    from scalerec.serving.service import RecommendService

    service = RecommendService(rel_store.settings())
    app = create_app(service, watch=False)
    app.state.auth.limiter = FailedAuthLimiter(burst=10**9)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)
    service.close()


def _failures(ndjson: Path) -> tuple[list[dict], Counter[int], int]:
    """(check failures, status counts, requests sent) from schemathesis' NDJSON event stream."""
    failures, statuses, requests = [], Counter(), 0
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished.get("recorder") or {}
        for interaction in (recorder.get("interactions") or {}).values():
            requests += 1
            response = interaction.get("response")
            if response is not None:
                statuses[response["status_code"]] += 1
        for case_id, checks in (recorder.get("checks") or {}).items():
            for check in checks:
                if check["status"] == "failure":
                    failures.append({"case": case_id, "check": check["name"],
                                     "failure": (check.get("failure_info") or {}).get("failure")})
    return failures, statuses, requests


def _catalog_items(rel_store) -> list[dict]:  # noqa: ANN001
    from scalerec.config import Settings
    from scalerec.data.store import DataStore

    store = DataStore.open(Settings(data={"dir": rel_store.dir}), read_only=True)
    try:
        return store.catalog.items_table().to_pylist()
    finally:
        store.close()


def test_schemathesis_all_checks_no_server_error(live_app: str, rel_store, tmp_path: Path) -> None:  # noqa: ANN001
    ndjson = tmp_path / "schemathesis.ndjson"
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run", f"{live_app}/openapi.json",
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        "--generation-database", "none", "--workers", "1", "--no-color", "--request-timeout", "30",
        "-H", f"Authorization: Bearer {rel_store.keys['admin']}",
        "--report", "ndjson", "--report-ndjson-path", str(ndjson),
    ]
    # categories with many items: a stateful PUT or DELETE of a few items cannot empty one
    cats = Counter(c for r in _catalog_items(rel_store) for c in (r["categories"] or []))
    env = dict(os.environ, SCHEMATHESIS_HOOKS="_st_hooks",
               SCALEREC_ST_CATEGORIES=json.dumps(sorted(c for c, k in cats.items() if k >= 5)),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    (tmp_path / "schemathesis.out").write_text(proc.stdout + proc.stderr)
    failures, statuses, requests = _failures(ndjson)
    record(schemathesis_requests=requests)
    server_errors = sum(n for s, n in statuses.items() if s >= 500)
    assert requests > 500, proc.stdout[-3000:]
    assert server_errors == 0, (statuses, proc.stdout[-6000:])
    assert failures == [], proc.stdout[-8000:]
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
