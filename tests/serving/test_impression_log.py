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
