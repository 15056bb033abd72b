"""Model registry: immutable versions, stages, promotion, rollback, retention, broken versions."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from scalerec.config import Settings
from scalerec.data.matrix import InteractionMatrix
from scalerec.errors import ConflictError, ModelNotFoundError, StorageError
from scalerec.models import make_model
from scalerec.registry import Registry
from scalerec.training.pipeline import gate_decision


def _matrix(seed: int = 0, n_users: int = 30, n_items: int = 12) -> InteractionMatrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    return InteractionMatrix(
        matrix=sp.csr_matrix(dense),
        user_ids=np.array([f"u{i:03d}" for i in range(n_users)]),
        item_ids=np.array([f"i{j:03d}" for j in range(n_items)]),
    )


def _register(reg: Registry, seed: int = 0, *, gate_passed: bool = True, progress=None):
    m = _matrix(seed)
    model = make_model("popular").fit(m)
    pop = np.asarray(m.matrix.sum(axis=0), dtype=np.float32).ravel()
    manifest = {
        "model": {"family": "popular", "params": model.get_params()},
        "primary_metric": "ndcg@20",
        "metrics": {"temporal": {"ndcg@20": 0.1 + seed / 100}},
        "data": {"event_count": 100 + seed},
        "promotion": {"promoted": gate_passed, "gate_passed": gate_passed, "forced": False, "reason": "test"},
    }
    return reg.register(model=model, matrix=m, manifest=manifest, popular=pop, trending=pop * 0.5, progress=progress)


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    return Registry(Settings(data={"dir": tmp_path}))


def test_register_writes_an_immutable_complete_version(reg: Registry, tmp_path: Path) -> None:
    v = _register(reg, 3)
    assert v.stage == "candidate" and v.healthy and v.family == "popular"
    assert v.score == pytest.approx(0.13)
    manifest = json.loads((v.path / "manifest.json").read_text())
    assert manifest["version"] == v.version and manifest["data"]["event_count"] == 103
    # every array file is listed with its size and is read-only
    for rel, size in manifest["files"].items():
        f = v.path / rel
        assert f.stat().st_size == size
        assert not f.stat().st_mode & 0o222
    assert {"model/params.json", "matrix/indptr.npy", "popular.npy", "trending.npy"} <= set(manifest["files"])
    loaded = reg.load(v.version)
    assert isinstance(loaded.popular, np.memmap)  # memory-mapped, shareable between workers
    np.testing.assert_allclose(loaded.trending, loaded.popular * 0.5)
    ids, _ = loaded.model.recommend(np.array([0, 1]), 3)
    assert ids.shape == (2, 3)
    # the stage lives in catalog.db, table model_versions
    with sqlite3.connect(tmp_path / "catalog.db") as db:
        assert db.execute("SELECT stage FROM model_versions WHERE version = ?", (v.version,)).fetchone() == ("candidate",)


def test_version_names_are_unique_and_sortable(reg: Registry) -> None:
    names = [_register(reg, i).version for i in range(3)]
    assert names == sorted(names) and len(set(names)) == 3
    assert [v.version for v in reg.list()] == names


def test_lifecycle_promote_archive_rollback(reg: Registry) -> None:
    v1, v2, v3 = (_register(reg, i) for i in range(3))
    assert reg.production() is None
    with pytest.raises(ModelNotFoundError):
        reg.load()
    reg.promote(v1.version)
    reg.promote(v3.version)
    stages = {v.version: v.stage for v in reg.list()}
    # v1 was production (now archived); v2, an older candidate, is superseded and archived
    assert stages == {v1.version: "archived", v2.version: "archived", v3.version: "production"}
    assert reg.load().version == v3.version
    back = reg.rollback()
    assert back.version == v1.version and reg.production().version == v1.version
    assert reg.get(v3.version).stage == "archived"
    with pytest.raises(ConflictError):
        reg.rollback()  # v1 was the first production: nothing before it
    with pytest.raises(ModelNotFoundError):
        reg.get("v9999-20990101T000000Z")


def test_delete_refuses_production_and_removes_others(reg: Registry) -> None:
    v1, v2 = _register(reg, 0), _register(reg, 1)
    reg.promote(v1.version)
    with pytest.raises(ConflictError):
        reg.delete(v1.version)
    reg.delete(v2.version)
    assert not v2.path.exists()
    assert [v.version for v in reg.list()] == [v1.version]


def test_retention_prunes_oldest_archived(tmp_path: Path) -> None:
    reg = Registry(Settings(data={"dir": tmp_path}, training={"keep_archived": 2}))
    versions = [_register(reg, i) for i in range(5)]
    for v in versions:
        reg.promote(v.version)
    archived = reg.list("archived")
    assert [v.version for v in archived] == [versions[2].version, versions[3].version]
    assert reg.production().version == versions[4].version
    for v in versions[:2]:
        assert not v.path.exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [v.version for v in versions[2:]]


def test_broken_version_is_reported_and_never_served(reg: Registry) -> None:
    good, bad = _register(reg, 0), _register(reg, 1)
    reg.promote(good.version)
    target = bad.path / "model" / "popularity_.npy"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes()[:20])  # truncated
    listed = {v.version: v for v in reg.list()}
    assert listed[good.version].healthy
    assert "popularity_.npy" in (listed[bad.version].error or "")
    with pytest.raises(StorageError):
        reg.load(bad.version)
    with pytest.raises(StorageError):
        reg.promote(bad.version)
    assert reg.production().version == good.version


def test_corrupt_array_with_right_size_fails_to_load(reg: Registry) -> None:
    v = _register(reg, 0)
    f = v.path / "popular.npy"
    f.chmod(0o644)
    size = f.stat().st_size
    f.write_bytes(b"\0" * size)  # same size, garbage header
    assert reg.health(v.version) is None  # the cheap check cannot see it ...
    with pytest.raises(StorageError):
        reg.load(v.version)  # ... loading does, and refuses


def test_rollback_skips_broken_versions(reg: Registry) -> None:
    v1, v2, v3 = (_register(reg, i) for i in range(3))
    for v in (v1, v2, v3):
        reg.promote(v.version)
    (v2.path / "manifest.json").chmod(0o644)
    (v2.path / "manifest.json").unlink()
    assert reg.rollback().version == v1.version


def test_gate_refused_version_needs_force(reg: Registry) -> None:
    v = _register(reg, 0, gate_passed=False)
    with pytest.raises(ConflictError, match="--force"):
        reg.promote(v.version)
    promoted = reg.promote(v.version, force=True)
    assert promoted.stage == "production" and promoted.forced


def test_interrupted_register_leaves_nothing(reg: Registry, tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _register(reg, 0, progress=stop)
    assert list((tmp_path / "models").iterdir()) == []
    assert reg.list() == []


def test_orphan_directory_is_adopted_as_candidate(reg: Registry, tmp_path: Path) -> None:
    v = _register(reg, 0)
    with sqlite3.connect(tmp_path / "catalog.db") as db:
        db.execute("DELETE FROM model_versions")
    assert [(x.version, x.stage) for x in reg.list()] == [(v.version, "candidate")]


@pytest.mark.parametrize(
    "cand, prod, tol, higher, passed",
    [
        (0.10, 0.10, 0.0, True, True),
        (0.099, 0.10, 0.0, True, False),
        (0.099, 0.10, 0.02, True, True),  # 1% worse, 2% allowed
        (0.097, 0.10, 0.02, True, False),
        (0.30, 0.20, 0.0, False, False),  # lower is better
        (0.20, 0.30, 0.0, False, True),
    ],
)
def test_gate_decision(cand: float, prod: float, tol: float, higher: bool, passed: bool) -> None:
    d = gate_decision(cand, prod, tolerance=tol, higher_is_better=higher)
    assert d["gate_passed"] is passed and d["promoted"] is passed and not d["forced"]
    assert d["candidate_score"] == cand and d["production_score"] == prod and d["tolerance"] == tol
    forced = gate_decision(cand, prod, tolerance=tol, higher_is_better=higher, force=True)
    assert forced["promoted"] and forced["forced"] and forced["gate_passed"] is passed


def test_gate_without_production_passes() -> None:
    d = gate_decision(0.01, None, tolerance=0.0)
    assert d["promoted"] and d["production_score"] is None


@pytest.mark.parametrize(
    "data",
    [
        {"max_timestamp": "2025-03-01T12:00:00+00:00"},
        {"snapshot_at": "2025-03-01T12:00:00Z"},
        {"end": "2025-03-01T12:00:00"},
        {"newest_event": "2025-03-01T12:00:00+00:00"},
        {"time_max": "2025-03-01T13:00:00+01:00"},
        {"taken_at": "2025-03-01T12:00:00Z"},
        {"time_range": ["2025-01-01T00:00:00Z", "2025-03-01T12:00:00Z"]},
        {"date_range": ["2025-01-01", "2025-03-01T12:00:00"]},
        {"end": "not a time", "max_timestamp": "2025-03-01T12:00:00Z"},
    ],
)
@pytest.mark.parametrize("section", ["data", "snapshot"])
def test_manifest_reads_every_spelling_of_the_snapshot_end(data: dict, section: str) -> None:
    from datetime import datetime, timezone

    from scalerec.registry import Manifest

    m = Manifest.from_dict({section: data})
    assert m.snapshot_end == datetime(2025, 3, 1, 12, tzinfo=timezone.utc)
    assert Manifest.from_dict(m.to_dict()).snapshot_end == m.snapshot_end
    assert Manifest.from_dict({}).snapshot_end is None


def test_manifest_round_trips_what_training_writes(reg: Registry) -> None:
    from scalerec.data.matrix import MatrixSpec
    from scalerec.registry import Manifest

    v = _register(reg, 3)
    body = v.manifest()
    typed = v.typed_manifest()
    assert (typed.family, typed.event_count, typed.primary_metric, typed.score) == ("popular", 103, "ndcg@20", 0.13)
    again = typed.to_dict()
    # the same keys with the same values, plus the recorded matrix spec
    assert again.keys() >= body.keys()
    for key, value in body.items():
        if key == "data":
            assert {k: again["data"][k] for k in value} == value
        elif key != "model":
            assert again[key] == value, key
    assert again["model"]["family"] == "popular" and again["model"]["params"] == body["model"]["params"]
    assert MatrixSpec.from_dict(again["data"]["matrix_spec"]) == typed.matrix
    assert not typed.gate_refused and Manifest.from_dict({"promotion": {"gate_passed": False}}).gate_refused


def test_register_accepts_a_typed_manifest(reg: Registry) -> None:
    from datetime import datetime, timezone

    from scalerec.data.matrix import MatrixSpec
    from scalerec.registry import Manifest

    m = _matrix(1)
    model = make_model("popular").fit(m)
    pop = np.asarray(m.matrix.sum(axis=0), dtype=np.float32).ravel()
    end = datetime(2025, 3, 1, tzinfo=timezone.utc)
    manifest = Manifest(family="popular", params=model.get_params(), matrix=MatrixSpec(cap=2.0), snapshot_end=end,
                        fingerprint="f" * 64, event_count=7, primary_metric="ndcg@20", metrics={"t": {"ndcg@20": 0.5}})
    v = reg.register(model=model, matrix=m, manifest=manifest, popular=pop, trending=pop)
    body = v.manifest()
    assert body["data"]["max_timestamp"] == end.isoformat() and body["data"]["event_count"] == 7
    assert v.score == 0.5 and v.typed_manifest().matrix.cells() == {"binary": False, "cap": 2.0}
    assert list(body)[:4] == ["format", "version", "created_at", "model"] and list(body)[-1] == "files"


def test_retention_and_delete_keep_a_running_experiments_version(tmp_path: Path) -> None:
    from scalerec.online import experiments as ex

    reg = Registry(Settings(data={"dir": tmp_path}, training={"keep_archived": 1}))
    versions = [_register(reg, i) for i in range(4)]
    reg.promote(versions[0].version)
    exp = ex.validate("old-vs-new", [ex.parse_variant("control=production:50"),
                                     ex.parse_variant(f"old={versions[0].version}:50")],
                      placement=None, start=None, end=None, seed=0, versions={v.version for v in versions})
    ex.create(reg.catalog, exp)
    for v in versions[1:]:
        reg.promote(v.version)  # versions[0] is archived first, then beyond the newest one kept
    archived = [v.version for v in reg.list("archived")]
    assert archived == [versions[0].version, versions[2].version] and versions[0].path.exists()
    assert not versions[1].path.exists()  # retention still works around it
    with pytest.raises(ConflictError, match="old-vs-new"):
        reg.delete(versions[0].version)
    ex.stop(reg.catalog, "old-vs-new")
    assert reg.prune() == [versions[0].version] and not versions[0].path.exists()
