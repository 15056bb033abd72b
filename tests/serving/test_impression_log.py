"""The impression writer: batches off the request path, deletion tombstones applied at flush."""

from __future__ import annotations

import time

from scalerec.serving.impressions import ImpressionLog


def _rec(k: int, at: float, user: str | None = "u1") -> dict:
    return {"recommendation_id": f"r{k}", "at": at, "user_id": user, "kind": "user", "model_version": "v1",
            "strategy": "model", "items": ["a", "b"]}


def test_the_log_drops_records_of_users_deleted_after_they_were_made(tmp_path):
    class Tombstones:  # the catalogue's TombstoneTable, as the log reads it
        def __init__(self):
            self.rows: list[tuple[int, str, int | None]] = []

        def tombstone_head(self):
            return len(self.rows)

        def user_tombstones(self, since_seq=0):
            return self.rows[since_seq:]

    tombs = Tombstones()
    now = time.time()  # recent: a flush also applies the retention
    log = ImpressionLog(tmp_path / "impressions", tombstones=tombs)
    log.add(_rec(0, now, "gone"))
    log.add(_rec(1, now, "kept"))
    tombs.rows.append((1, "gone", int((now + 1) * 1e6)))  # deleted after the record was made
    assert log.flush() == 1 and log.written == 1
    assert log.store.read().column("user_id").to_pylist() == ["kept"]
    log.add(_rec(2, now + 5, "gone"))  # a new user under the same id, after the deletion: kept
    assert log.flush() == 1


def _reference_table(records: list[dict]):
    """The per-record conversion the columnar flush replaced (kept here as the reference)."""
    import pyarrow as pa

    from scalerec.data.impressions import IMPRESSION_SCHEMA

    get = [r.get for r in records]
    cols = {name: [g(name) for g in get] for name in IMPRESSION_SCHEMA.names}
    cols["at"] = pa.array([int(float(g("at") or 0.0) * 1e6) for g in get], pa.int64()).cast(IMPRESSION_SCHEMA.field("at").type)
    cols["kind"] = [g("kind") or "user" for g in get]
    cols["items"] = [list(g("items") or ()) for g in get]
    return pa.Table.from_pydict(cols, schema=IMPRESSION_SCHEMA)


def _varied(n: int, t0: float) -> list[dict]:
    """Records with every optional field absent, None or set, a tuple of items, teams, odd times."""
    out = []
    for k in range(n):
        r = {"recommendation_id": f"r{k}", "at": t0 + k * 0.123456789, "model_version": "v1", "items": [f"i{k}", f"i{k + 1}"]}
        if k % 3 == 0:
            r.update(user_id=f"u{k % 7}", kind="user", strategy="model", context={"device": "mobile"})
        if k % 3 == 1:
            r.update(session_id=f"s{k}", kind="session", placement="home", items=(f"i{k}",), experiment="e1", variant="b")
        if k % 5 == 0:
            r.update(teams=["a", "b"], variant="interleaved", kind=None)
        if k % 11 == 0:
            r["items"] = None
        out.append(r)
    return out


def test_the_columnar_flush_writes_the_rows_the_per_record_conversion_wrote(tmp_path):
    from scalerec.serving.impressions import CHUNK_ROWS, to_table

    now = time.time()
    records = _varied(2 * CHUNK_ROWS + 17, now)  # several chunks and a partial one
    ref = _reference_table(records)
    assert to_table(records).equals(ref)
    log = ImpressionLog(tmp_path / "impressions")
    for r in records:
        log.add(r)
    assert log.flush() == len(records)
    written = log.store.read().sort_by("at")
    assert written.schema.equals(ref.schema) and written.equals(ref.sort_by("at"))


def test_close_flushes_every_buffered_record_of_both_logs(tmp_path):
    import orjson

    from scalerec.serving.reclog import CHUNK_RECORDS, RecommendationLog

    now = time.time()
    records = _varied(3 * CHUNK_RECORDS + 5, now)
    imp = ImpressionLog(tmp_path / "impressions", flush_s=3600)  # only close() flushes
    rec = RecommendationLog(tmp_path / "logs", flush_s=3600)
    imp.start()
    rec.start()
    for r in records:
        imp.add(r)
        rec.add(r)
    imp.close()
    rec.close()
    assert sorted(imp.store.read().column("recommendation_id").to_pylist()) == sorted(r["recommendation_id"] for r in records)
    lines = b"".join(p.read_bytes() for p in sorted((tmp_path / "logs").glob("recommendations-*.jsonl"))).splitlines()
    assert [orjson.loads(x) for x in lines] == [orjson.loads(orjson.dumps(r)) for r in records]
