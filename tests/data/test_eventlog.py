"""Event log: round trip, day partitions, atomic transactions, crash recovery, compaction, deletion."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from scalerec.data import eventlog as eventlog_module
from scalerec.data.eventlog import EventLog
from scalerec.data.schema import EVENT_SCHEMA
from scalerec.errors import ValidationError

UTC = dt.timezone.utc
T0 = dt.datetime(2021, 3, 1, tzinfo=UTC)


def make_events(n: int, *, days: int = 5, seed: int = 0, users: int = 20, items: int = 30, start=T0) -> pa.Table:
    """n random events spread over ``days`` UTC days from ``start`` (EVENT_SCHEMA)."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, days * 86_400_000_000, n)
    start_us = int((start - dt.datetime(1970, 1, 1, tzinfo=UTC)) / dt.timedelta(microseconds=1))
    ctx_type = EVENT_SCHEMA.field("context").type
    contexts = [None if i % 3 else [("device", ["mobile", "desktop"][i % 2])] for i in range(n)]
    return pa.Table.from_arrays(
        [
            pa.array([None if i % 11 == 0 else f"u{rng.integers(users)}" for i in range(n)], pa.string()),
            pa.array([f"i{x}" for x in rng.integers(0, items, n)], pa.string()),
            pa.array(rng.choice(["view", "add_to_cart", "purchase"], n).tolist(), pa.string()),
            pa.array(start_us + offsets, pa.int64()).cast(EVENT_SCHEMA.field("timestamp").type),
            pa.array(rng.integers(1, 5, n).astype(np.float32)),
            pa.array([f"s{i % 7}" for i in range(n)], pa.string()),
            pa.array([None] * n, pa.string()),
            pa.array(contexts, ctx_type),
        ],
        schema=EVENT_SCHEMA,
    )


def rows(table: pa.Table) -> list[tuple]:
    """Rows as sortable tuples (context as a tuple of pairs) for order-insensitive comparison."""
    out = []
    for r in table.to_pylist():
        r["context"] = tuple(r["context"]) if r["context"] is not None else None
        out.append(tuple(r[c] if r[c] is not None else "" for c in EVENT_SCHEMA.names))
    return sorted(out, key=repr)


