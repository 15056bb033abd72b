"""Item retrieval: exact inner-product search or FAISS (HNSW/IVF) above a size for embedding models,
wrapped with the model into one :class:`Retriever` (:func:`retriever_for`) that serving searches.

Both indexes answer ``search(queries, k, allowed=mask)`` with exactly ``min(k, count_nonzero(allowed))``
results per query: the approximate one searches with a FAISS ``IDSelectorBitmap`` (so filtered-out
items never take result slots), widens its search when the graph walk comes back short, and falls
back to exact scoring over the allowed subset when the filter is very selective.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import scipy.sparse as sp

from scalerec.accelerator import accelerator, faiss_to_cpu
from scalerec.errors import ValidationError
from scalerec.models.base import EmbeddingRecommender, Recommender, top_k  # one row-wise top-k for models and serving
from scalerec.serving.foldcache import FoldInQuery
from scalerec.serving.precomputed import KEEP_VERSIONS, PrecomputedLists, PrecomputedQuery

IndexKind = Literal["exact", "hnsw", "ivf"]

#: Below this many allowed items, exact scoring of the subset is cheaper than a filtered ANN walk.
SUBSET_EXACT_MAX = 4096


class ItemIndex(Protocol):
    """Maximum-inner-product search over item vectors [n_items, d]."""

    kind: str
    n_items: int

    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (ids int64 [q, k], scores float32 [q, k]) per query row; -1/-inf padding."""
        ...

    def memory_bytes(self) -> int:
        ...


def _as_queries(queries: np.ndarray, d: int) -> np.ndarray:
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if q.shape[1] != d:
        raise ValidationError(f"query vectors have {q.shape[1]} dimensions; the index has {d}")
    return q


class ExactIndex:
    """Brute-force inner product (one GEMM + partial sort); exact, O(n_items x d) per query."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray) -> None:
        # may be read-only mapped pages shared by worker processes; a plain ndarray over them
        # (np.memmap's subclass hooks made each query's product ~3x slower)
        self.vectors = np.asarray(vectors)
        self.n_items, self.dim = vectors.shape

    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = _as_queries(queries, self.dim)
        if allowed is not None and np.count_nonzero(allowed) <= SUBSET_EXACT_MAX:
            return exact_subset(self.vectors, q, k, np.flatnonzero(allowed))
        scores = q @ self.vectors.T
        if allowed is not None:
            np.copyto(scores, -np.inf, where=~allowed)  # ~4x cheaper than boolean-index assignment
        return top_k(scores, k)

    def memory_bytes(self) -> int:
        return int(self.vectors.nbytes)


def exact_subset(
    vectors: np.ndarray, q: np.ndarray, k: int, subset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` restricted to item indices ``subset`` (ids are global indices)."""
    if len(subset) == 0:
        return (np.full((len(q), k), -1, np.int64), np.full((len(q), k), -np.inf, np.float32))
    scores = q @ np.asarray(vectors[subset]).T
    ids, vals = top_k(scores, k)
    return np.where(ids >= 0, subset[np.maximum(ids, 0)], -1), vals


