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

from _serving_fixtures import api1, base_store  # noqa: F401  (fixtures)


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


def test_index_cache_keeps_the_newest_versions_files(tmp_path) -> None:
    import os

    from scalerec.serving.precomputed import KEEP_VERSIONS

    vectors = np.random.default_rng(3).standard_normal((120, 8)).astype(np.float32)
    names = [f"v{i:04d}.faiss" for i in range(KEEP_VERSIONS + 3)]
    for i, name in enumerate(names):
        build_index(vectors, exact_max_items=100, cache_path=tmp_path / name)
        os.utime(tmp_path / name, (1_000_000 + i, 1_000_000 + i))  # distinct ages whatever the clock's resolution
    assert sorted(p.name for p in tmp_path.glob("*.faiss")) == names[-KEEP_VERSIONS:]
    assert sorted(p.name for p in tmp_path.glob("*.lock")) == [n + ".lock" for n in names[-KEEP_VERSIONS:]]


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


# ---------------------------------------------------------------------- fresh users (realtime)
def _events(rows: list[tuple[str | None, str, str]]) -> pa.Table:
    """EVENT_SCHEMA rows of (user_id, item_id, ISO timestamp), event type view."""
    from datetime import datetime

    from scalerec.data.schema import EVENT_SCHEMA

    return pa.Table.from_pylist(
        [{"user_id": u, "item_id": i, "event_type": "view", "timestamp": datetime.fromisoformat(t), "value": 1.0,
          "session_id": None if u else "s", "recommendation_id": None, "context": None} for u, i, t in rows],
        schema=EVENT_SCHEMA,
    )


def _feed_db(tmp_path):
    from scalerec.data.catalog import open_catalog
    from scalerec.serving.realtime import ChangeFeed

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = open_catalog(url)  # creates pending_events before the feed adds its triggers
    return catalog, ChangeFeed(tmp_path / "catalog.db"), url


def test_fresh_users_follow_new_events_from_other_connections(tmp_path) -> None:
    from datetime import datetime, timezone

    from scalerec.data.catalog import open_catalog
    from scalerec.serving.realtime import FreshUsers

    catalog, feed, url = _feed_db(tmp_path)
    snapshot = datetime(2025, 1, 1, tzinfo=timezone.utc)
    catalog.add_pending_events(_events([("old", "i1", "2024-12-31T23:59:00+00:00"),
                                        ("new", "i1", "2025-01-02T00:00:00+00:00"), (None, "i1", "2025-01-03T00:00:00+00:00")]))
    fresh = FreshUsers(feed, snapshot)
    assert "new" in fresh and "old" not in fresh, "only events at/after the snapshot make a user fresh"
    assert len(fresh) == 1 and fresh.poll() == 0, "nothing new: the poll reads no rows"
    other = open_catalog(url)  # another connection, as another worker process would have
    other.add_pending_events(_events([("later", "i2", "2025-02-01T00:00:00+00:00"),
                                      ("late-but-old", "i2", "2024-06-01T00:00:00+00:00")]))
    assert fresh.has_fresh("later") and not fresh.has_fresh("late-but-old")
    assert fresh.cursor == 5 and fresh.poll() == 0


def test_fresh_users_see_events_compacted_between_two_polls(tmp_path) -> None:
    """A compactor may move rows out of pending_events before a process polled them: they are then
    found in serving_recent_events by their pending id."""
    from datetime import datetime, timezone

    from scalerec.serving.realtime import FreshUsers

    catalog, feed, _ = _feed_db(tmp_path)
    fresh = FreshUsers(feed, datetime(2025, 1, 1, tzinfo=timezone.utc))
    catalog.add_pending_events(_events([("moved", "i1", "2025-03-01T00:00:00+00:00")]))
    table, token = catalog.drain_pending_events(100)  # what DataStore.flush_pending does
    assert table.num_rows == 1 and catalog.ack_pending(token) == 1
    assert catalog.count_pending_events() == 0
    assert fresh.has_fresh("moved")
    assert feed.recent_rows("moved", None, 10) == [("i1", "view", 1.0)]


