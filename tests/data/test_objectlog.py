"""The event log on an object store ([data] events_url): a local path and a real S3-compatible
server (moto, started by the tests). Flush, compaction and user deletion keep every row exactly
once; a crash between the object upload and the manifest publish shows nothing, loses nothing and
is retried; two processes with separate data directories share one log."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from scalerec.config import Settings
from scalerec.data.objectlog import SharedEventLog
from scalerec.data.store import DataStore
from scalerec.errors import StorageError

sys.path.insert(0, os.path.dirname(__file__))
from test_eventlog import make_events, rows  # noqa: E402


def _url(kind: str, request, tmp_path) -> str:
    return str(tmp_path / "object-store") if kind == "path" else request.getfixturevalue("s3_server").bucket_url("events")


def _settings(tmp_path, name: str, url: str, catalog_url: str | None = None, **data) -> Settings:
    catalog_url = catalog_url or f"sqlite:///{tmp_path / 'catalog.db'}"  # outside both data dirs
    return Settings(data={"dir": tmp_path / name, "catalog_url": catalog_url, "events_url": url, **data})


def _pending(table: pa.Table) -> pa.Table:
    return table.filter(pa.compute.is_valid(table.column("user_id")))


def _listed(log: SharedEventLog) -> set[str]:
    return {e["path"] for e in log.manifest()["files"]}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.abspath("src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["path", "s3"])
def test_flush_compaction_and_deletion_keep_every_row_once(kind, request, tmp_path):
    url = _url(kind, request, tmp_path)
    with DataStore.open(_settings(tmp_path, "a", url, compact_min_files=50)) as store:
        assert isinstance(store.log, SharedEventLog)
        first = _pending(make_events(2_000, days=3, seed=1))
        store.catalog.add_pending_events(first)
        assert store.flush_pending() == first.num_rows
        for seed in (2, 3, 4):  # three more flushes: three more files on each of the days
            store.catalog.add_pending_events(_pending(make_events(300, days=3, seed=seed)))
            store.flush_pending()
        expected = sorted(rows(pa.concat_tables([first, *(_pending(make_events(300, days=3, seed=s)) for s in (2, 3, 4))])))
        assert len(store.log.files()) == 12
        assert sorted(rows(store.log.read())) == expected
        if kind == "s3":
            assert all(str(p).startswith(str(tmp_path / "a" / "cache" / "events")) for p in store.log.files())
        assert not any((tmp_path / "a" / "events").rglob("*.parquet")), "nothing in the local log"

        out = store.compact(all_partitions=True)
        assert (out["partitions"], out["files_before"], out["files_after"]) == (3, 12, 3)
        assert sorted(rows(store.log.read())) == expected, "compaction: no row lost, none twice"
        assert store.stats()["n_events"] == len(expected)

        victim = "u3"
        n_victim = sum(1 for r in expected if r[0] == victim)
        assert n_victim and store.delete_user(victim)["log_events"] == n_victim
        left = sorted(rows(store.log.read()))
        assert left == [r for r in expected if r[0] != victim]
        # the user's rows are gone from the store itself, not just unlisted
        log = store.log
        assert not any(log._rows_of(rel, pa.array([victim])) for rel in log._object_paths())
        assert not any(log._rows_of(str(p.relative_to(log.root)), pa.array([victim]))
                       for p in log.root.rglob("part-*.parquet")), "nor in this machine's cache"


def test_a_crash_between_upload_and_publish_shows_nothing_loses_nothing_and_is_retried(s3_server, tmp_path):
    url = s3_server.bucket_url("events")
    events = _pending(make_events(1_500, days=2, seed=5))
    path = tmp_path / "events.parquet"
    pa.parquet.write_table(events, path)
    crash = """
        import os, sys
        import pyarrow.parquet as pq
        from scalerec.config import Settings
        from scalerec.data.objectlog import SharedEventLog
        from scalerec.data.store import DataStore
        d, catalog, url, path = sys.argv[1:]
        SharedEventLog._put_manifest = lambda self, gen, body: os._exit(3)  # dies after the uploads
        store = DataStore.open(Settings(data={"dir": d, "catalog_url": catalog, "events_url": url}))
        store.catalog.add_pending_events(pq.read_table(path))
        store.flush_pending()
    """
    settings = _settings(tmp_path, "b", url)
    done = _run(crash, str(tmp_path / "a"), settings.data.catalog_url, url, str(path))
    assert done.returncode == 3, done.stderr
    with DataStore.open(settings) as store:  # another machine: the crashed holder's lease is taken over
        log = store.log
        orphans = log._object_paths()
        assert orphans and not _listed(log), "objects were uploaded but nothing is visible"
        assert log.count() == 0 and store.catalog.pending_events_table().num_rows == events.num_rows
        assert store.flush_pending() == events.num_rows  # the released batch is drained again
        assert sorted(rows(log.read())) == sorted(rows(events))
        assert log.recover(grace_s=3600)["objects_collected"] == 0, "young garbage is left alone"
        assert log.recover(grace_s=0)["objects_collected"] == len(orphans)
        assert log._object_paths() == _listed(log)
        assert sorted(rows(log.read())) == sorted(rows(events))


def test_an_event_posted_in_one_process_reaches_training_in_another(s3_server, postgres_url, tmp_path):
    """Two processes, separate data directories, sharing only the catalogue and store URLs."""
    url = s3_server.bucket_url("events")
    with DataStore.open(_settings(tmp_path, "seed", url, postgres_url)) as store:
        store.log.append(_pending(make_events(1_000, days=2, seed=6)))
    post = """
        import sys
        import pyarrow as pa
        from scalerec.api import events_table
        from scalerec.config import Settings
        from scalerec.data.store import DataStore
        d, catalog, url = sys.argv[1:]
        store = DataStore.open(Settings(data={"dir": d, "catalog_url": catalog, "events_url": url}))
        event = events_table(pa.table({"user_id": ["u-new"], "item_id": ["i-new"], "event_type": ["purchase"],
                                       "timestamp": ["2021-03-02T12:00:00Z"]}))
        store.catalog.add_pending_events(event)
        print(store.flush_pending())
    """
    train = """
        import json, sys
        from scalerec.api import fit
        from scalerec.config import Settings
        from scalerec.data.store import DataStore
        d, catalog, url = sys.argv[1:]
        settings = Settings(data={"dir": d, "catalog_url": catalog, "events_url": url})
        model = fit(DataStore.open(settings), "popular", settings=settings)
        print(json.dumps({"items": model.item_ids, "users": model.user_ids}))
    """
    a = _run(post, str(tmp_path / "a"), postgres_url, url)
    assert a.returncode == 0 and a.stdout.split()[-1] == "1", a.stderr
    b = _run(train, str(tmp_path / "b"), postgres_url, url)
    assert b.returncode == 0, b.stderr
    import json

    model = json.loads(b.stdout.strip().splitlines()[-1])
    assert "i-new" in model["items"] and "u-new" in model["users"]
    assert not any((tmp_path / "b" / "events").rglob("*.parquet")), "B read the shared log, not a copy of A's"


def test_a_local_log_is_not_silently_ignored(tmp_path):
    plain = Settings(data={"dir": tmp_path / "a"})
    with DataStore.open(plain) as store:
        store.log.append(make_events(50, seed=7))
    with pytest.raises(StorageError, match="scalerec migrate --to-events"):
        DataStore.open(_settings(tmp_path, "a", str(tmp_path / "object-store")))


def test_a_second_publisher_of_the_same_generation_is_refused(tmp_path):
    url = str(tmp_path / "object-store")
    one, two = SharedEventLog(url, tmp_path / "c1"), SharedEventLog(url, tmp_path / "c2")
    one.append(make_events(100, seed=8))
    real = two._generations
    two._generations = lambda: real()[:-1]  # two read the listing before one published
    with pytest.raises(StorageError, match="published by another writer"):
        two.append(make_events(100, seed=9))
    two._generations = real
    assert one.count() == two.count() == 100, "the refused commit left nothing visible"
    assert two._object_paths() == _listed(two), "and its uploads were removed"
    fs = pafs.LocalFileSystem()
    assert fs.get_file_info(f"{url}/_manifests/g-000000000001.json").type == pafs.FileType.File


def test_replaced_objects_outlive_the_manifests_that_list_them_then_are_collected(tmp_path):
    from scalerec.data.objectlog import KEEP_MANIFESTS

    log = SharedEventLog(str(tmp_path / "object-store"), tmp_path / "cache")
    for seed in range(3):
        log.append(make_events(200, days=1, seed=seed))
    before = _listed(log)
    old_files = log.files()
    assert log.compact(min_files=2)["files_after"] == 1
    assert all(p.exists() for p in old_files), "a reader of the older manifest can still read its files"
    assert log.recover(grace_s=0)["objects_collected"] == 0
    for seed in range(KEEP_MANIFESTS):  # the older manifest ages out of the kept ones
        log.append(make_events(10, days=1, seed=100 + seed))
    stats = log.recover(grace_s=0)
    assert stats["objects_collected"] == len(before) and stats["manifests_pruned"] >= 1
    assert log._object_paths() == _listed(log)
    assert log.count() == 600 + 10 * KEEP_MANIFESTS


def _count_read(store: DataStore) -> tuple[int, int]:
    """What one reader counts: events() rows and stats()'s n_events (both "log + pending")."""
    return sum(b.num_rows for b in store.events()), store.stats()["n_events"]


