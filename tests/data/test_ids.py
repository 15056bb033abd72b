"""The id policy (scalerec.data.ids) and the lookups of ids in a sorted vocabulary."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scalerec.data.ids import MAX_ID_LENGTH, invalid_id_mask, check_id, find, id_problem, lookup
from scalerec.errors import ValidationError

GOOD = ["22720", "85123A", "BANK CHARGES", "gift_0001_40", "ü-ñ", "x" * MAX_ID_LENGTH, "\U0001f600"]
BAD = ["", " 22720", "22720 ", "\t1", "a\x00b", "a\nb", "a/b", "x" * (MAX_ID_LENGTH + 1), "a\x85"]


@pytest.mark.parametrize("value", GOOD)
def test_good_ids_pass(value: str) -> None:
    assert id_problem(value) is None and check_id(value) == value


@pytest.mark.parametrize("value", [*BAD, "\ud800x"])
def test_bad_ids_are_refused_naming_the_field(value: str) -> None:
    assert id_problem(value)
    with pytest.raises(ValidationError) as info:
        check_id(value, "item_id")
    assert info.value.status == 422 and info.value.details[0]["field"] == "item_id"


def test_the_arrow_mask_agrees_with_the_scalar_policy() -> None:
    arr = pa.array([*GOOD, *BAD, None])
    mask = invalid_id_mask(arr).to_pylist()
    assert mask == [False] * len(GOOD) + [True] * len(BAD) + [False]
    assert invalid_id_mask(pa.chunked_array([arr, arr])).to_pylist() == mask * 2


def test_lookup_finds_ids_of_any_length_without_recasting_the_vocabulary() -> None:
    vocab = np.sort(np.array([f"i{i:05d}" for i in range(1000)]))
    ids = ["i00007", "x" * 256, "i00999", "i0000", "i000070", "", "i00007"]
    want = [7, -1, 999, -1, -1, -1, 7]
    assert lookup(vocab, ids).tolist() == want
    assert lookup(vocab, np.array(ids)).tolist() == want
    assert lookup(vocab.astype(object), ids).tolist() == want
    assert [find(vocab, i) for i in ids] == want
    assert find(vocab, "i00007\x00") == -1
    assert lookup(vocab[:0], ids).tolist() == [-1] * len(ids) and lookup(vocab, []).tolist() == []
    assert vocab.dtype == np.dtype("<U6")
