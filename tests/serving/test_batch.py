"""Batch inference: every user's top-n as sharded Parquet, in-process and on the two-node cluster; resume; faults."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from _ray_cluster import Killer, ray_cluster  # noqa: F401  (fixture)
from _serving_fixtures import base_store  # noqa: F401  (fixture: synthetic shop + production ALS)
from scalerec.config import Settings
from scalerec.errors import ConflictError
from scalerec.execution import Executor, LocalExecutor
from scalerec.registry import Registry
from scalerec.serving.batch import BATCH_SCHEMA, MANIFEST, SUCCESS, Scorer, batch_recommend, part_name


@pytest.fixture
def settings(base_store: Path, tmp_path: Path) -> Settings:  # noqa: F811
    d = tmp_path / "data"
    shutil.copytree(base_store, d)
    return Settings(data={"dir": d})


def _read(out: Path) -> dict[str, tuple[list[str], list[float]]]:
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert table.schema.equals(BATCH_SCHEMA)
    rows = table.to_pylist()
    result = {r["user_id"]: (r["item_ids"], r["scores"]) for r in rows}
    assert len(result) == len(rows), "every user appears once"
    return result


def _assert_same_lists(got: dict, want: dict) -> None:
    """Output of other processes: the same items in the same order for every user, scores to float32 rounding."""
    assert got.keys() == want.keys()
    assert all(got[u][0] == want[u][0] for u in want), "the same items in the same order for every user"
    # Float32 dot products whose summation order follows the process's BLAS thread count.
    np.testing.assert_allclose([s for u in want for s in got[u][1]], [s for u in want for s in want[u][1]], rtol=1e-5)


def test_every_user_gets_the_models_top_n_without_seen_items(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "recs"
    result = batch_recommend(settings, out, n=7, shard_users=45, executor=LocalExecutor(1))
    lv = Registry(settings).load()
    n_users = lv.matrix.n_users
    assert result.n_users == n_users and result.shards_total == -(-n_users // 45)
    assert result.shards_done == result.shards_total and result.shards_skipped == 0
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [part_name(s) for s in range(result.shards_total)]
    assert (out / SUCCESS).is_file() and json.loads((out / MANIFEST).read_text())["n"] == 7
    recs = _read(out)
    assert set(recs) == set(lv.matrix.user_ids.tolist())
    sample = np.arange(0, n_users, 17)
    ids, scores = lv.model.recommend(sample, 7, exclude=lv.matrix.matrix[sample])
    for row, u in enumerate(sample):
        items, s = recs[str(lv.matrix.user_ids[u])]
        expected = [str(lv.matrix.item_ids[i]) for i in ids[row] if i >= 0]
        assert items == expected
        np.testing.assert_allclose(s, scores[row][: len(expected)], rtol=1e-6)
        seen = set(lv.matrix.item_ids[lv.matrix.matrix[u].indices].tolist())
        assert not seen & set(items)


def test_a_rerun_resumes_only_the_missing_shards(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "recs"
    batch_recommend(settings, out, n=5, shard_users=40, executor=LocalExecutor(1))
    before = _read(out)
    (out / part_name(1)).unlink()
    (out / part_name(3)).unlink()
    (out / ".part-00003.parquet.dead.tmp").write_bytes(b"half a file from a killed worker")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    result = batch_recommend(settings, out, n=5, executor=LocalExecutor(1))  # shard size from the manifest
    assert result.shards_done == 2 and result.shards_skipped == result.shards_total - 2
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in kept} == kept
    assert not list(out.glob(".part-*"))
    assert _read(out) == before
    with pytest.raises(ConflictError, match="other settings"):
        batch_recommend(settings, out, n=6, executor=LocalExecutor(1))
    batch_recommend(settings, out, n=6, executor=LocalExecutor(1), overwrite=True)
    assert all(len(items) == 6 for items, _ in _read(out).values())


def test_a_non_batch_directory_is_never_overwritten(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConflictError):
        batch_recommend(settings, out, n=5, executor=LocalExecutor(1))
    with pytest.raises(ConflictError):
        batch_recommend(settings, out, n=5, executor=LocalExecutor(1), overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"


class _HandleExecutor(LocalExecutor):
    """Another backend: shares through opaque handles that it unwraps for its tasks (as Ray does)."""

    class Handle:
        def __init__(self, obj: object) -> None:
            self.obj = obj

    def __init__(self) -> None:
        super().__init__(1)
        self.shared: list[object] = []

    def share(self, obj: object) -> object:
        self.shared.append(obj)
        return self.Handle(obj)

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        args = tuple(a.obj if isinstance(a, self.Handle) else a for a in args)
        return super().submit(fn, *args, **kwargs)


def test_any_executor_gets_the_model_through_share(settings: Settings, tmp_path: Path) -> None:
    ex = _HandleExecutor()
    assert isinstance(ex, Executor)
    batch_recommend(settings, tmp_path / "a", n=4, shard_users=50, executor=LocalExecutor(1))
    result = batch_recommend(settings, tmp_path / "b", n=4, shard_users=50, executor=ex)
    assert len(ex.shared) == 1 and isinstance(ex.shared[0], Scorer)  # once, not once per shard
    assert result.shards_total > 1 and _read(tmp_path / "b") == _read(tmp_path / "a")


def test_local_worker_processes_write_the_same_output(settings: Settings, tmp_path: Path) -> None:
    batch_recommend(settings, tmp_path / "a", n=4, shard_users=60, executor=LocalExecutor(1))
    with LocalExecutor(2, threads_per_job=1) as ex:
        batch_recommend(settings, tmp_path / "b", n=4, shard_users=60, executor=ex)
    _assert_same_lists(_read(tmp_path / "b"), _read(tmp_path / "a"))


def test_cli_writes_parquet_and_reports_json(settings: Settings, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from scalerec.cli import app

    out = tmp_path / "cli-recs"
    res = CliRunner().invoke(
        app, ["--data-dir", str(settings.data.dir), "batch-recommend", "--n", "3", "--out", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    assert body["n"] == 3 and body["shards_done"] == body["shards_total"] >= 1
    assert all(len(items) == 3 for items, _ in _read(out).values())


@pytest.mark.ray
def test_cluster_output_equals_local_even_when_a_worker_dies(
    ray_cluster, settings: Settings, tmp_path: Path  # noqa: F811
) -> None:
    from scalerec.cluster.ray_executor import RayExecutor

    local = tmp_path / "local"
    batch_recommend(settings, local, n=10, shard_users=25, executor=LocalExecutor(1))
    executor = RayExecutor(address=ray_cluster.address)
    on_cluster = tmp_path / "cluster"
    with Killer("write_shard") as killer:
        result = batch_recommend(settings, on_cluster, n=10, shard_users=25, executor=executor)
    assert killer.killed, "the chaos thread found no running shard task to kill"
    assert result.shards_done == result.shards_total
    _assert_same_lists(_read(on_cluster), _read(local))
    assert not [p for p in os.listdir(on_cluster) if p.endswith(".tmp")]


def test_a_deleted_user_gets_no_batch_list(settings: Settings, tmp_path: Path) -> None:
    from scalerec.data.store import DataStore

    lv = Registry(settings).load()
    gone = str(lv.matrix.user_ids[3])
    with DataStore.open(settings) as store:
        store.delete_user(gone)
    out = tmp_path / "recs"
    batch_recommend(settings, out, n=5, shard_users=4, executor=LocalExecutor(1))
    recs = _read(out)
    assert gone not in recs
    assert set(recs) == set(lv.matrix.user_ids.tolist()) - {gone}


def test_batch_output_on_an_s3_compatible_server_equals_the_local_one_and_resumes(
    settings: Settings, tmp_path: Path, s3_server
) -> None:
    # each shard is one object (visible whole once uploaded), _SUCCESS last; worker processes
    # open the store themselves from the URL
    import pyarrow.fs as pafs

    from scalerec.data.objectstore import ObjectStore

    url = s3_server.bucket_url("batch/recs")
    local = batch_recommend(settings, tmp_path / "local", n=5, shard_users=50, executor=LocalExecutor(1))
    with LocalExecutor(2, threads_per_job=1) as ex:
        remote = batch_recommend(settings, url, n=5, shard_users=50, executor=ex)
    assert remote.shards_total == local.shards_total >= 3 and remote.out_dir == url
    store = ObjectStore(url)

    def read_remote() -> dict:
        names = sorted(i.path for i in store.fs.get_file_info(pafs.FileSelector(store.root))
                       if i.path.rsplit("/", 1)[-1].startswith("part-"))
        table = pq.read_table(names, filesystem=store.fs)
        assert table.schema.equals(BATCH_SCHEMA)
        return {r["user_id"]: (r["item_ids"], r["scores"]) for r in table.to_pylist()}

    a = _read(tmp_path / "local")
    _assert_same_lists(read_remote(), a)
    assert store.fs.get_file_info(f"{store.root}/{SUCCESS}").type == pafs.FileType.File
    # a lost shard is written again on the rerun, the others are kept
    store.fs.delete_file(f"{store.root}/{part_name(1)}")
    again = batch_recommend(settings, url, n=5, executor=LocalExecutor(1))
    assert again.shards_done == 1 and again.shards_skipped == remote.shards_total - 1
    assert read_remote().keys() == a.keys()
    with pytest.raises(ConflictError, match="other settings"):
        batch_recommend(settings, url, n=6, executor=LocalExecutor(1))


def test_cli_writes_to_an_object_store_url(settings: Settings, s3_server) -> None:
    from typer.testing import CliRunner

    from scalerec.cli import app

    url = s3_server.bucket_url("cli-recs")
    res = CliRunner().invoke(
        app, ["--data-dir", str(settings.data.dir), "batch-recommend", "--n", "3", "--out", url, "--json"]
    )
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    assert body["out_dir"] == url and body["shards_done"] == body["shards_total"] >= 1
    from scalerec.data.objectstore import ObjectStore

    store = ObjectStore(url)
    assert all(store.fs.get_file_info(f"{store.root}/{part_name(s)}").size > 0 for s in range(body["shards_total"]))
