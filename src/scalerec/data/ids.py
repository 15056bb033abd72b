"""The id policy of user, item and session ids, and lookups of ids in a sorted vocabulary.

One policy for every way an id comes in (HTTP paths and bodies, event rows, the importer): an id
is 1 to :data:`MAX_ID_LENGTH` characters, has no leading or trailing whitespace (rejected, never
silently stripped: a padded id must not read or overwrite another one), no control characters
(NUL included), no ``/`` and no lone surrogates. ``/`` is refused because such an id could never
be addressed as ``/v1/items/{item_id}`` (a ``{item_id:path}`` route would swallow ``/similar``).

:func:`id_problem` / :func:`check_id` check one value; :func:`bad_id_mask` and
:func:`id_problems` check an Arrow column with kernels (for the importer). :func:`lookup` and
:func:`find` find ids in a model's sorted id array in O(log n) each, whatever the id length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.errors import ValidationError

__all__ = ["MAX_ID_LENGTH", "bad_id_mask", "check_id", "check_id_columns", "find", "id_problem", "id_problems", "lookup"]

MAX_ID_LENGTH = 256
#: C0 and C1 control characters (NUL included), DEL and the path separator.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f/]")
_FORBIDDEN_ARROW = r"[\x00-\x1f\x7f-\x9f/]"
_SHOWN = 40


def _shown(value: str) -> str:
    text = value if len(value) <= _SHOWN else value[: _SHOWN - 3] + "..."
    return repr(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def id_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid id (a sentence naming it), or None when it is one."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"id {_shown(value)} is longer than {MAX_ID_LENGTH} characters ({len(value)})"
    if value[0].isspace() or value[-1].isspace():
        return f"id {_shown(value)} has leading or trailing whitespace; send the id exactly as stored"
    if _FORBIDDEN.search(value):
        return f"id {_shown(value)} contains a control character or '/'"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"id {_shown(value)} contains a lone surrogate (not valid Unicode text)"
    return None


def check_id(value: Any, field: str = "id") -> str:
    """``value`` if it is a valid id; ValidationError (422) naming the field and the id otherwise."""
    problem = id_problem(value)
    if problem is None:
        return value
    shown = value if not isinstance(value, str) or len(value) <= _SHOWN else value[: _SHOWN - 3] + "..."
    raise ValidationError(
        f"invalid {field}: {problem}",
        details=[{"field": field, "message": problem, "input": shown}],
    )


def bad_id_mask(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """True where a (utf8) id column breaks the policy; nulls are not flagged (a missing id is the
    caller's rule). Arrow strings are valid UTF-8, so no surrogate can occur there."""
    s = arr.cast(pa.string()) if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type) else arr
    length = pc.utf8_length(s)
    bad = pc.or_(pc.equal(length, 0), pc.greater(length, MAX_ID_LENGTH))
    bad = pc.or_(bad, pc.not_equal(pc.utf8_trim_whitespace(s), s))
    bad = pc.or_(bad, pc.match_substring_regex(s, _FORBIDDEN_ARROW))
    out = pc.fill_null(bad, False)
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def id_problems(arr: pa.Array | pa.ChunkedArray, rows: Sequence[int] | np.ndarray) -> list[str]:
    """The :func:`id_problem` of each of ``rows`` of ``arr`` (the rows ``bad_id_mask`` flagged)."""
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
        rows = np.flatnonzero(bad_id_mask(col).to_numpy(zero_copy_only=False))
        for row, reason in zip(rows[:limit].tolist(), id_problems(col, rows[:limit])):
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
