"""The one id policy (user, item and session ids) that import, the validator and the HTTP API enforce alike.

An id is at most ``MAX_ID_CHARS`` characters of valid Unicode, without control characters (NUL,
tab, newline, DEL, C1), without leading or trailing whitespace (rejected, never stripped) and
without ``/`` (it could never be addressed in a URL path such as ``/v1/items/{item_id}``).
``check_id`` checks one value; ``invalid_id_mask`` / ``id_problems`` check a whole Arrow column
with compute kernels (byte scans of the data buffer first, so a clean column costs a few passes).
``lookup`` / ``find`` locate ids in a model's sorted vocabulary in O(log n) whatever their length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.errors import ValidationError

__all__ = [
    "ID_POLICY", "MAX_ID_CHARS", "check_id", "check_id_columns", "find", "id_problem", "id_problems",
    "invalid_id_mask", "lookup",
]

MAX_ID_CHARS = 256
MAX_ID_LENGTH = MAX_ID_CHARS  # the name the HTTP schemas use
#: The policy in words, for error messages and docs.
ID_POLICY = (
    f"ids are 1-{MAX_ID_CHARS} characters of valid Unicode without control characters, '/', "
    "or leading/trailing whitespace"
)
_CONTROL_RE = r"[\x{00}-\x{1f}\x{7f}-\x{9f}]"
_CONTROL_CHARS = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))


def _shown(value: str) -> str:
    text = value if len(value) <= 40 else value[:37] + "..."
    return repr(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def id_problem(value: Any) -> str | None:
    """Why ``value`` breaks the id policy, as a sentence naming it (None when it does not)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "is empty"
    if len(value) > MAX_ID_CHARS:
        return f"id {_shown(value)} is {len(value):,} characters long (at most {MAX_ID_CHARS})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"id {_shown(value)} is not valid Unicode (a lone surrogate)"
    if not _CONTROL_CHARS.isdisjoint(value):
        return f"id {_shown(value)} contains a control character (NUL, tab, newline, ...)"
    if value != value.strip():
        return f"id {_shown(value)} has leading or trailing whitespace; send the id exactly as stored"
    if "/" in value:
        return f"id {_shown(value)} contains '/'"
    return None


def check_id(value: Any, what: str = "id") -> str:
    """``value`` as an id; ValidationError (422) naming ``what`` (e.g. "item_id") when it breaks the policy."""
    why = id_problem(value)
    if why is None:
        return value
    shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
    raise ValidationError(
        f"invalid {what}: {why}; {ID_POLICY}", details=[{"field": what, "message": why, "input": shown}]
    )


def id_problems(array: pa.Array | pa.ChunkedArray) -> list[tuple[pa.Array, str]]:
    """(mask, reason) for each policy rule some non-null value of a string column breaks.

    Rules are screened on the raw bytes with numpy (lengths from the offsets, control bytes and
    '/' in the data buffer); a regex kernel runs only when a screen finds a candidate.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    n = len(array)
    if n == 0 or array.null_count == n:
        return []
    from scalerec.data.coerce import edges_clean, string_buffers

    offsets, data = string_buffers(array)
    data = data[offsets[0] : offsets[-1]]
    out: list[tuple[pa.Array, str]] = []

    def add(mask: pa.Array, reason: str) -> None:
        mask = pc.fill_null(mask, False)
        if pc.any(mask).as_py():
            out.append((mask, reason))

    lengths = np.diff(offsets)
    if np.any(lengths == 0):
        add(pc.equal(pc.binary_length(array), 0), "is empty")
    if np.any(lengths > MAX_ID_CHARS):  # bytes >= characters: only then count characters
        add(pc.greater(pc.utf8_length(array), MAX_ID_CHARS), f"is longer than {MAX_ID_CHARS} characters")
    if np.any((data < 0x20) | (data == 0x7F) | (data == 0xC2)):  # C1 controls are C2 80..C2 9F in UTF-8
        add(pc.match_substring_regex(array, _CONTROL_RE), "contains a control character (NUL, tab, newline, ...)")
    if np.any(data == ord("/")):
        add(pc.match_substring(array, "/"), "contains '/'")
    if edges_clean(array):  # no value starts or ends with a space, control or non-ASCII byte
        return out
    trimmed = pc.utf8_trim_whitespace(array)
    add(pc.not_equal(pc.binary_length(trimmed), pc.binary_length(array)), "has leading or trailing whitespace")
    return out


def invalid_id_mask(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Boolean mask: True where a non-null value breaks the id policy (nulls are False)."""
    n = len(array)
    mask = pa.array(np.zeros(n, dtype=bool))
    for m, _ in id_problems(array):
        mask = pc.or_(mask, m)
    return mask


