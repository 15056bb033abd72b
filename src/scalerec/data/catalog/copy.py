"""Copy an embedded SQLite catalogue into a PostgreSQL one, block by block, resumably, and verify it.

Two modes:

- **replica** (the target is empty, or holds an unfinished copy of this same source): every table
  is copied as it is, ids and sequence numbers included, with the target's triggers off (the
  source's change feed is copied too). Each block is one target transaction that replaces the
  target's rows in the block's key range and records the block's last key in the target's
  ``meta`` (``migrate.cursor.<table>``), so an interrupted copy resumes after its last committed
  block and a re-copied range never duplicates a row.
- **merge** (``merge=True``, asked for a non-empty target): the source's rows are added to the
  target's as ordinary writes (item triggers on, so serving processes on the target see the
  items; tombstones get the target's next sequence numbers; the change feed is not copied). A key
  on both sides keeps the target's row, and verification then fails naming the table: nothing is
  overwritten on either side. The source's pending events must be flushed first (their ids would
  collide with the target's).

:func:`verify` compares both sides key range by key range (row counts and a SHA-256 over the
rows in key order); in replica mode a range that differs is copied again (the source changed
meanwhile) before the verdict. The source is only read.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scalerec.errors import ConflictError, StorageError

__all__ = ["TABLES", "TableReport", "copy_catalog", "target_state", "verify"]

#: meta keys that are each side's own (schema revisions, this module's progress records)
_OWN_META = "key NOT IN ('schema_version', 'pg_schema_version', 'migrated_to') AND substr(key, 1, 8) <> 'migrate.'"


@dataclass(frozen=True)
class Table:
    """One migrated table: the same name and columns on both backends."""

    name: str
    key: str | None  # primary key (None: no key, copied in one block)
    cols: tuple[str, ...]
    where: str = "1 = 1"  # which rows migrate (SQL valid on both backends)
    triggers: bool = False  # the target has triggers on it (off while replicating)
    feed: bool = False  # serving's change feed: replicated, not merged
    renumber: str | None = None  # merge mode: this column takes the target's counter of that name
    merge_where: str | None = None  # merge mode: which rows migrate, when not ``where``

    def in_mode(self, merge: bool) -> "Table":
        return replace(self, where=self.merge_where) if merge and self.merge_where else self

    def compared(self, merge: bool) -> tuple[str, ...]:
        return tuple(c for c in self.cols if not (merge and c == self.renumber_col))

    @property
    def renumber_col(self) -> str | None:
        return "seq" if self.renumber else None


_EVENT_COLS = ("id", "user_id", "item_id", "event_type", "timestamp", "value", "session_id", "recommendation_id",
               "context", "claim")

#: Every table of the catalogue that holds data (leases are not copied: they belong to running processes).
TABLES: tuple[Table, ...] = (
    # the pruning mark numbers the source's change feed, which a merge does not copy
    Table("meta", "key", ("key", "value"), where=_OWN_META,
          merge_where=f"{_OWN_META} AND key <> 'serving_changes_pruned_upto'"),
    Table("items", "item_id", ("item_id", "title", "description", "categories", "price", "available", "attributes",
                               "created_at", "updated_at"), triggers=True),
    Table("users", "user_id", ("user_id", "attributes", "created_at", "updated_at"), triggers=True),
    Table("pending_events", "id", _EVENT_COLS, triggers=True),
    Table("serving_recent_events", None, ("user_id", "item_id", "event_type", "timestamp", "value", "pending_id")),
    Table("serving_changes", "seq", ("seq", "kind", "key", "at"), feed=True),
    Table("api_keys", "key_id", ("key_id", "key_hash", "role", "name", "created_at", "revoked_at")),
    Table("model_versions", "version", ("version", "stage", "created_at", "family", "metric", "score", "promoted_at",
                                        "archived_at", "forced", "note")),
    Table("user_tombstones", "user_id", ("user_id", "seq", "started_at", "deleted_at", "report"),
          renumber="tombstones"),
    Table("idempotency_keys", "key", ("key", "body_hash", "response", "created_us")),
    Table("import_fingerprints", "fingerprint", ("fingerprint", "txid", "source", "rows", "imported_at")),
    Table("experiments", "name", ("name", "status", "spec", "created_at", "updated_at")),
    Table("placements", "name", ("name", "spec", "updated_at")),
)
_BY_NAME = {t.name: t for t in TABLES}


@dataclass
class TableReport:
    """What one table's verification found: rows on each side (of the source's keys in merge
    mode), the SHA-256 of the source's rows in key order and whether the target's match."""

    name: str
    source_rows: int = 0
    target_rows: int = 0
    checksum: str = ""
    target_checksum: str = ""
    differing_ranges: int = 0
    repaired: int = 0
    first_difference: str | None = None
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is not None or (self.source_rows == self.target_rows and self.checksum == self.target_checksum)


@dataclass
class _Progress:
    callback: Callable[[str, int, int], None] | None
    totals: dict[str, int] = field(default_factory=dict)

    def __call__(self, table: str, done: int) -> None:
        if self.callback is not None:
            self.callback(table, done, self.totals.get(table, 0))


# --------------------------------------------------------------------------------------------
# the two sides


def _sqlite_conn(source: Any) -> sqlite3.Connection:
    from scalerec.data.catalog.sqlite import SqliteCatalog

    if not isinstance(source, SqliteCatalog):
        raise StorageError(f"the migration source must be a SQLite catalogue (sqlite:///PATH), not {source.url!r}")
    return source._conn()


def _pg(target: Any) -> Any:
    from scalerec.data.catalog.postgresql import PostgresCatalog

    if not isinstance(target, PostgresCatalog):
        raise StorageError(f"the migration target must be a PostgreSQL catalogue (postgresql://...), not {target!r}")
    return target


def _source_tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _norm(row: Sequence[Any]) -> tuple:
    # both drivers give int/float/str/None for these columns; a float that holds an integer prints alike
    return tuple(float(v) if isinstance(v, float) else v for v in row)


def _row_hash(h: Any, row: tuple) -> None:
    h.update(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode())
    h.update(b"\n")


def _source_count(conn: sqlite3.Connection, t: Table, present: set[str]) -> int:
    if t.name not in present:
        return 0
    return int(conn.execute(f"SELECT count(*) FROM {t.name} WHERE {t.where}").fetchone()[0])


def _source_blocks(conn: sqlite3.Connection, t: Table, present: set[str], after: Any, block_rows: int) -> Iterator[list[tuple]]:
    """The source's rows in key order after key ``after`` (None: from the start), in blocks."""
    if t.name not in present:
        return
    cols = ", ".join(t.cols)
    if t.key is None:
        rows = [_norm(r) for r in conn.execute(f"SELECT {cols} FROM {t.name} WHERE {t.where} ORDER BY rowid")]
        if rows:
            yield rows
        return
    k = t.cols.index(t.key)
    while True:
        if after is None:
            cur = conn.execute(f"SELECT {cols} FROM {t.name} WHERE {t.where} ORDER BY {t.key} LIMIT ?", (block_rows,))
        else:
            cur = conn.execute(
                f"SELECT {cols} FROM {t.name} WHERE ({t.where}) AND {t.key} > ? ORDER BY {t.key} LIMIT ?",
                (after, block_rows),
            )
        rows = [_norm(r) for r in cur]
        if not rows:
            return
        yield rows
        after = rows[-1][k]
        if len(rows) < block_rows:
            return