class FaissIndex:
    """Approximate inner-product search with FAISS: HNSW (default) or IVF-Flat.

    ``ef_search`` (HNSW) / ``nprobe`` (IVF) set the base accuracy; filtered searches run with a
    bitmap selector and widen (x4, up to 3 times) when fewer than ``k`` allowed items come back.
    """

    def __init__(self, index: object, vectors: np.ndarray, kind: IndexKind, *, ef_search: int = 64, nprobe: int = 16):
        import faiss

        self._faiss = faiss
        self.index = index
        self.vectors = vectors
        self.kind = kind
        self.n_items, self.dim = vectors.shape
        self.ef_search = ef_search
        self.nprobe = nprobe
        self._plain_params: dict[int, object] = {}

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        kind: IndexKind = "hnsw",
        *,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        nlist: int | None = None,
        nprobe: int = 16,
    ) -> "FaissIndex":
        """Build an index over item vectors [n_items, d] (float32)."""
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = x.shape
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.add(x)
        elif kind == "ivf":
            nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39 or 1))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = x[rng.choice(n, size=min(n, 256 * nlist), replace=False)]
            index.train(sample)
            index.add(x)
        else:
            raise ValidationError(f"unknown index kind {kind!r}; use 'exact', 'hnsw' or 'ivf'")
        return cls(accelerator().faiss_index(index, kind), vectors, kind, ef_search=ef_search, nprobe=nprobe)

    @classmethod
    def load(cls, path: Path, vectors: np.ndarray, kind: IndexKind, **kw: int) -> "FaissIndex":
        import faiss

        return cls(accelerator().faiss_index(faiss.read_index(str(path)), kind), vectors, kind, **kw)

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename) so concurrent workers never read half an index."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            self._faiss.write_index(faiss_to_cpu(self.index), tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _params(self, width: int, selector: object | None) -> object:
        faiss = self._faiss
        if selector is None:
            # Unfiltered parameters are reused (a SWIG object per call costs more than the lookup).
            hit = self._plain_params.get(width)
            if hit is None:
                if len(self._plain_params) > 256:  # widths follow k and the filter: bounded anyway
                    self._plain_params.clear()
                hit = self._plain_params[width] = (
                    faiss.SearchParametersHNSW(efSearch=int(width)) if self.kind == "hnsw"
                    else faiss.SearchParametersIVF(nprobe=int(width))
                )
            return hit
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=int(width)) if selector is not None else \
                faiss.SearchParametersHNSW(efSearch=int(width))
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(width)) if selector is not None else \
            faiss.SearchParametersIVF(nprobe=int(width))

    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = _as_queries(queries, self.dim)
        n_allowed = self.n_items if allowed is None else int(np.count_nonzero(allowed))  # faster than sum()
        want = min(k, n_allowed)
        if allowed is not None and n_allowed <= max(SUBSET_EXACT_MAX, 2 * k):
            return exact_subset(self.vectors, q, k, np.flatnonzero(allowed))
        if allowed is not None and n_allowed >= self.n_items // 2:
            # A loose filter (availability, the user's seen items): an unfiltered search for a few
            # more than k, then drop the excluded ones, is several times faster than a bitmap
            # selector in the graph walk; the selector below is the fallback when too few survive.
            fetch = min(self.n_items, int(k * self.n_items / n_allowed * 1.5) + 16)
            scores, ids = self.index.search(q, fetch, params=self._params(max(self.ef_search, fetch), None))
            ok = (ids >= 0) & allowed[np.maximum(ids, 0)]
            if len(q) == 1 and np.count_nonzero(ok) >= want:  # one request's query: plain masking
                keep = np.flatnonzero(ok[0])[:k]
                out_ids = np.full((1, k), -1, dtype=np.int64)
                out_scores = np.full((1, k), -np.inf, dtype=np.float32)
                out_ids[0, : len(keep)] = ids[0, keep]
                out_scores[0, : len(keep)] = scores[0, keep]
                return out_ids, out_scores
            if (ok.sum(axis=1) >= want).all():
                order = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # kept ones first, rank preserved
                ids = np.take_along_axis(np.where(ok, ids, -1), order, axis=1).astype(np.int64)
                scores = np.take_along_axis(np.where(ok, scores, -np.inf), order, axis=1).astype(np.float32)
                if ids.shape[1] < k:
                    pad = k - ids.shape[1]
                    ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
                    scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
                return ids, scores
        selector = None
        bitmap = None
        if allowed is not None and n_allowed < self.n_items:
            bitmap = np.packbits(allowed, bitorder="little")  # FAISS reads bit i as (b[i>>3] >> (i&7)) & 1
            selector = self._faiss.IDSelectorBitmap(self.n_items, self._faiss.swig_ptr(bitmap))
        base = self.ef_search if self.kind == "hnsw" else self.nprobe
        width = max(base, k) if self.kind == "hnsw" else base
        ids = scores = None
        for _ in range(4):
            scores, ids = self.index.search(q, k, params=self._params(width, selector))
            if (ids[:, :want] >= 0).all():
                break
            width *= 4
            if self.kind == "ivf" and width >= getattr(self.index, "nlist", width):
                width = self.index.nlist
        assert ids is not None and scores is not None
        short = ~(ids[:, :want] >= 0).all(axis=1)
        if short.any():  # a very selective filter the graph walk could not satisfy: exact over the subset
            subset = np.flatnonzero(allowed) if allowed is not None else np.arange(self.n_items)
            e_ids, e_scores = exact_subset(self.vectors, q[short], k, subset)
            ids[short], scores[short] = e_ids, e_scores
        del bitmap  # kept alive until here: the selector points into it
        ids = ids.astype(np.int64, copy=False)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32, copy=False)
        return ids, scores

    def memory_bytes(self) -> int:
        """Bytes of the serialised index (vectors + graph/lists), an estimate of its RAM."""
        return int(self._faiss.serialize_index(self.index).nbytes)


_build_lock = threading.Lock()


def _prune_cache(keep: Path) -> None:
    """Keep the ``KEEP_VERSIONS`` newest cached indexes, as the precomputed lists do: an older version's
    file is only a cache (rebuilt if that version is ever loaded again), and every version left one."""

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:  # another worker pruned it meanwhile
            return 0.0

    older = sorted((p for p in keep.parent.glob("*.faiss") if p != keep), key=mtime, reverse=True)
    for p in older[KEEP_VERSIONS - 1 :]:
        p.unlink(missing_ok=True)
        Path(str(p) + ".lock").unlink(missing_ok=True)


