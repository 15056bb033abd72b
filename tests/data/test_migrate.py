"""`scalerec.data.migrate`: an embedded directory (SQLite catalogue, local model store) moved to a
real PostgreSQL server and a real S3-compatible server (moto), verified, resumable, refusing a
non-empty target, and stopped by a lost lease; the source is never changed before verification."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scalerec.config import Settings
from scalerec.data.catalog import open_catalog
from scalerec.data.catalog.copy import TABLES
from scalerec.data.migrate import migrate
from scalerec.data.objectstore import ObjectStore
from scalerec.errors import ConflictError, LeaseLostError, StorageError
from test_catalog import events_table

UNICODE_ITEM = "Äpfel-ß"  # sorts differently under a linguistic collation than under the source's byte order


def _items(ids: list[str], titles: list[str]) -> pa.Table:
    from scalerec.data.validate import validate_items

    valid, rejects = validate_items(pa.table({"item_id": ids, "title": titles}))
    assert rejects.num_rows == 0
    return valid


def _source_rows(db: Path) -> dict[str, list[tuple]]:
    """Every migrated table of a SQLite catalogue, read with the plain driver (what must not change)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t.name: sorted(conn.execute(f"SELECT {', '.join(t.cols)} FROM {t.name} WHERE {t.where}").fetchall(),
                               key=repr)
                for t in TABLES if t.name in present}
    finally:
        conn.close()