def test_change_feed_migrates_a_database_made_before_pending_ids(tmp_path) -> None:
    import sqlite3

    from scalerec.serving.realtime import ChangeFeed

    catalog, _, _ = _feed_db(tmp_path)
    db = tmp_path / "catalog.db"
    with sqlite3.connect(db) as conn:  # the v1 layout: no pending_id, the v1 trigger
        conn.executescript(
            "DROP TRIGGER serving_keep_compacted_v2; DROP TABLE serving_recent_events;"
            "CREATE TABLE serving_recent_events (user_id TEXT NOT NULL, item_id TEXT NOT NULL, event_type TEXT "
            "NOT NULL, timestamp INTEGER NOT NULL, value REAL NOT NULL);"
            "INSERT INTO serving_recent_events VALUES ('kept', 'i1', 'view', 1, 1.0);"
            "CREATE TRIGGER serving_keep_compacted AFTER DELETE ON pending_events WHEN OLD.claim IS NOT NULL "
            "BEGIN INSERT INTO serving_recent_events VALUES (OLD.user_id, OLD.item_id, OLD.event_type, "
            "OLD.timestamp, OLD.value); END;"
        )
    ChangeFeed(db)
    ChangeFeed(db)  # idempotent: a second worker starting on the migrated database
    catalog.add_pending_events(_events([("u", "i1", "2025-03-01T00:00:00+00:00")]))
    _, token = catalog.drain_pending_events(10)
    catalog.ack_pending(token)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT user_id, pending_id FROM serving_recent_events ORDER BY rowid").fetchall()
        triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert rows == [("kept", None), ("u", 1)], "old rows kept, new ones carry their pending id, no duplicate copy"
    assert "serving_keep_compacted" not in triggers and "serving_keep_compacted_v2" in triggers


def test_prune_recent_keeps_what_fold_in_can_use(tmp_path) -> None:
    import sqlite3
    from datetime import datetime, timezone

    catalog, feed, _ = _feed_db(tmp_path)
    stamps = ["2024-12-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00", "2025-02-01T00:00:00+00:00"]
    catalog.add_pending_events(_events([("u", f"i{k}", t) for k, t in enumerate(stamps)]))
    _, token = catalog.drain_pending_events(10)
    catalog.ack_pending(token)
    snapshot = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert feed.prune_recent(snapshot) == 1
    assert feed.prune_recent(snapshot) == 0
    with sqlite3.connect(tmp_path / "catalog.db") as conn:
        left = [r[0] for r in conn.execute("SELECT item_id FROM serving_recent_events ORDER BY item_id")]
    assert left == ["i1", "i2"]
    assert [r[0] for r in feed.recent_rows("u", snapshot, 10)] == ["i2", "i1"], "newest first, none lost"


# ---------------------------------------------------------------------- retrieval and the pipeline
def _matrix(n_users: int = 60, n_items: int = 40, seed: int = 1):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.15).astype(np.float32)
    return sp.csr_matrix(dense)


def test_embedding_models_declare_the_capability_and_retrieve_through_the_index() -> None:
    from scalerec.models import ALS, BPR, EASE, ItemKNN
    from scalerec.models.base import EmbeddingRecommender
    from scalerec.serving.index import IndexedRecommender, ModelRetriever, retriever_for

    assert issubclass(ALS, EmbeddingRecommender) and issubclass(BPR, EmbeddingRecommender)
    assert not issubclass(EASE, EmbeddingRecommender) and not issubclass(ItemKNN, EmbeddingRecommender)
    X = _matrix()
    als = ALS(factors=8, iterations=3, num_threads=1).fit(X)
    allowed = np.ones(X.shape[1], dtype=bool)
    allowed[::3] = False
    r = retriever_for(als, exact_max_items=1_000)
    assert isinstance(r, IndexedRecommender) and r.index is not None and r.index.kind == "exact"
    ids, scores = r.search(r.user_query(5), 7, allowed)
    want, want_scores = als.recommend(np.array([5]), 7, candidates=np.flatnonzero(allowed))
    assert ids.tolist() == want[0].tolist() and np.allclose(scores, want_scores[0], atol=1e-5)
    ids, _ = r.search(r.history_query(X[5]), 7, allowed)
    assert allowed[ids].all() and len(ids) == 7
    sim, _ = r.search(r.item_query(4), 5, allowed)
    assert sim.tolist() == als.similar_items(np.array([4]), 5, candidates=np.flatnonzero(allowed))[0][0].tolist()

    knn = ItemKNN().fit(X)
    r = retriever_for(knn, exact_max_items=1_000)
    assert type(r) is ModelRetriever and r.index is None
    ids, _ = r.search(r.user_query(3), 6, allowed)
    assert ids.tolist() == knn.recommend(np.array([3]), 6, candidates=np.flatnonzero(allowed))[0][0].tolist()