def _row_problems(arr: pa.Array | pa.ChunkedArray, rows: Sequence[int] | np.ndarray) -> list[str]:
    """The :func:`id_problem` of each of ``rows`` of ``arr`` (rows the mask flagged)."""
    values = pc.take(arr, pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
    return [id_problem(v) or "invalid id" for v in values]


def check_id_columns(table: pa.Table, columns: Sequence[str], *, limit: int = 20) -> None:
    """ValidationError (422) when any id in ``columns`` of ``table`` breaks the policy (nulls pass);
    ``details.rejected`` lists the first ``limit`` bad rows as ``{"index", "field", "reason"}``."""
    rejected: list[dict[str, Any]] = []
    for name in columns:
        if name not in table.column_names:
            continue
        col = table.column(name)
        rows = np.flatnonzero(invalid_id_mask(col).to_numpy(zero_copy_only=False))
        for row, reason in zip(rows[:limit].tolist(), _row_problems(col, rows[:limit])):
            rejected.append({"index": row, "field": name, "reason": f"{name}: {reason}"})
    if rejected:
        rejected.sort(key=lambda r: r["index"])
        first = rejected[0]
        raise ValidationError(
            f"invalid id in event #{first['index']}: {first['reason']}; nothing was stored",
            details={"rejected": rejected[:limit]},
        )


# ---------------------------------------------------------------------- lookups
def lookup(vocab: np.ndarray, ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Positions (int64) of ``ids`` in the sorted string array ``vocab``; -1 where absent.

    The query is cast once to the vocabulary's own dtype and searched in O(m log n): a query
    wider than the vocabulary would make numpy recast the whole vocabulary to the query's width
    on every call (a 1M-item model: 0.35 s for one 300-character id). Ids longer than the
    vocabulary's width cannot be in it and are not searched.
    """
    n = len(vocab)
    q = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids), dtype=str)
    out = np.full(len(q), -1, dtype=np.int64)
    if n == 0 or len(q) == 0:
        return out
    if vocab.dtype.kind != "U" or q.dtype.kind != "U":  # object arrays compare as Python strings
        q = q.astype(str) if vocab.dtype.kind == "U" else q.astype(object)
        if vocab.dtype.kind != "U":
            pos = np.minimum(np.searchsorted(vocab, q), n - 1)
            return np.where(vocab[pos] == q, pos, -1).astype(np.int64)
    where: slice | np.ndarray = slice(None)
    if q.dtype.itemsize > vocab.dtype.itemsize:
        fits = np.char.str_len(q) <= vocab.dtype.itemsize // 4
        where = np.flatnonzero(fits)
        q = q[where]
    q = q.astype(vocab.dtype, copy=False)
    pos = np.minimum(np.searchsorted(vocab, q), n - 1)
    out[where] = np.where(vocab[pos] == q, pos, -1)
    return out


def find(vocab: np.ndarray, key: str) -> int:
    """The position of ``key`` in the sorted ``vocab``, -1 when absent (see :func:`lookup`)."""
    n = len(vocab)
    if n == 0 or not isinstance(key, str):
        return -1
    if vocab.dtype.kind == "U" and (len(key) > vocab.dtype.itemsize // 4 or key.endswith("\x00")):
        return -1
    pos = int(np.searchsorted(vocab, key))
    return pos if pos < n and vocab[pos] == key else -1
