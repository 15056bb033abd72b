"""Per-version precomputed candidate lists: each known user's top ``k`` unseen items, memory-mapped.

A known user without fresh events gets the same list from the model until the next version, so
the item scan of a request (the largest share of a recommendation's own time) is done once per
version in blocks: :func:`compute` writes ``ids`` (int32 [users, k], -1 padded) and ``scores``
(float32) under ``<data dir>/serving/candidates/<version>-k<k>/``, one worker computes them (a file
lock) and every worker maps the same pages, so memory is bounded by the page cache, not the heap.

:meth:`PrecomputedLists.take` answers a search from the list only when that is exactly the live
search's answer: every seen item of the user is excluded by the request (the list never holds
them) and at least ``k`` listed items are allowed (the items below the list score no higher); any
other request (exclude_seen off, a narrow filter, a large n) goes to the live search.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalerec.models.base import top_k

log = logging.getLogger("scalerec.serving")

#: Users x items at most for which a load computes the lists at once (a few ms); larger in the background.
SYNC_MAX_CELLS = 50_000_000
#: Users scored per block while computing (bounds the dense score block).
BLOCK_BYTES = 64 * 1024 * 1024
#: Users per ANN batch search while computing.
ANN_BLOCK_USERS = 1024
#: Cached versions kept on disk (older ones are removed; a mapped file stays valid for its readers).
KEEP_VERSIONS = 4


class PrecomputedQuery:
    """A known user's query with their precomputed list (the live query kept for the fallback)."""

    __slots__ = ("row", "slot", "base", "lists")

    def __init__(self, row: int, slot: int, base: object, lists: "PrecomputedLists") -> None:
        self.row, self.slot, self.base, self.lists = row, slot, base, lists


