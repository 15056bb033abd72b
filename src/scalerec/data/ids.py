"""The one id policy (user, item and session ids) that import, the validator and the HTTP API enforce alike.

An id is at most ``MAX_ID_CHARS`` characters of valid Unicode, without control characters (NUL,
tab, newline, DEL, C1), without leading or trailing whitespace (rejected, never stripped) and
without ``/`` (it could never be addressed in a URL path such as ``/v1/items/{item_id}``).
``check_id`` checks one value; ``invalid_id_mask`` / ``id_problems`` check a whole Arrow column
with compute kernels (byte scans of the data buffer first, so a clean column costs a few passes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.errors import ValidationError

__all__ = ["ID_POLICY", "MAX_ID_CHARS", "check_id", "id_problem", "id_problems", "invalid_id_mask"]

MAX_ID_CHARS = 256
#: The policy in words, for error messages and docs.
ID_POLICY = (
    f"ids are 1-{MAX_ID_CHARS} characters of valid Unicode without control characters, '/', "
    "or leading/trailing whitespace"
)
_CONTROL_RE = r"[\x{00}-\x{1f}\x{7f}-\x{9f}]"
_CONTROL_CHARS = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))


def id_problem(value: str) -> str | None:
    """Why ``value`` breaks the id policy (None when it does not)."""
    if not value:
        return "is empty"
    if len(value) > MAX_ID_CHARS:
        return f"is {len(value):,} characters long (at most {MAX_ID_CHARS})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    if not _CONTROL_CHARS.isdisjoint(value):
        return "contains a control character (NUL, tab, newline, ...)"
    if value != value.strip():
        return "has leading or trailing whitespace"
    if "/" in value:
        return "contains '/'"
    return None


def check_id(value: Any, what: str) -> str:
    """``value`` as an id; ValidationError naming ``what`` (e.g. "item_id") when it breaks the policy."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    why = id_problem(value)
    if why is not None:
        raise ValidationError(f"{what} {value[:60]!r} {why}; {ID_POLICY}", details={"field": what})
    return value


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

    if np.any(np.diff(offsets) > MAX_ID_CHARS):  # bytes >= characters: only then count characters
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