def build_index(
    vectors: np.ndarray,
    *,
    exact_max_items: int,
    kind: IndexKind = "hnsw",
    cache_path: Path | None = None,
) -> ItemIndex:
    """The retrieval index for item vectors: exact up to ``exact_max_items``, FAISS above.

    With ``cache_path`` the FAISS index is read from there if present, else built and written
    there, so several worker processes build it once per model version.
    """
    n = vectors.shape[0]
    if n <= exact_max_items or kind == "exact":
        return ExactIndex(vectors)
    if cache_path is not None and cache_path.exists():
        try:
            return FaissIndex.load(cache_path, vectors, kind)
        except RuntimeError:
            cache_path.unlink(missing_ok=True)  # a corrupt cache file: rebuild below
    with _build_lock:
        lock_fd = None
        if cache_path is not None:
            import fcntl

            cache_path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(str(cache_path) + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # another worker may be building it right now
        try:
            if cache_path is not None and cache_path.exists():
                return FaissIndex.load(cache_path, vectors, kind)
            index = FaissIndex.build(vectors, kind)
            if cache_path is not None:
                index.save(cache_path)
                _prune_cache(cache_path)
            return index
        finally:
            if lock_fd is not None:
                os.close(lock_fd)


# ---------------------------------------------------------------------- retrieval over a model
class Retriever(Protocol):
    """Top-k items for one query among the allowed ones: the single retrieval path of serving.

    A query is prepared once per request (:meth:`user_query`, :meth:`history_query`,
    :meth:`item_query`) and searched with a growing ``k`` when filters leave too few. ``search``
    returns 1-d (ids int64, scores float32), best first, -1/-inf padded; only allowed items.
    """

    model: Recommender

    def user_query(self, row: int) -> object: ...

    def history_query(self, history: sp.csr_matrix) -> object: ...

    def item_query(self, col: int) -> object: ...

    def search(self, query: object, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class _ItemQuery(int):
    """An item column to find similar items to (typed so ``search`` tells it from a user row)."""


def _candidates(allowed: np.ndarray) -> np.ndarray | None:
    return None if allowed.all() else np.flatnonzero(allowed)


class ModelRetriever:
    """Retrieval by the model's own scoring (``recommend`` / ``recommend_history`` /
    ``similar_items`` restricted to the allowed items): models without item vectors."""

    index: ItemIndex | None = None
    #: the version's precomputed lists (scalerec.serving.precomputed), set once they are ready
    precomputed: PrecomputedLists | None = None

    def __init__(self, model: Recommender) -> None:
        self.model = model

    def user_query(self, row: int) -> object:
        q = self._user_query(row)
        lists = self.precomputed
        return q if lists is None else lists.query(row, q)

    def _user_query(self, row: int) -> object:
        return int(row)

    def history_query(self, history: sp.csr_matrix) -> object:
        return history

    def item_query(self, col: int) -> object:
        return _ItemQuery(col)

    def search(self, query: object, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if type(query) is FoldInQuery:  # a fresh user's kept fold-in (serving/foldcache.py)
            return query.search(self, k, allowed)
        if type(query) is PrecomputedQuery:
            hit = query.lists.take(query, k, allowed)
            if hit is not None:
                return hit
            query = query.base  # a request the list cannot answer: the live search
        return self._search(query, k, allowed)

    def _search(self, query: object, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cand = _candidates(allowed)
        if isinstance(query, _ItemQuery):
            ids, scores = self.model.similar_items(np.array([int(query)]), k, candidates=cand)
        elif isinstance(query, int):
            ids, scores = self.model.recommend(np.array([query]), k, candidates=cand)
        else:
            ids, scores = self.model.recommend_history(query, k, candidates=cand)
        return ids[0], scores[0]


class IndexedRecommender(ModelRetriever):
    """An :class:`~scalerec.models.base.EmbeddingRecommender` served through an :class:`ItemIndex`
    over its item vectors (as implicit's ``FaissModel`` wraps a fitted model).

    User queries are the model's user vectors (known users) or its fold-in of a history (new
    ones); similar items stay the model's exact cosine, restricted to the allowed items.
    """

    def __init__(self, model: EmbeddingRecommender, index: ItemIndex) -> None:
        super().__init__(model)
        self.index = index
        # Plain ndarray views of the memory maps (no copy, pages still shared by workers):
        # indexing a np.memmap pays subclass bookkeeping per call on the hot path.
        self.user_vectors = np.asarray(model.user_factors_)
        self.item_vectors = np.asarray(model.item_factors_)

    def _user_query(self, row: int) -> object:
        return np.asarray(self.user_vectors[row : row + 1], dtype=np.float32)

    def history_query(self, history: sp.csr_matrix) -> object:
        return self.model.fold_in(history)

    def _search(self, query: object, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(query, _ItemQuery):
            return super()._search(query, k, allowed)
        ids, scores = self.index.search(query, k, allowed=allowed)  # type: ignore[union-attr, arg-type]
        return ids[0], scores[0]


def retriever_for(
    model: Recommender, *, exact_max_items: int, cache_path: Path | None = None
) -> ModelRetriever:
    """The retrieval path of a fitted model: an index over its item vectors when it declares the
    embedding capability, its own scoring otherwise."""
    if isinstance(model, EmbeddingRecommender):
        index = build_index(
            np.asarray(model.item_factors_), exact_max_items=exact_max_items, cache_path=cache_path
        )
        return IndexedRecommender(model, index)
    return ModelRetriever(model)