def listing(root: Path) -> list[tuple[str, int]]:
    """Every file under root (hidden ones included) with its size."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out.append((str(p.relative_to(root)), p.stat().st_size))
    return sorted(out)


def utc_day(ts: dt.datetime) -> dt.date:
    return ts.astimezone(UTC).date()


def test_round_trip_count_and_time_range(tmp_path):
    log = EventLog(tmp_path / "events")
    data = make_events(500)
    assert log.append(data) == 500
    back = log.read()
    assert back.schema.equals(EVENT_SCHEMA)
    assert rows(back) == rows(data)
    assert log.count() == 500
    ts = data.column("timestamp").to_pylist()
    assert log.time_range() == (min(ts), max(ts))


def test_empty_log(tmp_path):
    log = EventLog(tmp_path / "events")
    assert log.files() == [] and log.count() == 0 and log.time_range() is None
    assert log.read().num_rows == 0 and log.read().schema.equals(EVENT_SCHEMA)
    assert log.append(make_events(0)) == 0
    assert log.files() == []


def test_files_are_partitioned_by_utc_day(tmp_path):
    log = EventLog(tmp_path / "events")
    data = make_events(400, days=6)
    log.append(data)
    expected_days = {utc_day(t) for t in data.column("timestamp").to_pylist()}
    seen_days = set()
    for f in log.files():
        day = dt.date.fromisoformat(f.parent.name.removeprefix("date="))
        seen_days.add(day)
        assert f.name.startswith("part-") and f.suffix == ".parquet"
        assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD"
        ts = pq.read_table(f, columns=["timestamp"]).column("timestamp").to_pylist()
        assert {utc_day(t) for t in ts} == {day}
    assert seen_days == expected_days


def test_day_boundary_and_timezone(tmp_path):
    log = EventLog(tmp_path / "events")
    last_us = dt.datetime(2021, 1, 1, 23, 59, 59, 999999, tzinfo=UTC)
    first_next = dt.datetime(2021, 1, 2, tzinfo=UTC)
    table = pa.table(
        {
            "user_id": ["a", "b"],
            "item_id": ["x", "y"],
            "event_type": ["view", "view"],
            "timestamp": pa.array([last_us, first_next], EVENT_SCHEMA.field("timestamp").type),
            "value": pa.array([1, 1], pa.float32()),
            "session_id": pa.nulls(2, pa.string()),
            "recommendation_id": pa.nulls(2, pa.string()),
            "context": pa.nulls(2, EVENT_SCHEMA.field("context").type),
        }
    )
    log.append(table)
    assert [d for d, _ in log.partitions()] == [dt.date(2021, 1, 1), dt.date(2021, 1, 2)]
    # end is exclusive, start inclusive
    assert log.read(end=first_next).column("user_id").to_pylist() == ["a"]
    assert log.read(start=first_next).column("user_id").to_pylist() == ["b"]


def test_scan_filters_columns_and_date_order(tmp_path):
    log = EventLog(tmp_path / "events")
    data = make_events(800, days=8)
    # several transactions so days hold several files
    for part in (data.slice(0, 300), data.slice(300, 300), data.slice(600)):
        log.append(part)
    start = T0 + dt.timedelta(days=2, hours=7)
    end = T0 + dt.timedelta(days=5, hours=3)
    ts = np.array([t.timestamp() for t in data.column("timestamp").to_pylist()])
    expected = int(((ts >= start.timestamp()) & (ts < end.timestamp())).sum())

    batches = list(log.scan(start=start, end=end, columns=["item_id", "value"]))
    assert sum(b.num_rows for b in batches) == expected
    assert all(b.schema.names == ["item_id", "value"] for b in batches)

    # batches come day by day in date order
    days = [utc_day(t) for b in log.scan(columns=["timestamp"]) for t in [b.column("timestamp")[0].as_py()]]
    assert days == sorted(days)

    purchases = log.read(filter=pc.field("event_type") == "purchase", columns=["event_type"])
    assert purchases.num_rows == data.column("event_type").to_pylist().count("purchase")
    assert set(purchases.column("event_type").to_pylist()) == {"purchase"}
    # naive datetimes and ISO strings are UTC
    assert log.read(start=start.replace(tzinfo=None), end=end.isoformat()).num_rows == expected
    with pytest.raises(ValidationError, match="unknown event column"):
        next(log.scan(columns=["nope"]))


def test_transaction_visible_only_after_commit(tmp_path):
    log = EventLog(tmp_path / "events")
    log.append(make_events(50, seed=1))
    with log.transaction() as tx:
        tx.write(make_events(40, seed=2))
        tx.write(make_events(30, seed=3).to_batches()[0])
        assert log.count() == 50  # staged rows are invisible
        assert tx.dir.name.startswith(".tmp-")
    assert log.count() == 120
    assert not [p for p in (tmp_path / "events").iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_in_transaction_leaves_log_byte_identical(tmp_path, exc):
    log = EventLog(tmp_path / "events")
    log.append(make_events(200, seed=4))
    before = listing(tmp_path / "events")
    with pytest.raises(exc):
        with log.transaction() as tx:
            tx.write(make_events(300, days=9, seed=5))
            tx.write(make_events(300, days=9, seed=6))
            raise exc("stop")
    assert listing(tmp_path / "events") == before
    assert log.count() == 200


def test_failure_during_commit_renames_is_rolled_back(tmp_path, monkeypatch):
    log = EventLog(tmp_path / "events")
    log.append(make_events(100, seed=7))
    before = listing(tmp_path / "events")
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src, dst):
        # the 3rd data file rename fails (disk full, say)
        if str(src).endswith(".parquet"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(eventlog_module.os, "replace", failing_replace)
    with pytest.raises(OSError):
        log.append(make_events(300, days=6, seed=8))
    monkeypatch.setattr(eventlog_module.os, "replace", real_replace)
    assert calls["n"] >= 3  # the failed rename happened (later calls are the undo)
    assert listing(tmp_path / "events") == before


def test_recover_rolls_forward_a_commit_killed_half_way(tmp_path):
    root = tmp_path / "events"
    data = make_events(300, days=6, seed=9)
    pq.write_table(data, tmp_path / "input.parquet")
    # A separate process commits and dies (os._exit) after the second rename.
    script = textwrap.dedent(
        f"""
        import os, pyarrow.parquet as pq
        from scalerec.data import eventlog
        real = os.replace
        n = [0]
        def dying(src, dst):
            real(src, dst)
            if str(dst).endswith(".parquet"):
                n[0] += 1
                if n[0] == 2:
                    os._exit(3)
        eventlog.os.replace = dying
        eventlog.EventLog({str(root)!r}).append(pq.read_table({str(tmp_path / "input.parquet")!r}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    log = EventLog(root)
    assert 0 < log.count() < 300  # the crash left a partial commit visible
    stats = log.recover()
    assert stats["rolled_forward"] == 1
    assert rows(log.read()) == rows(data)
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_recover_discards_abandoned_staging(tmp_path):
    root = tmp_path / "events"
    log = EventLog(root)
    log.append(make_events(20))
    stale = root / ".tmp-deadbeef"
    (stale / "date=2021-03-01").mkdir(parents=True)
    (stale / "date=2021-03-01" / "part-x.parquet").write_bytes(b"junk")
    # owned by a process that no longer exists
    (stale / "txn.json").write_text(json.dumps({"state": "staging", "pid": 2**22 + 12345, "host": os.uname().nodename}))
    assert log.recover()["discarded"] == 1
    assert not stale.exists() and log.count() == 20


def test_writer_limit_splits_files_but_keeps_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(eventlog_module, "MAX_OPEN_WRITERS", 2)
    log = EventLog(tmp_path / "events")
    data = make_events(600, days=7, seed=10)
    with log.transaction() as tx:
        for b in data.to_batches(max_chunksize=100):
            tx.write(b)
    assert rows(log.read()) == rows(data)


def test_compaction_keeps_every_row_exactly_once(tmp_path):
    log = EventLog(tmp_path / "events")
    chunks = [make_events(120, days=4, seed=s) for s in range(5)]
    for c in chunks:
        log.append(c)
    expected = rows(pa.concat_tables(chunks))
    txids_before = log.txids()
    assert len(log.files()) == 5 * 4
    result = log.compact(min_files=3)
    assert result == {"partitions": 4, "files_before": 20, "files_after": 4, "rows": 600}
    assert len(log.files()) == 4
    assert rows(log.read()) == expected
    assert log.count() == 600
    assert log.txids() == txids_before  # merged files remember which transactions they hold
    # merged days are sorted by time
    for f in log.files():
        ts = pq.read_table(f, columns=["timestamp"]).column("timestamp").cast(pa.int64()).to_numpy()
        assert np.all(np.diff(ts) >= 0)
    assert log.compact(min_files=2)["partitions"] == 0


def test_compaction_only_touches_days_with_enough_files(tmp_path):
    log = EventLog(tmp_path / "events")
    log.append(make_events(50, days=1, seed=1, start=T0))
    log.append(make_events(50, days=1, seed=2, start=T0))
    log.append(make_events(50, days=1, seed=3, start=T0 + dt.timedelta(days=3)))
    lonely = log.files(start=T0 + dt.timedelta(days=3))
    assert log.compact(min_files=2)["partitions"] == 1
    assert log.files(start=T0 + dt.timedelta(days=3)) == lonely
    with pytest.raises(ValidationError):
        log.compact(min_files=1)


def _merge_by_hand(log: EventLog, day_dir: Path) -> tuple[list[Path], Path]:
    old = log.files(start=day_dir.name.removeprefix("date="))[:2]
    merged = pa.concat_tables([pq.read_table(p) for p in old])
    new = day_dir / ".staged-new.parquet"
    pq.write_table(merged, new)
    return old, new


def test_readers_never_see_duplicates_in_the_compaction_crash_windows(tmp_path):
    log = EventLog(tmp_path / "events")
    for s in range(2):
        log.append(make_events(80, days=1, seed=s))
    expected = rows(log.read())
    (day, day_dir), = log.partitions()
    old, staged = _merge_by_hand(log, day_dir)
    record = day_dir / ".replace-test.json"
    record.write_text(json.dumps({"new": "part-merged.parquet", "old": [p.name for p in old]}))
    # window 1: switch record written, new file not yet renamed in -> old files count
    assert rows(log.read()) == expected
    # window 2: new file renamed in, old files not yet deleted -> only the new file counts
    os.replace(staged, day_dir / "part-merged.parquet")
    assert [p.name for p in log.files()] == ["part-merged.parquet"]
    assert rows(log.read()) == expected and log.count() == 160
    # recovery finishes the rewrite
    assert log.recover()["rewrites_finished"] == 1
    assert sorted(p.name for p in day_dir.iterdir()) == ["part-merged.parquet"]
    assert rows(log.read()) == expected


def test_recover_undoes_a_rewrite_that_never_switched(tmp_path):
    log = EventLog(tmp_path / "events")
    for s in range(2):
        log.append(make_events(30, days=1, seed=s))
    (day, day_dir), = log.partitions()
    names = sorted(p.name for p in log.files())
    (day_dir / ".replace-x.json").write_text(json.dumps({"new": "part-never.parquet", "old": names}))
    assert log.recover()["rewrites_undone"] == 1
    assert sorted(p.name for p in log.files()) == names and log.count() == 60


def test_delete_users_removes_only_their_rows(tmp_path):
    log = EventLog(tmp_path / "events")
    data = make_events(600, days=5, seed=11)
    log.append(data.slice(0, 300))
    log.append(data.slice(300))
    gone = {"u1", "u2", "u3"}
    users = data.column("user_id").to_pylist()
    n_gone = sum(u in gone for u in users)
    assert n_gone > 0
    assert log.delete_users(sorted(gone)) == n_gone
    back = log.read()
    assert not gone & set(back.column("user_id").to_pylist())
    keep = data.filter(pc.invert(pc.fill_null(pc.is_in(data.column("user_id"), pa.array(sorted(gone))), False)))
    assert rows(back) == rows(keep)  # anonymous rows (null user) and everyone else untouched
    assert log.delete_users(["u1"]) == 0
    assert log.delete_users([]) == 0


def test_delete_users_drops_files_that_become_empty(tmp_path):
    log = EventLog(tmp_path / "events")
    t = make_events(10, days=1, seed=12)
    only_u9 = t.set_column(0, "user_id", pa.array(["u9"] * 10, pa.string()))
    log.append(only_u9)
    log.append(t.set_column(0, "user_id", pa.array(["u8"] * 10, pa.string())))
    assert len(log.files()) == 2
    assert log.delete_users(["u9"]) == 10
    assert len(log.files()) == 1 and log.count() == 10


def test_writes_reject_rows_outside_the_schema(tmp_path):
    log = EventLog(tmp_path / "events")
    with pytest.raises(ValidationError, match="lack column"):
        log.append(pa.table({"user_id": ["a"]}))
    bad = make_events(3).set_column(1, "item_id", pa.array([None, "a", "b"], pa.string()))
    with pytest.raises(ValidationError, match="item_id"):
        log.append(bad)
    assert log.files() == []


def test_scan_of_a_day_with_more_files_than_the_open_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(eventlog_module, "MAX_OPEN_FILES", 2)
    log = EventLog(tmp_path / "events")
    chunks = [make_events(40, days=1, seed=s) for s in range(4)]
    for c in chunks:
        log.append(c)
    assert len(log.files()) == 4
    assert rows(log.read()) == rows(pa.concat_tables(chunks))


def test_compaction_limited_to_some_days(tmp_path):
    log = EventLog(tmp_path / "events")
    for s in range(3):
        log.append(make_events(60, days=3, seed=s))
    first_day = T0.date()
    result = log.compact(min_files=2, days=[first_day])
    assert result["partitions"] == 1
    assert [len(log.files(start=T0 + dt.timedelta(days=k), end=T0 + dt.timedelta(days=k + 1))) for k in range(3)] == [1, 3, 3]


def _day_of_rows(path: Path) -> set[dt.date]:
    ts = pq.read_table(path, columns=["timestamp"]).column("timestamp").to_pylist()
    return {t.date() for t in ts}


def test_rows_in_long_runs_and_shuffled_rows_land_in_their_days(tmp_path, monkeypatch):
    # Long single-day runs are sliced without copying, short runs gathered by day: every row
    # must still reach exactly its own day's partition.
    monkeypatch.setattr(eventlog_module, "MIN_RUN_ROWS", 50)
    ordered = make_events(400, days=4, seed=3)
    ordered = ordered.take(pc.sort_indices(ordered.column("timestamp")))
    shuffled = make_events(300, days=6, seed=4)
    data = pa.concat_tables([ordered.slice(0, 200), shuffled, ordered.slice(200)])
    log = EventLog(tmp_path / "events")
    log.append(data)
    assert rows(log.read()) == rows(data)
    for f in log.files():
        assert _day_of_rows(f) == {dt.date.fromisoformat(f.parent.name.removeprefix("date="))}


def test_time_ordered_writes_close_finished_days(tmp_path, monkeypatch):
    monkeypatch.setattr(eventlog_module, "MIN_RUN_ROWS", 10)
    data = make_events(3000, days=30, seed=5)
    data = data.take(pc.sort_indices(data.column("timestamp")))
    log = EventLog(tmp_path / "events")
    with log.transaction() as tx:
        for b in data.to_batches(max_chunksize=70):
            tx.write(b)
            assert len(tx._writers) <= 2  # only the current day(s) stay open
    assert rows(log.read()) == rows(data)
    assert len(log.files()) == 30  # still one file per day


def test_write_async_commits_everything_and_a_background_failure_rolls_back(tmp_path):
    log = EventLog(tmp_path / "events")
    data = make_events(500, days=3, seed=6)
    with log.transaction() as tx:
        for b in data.to_batches(max_chunksize=90):
            assert tx.write_async(b) == b.num_rows
    assert tx.rows == 500 and rows(log.read()) == rows(data)

    before = log.files()
    with pytest.raises(OSError):
        with log.transaction() as tx:
            tx.write_async(make_events(50, days=1, seed=7))
            tx.wait()
            # the staging dir turns into a file: writing out the finished first day fails on
            # the background thread, and the failure surfaces at the commit
            import shutil

            shutil.rmtree(tx.dir)
            tx.dir.write_bytes(b"")
            tx.write_async(make_events(50, days=1, seed=8, start=T0 + dt.timedelta(days=9)))
    tx.dir.unlink()
    assert log.files() == before and log.count() == 500
    with pytest.raises(ValidationError):  # schema problems are raised by the call itself
        with log.transaction() as tx:
            tx.write_async(make_events(5).drop_columns(["item_id"]))


def test_files_keep_statistics_where_readers_use_them(tmp_path):
    log = EventLog(tmp_path / "events")
    log.append(make_events(200, days=1, seed=9))
    md = pq.read_metadata(log.files()[0])
    cols = {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i) for i in range(md.num_columns)}
    assert cols["timestamp"].is_stats_set and cols["user_id"].is_stats_set
    assert "DELTA_BINARY_PACKED" in cols["timestamp"].encodings
    assert "RLE_DICTIONARY" in cols["event_type"].encodings
    assert log.time_range() is not None


def test_writes_out_of_time_order_keep_day_files_open(tmp_path):
    # Once a write starts before the previous one's last day, days stay open for more rows:
    # shuffled input over a few days ends with at most two files per day, not one per write.
    data = make_events(1000, days=3, seed=11)
    log = EventLog(tmp_path / "events")
    with log.transaction() as tx:
        for b in data.to_batches(max_chunksize=100):
            tx.write(b)
    assert rows(log.read()) == rows(data)
    per_day = [len(list(d.glob("*.parquet"))) for _, d in log.partitions()]
    assert len(per_day) == 3 and max(per_day) <= 2