def _ranges(conn: sqlite3.Connection, t: Table, present: set[str], after: Any, block_rows: int, *,
            open_end: bool = True) -> Iterator[tuple[list[tuple], Any, Any]]:
    """(source rows, lo, hi) per key range (lo, hi] after key ``after``, streamed; the last range
    is open above (``hi`` None: target rows past the source's last key belong to it), with no
    rows when the source ends on a full block (``open_end``); a table without a key is one range."""
    lo, hi, any_rows = after, None, False
    for rows in _source_blocks(conn, t, present, after, block_rows):
        any_rows = True
        hi = None if t.key is None or len(rows) < block_rows else rows[-1][t.cols.index(t.key)]
        yield rows, lo, hi
        lo = hi
    if open_end and (not any_rows or hi is not None):
        yield [], lo, None


def _range_sql(t: Table, lo: Any, hi: Any, *, text: bool) -> tuple[str, list[Any]]:
    """A WHERE clause for keys in (lo, hi] (None: unbounded), in the source's (binary) key order."""
    col = f'{t.key} COLLATE "C"' if text else t.key
    parts, params = [f"({t.where})"], []
    if lo is not None:
        parts.append(f"{col} > %s")
        params.append(lo)
    if hi is not None:
        parts.append(f"{col} <= %s")
        params.append(hi)
    return " AND ".join(parts), params


