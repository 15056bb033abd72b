"""Serving internals against brute force: filter masks, per-category caps, exact and FAISS retrieval
with filters, fold-in weights, API keys and the serve/keys CLI."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scalerec.config import Settings
from scalerec.serving.filters import ItemAttributes, ItemFilter, cap_per_group
from scalerec.serving.index import ExactIndex, FaissIndex, build_index
from scalerec.serving.realtime import event_type_weights, history_from_events


def _items(n: int = 200, seed: int = 0) -> tuple[np.ndarray, pa.Table]:
    rng = np.random.default_rng(seed)
    ids = np.array([f"i{j:04d}" for j in range(n)])
    cats = [[f"c{rng.integers(5)}", f"c{rng.integers(5, 8)}"] if j % 7 else [] for j in range(n)]
    price = [None if j % 11 == 0 else float(rng.uniform(1, 100)) for j in range(n)]
    table = pa.table({
        "item_id": pa.array(ids[::-1].tolist() + ["not-in-model"]),
        "categories": pa.array(cats[::-1] + [["c0"]], pa.list_(pa.string())),
        "price": pa.array(price[::-1] + [5.0], pa.float64()),
        "available": pa.array([j % 5 != 0 for j in range(n)][::-1] + [True]),
    })
    return ids, table


def test_filter_masks_match_brute_force() -> None:
    ids, table = _items()
    attrs = ItemAttributes.from_table(ids, table)
    rows = {r["item_id"]: r for r in table.to_pylist()}
    flt = ItemFilter(categories=("c1", "c6"), exclude_categories=("c2",), min_price=10, max_price=80)
    expected = np.array([
        rows[i]["available"] and bool({"c1", "c6"} & set(rows[i]["categories"] or []))
        and "c2" not in (rows[i]["categories"] or []) and rows[i]["price"] is not None and 10 <= rows[i]["price"] <= 80
        for i in ids
    ])
    assert np.array_equal(attrs.mask(flt), expected)
    assert np.array_equal(attrs.mask(ItemFilter(available_only=False)), np.ones(len(ids), bool))
    primary = [(rows[i]["categories"] or [None])[0] for i in ids]
    assert [attrs.category_names[c] if c >= 0 else None for c in attrs.primary_category] == primary


def test_with_changes_upserts_and_delists() -> None:
    ids, table = _items()
    attrs = ItemAttributes.from_table(ids, table)
    patch = pa.table({"item_id": ["i0003"], "categories": pa.array([["new"]], pa.list_(pa.string())),
                      "price": [1.0], "available": [False]})
    changed = attrs.with_changes(patch, deleted=["i0004"])
    assert not changed.available[3] and not changed.listed[4] and changed.price[3] == 1.0
    assert changed.mask(ItemFilter(categories=("new",), available_only=False)).nonzero()[0].tolist() == [3]
    assert attrs.available[4] == (4 % 5 != 0), "the original is untouched (copy-on-write)"


def test_cap_per_group_keeps_rank_order() -> None:
    groups = np.array([0, 0, 1, 0, 1, -1, -1, 2])
    keep = cap_per_group(np.array([0, 1, 3, 2, 4, 5, 6, 7]), groups, 2)
    assert keep.tolist() == [True, True, False, True, True, True, True, True]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_with_filters_returns_exactly_k_allowed(kind: str) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((5000, 16)).astype(np.float32)
    exact, approx = ExactIndex(vectors), FaissIndex.build(vectors, kind)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    ids_e, _ = exact.search(q, 20)
    ids_a, _ = approx.search(q, 20)
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(ids_a, ids_e)])
    assert recall >= (0.8 if kind == "hnsw" else 0.6)  # isotropic random vectors: the hardest case
    for share in (0.5, 0.02, 0.001):
        allowed = rng.random(5000) < share
        want = min(20, int(allowed.sum()))
        ids, scores = approx.search(q, 20, allowed=allowed)
        assert ((ids[:, :want] >= 0).all()) and (ids[:, want:] == -1).all()
        assert allowed[ids[ids >= 0]].all()
        assert (np.diff(scores[:, :want], axis=1) <= 1e-6).all()


def test_build_index_threshold_and_cache(tmp_path) -> None:
    vectors = np.random.default_rng(2).standard_normal((300, 8)).astype(np.float32)
    assert build_index(vectors, exact_max_items=1000).kind == "exact"
    path = tmp_path / "idx.faiss"
    first = build_index(vectors, exact_max_items=100, cache_path=path)
    assert first.kind == "hnsw" and path.exists()
    again = build_index(vectors, exact_max_items=100, cache_path=path)
    q = vectors[:3]
    assert np.array_equal(first.search(q, 5)[0], again.search(q, 5)[0])


def test_history_weights_follow_event_types() -> None:
    s = Settings()
    types = event_type_weights(s.events.types, None)
    events = pa.table({
        "item_id": ["b", "a", "a", "c", "zz"],
        "event_type": ["view", "purchase", "return", "rating", "view"],
        "value": [1.0, 1.0, 1.0, 4.0, 1.0],
    })
    h = history_from_events(events, np.array(["a", "b", "c"]), types)
    got = dict(zip(h.cols.tolist(), h.weights.tolist()))
    t = s.events.types
    assert got == {0: t["purchase"].weight - t["return"].weight, 1: t["view"].weight, 2: 4.0 * t["rating"].weight}
    assert h.n_events == 5


def test_api_keys_roles_hashing_and_revocation(tmp_path) -> None:
    import sqlite3

    from scalerec.errors import AuthenticationError, PermissionDeniedError, ValidationError
    from scalerec.serving.auth import ApiKeyStore, Authenticator

    store = ApiKeyStore(tmp_path / "catalog.db")
    key, rec = store.create("write", "shop")
    stored = sqlite3.connect(tmp_path / "catalog.db").execute("SELECT key_hash FROM api_keys").fetchone()[0]
    assert key not in stored and len(stored) == 64
    auth = Authenticator(store)
    assert auth.check(key, "read") == "write" and auth.check(key, "write") == "write"
    with pytest.raises(PermissionDeniedError):
        auth.check(key, "admin")
    with pytest.raises(AuthenticationError):
        auth.check(None, "read")
    store.revoke(rec.key_id)
    with pytest.raises(AuthenticationError):
        auth.check(key, "read")
    with pytest.raises(ValidationError):
        store.create("superuser")


def test_keys_cli_and_serve_refuses_without_keys(tmp_path) -> None:
    from typer.testing import CliRunner

    from scalerec.cli import app, main

    runner = CliRunner()
    d = str(tmp_path / "data")
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", d, "serve", "--port", "1"])
    assert exc.value.code == 2
    r = runner.invoke(app, ["--data-dir", d, "keys", "create", "--role", "read", "--json"])
    assert r.exit_code == 0, r.output
    import json

    created = json.loads(r.stdout)
    assert created["key"].startswith("sr_") and created["role"] == "read"
    listed = json.loads(runner.invoke(app, ["--data-dir", d, "keys", "list", "--json"]).stdout)
    assert [k["key_id"] for k in listed] == [created["key_id"]] and "key" not in listed[0]
    assert runner.invoke(app, ["--data-dir", d, "keys", "revoke", created["key_id"]]).exit_code == 0
