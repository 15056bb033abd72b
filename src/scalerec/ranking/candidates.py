"""Candidate sources, each sized by ``[ranking]`` settings, merged into one long frame.

A source gives per query a block of (item column, score); :func:`merge` deduplicates them into
one row per (query, item) with one score column per source (NaN where a source did not propose
the item), so the source is a feature of the ranker and the reason of the served item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

SOURCES = ("cf", "cooc", "segment", "content", "context")
#: each source's rank of the candidate (0 = its best; NaN where the source did not propose it)
RANKS = tuple(f"{s}_rank" for s in SOURCES)


def neighbour_matrix(ids: np.ndarray, scores: np.ndarray, n_items: int) -> sp.csr_matrix:
    """csr [n_items, n_items] of a neighbour table (int32 [n, k] with -1 padding)."""
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    cols = ids.ravel()
    keep = cols >= 0
    return sp.csr_matrix((scores.ravel()[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(n_items, n_items))


def top_of_rows(m: sp.csr_matrix, k: int, banned: sp.csr_matrix | None = None,
                allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest stored entries of each row of ``m`` (not in ``banned``, only ``allowed``
    columns): (int64 [rows, k] with -1 padding, float32 scores)."""
    m = sp.csr_matrix(m, dtype=np.float32)
    if banned is not None and banned.nnz:
        m = m - m.multiply(banned.astype(bool))
        m.eliminate_zeros()
    if allowed is not None:
        m = sp.csr_matrix(m @ sp.diags(allowed.astype(np.float32)))
        m.eliminate_zeros()
    n = m.shape[0]
    ids = np.full((n, k), -1, np.int64)
    scores = np.zeros((n, k), np.float32)
    if k == 0 or m.nnz == 0:
        return ids, scores
    # one sort of all entries by (row, -score, column): vectorised, ties by column as serving breaks them
    row = np.repeat(np.arange(n), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, row))
    row, col, val = row[order], m.indices[order], m.data[order]
    rank = np.arange(len(row)) - m.indptr[row]
    keep = rank < k
    ids[row[keep], rank[keep]] = col[keep]
    scores[row[keep], rank[keep]] = val[keep]
    return ids, scores


@dataclass
class Block:
    """One source's proposals: item columns and scores [n_queries, k], -1 padding."""

    source: str
    ids: np.ndarray
    scores: np.ndarray


def merge(blocks: list[Block]) -> pl.DataFrame:
    """Long frame (q, i, <source> score columns, <source>_rank columns) with one row per (query, item)."""
    frames = []
    for b in blocks:
        q = np.repeat(np.arange(b.ids.shape[0]), b.ids.shape[1])
        i = b.ids.ravel()
        keep = i >= 0
        # the rank among the row's proposed items (padding or dropped entries do not count), as serving ranks them
        rank = (np.cumsum(b.ids >= 0, axis=1) - 1).astype(np.float32).ravel()
        f = pl.DataFrame({"q": q[keep].astype(np.int32), "i": i[keep].astype(np.int32),
                          "source": b.source, "score": b.scores.ravel()[keep].astype(np.float32),
                          "rank": rank[keep]})
        frames.append(f)
    if not frames:
        return pl.DataFrame(schema={"q": pl.Int32, "i": pl.Int32, **{s: pl.Float32 for s in (*SOURCES, *RANKS)}})
    long = pl.concat(frames)
    aggs = [pl.col("score").filter(pl.col("source") == s).max().alias(s) for s in SOURCES]
    aggs += [pl.col("rank").filter(pl.col("source") == s).min().alias(r) for s, r in zip(SOURCES, RANKS)]
    return long.group_by("q", "i", maintain_order=True).agg(aggs).sort("q", maintain_order=True)


def context_scores(popularity: np.ndarray, category: np.ndarray, lift: np.ndarray, code: int) -> np.ndarray:
    """float32 [n_items]: recent popularity times how much the item's category sells more under
    the context label ``code`` (0 where it does not sell more, or the context is unknown)."""
    if code <= 0:
        return np.zeros(len(popularity), np.float32)
    return (popularity * np.maximum(lift[category, code] - 1.0, 0.0)).astype(np.float32)


def segment_table(user_attr: np.ndarray, popularity_rows: sp.csr_matrix, n_values: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per value of one segment attribute (int codes per user, 0 = unknown), its ``k`` most
    popular items among the users of that value: (int64 [n_values + 1, k], float32 shares)."""
    n_users = popularity_rows.shape[0]
    member = sp.csr_matrix((np.ones(n_users, np.float32), (user_attr, np.arange(n_users))), shape=(n_values + 1, n_users))
    counts = sp.csr_matrix(member @ popularity_rows)
    tot = np.asarray(counts.sum(axis=1)).ravel()
    counts = sp.csr_matrix(sp.diags(1.0 / np.maximum(tot, 1e-9)) @ counts)
    return top_of_rows(counts, k)