def test_a_reranker_plugs_into_the_pipeline_and_filters_still_hold(api1) -> None:
    from scalerec.serving.pipeline import DEFAULT, Candidates, Request
    from scalerec.serving.service import RecommendService

    def reverse(req: Request, c: Candidates) -> Candidates:
        # a stand-in learned reranker: worst first, its own reasons
        return Candidates(c.ids[::-1].copy(), c.scores[::-1].copy(), [f"reranked:{r}" for r in c.reasons[::-1]], c.k)

    plain = api1.service
    reranked = RecommendService(plain.settings, pipeline=DEFAULT.with_rerank(reverse))
    try:
        st = plain.live.model
        user = str(st.user_ids[int(np.argmax(np.diff(np.asarray(st.seen_indptr))))])
        flt = ItemFilter(max_per_category=2)
        a = plain.recommend_user(user, 10, flt)
        b = reranked.recommend_user(user, 10, flt)
        reasons = [i["reason"] for i in b["items"] if i["reason"] not in ("trending", "popular")]
        assert len(b["items"]) == 10 and reasons and all(r == "reranked:model" for r in reasons)
        assert [i["item_id"] for i in a["items"]] != [i["item_id"] for i in b["items"]]
        cats = reranked.live.items.primary_category[[st.item_col(i["item_id"]) for i in b["items"]]]
        assert np.bincount(cats[cats >= 0]).max() <= 2, "the cap runs after the reranker"
        seen = set(st.item_ids[st.seen(st.user_row(user))[0]].tolist())
        assert not seen & {i["item_id"] for i in b["items"]}
        # lists that are the same for everyone do not go through the reranker
        assert reranked.popular(5)["items"] == plain.popular(5)["items"]
    finally:
        reranked.close()


def test_pipeline_stages_each_keep_their_one_contract(api1) -> None:
    from scalerec.serving import pipeline as pl

    live = api1.service.live
    st = live.model
    allowed = live.items.mask(ItemFilter(max_per_category=1))
    pins = pl.resolve_pins(live, [str(st.item_ids[st.popular_order[0]]), "no-such-item"], allowed, 5)
    assert len(pins) == 1 and not allowed[pins].any(), "a pinned item is not retrieved again"
    req = pl.Request(live, 6, ItemFilter(max_per_category=1), allowed, st.retriever.user_query(0), "model", pins,
                     ("trending", "popular"))
    got = pl.DEFAULT.run(req)
    assert got.rendered is not None and got.rendered[0] == st.item_ids[got.ids].tolist()
    assert got.reasons[0] == "boosted" and len(got) == 6 and len(set(got.ids.tolist())) == 6
    padded = pl.Candidates(np.array([3, -1, 5]), np.array([1.0, -np.inf, np.nan], np.float32), ["a", "b", "c"])
    kept = pl.filter_allowed(pl.Request(live, 3, ItemFilter(), np.ones(st.n_items, bool)), padded)
    assert kept.ids.tolist() == [3] and kept.reasons == ["a"] and padded.ids.tolist() == [3, -1, 5]
    assert pl.rerank(req, got) is got


def test_recommendation_ids_are_random_128_bit_hex_and_differ_in_a_forked_child() -> None:
    import os

    from scalerec.serving.service import _RandomIds

    ids = _RandomIds(batch=4)  # several refills
    seen = [ids.next() for _ in range(1000)]
    assert len(set(seen)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in seen)
    ids.next()  # a partly used buffer at the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must not repeat the parent's next ids
        os.write(w, "".join(ids.next() for _ in range(3)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 200).decode()
    parent = "".join(ids.next() for _ in range(3))
    assert len(child) == 96 and child != parent
