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


def _batches(store: ImpressionStore) -> list[str]:
    """Three batch files on each of two closed days and one on an open day; returns every id."""
    ids = []
    for day in range(3):
        for batch in range(3 if day < 2 else 1):
            recs = [_rec(100 * day + 10 * batch + k, T0 + day * DAY + 600 * batch + k, f"u{k % 3}") for k in range(5)]
            store.write(to_table(recs))
            ids += [r["recommendation_id"] for r in recs]
    return sorted(ids)


def _visible(store: ImpressionStore) -> list[str]:
    return sorted(store.read().column("recommendation_id").to_pylist())


def test_compaction_merges_closed_days_into_one_file_each(tmp_path):
    store = ImpressionStore(tmp_path / "impressions")
    ids = _batches(store)
    open_day = dt.date(2026, 2, 3)
    out = store.compact(open_day)
    assert out == {"partitions": 2, "files_before": 6, "files_after": 2, "rows": 30}
    assert [len(list(d.glob("*.parquet"))) for _, d in store.partitions()] == [1, 1, 1]
    assert _visible(store) == ids
    merged = store.files()[0]
    assert merged.name.startswith("part-c-") and stat.S_IMODE(merged.stat().st_mode) == 0o600
    at = pq.read_table(merged).column("at").to_pylist()
    assert at == sorted(at)
    assert store.compact(open_day)["partitions"] == 0  # nothing left to merge
    assert store.scrub_users(["u1"])["rows"] == 14 and len(_visible(store)) == 21  # the scrub finds merged rows


# One process imports the store once and forks a child per kill point (a fresh interpreter per
# step spent ~1 s on imports alone); each child patches os and is SIGKILLed mid-merge as before.
_FORKER = """
import datetime as dt, os, signal, sys, traceback
from pathlib import Path
from scalerec.data.impressions import ImpressionStore
for line in sys.stdin:
    root, step = line.rstrip("\\n").split("\\t")
    pid = os.fork()
    if pid == 0:
        err = os.open(str(Path(root).parent / "child.err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(err, 2)
        signal.alarm(120)  # a hung child dies by SIGALRM and fails the test
        left = int(step)
        def dying(fn):
            def call(*a, **k):
                global left
                left -= 1
                if left < 0:
                    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup code runs, as in a crash
                return fn(*a, **k)
            return call
        for name in ("fsync", "replace", "unlink", "rename"):
            setattr(os, name, dying(getattr(os, name)))
        try:
            ImpressionStore(Path(root)).compact(dt.date(2026, 2, 3))
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_compaction_killed_at_any_step_never_loses_or_doubles_an_impression(tmp_path):
    """The merge killed before each of its file-system steps in turn (SIGKILL in a child
    process): readers see every impression exactly once right then, and after recovery and a
    second compaction too."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    step, finished = 0, False
    forker = subprocess.Popen([sys.executable, "-c", _FORKER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        while not finished:
            root = tmp_path / f"k{step}" / "impressions"
            store = ImpressionStore(root)
            ids = _batches(store)
            forker.stdin.write(f"{root}\t{step}\n")
            forker.stdin.flush()
            returncode = int(forker.stdout.readline())
            finished = returncode == 0
            assert finished or returncode == -9, (root.parent / "child.err").read_text()[-2000:]
            assert _visible(store) == ids, f"killed before step {step}"
            store.compact(dt.date(2026, 2, 3))  # recovers what the killed one left, then merges
            assert _visible(store) == ids, f"killed before step {step}, then compacted"
            assert [len(list(d.glob("*.parquet"))) for _, d in store.partitions()] == [1, 1, 1]
            assert not [p for p in root.rglob(".*") if p.name != ".lock"], "debris left behind"
            step += 1
    finally:
        forker.stdin.close()
        forker.wait(30)
    assert step > 8  # every step of both merges was a kill point