def _is_text_key(t: Table) -> bool:
    return t.key not in ("id", "seq")


def _target_rows(conn: Any, t: Table, lo: Any, hi: Any, cols: tuple[str, ...]) -> list[tuple]:
    where, params = _range_sql(t, lo, hi, text=_is_text_key(t))
    rows = [_norm(r) for r in conn.execute(f"SELECT {', '.join(cols)} FROM {t.name} WHERE {where}", params)]
    if t.key is None:
        return sorted(rows, key=json.dumps)
    k = cols.index(t.key)
    return sorted(rows, key=lambda r: r[k])


def _meta(conn: Any, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
    return None if row is None else row[0]


def _set_meta(conn: Any, key: str, value: str | None) -> None:
    if value is None:
        conn.execute("DELETE FROM meta WHERE key = %s", (key,))
    else:
        conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (key, value))


# --------------------------------------------------------------------------------------------
# the target's state


def target_state(target: Any) -> dict[str, Any]:
    """``{"rows": {table: n}, "source": the source an unfinished or finished copy came from,
    "done": bool, "mode": ...}`` of a PostgreSQL target."""
    pg = _pg(target)
    with pg._connection("cannot read the migration target") as conn:
        rows = {t.name: int(conn.execute(f"SELECT count(*) FROM {t.name} WHERE {t.where}").fetchone()[0]) for t in TABLES}
        return {"rows": rows, "source": _meta(conn, "migrate.source"), "done": _meta(conn, "migrate.done") is not None,
                "mode": _meta(conn, "migrate.mode")}


# --------------------------------------------------------------------------------------------
# copying


def _write_block(conn: Any, t: Table, rows: list[tuple], lo: Any, hi: Any, *, merge: bool) -> None:
    """One block into the target, inside the caller's transaction."""
    cols = ", ".join(t.cols)
    if not merge:
        if t.triggers:
            conn.execute(f"ALTER TABLE {t.name} DISABLE TRIGGER USER")  # a replica: the feed is copied as it is
        if t.key is None:
            conn.execute(f"DELETE FROM {t.name} WHERE {t.where}")
        else:
            where, params = _range_sql(t, lo, hi, text=_is_text_key(t))
            conn.execute(f"DELETE FROM {t.name} WHERE {where}", params)
        with conn.cursor() as cur, cur.copy(f"COPY {t.name} ({cols}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        if t.triggers:
            conn.execute(f"ALTER TABLE {t.name} ENABLE TRIGGER USER")
        return
    stage = f"migrate_{t.name}"
    conn.execute(f"CREATE TEMP TABLE {stage} (LIKE {t.name}) ON COMMIT DROP")
    conn.execute(f"ALTER TABLE {stage} ADD COLUMN ord BIGSERIAL")
    with conn.cursor() as cur, cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)
    select = ", ".join(t.cols)
    conflict = f"ON CONFLICT ({t.key}) DO NOTHING" if t.key else ""
    if t.renumber:
        # the target's own next numbers: its readers poll that counter (the rows are new to them)
        select = ", ".join(
            f"(SELECT value FROM scalerec_heads WHERE name = '{t.renumber}') + row_number() OVER (ORDER BY ord)"
            if c == t.renumber_col else c for c in t.cols
        )
        new = f"FROM {stage} AS s WHERE NOT EXISTS (SELECT 1 FROM {t.name} AS t WHERE t.{t.key} = s.{t.key})"
        fresh = int(conn.execute(f"SELECT count(*) {new}").fetchone()[0])
        last = int(conn.execute("SELECT scalerec_take_ids(%s, %s)", (t.renumber, fresh)).fetchone()[0])
        select = select.replace(f"(SELECT value FROM scalerec_heads WHERE name = '{t.renumber}')", str(last - fresh))
        conn.execute(f"INSERT INTO {t.name} ({cols}) SELECT {select} {new} ORDER BY ord")
        return
    conn.execute(f"INSERT INTO {t.name} ({cols}) SELECT {select} FROM {stage} ORDER BY ord {conflict}")