@pytest.mark.parametrize("moment", ["before-pending-read", "after-pending-read", "between-publish-and-ack"])
@pytest.mark.parametrize("backend", ["sqlite-s3", "postgresql-path"])
def test_a_read_overlapping_another_machines_flush_counts_each_event_once(backend, moment, request, tmp_path,
                                                                          monkeypatch):
    """Two machines (data dirs a and b) share one catalogue and one events_url; the reader on a has
    no lock in common with b's flush. Each interleaving of b's flush with a's two reads (pending
    buffer, log manifest) is forced deterministically; each event must be counted exactly once."""
    cat_kind, log_kind = backend.split("-")
    url = _url("s3" if log_kind == "s3" else "path", request, tmp_path)
    cat = request.getfixturevalue("postgres_url") if cat_kind == "postgresql" else None
    with DataStore.open(_settings(tmp_path, "a", url, cat)) as a, DataStore.open(_settings(tmp_path, "b", url, cat)) as b:
        a.catalog.add_pending_events(_pending(make_events(400, days=2, seed=1)))
        b.flush_pending()  # something in the log already
        a.catalog.add_pending_events(_pending(make_events(300, days=2, seed=2)))
        total = a.catalog.count_pending_events() + a.log.count()
        seen: list[tuple[int, int]] = []
        if moment == "between-publish-and-ack":  # a reads while b's batch is published but still pending
            ack = b.catalog.ack_pending

            def ack_after_read(token):
                seen.append(_count_read(a))
                return ack(token)

            monkeypatch.setattr(b.catalog, "ack_pending", ack_after_read)
            b.flush_pending()
        else:  # b's whole flush runs right before / right after a's read of the pending buffer
            for name in ("pending_events_table", "pending_events_claims"):
                read = getattr(a.catalog, name, None)
                if read is None:
                    continue

                def hooked(*args, _read=read, **kw):
                    if moment == "before-pending-read" and not b.catalog.pending_claims() and b.catalog.count_pending_events():
                        b.flush_pending()
                    out = _read(*args, **kw)
                    if moment == "after-pending-read" and b.catalog.count_pending_events():
                        b.flush_pending()
                    return out

                monkeypatch.setattr(a.catalog, name, hooked)
            seen.append(_count_read(a))
        assert a.catalog.count_pending_events() == 0, "the interleaving ran: b flushed the batch"
        assert seen == [(total, total)]
        assert _count_read(a) == (total, total)
