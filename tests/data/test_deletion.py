"""User deletion is complete and provable (issue 17, defect 2): a user of an imported shop (events
only, no users row) deleted through the CLI or the API is gone from the event log, pending events,
the change feed's recent events, the recommendation log and the catalogue; every serving instance
(running, restarted, a second one polling the same data dir, after a rollback to a version trained
before the deletion) answers them like an id it never saw; the tombstone survives a crash and the
next run or open finishes the job; `users deletion-report` lists every place."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from scalerec.cli import app
from scalerec.config import Settings
from scalerec.data.deletion import masked_users, masks
from scalerec.data.impressions import ImpressionStore
from scalerec.data.store import DataStore
from scalerec.errors import UnknownUserError

runner = CliRunner()
N_USERS, N_ITEMS = 120, 48


def _write_events_csv(path: Path) -> None:
    """Three taste clusters, ~25 purchases per user over two months of 2011 (an imported history)."""
    rng = np.random.default_rng(3)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event_type", "timestamp"])
        for u in range(N_USERS):
            cluster = u % 3
            items = rng.choice(np.arange(cluster * 16, cluster * 16 + 16), size=12, replace=False)
            for k, i in enumerate(items.tolist() + rng.integers(0, N_ITEMS, size=3).tolist()):
                day = 1 + (u + k) % 58
                w.writerow([f"c{u:04d}", f"p{i:03d}", "purchase", f"2011-{1 + day // 29:02d}-{1 + day % 28:02d}T10:00:00"])


def _cli(data_dir: Path, *args: str) -> Any:
    return runner.invoke(app, ["--data-dir", str(data_dir), *args])


def _train(settings: Settings, *, promote: bool = True) -> str:
    from scalerec.registry import Registry
    from scalerec.training.pipeline import TrainOptions, train

    result = train(settings, TrainOptions(models=["als"], trials=1, promote=False))
    assert result.version is not None
    if promote:
        Registry(settings).promote(result.version.version, force=True)
    return result.version.version


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Events imported through the CLI (no users rows), one ALS version in production."""
    root = tmp_path_factory.mktemp("deletion-shop")
    csv_path = root / "events.csv"
    _write_events_csv(csv_path)
    d = root / "data"
    result = _cli(d, "import", "events", str(csv_path))
    assert result.exit_code == 0, result.output
    _train(Settings(data={"dir": d}))
    return d


@pytest.fixture
def data(shop: Path, tmp_path: Path) -> Settings:
    d = tmp_path / "data"
    shutil.copytree(shop, d)
    return Settings(data={"dir": d})


def _service(settings: Settings) -> Any:
    from scalerec.serving.service import RecommendService

    return RecommendService(settings)


def _heavy_user(svc: Any) -> str:
    st = svc.live.model
    counts = np.diff(np.asarray(st.seen_indptr))
    return str(st.user_ids[int(np.argmax(counts))])


def _answer(svc: Any, user: str) -> tuple[str, list[tuple[str, str]]]:
    r = svc.recommend_user(user, 10)
    return r["strategy"], [(i["item_id"], i["reason"]) for i in r["items"]]


def _stranger(svc: Any) -> tuple[str, list[tuple[str, str]]]:
    return _answer(svc, "never-seen-id")


def _log_text(settings: Settings) -> str:
    logs = Path(settings.data.dir) / "logs"
    return "".join(p.read_text() for p in sorted(logs.glob("recommendations-*.jsonl"))) if logs.is_dir() else ""


def _prune_change_feed(settings: Settings) -> None:
    """Drop every change-feed row (retention may prune them): the tombstones alone must mask."""
    import sqlite3

    with sqlite3.connect(Path(settings.data.dir) / "catalog.db") as conn:
        conn.execute("DELETE FROM serving_changes")


