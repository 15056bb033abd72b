"""The pending-event write stamp: shared by processes through the mapped file, rewritten after each
commit, and what lets a poller skip the head query (and only while no commit happened)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

import pyarrow as pa

from scalerec.data.catalog import open_catalog
from scalerec.data.catalog.stamp import WriteStamp
from scalerec.data.schema import EVENT_SCHEMA


def _events(users: list[str], when: str = "2025-03-01T00:00:00+00:00") -> pa.Table:
    return pa.Table.from_pylist(
        [{"user_id": u, "item_id": "i1", "event_type": "view", "timestamp": datetime.fromisoformat(when), "value": 1.0,
          "session_id": None, "recommendation_id": None, "context": None} for u in users],
        schema=EVENT_SCHEMA,
    )


def test_a_bump_is_seen_by_another_mapping_and_never_repeats(tmp_path) -> None:
    a = WriteStamp(tmp_path / "s", create=True)
    b = WriteStamp(tmp_path / "s", create=False)
    seen = {b.read()}
    for _ in range(50):
        a.bump()
        assert b.read() == a.read() and b.read() not in seen
        seen.add(b.read())
    assert WriteStamp(tmp_path / "absent", create=False).read() is None  # nothing to map: always query


def test_a_commit_in_another_process_changes_the_stamp_before_it_returns(tmp_path) -> None:
    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    before = catalog.pending_stamp()
    code = (
        "import sys; sys.path[:0] = sys.argv[2:]\n"
        "from test_stamp import _events\n"
        "from scalerec.data.catalog import open_catalog\n"
        "open_catalog('sqlite:///' + sys.argv[1]).add_pending_events(_events(['child']))\n"
    )
    here = str(__import__("pathlib").Path(__file__).parent)
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "catalog.db"), here, *sys.path], check=True)
    assert catalog.pending_stamp() not in (None, before)
    assert catalog.pending_head() == 1


def test_fresh_users_skip_the_head_query_only_while_the_stamp_holds(tmp_path, monkeypatch) -> None:
    from scalerec.serving import realtime
    from scalerec.serving.realtime import ChangeFeed, FreshUsers

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = open_catalog(url)
    feed = ChangeFeed(tmp_path / "catalog.db")
    monkeypatch.setattr(realtime, "STAMP_RECHECK_S", 3600.0)
    fresh = FreshUsers(feed, datetime(2025, 1, 1, tzinfo=timezone.utc))
    heads = []
    real_head = feed.catalog.pending_head
    monkeypatch.setattr(feed.catalog, "pending_head", lambda: heads.append(1) or real_head())
    assert not fresh.has_fresh("a") and len(heads) == 1
    assert not fresh.has_fresh("a") and len(heads) == 1, "no commit since: no query"
    open_catalog(url).add_pending_events(_events(["a"]))  # another connection, as another worker
    assert fresh.has_fresh("a") and len(heads) == 2, "the commit rewrote the stamp: queried, and seen at once"
    # a writer that does not rewrite the stamp is seen once the stamp is rechecked
    with sqlite3.connect(tmp_path / "catalog.db") as conn:
        conn.execute("INSERT INTO pending_events(user_id, item_id, event_type, timestamp, value) "
                     "VALUES ('raw', 'i1', 'view', ?, 1.0)", (int(datetime(2025, 3, 1, tzinfo=timezone.utc).timestamp() * 1e6),))
    assert not fresh.has_fresh("raw")
    monkeypatch.setattr(realtime, "STAMP_RECHECK_S", 0.0)
    fresh._recheck_at = 0.0
    assert fresh.has_fresh("raw")
