"""The one id policy: the scalar check and the vectorised column check agree on every rule."""

from __future__ import annotations

import pyarrow as pa
import pytest

from scalerec.data.ids import MAX_ID_CHARS, check_id, id_problem, id_problems, invalid_id_mask
from scalerec.errors import ValidationError

GOOD = ["u1", "bmü0", "a b", "sku-85123A", "x" * MAX_ID_CHARS, "名前", "a.b:c@d"]
BAD = ["x" * (MAX_ID_CHARS + 1), "a\x00b", "a\tb", "line\nbreak", "del\x7f", "c1\x85", " lead", "trail ",
       "\u00a0nbsp", "a/b", "/"]


def test_scalar_check_accepts_good_and_names_the_rule() -> None:
    for v in GOOD:
        assert check_id(v, "item_id") == v
    for v in BAD:
        with pytest.raises(ValidationError, match="item_id"):
            check_id(v, "item_id")
    assert "surrogate" in id_problem("a\ud800")
    assert "5,000 characters" in id_problem("x" * 5000)
    with pytest.raises(ValidationError, match="must be a string"):
        check_id(12, "user_id")


def test_column_check_agrees_with_the_scalar_check() -> None:
    values = GOOD + BAD + [None]
    mask = invalid_id_mask(pa.array(values)).to_pylist()
    assert mask == [v is not None and id_problem(v) is not None for v in values]
    # chunked and sliced columns (non-zero offsets) too
    chunked = pa.chunked_array([pa.array(["ok", "a/b"]), pa.array(["x\x00", "fine"])])
    assert invalid_id_mask(chunked).to_pylist() == [False, True, True, False]
    sliced = pa.array(["a/b", "ok", " x", "y"]).slice(1)
    assert invalid_id_mask(sliced).to_pylist() == [False, True, False]


def test_a_clean_column_has_no_problems() -> None:
    assert id_problems(pa.array([f"u{i}" for i in range(1000)])) == []
    assert id_problems(pa.array([None, None], pa.string())) == []