def _refuse_second_production(conn: sqlite3.Connection, target: Any, present: set[str]) -> None:
    """A merge would put a second production version in the target (its one-production index
    refuses the row half-way): ConflictError naming both, before anything is written."""
    if "model_versions" not in present:
        return
    row = conn.execute("SELECT version FROM model_versions WHERE stage = 'production'").fetchone()
    theirs = target.production_version()
    if row is None or theirs is None or theirs["version"] == row[0]:
        return
    raise ConflictError(
        f"cannot merge: this directory's production model version {row[0]} and the target's {theirs['version']} "
        "would both be in production, and a catalogue has one; nothing was written. Migrate into a schema of its "
        "own (postgresql://...?options=-csearch_path%3DSHOP: one shop per schema) or into a catalogue without a "
        "production version"
    )


def copy_catalog(
    source: Any,
    target: Any,
    *,
    merge: bool = False,
    source_id: str,
    block_rows: int = 50_000,
    progress: Callable[[str, int, int], None] | None = None,
    stop: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Copy every table of ``source`` (SQLite) into ``target`` (PostgreSQL); returns the rows
    written per table. Resumes an unfinished copy of ``source_id`` (its cursors in the target's
    meta). ``stop()`` is called between blocks (it raises to stop: a lost lease)."""
    pg = _pg(target)
    conn = _sqlite_conn(source)
    if block_rows < 1:
        raise ValueError(f"block_rows={block_rows} must be positive")
    mode = "merge" if merge else "replica"
    present = _source_tables(conn)
    if merge and _source_count(conn, _BY_NAME["pending_events"], present):
        raise StorageError(
            "the source has pending events, whose ids would collide with the target's; run `scalerec compact` on the "
            "source first (it moves them into the event log), then migrate again"
        )
    if merge:
        _refuse_second_production(conn, target, present)
    written: dict[str, int] = {}
    tracker = _Progress(progress)
    with pg._write() as tc:
        if _meta(tc, "migrate.done") is not None or _meta(tc, "migrate.mode") not in (None, mode):
            # a new pass (a merge after a finished copy): every table is walked again
            tc.execute("DELETE FROM meta WHERE substr(key, 1, 15) = 'migrate.cursor.'")
        _set_meta(tc, "migrate.source", source_id)
        _set_meta(tc, "migrate.mode", mode)
        _set_meta(tc, "migrate.done", None)
    conn.execute("BEGIN")  # one read snapshot of the source for the whole copy (WAL: writers go on)
    try:
        for t in TABLES:
            t = t.in_mode(merge)
            if merge and t.feed:
                continue
            tracker.totals[t.name] = _source_count(conn, t, present)
            with pg._connection("cannot read the migration cursor") as tc:
                raw = _meta(tc, f"migrate.cursor.{t.name}")
            cursor = json.loads(raw) if raw is not None else None
            if cursor == "done":
                tracker(t.name, tracker.totals[t.name])
                continue
            done = 0 if cursor is None else _source_done(conn, t, cursor)
            tracker(t.name, done)
            n = 0
            for rows, lo, hi in _ranges(conn, t, present, cursor, block_rows, open_end=not merge):
                if stop is not None:
                    stop()
                with pg._write() as tc:  # the block and its cursor commit together: resumed exactly after it
                    if rows or not merge:
                        _write_block(tc, t, rows, lo, hi, merge=merge)
                    _set_meta(tc, f"migrate.cursor.{t.name}", json.dumps("done" if hi is None else hi))
                n += len(rows)
                done += len(rows)
                tracker(t.name, done)
            with pg._write() as tc:
                _set_meta(tc, f"migrate.cursor.{t.name}", json.dumps("done"))
            written[t.name] = n
        _advance_heads(conn, pg, present, merge=merge)
    finally:
        conn.execute("ROLLBACK")
    return written


def _source_done(conn: sqlite3.Connection, t: Table, cursor: Any) -> int:
    if t.key is None:
        return 0
    try:
        return int(conn.execute(f"SELECT count(*) FROM {t.name} WHERE ({t.where}) AND {t.key} <= ?", (cursor,)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _advance_heads(conn: sqlite3.Connection, pg: Any, present: set[str], *, merge: bool) -> None:
    """The target's counters past every id the source handed out (ids are never reused)."""
    seqs = dict(conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall()) if "sqlite_sequence" in present else {}
    heads = {"pending": int(seqs.get("pending_events") or 0)}
    if not merge:
        heads["changes"] = int(seqs.get("serving_changes") or 0)
        heads["tombstones"] = int(conn.execute("SELECT coalesce(max(seq), 0) FROM user_tombstones").fetchone()[0]
                                  if "user_tombstones" in present else 0)
    with pg._write() as tc:
        for name, value in heads.items():
            tc.execute("UPDATE scalerec_heads SET value = GREATEST(value, %s) WHERE name = %s", (value, name))


# --------------------------------------------------------------------------------------------
# verifying


def verify(
    source: Any,
    target: Any,
    *,
    merge: bool = False,
    block_rows: int = 50_000,
    repair: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[TableReport]:
    """Compare every table block by block (the source's key ranges); in replica mode with
    ``repair`` a differing range is copied again and compared once more. Marks the target's copy
    finished (``migrate.done``) when every table matches."""
    pg = _pg(target)
    conn = _sqlite_conn(source)
    present = _source_tables(conn)
    reports: list[TableReport] = []
    tracker = _Progress(progress)
    conn.execute("BEGIN")
    try:
        for t in TABLES:
            t = t.in_mode(merge)
            rep = TableReport(t.name)
            reports.append(rep)
            if merge and t.feed:
                rep.skipped = "the change feed is not merged (the target's triggers recorded the items)"
                continue
            if merge and t.key is None:
                rep.source_rows = _source_count(conn, t, present)
                rep.skipped = "appended (no key to compare in a non-empty target)"
                continue
            tracker.totals[t.name] = _source_count(conn, t, present)
            cols = t.compared(merge)
            idx = [t.cols.index(c) for c in cols]
            src_hash, dst_hash, seen = hashlib.sha256(), hashlib.sha256(), 0
            for rows, lo, hi in _ranges(conn, t, present, None, block_rows, open_end=not merge):
                src = [tuple(r[i] for i in idx) for r in rows]
                if t.key is None:
                    src.sort(key=json.dumps)
                with pg._connection("cannot read the migration target") as tc:
                    dst = _merge_rows(tc, t, rows, cols) if merge else _target_rows(tc, t, lo, hi, cols)
                if src != dst and repair and not merge:
                    with pg._write() as tc:
                        _write_block(tc, t, rows, lo, hi, merge=False)
                    rep.repaired += 1
                    with pg._connection("cannot read the migration target") as tc:
                        dst = _target_rows(tc, t, lo, hi, cols)
                if src != dst:
                    rep.differing_ranges += 1
                    if rep.first_difference is None:
                        rep.first_difference = _first_difference(t, src, dst, cols)
                for r in src:
                    _row_hash(src_hash, r)
                for r in dst:
                    _row_hash(dst_hash, r)
                rep.source_rows += len(src)
                rep.target_rows += len(dst)
                seen += len(rows)
                tracker(t.name, seen)
            rep.checksum, rep.target_checksum = src_hash.hexdigest(), dst_hash.hexdigest()
        if repair and not merge:  # a re-copied range may hold ids the source handed out after the copy
            _advance_heads(conn, pg, present, merge=False)
        if all(r.ok for r in reports):
            with pg._write() as tc:
                _set_meta(tc, "migrate.done", "1")
    finally:
        conn.execute("ROLLBACK")
    return reports


def _merge_rows(tc: Any, t: Table, rows: list[tuple], cols: tuple[str, ...]) -> list[tuple]:
    """The target's rows of the source block's keys (merge mode), in the block's key order."""
    k = t.cols.index(t.key)
    keys = [r[k] for r in rows]
    found = {r[cols.index(t.key)]: r for r in (
        _norm(x) for x in tc.execute(f"SELECT {', '.join(cols)} FROM {t.name} WHERE {t.key} = ANY(%s)", (keys,))
    )}
    return [found[key] for key in keys if key in found]


def _first_difference(t: Table, src: list[tuple], dst: list[tuple], cols: tuple[str, ...]) -> str:
    if t.key is None:
        return f"{len(src)} source rows vs {len(dst)} target rows"
    k = cols.index(t.key)
    a, b = {r[k]: r for r in src}, {r[k]: r for r in dst}
    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) != b.get(key):
            where = "only in the source" if key not in b else "only in the target" if key not in a else "differs"
            return f"{t.key}={key!r} {where}"
    return "rows in another order"
