"""Interaction-matrix builder: weights, polarity, decay, windows, filters and fixed vocabularies."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from scalerec.config import Settings
from scalerec.data.matrix import InteractionMatrix, build_matrix
from scalerec.data.schema import EVENT_SCHEMA

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _events(n: int = 3000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    types = np.array(["view", "add_to_cart", "purchase", "return", "rating"])
    users = rng.integers(0, 60, n).astype(str).astype(object)
    users[rng.random(n) < 0.05] = None  # anonymous session events
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(("i" + rng.integers(0, 40, n).astype(str)).astype(object), pa.string()),
            "event_type": pa.array(types[rng.integers(0, 5, n)]),
            "timestamp": pa.array(
                [T0 + timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 24 * 60, n)],
                pa.timestamp("us", tz="UTC"),
            ),
            "value": pa.array(rng.integers(1, 6, n).astype(np.float32)),
            "session_id": pa.array(["s"] * n),
            "recommendation_id": pa.nulls(n, pa.string()),
            "context": pa.nulls(n, EVENT_SCHEMA.field("context").type),
        },
        schema=EVENT_SCHEMA,
    )


def _reference(table: pa.Table, settings: Settings, *, half_life=None, now=None, window=None) -> dict:
    """Obvious per-row Python computation of every cell."""
    cells: dict[tuple[str, str], float] = defaultdict(float)
    rows = table.to_pylist()
    newest = max(r["timestamp"] for r in rows)
    now = now or newest
    for r in rows:
        if r["user_id"] is None:
            continue
        if window is not None and not r["timestamp"] > now - timedelta(days=window):
            continue
        t = settings.events.types[r["event_type"]]
        w = t.weight * t.polarity * (r["value"] if t.use_value else 1.0)
        if half_life is not None:
            age = (now - r["timestamp"]).total_seconds() / 86400
            w *= 0.5 ** (age / half_life)
        cells[(r["user_id"], r["item_id"])] += w
    return {k: v for k, v in cells.items() if v > 0}


def _as_dict(m: InteractionMatrix) -> dict:
    coo = m.matrix.tocoo()
    return {(m.user_ids[r], m.item_ids[c]): float(v) for r, c, v in zip(coo.row, coo.col, coo.data)}


@pytest.mark.parametrize("half_life,window", [(None, None), (7.0, None), (None, 20.0), (10.0, 30.0)])
def test_cells_match_reference(half_life, window):
    settings = Settings()
    table = _events()
    m = build_matrix(table, event_types=settings.events.types, half_life_days=half_life, window_days=window)
    ref = _reference(table, settings, half_life=half_life, window=window)
    got = _as_dict(m)
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-5)
    assert m.matrix.dtype == np.float32
    assert list(m.user_ids) == sorted(m.user_ids) and list(m.item_ids) == sorted(m.item_ids)


def test_returns_subtract_and_drop_cells():
    settings = Settings()
    table = pa.table(
        {
            "user_id": ["u1", "u1", "u2"],
            "item_id": ["a", "a", "a"],
            "event_type": ["purchase", "return", "view"],
            "timestamp": pa.array([T0, T0 + timedelta(hours=1), T0], pa.timestamp("us", tz="UTC")),
            "value": pa.array([1, 1, 1], pa.float32()),
        }
    )
    m = build_matrix(table, event_types=settings.events.types)
    assert list(m.user_ids) == ["u2"] and m.matrix.toarray().tolist() == [[1.0]]


def test_min_counts_binary_and_fixed_vocabulary():
    settings = Settings()
    table = _events()
    full = build_matrix(table, event_types=settings.events.types, binary=True)
    assert set(np.unique(full.matrix.data)) == {1.0}
    filtered = build_matrix(table, event_types=settings.events.types, min_item_interactions=30, min_user_interactions=15)
    item_counts = np.diff(full.matrix.tocsc().indptr)
    assert set(filtered.item_ids) <= set(full.item_ids[item_counts >= 30])
    assert (np.diff(filtered.matrix.indptr) >= 15).all()

    vocab_users, vocab_items = full.user_ids[:10], full.item_ids[5:25]
    aligned = build_matrix(table, event_types=settings.events.types, binary=True, user_ids=vocab_users, item_ids=vocab_items)
    assert aligned.matrix.shape == (10, 20)
    np.testing.assert_array_equal(aligned.matrix.toarray(), full.matrix[:10, 5:25].toarray())


def test_time_range_and_index_lookup():
    settings = Settings()
    table = _events()
    start, end = T0 + timedelta(days=10), T0 + timedelta(days=20)
    m = build_matrix(table, event_types=settings.events.types, start=start, end=end, binary=True)
    ts = table.column("timestamp").to_pylist()
    users = table.column("user_id").to_pylist()
    expected_users = {u for u, t in zip(users, ts) if u is not None and start <= t < end}
    assert set(m.user_ids) <= expected_users
    idx = m.user_index([m.user_ids[3], "nobody", m.user_ids[0]])
    assert idx.tolist() == [3, -1, 0]
    assert m.item_index(["zzz"]).tolist() == [-1]


def test_empty_source_gives_empty_matrix():
    settings = Settings()
    m = build_matrix(_events().slice(0, 0), event_types=settings.events.types)
    assert m.matrix.shape == (0, 0) and m.nnz == 0


def test_save_load_round_trip_memory_mapped(tmp_path):
    from scalerec.data.matrix import load_matrix, save_matrix

    settings = Settings()
    m = build_matrix(_events(), event_types=settings.events.types)
    save_matrix(m, tmp_path / "m")
    back = load_matrix(tmp_path / "m", mmap=True)
    assert isinstance(np.load(tmp_path / "m" / "data.npy", mmap_mode="r"), np.memmap)
    assert (back.matrix != m.matrix).nnz == 0
    assert list(back.user_ids) == list(m.user_ids) and list(back.item_ids) == list(m.item_ids)
    assert back.user_index([m.user_ids[5]]).tolist() == [5]


def test_cap_clips_summed_cells_after_decay():
    settings = Settings()
    table = _events()
    ref = _reference(table, settings, half_life=10.0)
    m = build_matrix(table, event_types=settings.events.types, half_life_days=10.0, cap=1.0)
    got = _as_dict(m)
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key] == pytest.approx(min(value, 1.0), rel=1e-5)
    assert m.matrix.data.max() <= 1.0 and (m.matrix.data < 1.0).any()


def test_matrix_spec_from_settings_overrides_and_round_trip() -> None:
    from scalerec.data.matrix import MatrixSpec, matrix_from_settings
    from scalerec.errors import ValidationError

    settings = Settings(matrix={"cap": 2.0, "half_life_days": 10.0, "min_item_interactions": 2})
    spec = MatrixSpec.from_settings(settings)
    assert (spec.cap, spec.half_life_days, spec.min_item_interactions, spec.binary) == (2.0, 10.0, 2, False)
    assert spec.event_types == dict(settings.events.types)
    over = MatrixSpec.from_settings(settings, {"cap": 1.0, "binary": True})
    assert (over.cap, over.binary, over.half_life_days) == (1.0, True, 10.0)
    assert over.cells() == {"binary": True, "cap": 1.0}
    with pytest.raises(ValidationError, match="not matrix options"):
        MatrixSpec.from_settings(settings, {"now": T0})
    assert MatrixSpec.from_dict(spec.to_dict()) == spec
    counts = spec.counts()
    assert (counts.cap, counts.half_life_days, counts.min_item_interactions) == (None, None, 1)
    # the spec builds what matrix_from_settings builds, cap included
    events = _events()
    built = spec.build(events, now=T0 + timedelta(days=60))
    same = matrix_from_settings(events, settings, now=T0 + timedelta(days=60))
    assert (built.matrix != same.matrix).nnz == 0 and float(built.matrix.data.max()) <= 2.0
    values = np.array([0.5, 3.0], dtype=np.float32)
    assert spec.shape_cells(values).tolist() == [0.5, 2.0]


def test_matrix_spec_of_old_and_new_manifests() -> None:
    from scalerec.data.matrix import MatrixSpec, cell_options

    old = {"data": {"matrix_settings": {"binary": True, "cap": None}},
           "model": {"matrix_overrides": {"half_life_days": 30.0, "cap": 1.0, "binary": False}}}
    spec = MatrixSpec.from_manifest_dict(old)
    assert (spec.binary, spec.cap, spec.half_life_days) == (False, 1.0, 30.0)
    new = {"data": {"matrix_spec": MatrixSpec.from_settings(Settings(matrix={"cap": 5.0})).to_dict()}}
    assert cell_options(new) == {"binary": False, "cap": 5.0}
    assert MatrixSpec.from_manifest_dict({}) == MatrixSpec()


@pytest.mark.parametrize("reference", ["global", "user", "floored"])
def test_blocks_sum_to_the_one_block_matrix(tmp_path, monkeypatch, reference):
    """Built block by block (table slices, grouped day files, a sliced big file), every cell equals
    the matrix built from all events at once and the per-row reference."""
    from scalerec.data import matrix as matrix_module
    from scalerec.data.eventlog import EventLog

    settings = Settings()
    table = _events(4000, seed=3)
    options = dict(event_types=settings.events.types, half_life_days=5.0, recency_reference=reference)
    whole = _as_dict(build_matrix(table, **options))
    log = EventLog(tmp_path / "log")
    log.append(table)  # ~60 day files of ~65 rows
    big = EventLog(tmp_path / "big")
    big.append(table.filter(pa.compute.equal(pa.compute.day(table.column("timestamp")), 1)))
    monkeypatch.setattr(matrix_module, "BLOCK_EVENTS", 300)
    assert len(matrix_module._parts(table)) == 14 and len(matrix_module._parts(log)) > 5
    for source in (table, log):
        got = _as_dict(build_matrix(source, **options))
        assert set(got) == set(whole)
        for key, value in whole.items():
            assert got[key] == pytest.approx(value, rel=1e-5)
    if reference == "global":
        ref = _reference(table, settings, half_life=5.0)
        assert set(whole) == set(ref) and all(whole[k] == pytest.approx(v, rel=1e-5) for k, v in ref.items())
    one_day = big.read()
    monkeypatch.setattr(matrix_module, "BLOCK_EVENTS", 10**9)
    expect = _as_dict(build_matrix(one_day, **options))
    monkeypatch.setattr(matrix_module, "BLOCK_EVENTS", 30)
    assert len(matrix_module._parts(big)) > len(big.files())  # files bigger than a block, sliced
    got = _as_dict(build_matrix(big, **options))
    assert set(got) == set(expect) and all(got[k] == pytest.approx(v, rel=1e-5) for k, v in expect.items())


def test_normalised_cells_divide_by_the_strongest_type_present_before_the_cap() -> None:
    """One view (weight 1) beside purchases (weight 10) is 0.1 of a purchase, and cap=1 saturates
    only at one undecayed purchase; the unit is the data's strongest positive type, not the
    strongest configured one (a ratings-only store keeps its rating unit)."""
    from scalerec.data.matrix import MatrixSpec, cell_unit_of, shape_cells

    settings = Settings(matrix={"normalise": True})
    events = _events()
    raw = MatrixSpec.from_settings(Settings()).build(events)
    spec = MatrixSpec.from_settings(settings)
    assert spec.normalise and spec.cell_unit is None and "cell_unit" not in spec.cells()
    resolved = spec.resolved(events)
    assert resolved.cell_unit == 10.0 and resolved.cells()["cell_unit"] == 10.0
    norm = spec.build(events)
    assert list(norm.item_ids) == list(raw.item_ids) and list(norm.user_ids) == list(raw.user_ids)
    assert np.allclose(norm.matrix.toarray(), raw.matrix.toarray() / 10.0, atol=1e-6)
    assert _as_dict(resolved.build(events)) == _as_dict(norm)
    capped = spec.with_overrides({"cap": 1.0, "half_life_days": 7.0}).build(events, now=T0 + timedelta(days=60))
    assert float(capped.matrix.data.max()) <= 1.0 and (capped.matrix.data < 1.0).mean() > 0.5
    # a ratings-only source: the unit is the rating type's weight, whatever purchases weigh
    ratings = events.filter(pa.compute.equal(events["event_type"], "rating"))
    assert cell_unit_of(ratings, spec.event_types) == 1.0
    views = events.filter(pa.compute.equal(events["event_type"], "view"))
    assert spec.resolved(views).cell_unit == 1.0
    # fold-in: summed raw weights shaped by the recorded convention give the matrix's cells
    summed = np.array([10.0, 1.0, 25.0], dtype=np.float32)
    assert np.allclose(shape_cells(summed, **resolved.with_overrides({"cap": 1.0}).cells()), [1.0, 0.1, 1.0])


def test_old_specs_and_manifests_keep_raw_cells() -> None:
    """A spec recorded before normalisation existed (no normalise / cell_unit keys) means raw summed
    weights; a recorded unit round-trips."""
    from scalerec.data.matrix import MatrixSpec

    old = {"event_types": {"purchase": {"weight": 10.0}}, "cap": 1.0, "half_life_days": 30.0, "binary": False}
    spec = MatrixSpec.from_dict(old)
    assert (spec.normalise, spec.cell_unit) == (False, None) and spec.cells() == {"binary": False, "cap": 1.0}
    assert MatrixSpec.from_manifest_dict({"data": {"matrix_settings": {"cap": 1.0}}}).cells() == {"binary": False,
                                                                                                   "cap": 1.0}
    new = MatrixSpec.from_settings(Settings(matrix={"normalise": True})).resolved(_events())
    assert MatrixSpec.from_dict(new.to_dict()) == new and new.to_dict()["cell_unit"] == 10.0


@pytest.mark.parametrize("n_rows", [0, 3, 40, 1000])
def test_the_banded_running_sum_equals_the_sum_of_its_blocks(n_rows, monkeypatch):
    """Blocks cut into row bands, merged per band and laid out as one CSR: the plain sum, whatever
    the number of rows against the bands (fewer rows than bands, empty bands, one row)."""
    from scalerec.data import matrix as matrix_module

    monkeypatch.setattr(matrix_module, "MERGE_SHARE", 0.1)  # many merges per band
    rng = np.random.default_rng(n_rows)
    shape = (n_rows, 50)
    blocks = [sp.random(*shape, density=0.02, format="csr", random_state=rng, dtype=np.float64) for _ in range(30)]
    summed = matrix_module._BlockSum(shape, exact=False)
    for b in blocks:
        summed.add(b)
    got = summed.result()
    assert got.shape == shape and got.dtype == np.float32
    want = sum((b.toarray() for b in blocks), np.zeros(shape))
    np.testing.assert_allclose(got.toarray(), want, rtol=1e-6)
    assert got.nnz == np.count_nonzero(want)
