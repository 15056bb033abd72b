"""Impression files: day partitions, atomic batches, retention, the per-user scrub, private modes."""

from __future__ import annotations

import datetime as dt
import stat

import pyarrow.parquet as pq

from scalerec.data.impressions import IMPRESSION_SCHEMA, ImpressionStore
from scalerec.serving.impressions import to_table

DAY = 86_400.0
T0 = dt.datetime(2026, 2, 1, 12, tzinfo=dt.timezone.utc).timestamp()


def _rec(k: int, at: float, user: str | None = "u1") -> dict:
    return {"recommendation_id": f"r{k}", "at": at, "user_id": user, "session_id": None if user else "s1",
            "kind": "user", "placement": "home", "model_version": "v1", "strategy": "model",
            "items": ["a", "b", "c"]}


def test_a_batch_is_split_by_day_and_files_are_private(tmp_path):
    store = ImpressionStore(tmp_path / "impressions")
    files = store.write(to_table([_rec(0, T0), _rec(1, T0 + DAY), _rec(2, T0 + DAY + 60)]))
    assert [d.isoformat() for d, _ in store.partitions()] == ["2026-02-01", "2026-02-02"] and len(files) == 2
    assert pq.read_table(files[1]).num_rows == 2 and pq.read_schema(files[0]).equals(IMPRESSION_SCHEMA)
    assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    assert stat.S_IMODE((tmp_path / "impressions").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert store.read(T0 + DAY).column("recommendation_id").to_pylist() == ["r1", "r2"]
    assert not list((tmp_path / "impressions").glob(".tmp-*")), "no staging file left behind"


def test_retention_and_scrub(tmp_path):
    store = ImpressionStore(tmp_path / "impressions")
    store.write(to_table([_rec(0, T0, "u1"), _rec(1, T0, "u2"), _rec(2, T0 + 3 * DAY, "u1")]))
    assert store.count_user_rows(["u1"]) and sum(store.count_user_rows(["u1"]).values()) == 2
    out = store.scrub_users(["u1"])
    assert out["rows"] == 2 and len(out["files"]) == 2
    assert store.read().column("user_id").to_pylist() == ["u2"]  # the file left empty is gone
    assert store.prune(retention_s=DAY, now=T0 + 2.5 * DAY) == 1 and store.read().num_rows == 0