def test_cli_deletion_of_an_imported_user_reaches_every_service(data: Settings) -> None:
    store = DataStore.open(data)
    a, b = _service(data), _service(data)  # two instances polling the same data dir
    user = _heavy_user(a)
    assert store.catalog.get_user(user) is None, "an imported shop has no users rows"
    assert _answer(a, user)[0] == "model"
    # fold-in rows: fresh events that a compaction moved into the change feed's recent events
    a.ingest_events([{"user_id": user, "item_id": "p040", "event_type": "purchase"}])
    assert store.flush_pending() == 1 and store.catalog.count_recent_events(user) == 1
    assert _answer(a, user)[0] == "fold_in"
    a.recommend_user("someone-else", 3)
    a.reclog.flush()
    a.impressions.flush()
    assert f'"user_id":"{user}"' in _log_text(data)
    shown = ImpressionStore(Path(data.data.dir) / "impressions")
    assert sum(shown.count_user_rows([user]).values()) >= 1
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in shown.files())
    a.recommend_user(user, 5)  # buffered in a's log, not yet flushed when the deletion runs
    assert stat.S_IMODE(os.stat(Path(data.data.dir) / "logs").st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (Path(data.data.dir) / "logs").glob("*.jsonl"))

    result = _cli(Path(data.data.dir), "users", "delete", user, "--yes")
    assert result.exit_code == 0, result.output
    assert f"deleted user {user!r}" in result.output and "no user record" in result.output

    assert store.log.count_user_rows([user]) == {}
    assert store.catalog.count_user_pending_events(user) == 0 and store.catalog.count_recent_events(user) == 0
    assert user not in _log_text(data), "the recommendation log holds no trace"
    a.reclog.flush()
    assert user not in _log_text(data), "records buffered before the deletion are dropped at flush"
    assert shown.count_user_rows([user]) == {}, "impressions hold no trace"
    assert a.impressions.flush() == 0 and shown.count_user_rows([user]) == {}, "buffered impressions are dropped"
    assert shown.read().num_rows >= 1, "other users' impressions are kept"
    for svc in (a, b):  # (a) the running service, (d) a second instance: at their next poll
        svc.refresh()
        assert _answer(svc, user) == _stranger(svc)
        assert svc.live.model.user_row(user) >= 0 and user in svc.live.deleted_users
    _prune_change_feed(data)
    restarted = _service(data)  # (b)
    assert _answer(restarted, user) == _stranger(restarted)
    ranked = restarted.rank(user, ["p000", "p020", "p040"])
    assert ranked["strategy"] == "fallback" and {i["reason"] for i in ranked["items"]} == {"trending"}

    report = json.loads(_cli(Path(data.data.dir), "users", "deletion-report", user, "--json").output)
    removed = report["removed"]
    assert report["status"] == "finished" and not report["resumed"]
    assert removed["log_events"]["rows"] == 16 and removed["log_events"]["files"]
    assert removed["recent_events"]["rows"] == 1 and removed["user_record"]["rows"] == 0
    assert removed["recommendation_log"]["rows"] >= 1 and removed["recommendation_log"]["files"]
    assert removed["impressions"]["rows"] >= 1 and removed["impressions"]["files"]
    assert all(step["at"] for step in removed.values())
    assert [(v["stage"], v["masked"]) for v in report["model_versions"]] == [("production", True)]
    stored = report["stored_now"]
    assert stored["log_events"] == stored["pending_events"] == stored["recent_events"] == 0
    assert stored["recommendation_log_lines"] == 0 and stored["impressions"] == 0
    table = _cli(Path(data.data.dir), "users", "deletion-report", user)
    assert table.exit_code == 0 and "fold-in events" in table.output and "no (masked)" in table.output

    again = _cli(Path(data.data.dir), "users", "delete", user, "--yes")  # idempotent: nothing left to do
    assert isinstance(again.exception, UnknownUserError) and "nothing is stored" in str(again.exception)
    assert json.loads(_cli(Path(data.data.dir), "users", "deletion-report", user, "--json").output)["removed"] == removed
    for svc in (a, b, restarted):
        svc.close()
    store.close()


