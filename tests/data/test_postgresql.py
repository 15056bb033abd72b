"""PostgreSQL catalogue specifics on a real server (the shared contract is in test_catalog.py):
what one process writes, another sees at once; refusals that name the URL without its password;
read-only opening; concurrent start-up; the CI rule that a missing server fails the run."""

from __future__ import annotations

import threading

import pytest

from scalerec.data.catalog import open_catalog
from scalerec.errors import StorageError
from test_catalog import _user_events, events_table, items_table


def test_a_second_store_sees_every_acknowledged_write_at_once(postgres_url):
    writer, reader = open_catalog(postgres_url), open_catalog(postgres_url)  # two pools: two processes
    try:
        head0, changes0 = reader.pending_head(), reader.change_head()
        writer.add_pending_events(_user_events("u1", [1_700_000_000, 1_700_000_100]))
        assert reader.pending_head() == head0 + 2
        assert reader.fresh_users_between(head0, reader.pending_head(), 0) == ["u1", "u1"]
        writer.upsert_items(items_table())
        writer.patch_item("b", available=True)
        assert reader.change_head() == changes0 + 4  # three inserted, one patched
        assert reader.item_availability(["b", "zz"]) == {"b": True}
        writer.begin_user_deletion("u1", 5)
        assert reader.tombstone_head() == 1 and reader.unfinished_user_deletions() == ["u1"]
    finally:
        writer.close()
        reader.close()


def test_ids_seen_by_a_cursor_form_a_prefix_under_concurrent_writers(postgres_url):
    """A reader that moves its cursor to the head never skips an id committed later: writers
    take ids in commit order."""
    stores = [open_catalog(postgres_url) for _ in range(4)]
    reader = open_catalog(postgres_url)
    seen: list[int] = []
    gaps: list[tuple[int, int, int]] = []
    stop = threading.Event()

    def write(store) -> None:
        for j in range(15):
            store.add_pending_events(events_table(3, start=j))

    def read() -> None:
        cursor = 0
        while not stop.is_set() or cursor < reader.pending_head():
            head = reader.pending_head()
            if head > cursor:
                seen.append(head)
                ids = reader._query("SELECT id FROM pending_events WHERE id > %s AND id <= %s", (cursor, head))
                if len(ids) != head - cursor:  # an id below the head was not visible yet
                    gaps.append((cursor, head, len(ids)))
                cursor = head
            stop.wait(0.002)

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    r = threading.Thread(target=read)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert reader.pending_head() == reader.count_pending_events() == 4 * 15 * 3
    assert gaps == [] and len(seen) > 1 and seen[-1] == 4 * 15 * 3
    for s in [*stores, reader]:
        s.close()


def test_unreachable_server_names_the_url_without_password_and_the_fix():
    from _servers import free_port

    url = f"postgresql://shop:s3cret-pw@127.0.0.1:{free_port()}/scalerec"
    with pytest.raises(StorageError) as err:
        open_catalog(url)
    text = err.value.message
    assert "s3cret-pw" not in text and "shop:***@127.0.0.1" in text
    assert "catalog_url" in text and "PostgreSQL server" in text


def test_read_only_store_reads_and_refuses_writes(postgres_url):
    open_catalog(postgres_url).close()  # creates the schema
    ro = open_catalog(postgres_url, read_only=True)
    try:
        assert ro.count_items() == 0
        with pytest.raises(StorageError, match="read-only"):
            ro.set_meta("k", "v")
    finally:
        ro.close()


def test_many_processes_opening_a_new_database_at_once_create_the_schema_once(postgres_url):
    stores, errors = [], []

    def open_one() -> None:
        try:
            stores.append(open_catalog(postgres_url))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stores[0].record_change("item", "x")
    assert all(s.change_head() == 1 for s in stores)
    for s in stores:
        s.close()


def test_a_missing_server_fails_under_ci_and_skips_elsewhere(monkeypatch):
    from _servers import unavailable

    monkeypatch.setenv("SCALEREC_REQUIRE_SERVERS", "1")
    with pytest.raises(pytest.fail.Exception, match="CI must provide it"):
        unavailable("no server")
    monkeypatch.delenv("SCALEREC_REQUIRE_SERVERS")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        unavailable("no server")


def test_a_committed_change_wakes_a_waiting_watcher(postgres_url):
    watcher, writer = open_catalog(postgres_url), open_catalog(postgres_url)
    try:
        assert watcher.wait_for_changes(0.2) is False, "nothing changed: the timeout"
        woke: list[bool] = []
        t = threading.Thread(target=lambda: woke.append(watcher.wait_for_changes(30)))
        t.start()
        writer.upsert_items(items_table())
        t.join(60)
        assert woke == [True]
        # a promotion wakes it too
        t = threading.Thread(target=lambda: woke.append(watcher.wait_for_changes(30)))
        t.start()
        with writer.stage_transaction() as db:
            db.insert_version({"version": "v0001-x", "stage": "candidate", "created_at": "2025-01-01"})
            db.promote("v0001-x", "2025-01-02", forced=False, note=None)
        t.join(60)
        assert woke == [True, True]
    finally:
        watcher.close()
        writer.close()