class PrecomputedLists:
    """The mapped lists of one version: ``slots`` maps a user row to its list row (-1: none)."""

    def __init__(self, ids: np.ndarray, scores: np.ndarray, slots: np.ndarray | None,
                 seen_indptr: np.ndarray, seen_indices: np.ndarray, n_items: int) -> None:
        self.ids, self.scores, self.slots, self.n_items = ids, scores, slots, n_items
        self.k = ids.shape[1]
        self._indptr, self._indices = seen_indptr, seen_indices

    def query(self, row: int, base: object) -> object:
        slot = row if self.slots is None else int(self.slots[row])
        return base if slot < 0 else PrecomputedQuery(row, slot, base, self)

    def take(self, q: PrecomputedQuery, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids int64 [k], scores float32 [k]) as the live search answers, or None when the list cannot tell."""
        if k > self.k:
            return None
        seen = self._indices[self._indptr[q.row] : self._indptr[q.row + 1]]
        if len(seen) and allowed[seen].any():
            return None  # the request keeps seen items, which the list leaves out
        ids = self.ids[q.slot]
        listed = ids >= 0
        full = bool(listed[-1])  # a full list: anything below it scores at most its last item
        ids = ids[listed]
        if not full and len(ids) != self.n_items - len(seen):
            return None  # a short list that does not hold every unseen item (e.g. an ANN walk came back short)
        ok = allowed[ids]
        hit = np.flatnonzero(ok)
        if full and len(hit) < k:
            return None
        hit = hit[:k]
        out_ids = np.full(k, -1, np.int64)
        out_scores = np.full(k, -np.inf, np.float32)
        out_ids[: len(hit)] = ids[hit]
        out_scores[: len(hit)] = self.scores[q.slot][hit]
        return out_ids, out_scores

    def memory_bytes(self) -> int:
        return int(self.ids.nbytes + self.scores.nbytes + (0 if self.slots is None else self.slots.nbytes))


def sizes(serving: Any, ranking: Any, manifest: dict[str, Any]) -> tuple[int, int]:
    """(items per list, users given one) for a version: with an active ranker the pipeline's first
    retrieval asks for ``[ranking] cf_candidates`` (plus a quarter, so a few unavailable items do
    not send it to the live search); users bounded by ``precomputed_max_users`` and ``precomputed_max_mb``."""
    k = serving.precomputed_k
    if k > 0 and ranking.enabled and ((manifest.get("ranking") or {}).get("status") == "active"):
        k = max(k, ranking.cf_candidates + ranking.cf_candidates // 4)
    by_memory = serving.precomputed_max_mb * 1024 * 1024 // max(1, 8 * k)  # int32 ids + float32 scores
    return k, min(serving.precomputed_max_users, by_memory)


def _cache_dir(root: Path, version: str, k: int) -> Path:
    return root / f"{version}-k{k}"


def _chosen_users(seen_indptr: np.ndarray, max_users: int) -> np.ndarray | None:
    """Rows given a list: all, or the ``max_users`` with the most history (the likeliest to return)."""
    n = len(seen_indptr) - 1
    if n <= max_users:
        return None
    counts = np.diff(seen_indptr)
    chosen = np.argsort(-counts, kind="stable")[:max_users]
    return np.sort(chosen)


class Stopped(Exception):
    """The computation was asked to stop (``stop()`` was true between two blocks)."""


def compute(retriever: Any, seen: sp.csr_matrix, k: int, users: np.ndarray | None,
            out_ids: np.ndarray, out_scores: np.ndarray, *, stop: Callable[[], bool] | None = None) -> None:
    """Each chosen user's top ``k`` unseen items into ``out_ids`` / ``out_scores``, block by block,
    with the retriever's own scoring (the exact index's product and top-k, the ANN index's search, or
    the model's recommend). ``stop()`` is asked before each block (true: raise :class:`Stopped`)."""
    rows = np.arange(seen.shape[0]) if users is None else users
    index = getattr(retriever, "index", None)
    n_items = seen.shape[1]
    step = max(1, BLOCK_BYTES // (4 * max(1, n_items)))
    at = np.arange(len(rows))  # where each block's rows go in the output
    ann = index is not None and getattr(index, "kind", None) != "exact"
    if ann:  # users of similar history length together: a block's search depth follows its longest history
        at = np.argsort(np.diff(seen.indptr)[rows], kind="stable")
        step = ANN_BLOCK_USERS
    for start in range(0, len(rows), step):
        if stop is not None and stop():
            raise Stopped
        where = at[start : start + step]
        block = rows[where]
        seen_b = seen[block]
        if getattr(index, "kind", None) == "exact":
            scores = np.asarray(retriever.user_vectors[block], dtype=np.float32) @ index.vectors.T
            if seen_b.nnz:
                r = np.repeat(np.arange(len(block)), np.diff(seen_b.indptr))
                scores[r, seen_b.indices] = -np.inf
            ids, vals = top_k(scores, k)
        elif ann:  # an unfiltered search past the seen items, then drop them
            extra = int(np.diff(seen_b.indptr).max()) if len(block) else 0
            fetch = min(n_items, k + extra)
            q = np.asarray(retriever.user_vectors[block], dtype=np.float32)
            f_ids, f_vals = index.search(q, fetch)
            r = np.repeat(np.arange(len(block)), np.diff(seen_b.indptr))
            seen_keys = r.astype(np.int64) * n_items + seen_b.indices
            keys = np.arange(len(block))[:, None].astype(np.int64) * n_items + np.maximum(f_ids, 0)
            ok = (f_ids >= 0) & ~np.isin(keys, seen_keys)
            order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
            ids = np.take_along_axis(np.where(ok, f_ids, -1), order, axis=1)
            vals = np.take_along_axis(np.where(ok, f_vals, -np.inf), order, axis=1)
            if ids.shape[1] < k:
                ids = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
                vals = np.pad(vals, ((0, 0), (0, k - vals.shape[1])), constant_values=-np.inf)
        else:
            ids, vals = retriever.model.recommend(block, k, exclude=seen_b)
        out_ids[where] = ids
        out_scores[where] = vals


def load_or_compute(root: Path, version: str, retriever: Any, seen_indptr: np.ndarray, seen_indices: np.ndarray,
                    n_items: int, *, k: int, max_users: int) -> PrecomputedLists:
    """The version's lists from ``root`` (mapped), computed and written there first when absent
    (under a file lock: one worker computes, the others wait and map the same files)."""
    ensure_written(root, version, retriever, seen_indptr, seen_indices, n_items, k=k, max_users=max_users)
    return _map(_cache_dir(root, version, k), seen_indptr, seen_indices, n_items)


def ensure_written(root: Path, version: str, retriever: Any, seen_indptr: np.ndarray, seen_indices: np.ndarray,
                   n_items: int, *, k: int, max_users: int, stop: Callable[[], bool] | None = None) -> Path:
    """Compute and write the version's lists under ``root`` unless they are there (file lock: one
    computes, the others wait); returns their folder."""
    import fcntl

    d = _cache_dir(root, version, k)
    root.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(str(d) + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if not (d / "meta.json").exists():
            _write(d, retriever, seen_indptr, seen_indices, n_items, k, max_users, stop)
            _prune(root, keep=d)
    finally:
        os.close(lock_fd)
    return d


def _map(d: Path, seen_indptr: np.ndarray, seen_indices: np.ndarray, n_items: int) -> PrecomputedLists:
    ids = np.load(d / "ids.npy", mmap_mode="r")
    scores = np.load(d / "scores.npy", mmap_mode="r")
    slots = np.load(d / "slots.npy", mmap_mode="r") if (d / "slots.npy").exists() else None
    # plain ndarrays over the mapped pages: np.memmap indexing pays subclass bookkeeping per call
    return PrecomputedLists(np.asarray(ids), np.asarray(scores), None if slots is None else np.asarray(slots),
                            seen_indptr, seen_indices, n_items)


def _write(d: Path, retriever: Any, seen_indptr: np.ndarray, seen_indices: np.ndarray, n_items: int,
           k: int, max_users: int, stop: Callable[[], bool] | None = None) -> None:
    t0 = time.perf_counter()
    n_users = len(seen_indptr) - 1
    users = _chosen_users(seen_indptr, max_users)
    n = n_users if users is None else len(users)
    tmp = d.with_name(f".{d.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        ids = np.lib.format.open_memmap(tmp / "ids.npy", mode="w+", dtype=np.int32, shape=(n, k))
        scores = np.lib.format.open_memmap(tmp / "scores.npy", mode="w+", dtype=np.float32, shape=(n, k))
        seen = sp.csr_matrix((np.ones(len(seen_indices), np.float32), seen_indices, seen_indptr),
                             shape=(n_users, n_items))
        compute(retriever, seen, k, users, ids, scores, stop=stop)
        ids.flush()
        scores.flush()
        del ids, scores
        if users is not None:
            slots = np.full(n_users, -1, np.int32)
            slots[users] = np.arange(len(users), dtype=np.int32)
            np.save(tmp / "slots.npy", slots)
        seconds = time.perf_counter() - t0
        (tmp / "meta.json").write_text(json.dumps({"users": n, "k": k, "seconds": round(seconds, 2)}))
        os.replace(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("precomputed the top %d of %d users in %.1f s", k, n, seconds)


def _prune(root: Path, keep: Path) -> None:
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for p in dirs[KEEP_VERSIONS - 1 :]:
        shutil.rmtree(p, ignore_errors=True)
        Path(str(p) + ".lock").unlink(missing_ok=True)


def attach(retriever: Any, root: Path, version: str, seen_indptr: np.ndarray, seen_indices: np.ndarray,
           n_items: int, *, k: int, max_users: int,
           builder: Callable[[int, int], tuple[list[str], dict[str, str]]] | None = None) -> threading.Thread | None:
    """Give ``retriever`` the version's lists: at once when small, else from a background thread
    (requests use the live search meanwhile). Returns the thread, if one was started.

    ``builder(k, max_users)`` is the command line (and extra environment) of a process that writes large lists (see
    :mod:`scalerec.serving.precompute_worker`): the thread then only waits for it and maps its files,
    so the computation runs at the lowest CPU priority and never holds this process's GIL."""
    if k <= 0 or max_users <= 0 or len(seen_indptr) <= 1 or n_items == 0:
        return None
    k = min(k, n_items)

    def run(spawn: bool) -> None:
        try:
            if spawn and builder is not None and not (_cache_dir(root, version, k) / "meta.json").exists():
                t0 = time.perf_counter()
                cmd, env = builder(k, max_users)
                done = subprocess.run(cmd, env={**os.environ, **env}, stdin=subprocess.DEVNULL, check=False)
                if done.returncode != 0 or not (_cache_dir(root, version, k) / "meta.json").exists():
                    log.warning("the candidate-list process of %s exited with %s; serving with the live search",
                                version, done.returncode)
                    return
                log.info("candidate lists of %s written by a background process in %.1f s", version,
                         time.perf_counter() - t0)
            retriever.precomputed = load_or_compute(root, version, retriever, seen_indptr, seen_indices, n_items,
                                                    k=k, max_users=max_users)
        except Exception:  # serving goes on with the live search
            log.exception("precomputing the candidate lists of %s failed; serving with the live search", version)

    if (len(seen_indptr) - 1) * n_items <= SYNC_MAX_CELLS:
        run(spawn=False)  # small: computed here at once, no process started
        return None
    thread = threading.Thread(target=run, args=(True,), name=f"scalerec-precompute-{version}", daemon=True)
    thread.start()
    return thread