def _target_rows(url: str) -> dict[str, list[tuple]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return {t.name: sorted(conn.execute(f"SELECT {', '.join(t.cols)} FROM {t.name} WHERE {t.where}").fetchall(),
                               key=repr) for t in TABLES}


@pytest.fixture(scope="module")
def embedded_template(tmp_path_factory) -> Path:
    """An embedded shop with something in every table: items (one with a non-ASCII id), users,
    pending (one claimed) and kept events, a trained and promoted version, API keys, a finished
    deletion, an idempotency key, an import fingerprint, an experiment and a placement."""
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.serving.auth import ApiKeyStore
    from scalerec.training.pipeline import TrainOptions, train

    root = tmp_path_factory.mktemp("embedded") / "shop"
    settings = Settings(data={"dir": root}, training={"min_gate_users": 20})
    with DataStore.open(settings) as store:
        generate_store(store, n_users=120, n_items=50, n_events=4000, seed=3, days=40)
        assert train(settings, TrainOptions(models=["als"], trials=1), store=store).status == "registered"
        cat = store.catalog
        cat.upsert_items(_items([UNICODE_ITEM, "zz-last"], ["Äpfel", "Last"]))
        cat.add_pending_events(events_table(40))
        cat.add_pending_events_once(events_table(3, start=100), "idem-1", "h", '{"accepted": 3}',
                                    now_us=int(time.time() * 1e6), retention_us=86_400_000_000)
        cat.record_import_fingerprint("fp-1", "tx-1", "items.csv", 2, "2026-01-01T00:00:00Z")
        cat.insert_experiment({"name": "exp-1", "status": "running", "spec": {"variants": ["a", "b"]},
                               "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
        cat.put_placement("home", json.dumps({"strategy": "popular"}), "2026-01-01T00:00:00Z")
        cat.set_meta("blocklist-test", "[]")
        user = str(store.catalog.users_table().column("user_id")[0])
        store.delete_user(user)
    for role in ("read", "admin"):
        ApiKeyStore.from_settings(settings).create(role, f"k-{role}")
    with open_catalog(f"sqlite:///{root / 'catalog.db'}") as cat:
        cat.drain_pending_events(5)  # a compaction interrupted between claim and ack (its next start resolves it)
    return root


@pytest.fixture
def embedded(embedded_template, tmp_path) -> Settings:
    import shutil

    root = tmp_path / "shop"
    shutil.copytree(embedded_template, root)
    return Settings(data={"dir": root}, training={"min_gate_users": 20})


def _db(settings: Settings) -> Path:
    return Path(settings.data.dir) / "catalog.db"


def test_everything_is_copied_verified_and_served_from_the_shared_setup(embedded, postgres_url, s3_server, tmp_path):
    store_url = s3_server.bucket_url()
    before = _source_rows(_db(embedded))
    calls: list[tuple[str, str]] = []
    report = migrate(embedded, to_catalog=postgres_url, to_store=store_url, block_rows=7,
                     progress=lambda step, what, done, total: calls.append((step, what)))
    assert report.ok, report.failures()
    assert report.mode == "replica"
    assert {("catalog", "items"), ("catalog", "pending_events"), ("store", report.versions[0].name)} <= set(calls)
    # counts and checksums: every table of the source, equal on both sides
    by_name = {t.name: t for t in report.tables}
    for name, rows in before.items():
        assert by_name[name].source_rows == by_name[name].target_rows == len(rows), name
        assert by_name[name].checksum == by_name[name].target_checksum
    assert by_name["items"].source_rows == 52 and by_name["pending_events"].source_rows == 43
    assert _target_rows(postgres_url) == {n: before.get(n, []) for n in _target_rows(postgres_url)}
    # the source is as it was, marked once verified
    after = _source_rows(_db(embedded))
    assert {k: v for k, v in after.items() if k != "meta"} == {k: v for k, v in before.items() if k != "meta"}
    with open_catalog(f"sqlite:///{_db(embedded)}") as src:
        marked = json.loads(src.get_meta("migrated_to"))
        assert marked["catalog_url"] == postgres_url and marked["store_url"] == store_url
    # every version is committed in the store, byte for byte
    store = ObjectStore(store_url)
    assert [v.name for v in report.versions] == sorted(p.name for p in (Path(embedded.data.dir) / "models").iterdir()
                                                       if not p.name.startswith("."))
    assert all(store.committed(v.name) and v.uploaded for v in report.versions)

    # a machine with an empty directory and the two URLs serves the same model and sees the same state
    from scalerec.registry import Registry
    from scalerec.serving.auth import ApiKeyStore

    shared = Settings(data={"dir": tmp_path / "other", "catalog_url": postgres_url, "store_url": store_url})
    old, new = Registry(embedded).load(), Registry(shared).load()
    assert old.version == new.version
    users = [str(u) for u in old.matrix.user_ids[:5]]
    ids_old, scores_old = old.model.recommend(np.arange(5), 5)
    ids_new, scores_new = new.model.recommend(np.arange(5), 5)
    np.testing.assert_array_equal(ids_old, ids_new)
    np.testing.assert_allclose(scores_old, scores_new, rtol=1e-5)
    assert users
    assert len(ApiKeyStore.from_settings(shared).list()) == 2
    with open_catalog(postgres_url) as target:
        assert target.get_item(UNICODE_ITEM)["title"] == "Äpfel"
        with open_catalog(f"sqlite:///{_db(embedded)}", read_only=True) as src:
            src_head, claims = src.pending_head(), src.pending_claims()
        assert claims and target.pending_claims() == claims, "the interrupted compaction's claim moved with its events"
        assert target.pending_head() == src_head
        target.add_pending_events(events_table(1, start=500))
        assert target.pending_head() == src_head + 1, "new ids continue after the source's (never reused)"
        assert target.change_head() > 0 and target.tombstone_head() > 0


def test_an_interrupted_migration_resumes_without_duplicates(embedded, postgres_url, s3_server, monkeypatch):
    store_url = s3_server.bucket_url()
    real_publish = ObjectStore.publish

    def crash_before_the_marker(self, local_dir, name):
        tmp = Path(local_dir)
        files = [p for p in tmp.rglob("*") if p.is_file() and p.name != self.marker]
        for p in files[: len(files) // 2]:  # some files uploaded, then the process dies
            with open(p, "rb") as src, self.fs.open_output_stream(self._key(name, p.relative_to(tmp).as_posix())) as dst:
                dst.write(src.read())
        raise KeyboardInterrupt

    monkeypatch.setattr(ObjectStore, "publish", crash_before_the_marker)
    with pytest.raises(KeyboardInterrupt):
        migrate(embedded, to_catalog=postgres_url, to_store=store_url)
    assert not ObjectStore(store_url).committed(sorted(p.name for p in (Path(embedded.data.dir) / "models").iterdir())[-1])
    monkeypatch.setattr(ObjectStore, "publish", real_publish)

    blocks = {"n": 0}

    def die_after_three_blocks(step, what, done, total):
        if step == "catalog" and what == "pending_events" and done:
            blocks["n"] += 1
            if blocks["n"] == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate(embedded, to_catalog=postgres_url, to_store=store_url, block_rows=5, progress=die_after_three_blocks)
    partial = _target_rows(postgres_url)
    assert 0 < len(partial["pending_events"]) < 43 and partial["serving_changes"] == []
    with open_catalog(f"sqlite:///{_db(embedded)}") as src:
        assert src.get_meta("migrated_to") is None, "not marked before verification passed"

    report = migrate(embedded, to_catalog=postgres_url, to_store=store_url, block_rows=5)
    assert report.ok, report.failures()
    source, target = _source_rows(_db(embedded)), _target_rows(postgres_url)
    assert target == {t.name: source.get(t.name, []) for t in TABLES}
    ids = [r[0] for r in _target_rows(postgres_url)["pending_events"]]
    assert len(ids) == len(set(ids)) == 43

    # run again: nothing to copy or upload, only verified
    again = migrate(embedded, to_catalog=postgres_url, to_store=store_url)
    assert again.ok and not any(v.uploaded for v in again.versions)


def test_a_non_empty_target_is_refused_unless_forced_and_nothing_is_overwritten(embedded, postgres_url, tmp_path):
    with open_catalog(postgres_url) as target:
        target.upsert_items(_items([UNICODE_ITEM, "theirs"], ["Their apples", "Theirs"]))
    with pytest.raises(ConflictError, match=r"not empty: items \(2 rows\).*--force"):
        migrate(embedded, to_catalog=postgres_url)
    # pending events cannot be merged (their ids would collide): flushed first
    with pytest.raises(StorageError, match="scalerec compact"):
        migrate(embedded, to_catalog=postgres_url, force=True)
    from scalerec.data.store import DataStore

    with DataStore.open(embedded) as store:
        store.compact()
    report = migrate(embedded, to_catalog=postgres_url, force=True, block_rows=9)
    assert report.mode == "merge" and not report.ok
    assert report.failures() == [f"table items: item_id={UNICODE_ITEM!r} differs"]
    with open_catalog(postgres_url) as target:
        assert target.get_item(UNICODE_ITEM)["title"] == "Their apples", "the target's row is kept"
        assert target.get_item("theirs") is not None and target.get_item("zz-last")["title"] == "Last"
        assert target.count_items() == 53
        assert target.changes_since(0), "merged items were recorded in the target's change feed"
    with open_catalog(f"sqlite:///{_db(embedded)}") as src:
        assert src.get_meta("migrated_to") is None


def test_a_target_changed_after_the_migration_is_not_touched_again(embedded, postgres_url):
    assert migrate(embedded, to_catalog=postgres_url).ok
    with open_catalog(postgres_url) as target:
        target.upsert_items(_items(["new-on-the-cluster"], ["New"]))
    with pytest.raises(ConflictError, match="migrated from this directory before and differs"):
        migrate(embedded, to_catalog=postgres_url)
    with open_catalog(postgres_url) as target:
        assert target.get_item("new-on-the-cluster") is not None


def test_a_non_empty_object_store_is_refused(embedded, tmp_path):
    other = tmp_path / "store"
    (other / "v9999-x").mkdir(parents=True)
    (other / "v9999-x" / "manifest.json").write_text("{}")
    with pytest.raises(ConflictError, match="already holds other model versions.*--force"):
        migrate(embedded, to_store=str(other))
    report = migrate(embedded, to_store=str(other), force=True)
    assert report.ok and (other / "v9999-x" / "manifest.json").read_text() == "{}"


def test_a_lost_lease_stops_the_migration_between_two_blocks(embedded, postgres_url, monkeypatch):
    from test_lease import short_leases, steal_lease

    held = short_leases(monkeypatch)
    source = open_catalog(f"sqlite:///{_db(embedded)}")
    seen: list[int] = []

    def steal_during_items(step, what, done, total):
        if what == "items" and done and not seen:
            seen.append(done)
            steal_lease(source, "log-maintenance", held)

    with pytest.raises(LeaseLostError, match="'log-maintenance' lease expired"):
        migrate(embedded, to_catalog=postgres_url, block_rows=10, progress=steal_during_items)
    rows = _target_rows(postgres_url)
    assert len(rows["items"]) == seen[0], "stopped after the block it was in: nothing further written"
    assert rows["users"] == []
    assert source.get_meta("migrated_to") is None
    source.close()


def test_a_source_that_is_not_embedded_is_refused(postgres_url, tmp_path):
    from scalerec.errors import ValidationError

    with pytest.raises(ValidationError, match="not an embedded SQLite file"):
        migrate(Settings(data={"dir": tmp_path, "catalog_url": postgres_url}), to_catalog=postgres_url)
    with pytest.raises(ValidationError, match="nothing to migrate"):
        migrate(Settings(data={"dir": tmp_path}))


def test_events_written_to_the_source_during_the_copy_are_caught_by_the_verification(embedded, postgres_url):
    # a serving process that was not stopped: the copy reads one snapshot, the verification a later
    # one, finds the new events' range differing, copies it again and moves the target's counter on
    writer = open_catalog(f"sqlite:///{_db(embedded)}")
    added: list[int] = []

    def write_late(step, what, done, total):
        if what == "placements" and not added:
            added.append(writer.add_pending_events(events_table(4, start=900)))

    report = migrate(embedded, to_catalog=postgres_url, block_rows=10, progress=write_late)
    assert added == [4] and report.ok, report.failures()
    pending = next(t for t in report.tables if t.name == "pending_events")
    assert pending.repaired >= 1 and pending.source_rows == pending.target_rows == 47
    with open_catalog(postgres_url) as target:
        assert target.pending_head() == writer.pending_head()
        target.add_pending_events(events_table(1, start=950))  # no id collision with the late events
    writer.close()


def test_merging_a_second_production_version_is_refused_naming_both(embedded, postgres_url):
    from scalerec.data.store import DataStore

    with DataStore.open(embedded) as store:
        store.compact()  # a merge needs the pending events flushed
        ours = store.catalog.production_version()
    assert ours is not None
    with open_catalog(postgres_url) as target:
        with target.stage_transaction() as db:
            db.insert_version({"version": "v9999", "stage": "production", "created_at": "2026-01-01T00:00:00Z",
                               "family": "als"})
    with pytest.raises(ConflictError, match=rf"{ours['version']} and the target's v9999 .*nothing was written"):
        migrate(embedded, to_catalog=postgres_url, force=True)
    with open_catalog(postgres_url) as target:
        assert target.production_version()["version"] == "v9999"
        assert target.count_items() == 0, "nothing was written"


def test_the_event_log_moves_to_the_object_store_verified_all_or_nothing(embedded, s3_server, tmp_path, monkeypatch):
    from scalerec.data.objectlog import SharedEventLog
    from scalerec.data.store import DataStore

    def events(store) -> list[tuple]:
        t = store.log.read(columns=["user_id", "item_id", "timestamp"])
        return sorted(zip(*(t.column(c).to_pylist() for c in t.column_names)), key=repr)

    url = s3_server.bucket_url("events")
    with DataStore.open(embedded) as store:
        expected = events(store)
    assert expected

    def crash(self, gen, body):
        raise RuntimeError("interrupted before the manifest")

    monkeypatch.setattr(SharedEventLog, "_put_manifest", crash)
    with pytest.raises(RuntimeError):
        migrate(embedded, to_events=url)
    monkeypatch.undo()
    assert SharedEventLog(url, tmp_path / "c").count() == 0, "an interrupted move shows nothing"
    with pytest.raises(StorageError, match="migrate --to-events"):  # the local log is not silently ignored
        DataStore.open(Settings(data={"dir": embedded.data.dir, "events_url": url}))

    report = migrate(embedded, to_events=url)
    assert report.ok and report.events.uploaded == report.events.files > 0
    assert report.events.rows == report.events.store_rows == len(expected)
    again = migrate(embedded, to_events=url)
    assert again.ok and again.events.uploaded == 0, "a rerun only verifies"
    with DataStore.open(Settings(data={"dir": tmp_path / "other", "events_url": url})) as other:
        assert events(other) == expected, "another machine reads the moved log"
    with DataStore.open(Settings(data={"dir": embedded.data.dir, "events_url": url})) as moved:
        assert events(moved) == expected, "the migrated directory itself switches to the shared log"
