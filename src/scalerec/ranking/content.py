"""Item content vectors: TF-IDF over title, description, categories and attribute values.

Fitted per model version on the catalogue at training time; the vocabulary and IDF weights are
stored with the version, so items imported after training are vectorised the same way at serving
(a new item gets similar items from the moment it is in the catalogue).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

#: catalogue columns the text is made of
TEXT_COLUMNS = ["item_id", "title", "description", "categories", "attributes"]


def item_texts(table: pa.Table) -> pa.Array:
    """One string per catalogue row: title, description, categories and attribute values (vectorised)."""
    n = table.num_rows
    blank = pa.array([""] * n, pa.string()) if n else pa.array([], pa.string())
    parts = []
    for name in ("title", "description"):
        parts.append(pc.fill_null(table.column(name).combine_chunks(), "") if name in table.column_names else blank)
    if "categories" in table.column_names:
        cats = table.column("categories").combine_chunks()
        parts.append(pc.fill_null(pc.binary_join(cats, " "), ""))
    if "attributes" in table.column_names:
        attrs = table.column("attributes").combine_chunks()
        if isinstance(attrs, pa.MapArray) and len(attrs):
            values = pa.ListArray.from_arrays(attrs.offsets, attrs.items, mask=attrs.is_null())
            parts.append(pc.fill_null(pc.binary_join(values, " "), ""))
    if not parts:
        return blank
    return pc.binary_join_element_wise(*parts, " ")


@dataclass
class ContentIndex:
    """A fitted TF-IDF vocabulary (term -> column) and its IDF weights."""

    vocabulary: dict[str, int]
    idf: np.ndarray

    @classmethod
    def fit(cls, texts: pa.Array | list[str]) -> "ContentIndex":
        from sklearn.feature_extraction.text import TfidfVectorizer

        docs = texts.to_pylist() if isinstance(texts, pa.Array) else list(texts)
        vec = TfidfVectorizer(sublinear_tf=True, lowercase=True, dtype=np.float32)
        try:
            vec.fit(docs)
        except ValueError:  # no word in any text (an empty catalogue or ids only)
            return cls({}, np.zeros(0, np.float32))
        return cls({str(k): int(v) for k, v in vec.vocabulary_.items()}, vec.idf_.astype(np.float32))

    @property
    def n_terms(self) -> int:
        return len(self.vocabulary)

    def transform(self, texts: pa.Array | list[str]) -> sp.csr_matrix:
        """L2-normalised TF-IDF rows (float32) of ``texts`` on this vocabulary (unknown words ignored)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        docs = texts.to_pylist() if isinstance(texts, pa.Array) else list(texts)
        if not self.vocabulary:
            return sp.csr_matrix((len(docs), 0), dtype=np.float32)
        vec = TfidfVectorizer(sublinear_tf=True, lowercase=True, dtype=np.float32, vocabulary=self.vocabulary)
        vec.idf_ = self.idf  # the fitted weights: no refit on the new texts
        return sp.csr_matrix(vec.transform(docs), dtype=np.float32)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "vocabulary.json").write_text(json.dumps(self.vocabulary))
        np.save(path / "idf.npy", self.idf, allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> "ContentIndex":
        return cls(json.loads((path / "vocabulary.json").read_text()), np.load(path / "idf.npy", allow_pickle=False))


def top_neighbours(a: sp.csr_matrix, b: sp.csr_matrix, k: int, *, exclude_self: bool = False,
                   block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``, the ``k`` rows of ``b`` with the highest cosine (rows are unit
    vectors): (int32 [len(a), k] with -1 padding, float32 scores). Blocks of ``a`` bound memory."""
    n, m = a.shape[0], b.shape[0]
    k = max(0, min(k, m - (1 if exclude_self else 0)))
    ids = np.full((n, k), -1, np.int32)
    scores = np.zeros((n, k), np.float32)
    if k == 0 or n == 0:
        return ids, scores
    bt = b.T.tocsc()
    for lo in range(0, n, block):
        s = (a[lo : lo + block] @ bt).toarray()
        if exclude_self:
            r = np.arange(s.shape[0])
            s[r, lo + r] = -1.0
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        v = np.take_along_axis(s, top, axis=1)
        order = np.argsort(-v, axis=1, kind="stable")
        top, v = np.take_along_axis(top, order, axis=1), np.take_along_axis(v, order, axis=1)
        ids[lo : lo + block] = np.where(v > 0, top, -1)
        scores[lo : lo + block] = np.maximum(v, 0)
    return ids, scores