def test_api_deletion_then_rollback_to_a_version_trained_before(data: Settings) -> None:
    from fastapi.testclient import TestClient

    from scalerec.registry import Registry
    from scalerec.serving.auth import ApiKeyStore
    from scalerec.serving.http.app import create_app

    key = ApiKeyStore.from_settings(data).create("admin", "test")[0]
    svc = _service(data)
    client = TestClient(create_app(svc, watch=False), raise_server_exceptions=False)
    h = {"Authorization": f"Bearer {key}"}
    user = _heavy_user(svc)
    old = svc.live.model.version
    svc.ingest_events([{"user_id": user, "item_id": "p041", "event_type": "view"}])
    svc.store.flush_pending()
    r = client.delete(f"/v1/users/{user}", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["deleted"]["log_events"] == 16 and r.json()["deleted"]["recent_events"] == 1
    assert svc.store.catalog.count_recent_events(user) == 0
    stranger = client.get("/v1/users/never-seen-id/recommendations?n=10", headers=h).json()
    got = client.get(f"/v1/users/{user}/recommendations?n=10", headers=h).json()
    assert got["strategy"] == stranger["strategy"] == "fallback" and got["items"] == stranger["items"]

    new = _train(data)  # trained after the deletion: the user is not in it
    assert svc.refresh() and svc.live.model.version == new and svc.live.model.user_row(user) < 0
    _prune_change_feed(data)
    Registry(data).rollback()  # (c) back to the version trained before the deletion
    assert svc.refresh() and svc.live.model.version == old
    assert _answer(svc, user) == _stranger(svc)
    restarted = _service(data)
    assert restarted.live.model.version == old and _answer(restarted, user) == _stranger(restarted)
    report = restarted.store.deletion_report(user)
    assert [(v["version"], v["masked"]) for v in report["model_versions"]] == [(old, True)]
    assert client.delete(f"/v1/users/{user}", headers=h).status_code == 404  # nothing left
    svc.close()
    restarted.close()


def test_a_crash_between_steps_leaves_a_tombstone_that_the_next_open_finishes(data: Settings, monkeypatch) -> None:
    store = DataStore.open(data)
    svc = _service(data)
    user = _heavy_user(svc)

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # the process dies after the tombstone and the pending step

    monkeypatch.setattr(store.log, "delete_users_detailed", killed)
    with pytest.raises(KeyboardInterrupt):
        store.delete_user(user)
    monkeypatch.undo()
    assert store.catalog.unfinished_user_deletions() == [user]
    assert sum(store.log.count_user_rows([user]).values()) == 15, "the log step never ran"
    svc.refresh()
    assert _answer(svc, user) == _stranger(svc), "an unfinished deletion already masks the user"
    _prune_change_feed(data)
    assert svc.state.masked_users(svc.live.model) == {user}, "by its tombstone"
    assert _answer(_service(data), user) == _stranger(svc)  # a serving start opens the store: it finishes
    assert store.catalog.unfinished_user_deletions() == []
    assert store.log.count_user_rows([user]) == {}
    report = store.deletion_report(user)
    assert report["status"] == "finished" and report["resumed"] and report["removed"]["log_events"]["rows"] == 15
    svc.close()
    store.close()


def test_the_next_run_finishes_an_interrupted_deletion(data: Settings, monkeypatch) -> None:
    store = DataStore.open(data)
    user = "c0007"
    import scalerec.serving.reclog as reclog

    monkeypatch.setattr(reclog, "scrub_users", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.delete_user(user)
    monkeypatch.undo()
    assert store.catalog.user_tombstone(user)["deleted_at"] is None
    assert store.delete_user(user) == {"log_events": 0, "pending_events": 0, "user_record": 0}  # resumes
    assert store.deletion_report(user)["status"] == "finished"
    with pytest.raises(UnknownUserError, match="nothing is stored"):
        store.delete_user(user)
    store.close()


def test_a_user_who_comes_back_is_a_new_user(data: Settings) -> None:
    store = DataStore.open(data)
    svc = _service(data)
    user = _heavy_user(svc)
    store.delete_user(user)
    svc.refresh()
    svc.ingest_events([{"user_id": user, "item_id": "p001", "event_type": "purchase"}])
    strategy, items = _answer(svc, user)
    assert strategy == "fold_in" and "p001" not in [i for i, _ in items], "their new events personalise"
    assert store.deletion_report(user)["stored_now"]["pending_events"] == 1, "and are kept"
    assert store.delete_user(user)["pending_events"] == 1  # a second deletion removes the new user's data
    svc.close()
    store.close()


# ---------------------------------------------------------------------- the masking rule, the tombstone table
def test_masking_rule() -> None:
    vocab = np.array(["a", "b", "c", "d"])
    tombs = [("a", None), ("b", 100), ("c", 300), ("zz", None)]
    assert masked_users(vocab, tombs, 200) == frozenset({"a", "c"})  # unfinished: always; finished after the data
    assert masked_users(vocab, tombs, 400) == frozenset({"a"}), "a version trained after the deletion holds a new user"
    assert masked_users(vocab, tombs, None) == frozenset({"a", "b", "c"}), "unknown data time: mask"
    assert masked_users(np.array([], dtype=str), tombs, 0) == frozenset()
    assert masks(None, 10) and masks(10, 10) and not masks(10, 11)


def test_tombstone_table(catalog) -> None:
    head = catalog.change_head()
    assert catalog.tombstone_head() == 0 and catalog.user_tombstone("u") is None
    catalog.begin_user_deletion("u", 1_000)
    t = catalog.user_tombstone("u")
    assert t["deleted_at"] is None and t["started_at"] == 1_000 and catalog.unfinished_user_deletions() == ["u"]
    catalog.begin_user_deletion("u", 2_000)  # resumed: keeps its start
    assert catalog.user_tombstone("u")["started_at"] == 1_000
    catalog.finish_user_deletion("u", 3_000, {"removed": {"log_events": {"rows": 2}}})
    t = catalog.user_tombstone("u")
    assert t["deleted_at"] == 3_000 and t["report"]["removed"]["log_events"]["rows"] == 2
    assert catalog.unfinished_user_deletions() == []
    assert catalog.user_tombstones() == [(catalog.tombstone_head(), "u", 3_000)]
    assert catalog.user_tombstones(catalog.tombstone_head()) == []
    assert [(k, key) for _, k, key in catalog.changes_since(head)] == [("user_deleted", "u")] * 3
    catalog.begin_user_deletion("u", 5_000)  # deleted again after coming back: a new start
    assert catalog.user_tombstone("u")["started_at"] == 5_000


# ---------------------------------------------------------------------- the recommendation log
def test_scrub_is_atomic_and_a_writer_keeps_appending(tmp_path: Path) -> None:
    from scalerec.serving.reclog import RecommendationLog, count_user_lines, scrub_users

    log = RecommendationLog(tmp_path / "logs")
    for i in range(6):
        log.add({"recommendation_id": str(i), "at": 1.0, "user_id": "x" if i % 2 else "y", "items": []})
    log.add({"recommendation_id": "p", "at": 1.0, "kind": "popular", "items": ["x"]})
    assert log.flush() == 7
    assert count_user_lines(tmp_path / "logs", ["x"]) == {next((tmp_path / "logs").glob("*.jsonl")).name: 3}
    out = scrub_users(tmp_path / "logs", ["x"])
    assert out["lines"] == 3 and count_user_lines(tmp_path / "logs", ["x"]) == {}
    log.add({"recommendation_id": "7", "at": 2.0, "user_id": "y", "items": []})
    assert log.flush() == 1  # appends to the scrubbed file, not the replaced one
    lines = [json.loads(line) for line in _read_logs(tmp_path / "logs")]
    assert [r["recommendation_id"] for r in lines] == ["0", "2", "4", "p", "7"]
    assert scrub_users(tmp_path / "logs", ["x"]) == {"files": {}, "lines": 0}
    assert not list((tmp_path / "logs").glob(".scrub-*"))


def _read_logs(root: Path) -> list[str]:
    return [line for p in sorted(root.glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_a_deletion_finished_on_another_machine_reaches_this_log(tmp_path) -> None:
    """Two data directories on one catalogue (two machines): the user's events in the other log
    go at its next flush or start; a deletion finished on this log is not applied twice."""
    import pyarrow as pa

    from scalerec.data.validate import validate_events

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    worker = DataStore.open(Settings(data={"dir": tmp_path / "worker", "catalog_url": url}))
    server = DataStore.open(Settings(data={"dir": tmp_path / "server", "catalog_url": url}))
    events, _ = validate_events(pa.table({"user_id": ["gone", "gone", "kept"], "item_id": ["a", "b", "a"],
                                          "event_type": ["view"] * 3, "timestamp": [1_700_000_000] * 3}), Settings())
    worker.catalog.add_pending_events(events)
    assert worker.flush_pending() == 3  # into the worker's log
    assert server.delete_user("gone")["log_events"] == 0  # the server's own log has none of it
    assert sorted(worker.log.read(columns=["user_id"]).column("user_id").to_pylist()) == ["gone", "gone", "kept"]
    assert worker.flush_pending() == 0  # applies the tombstone first
    assert worker.log.read(columns=["user_id"]).column("user_id").to_pylist() == ["kept"]
    assert server._apply_shared_deletions() == 0, "finished on the server's own log: no second pass"
    worker.close()
    server.close()
