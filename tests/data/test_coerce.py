"""scalerec.data.coerce: the single-value conversions (HTTP requests, item patches) agree with the
column conversions the importer and validator use."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from scalerec.data import coerce
from scalerec.data.schema import FLAT_MAP, TIMESTAMP
from scalerec.errors import ValidationError

UTC = dt.timezone.utc


def test_bool_value_reads_the_words_the_column_path_reads() -> None:
    words = list(coerce.TRUE_WORDS) + list(coerce.FALSE_WORDS)
    column, bad = coerce.to_bools(pa.array(words), "available")
    assert not any(bad.to_pylist())
    assert [coerce.bool_value(f" {w.upper()} ", "available") for w in words] == column.to_pylist()
    assert coerce.bool_value(True, "available") is True and coerce.bool_value(0, "available") is False
    assert coerce.bool_value(None, "available") is None
    for value in ("maybe", 2, 0.5, [1]):
        with pytest.raises(ValidationError, match="available .* must be true or false"):
            coerce.bool_value(value, "available")


def test_number_value() -> None:
    assert coerce.number_value("2.5", "price", minimum=0) == 2.5
    assert coerce.number_value(None, "price") is None
    with pytest.raises(ValidationError, match="price 'abc' is not a number"):
        coerce.number_value("abc", "price")
    with pytest.raises(ValidationError, match="is not a number"):
        coerce.number_value(True, "price")
    for value in (float("inf"), float("nan"), -1):
        with pytest.raises(ValidationError, match="must be a finite number >= 0"):
            coerce.number_value(value, "price", minimum=0)


def test_utc_us_and_utc_datetime() -> None:
    us = 1_323_432_000_000_000  # 2011-12-09T12:00:00Z
    for value in ("2011-12-09T12:00:00Z", "2011-12-09 13:00:00+01:00", dt.datetime(2011, 12, 9, 12),
                  1_323_432_000, np.datetime64("2011-12-09T12:00:00")):
        assert coerce.utc_us(value, "t") == us
    assert coerce.utc_us(dt.date(2011, 12, 9), "t") == us - 12 * 3600 * 1_000_000
    assert coerce.utc_datetime("2011-12-09T12:00:00", "created_at") == dt.datetime(2011, 12, 9, 12, tzinfo=UTC)
    assert coerce.utc_us(None, "t") is None and coerce.utc_datetime(None, "t") is None
    with pytest.raises(ValidationError, match="created_at='soon' is not an ISO date"):
        coerce.utc_datetime("soon", "created_at")
    with pytest.raises(ValidationError, match="is not a date-time"):
        coerce.utc_us([1], "t")


def test_timestamp_values_feed_the_column_parser() -> None:
    when = dt.datetime(2025, 1, 1, tzinfo=UTC)
    assert coerce.timestamp_values([when]).type == TIMESTAMP
    epoch = coerce.timestamp_values([1_735_689_600, 1_735_689_600.5])
    assert epoch.type == TIMESTAMP and epoch.to_pylist()[0] == when
    mixed = coerce.timestamp_values([when, "2025-01-01T00:00:00Z"])
    assert mixed.type == pa.string()
    parsed, bad = coerce.to_timestamps(mixed, "timestamp")
    assert parsed.to_pylist() == [when, when] and not any(bad.to_pylist())


def test_flat_map_entries_match_the_column_path() -> None:
    value = {"size": 42, "new": True, "gone": None, "name": "x"}
    assert coerce.flat_map_entries(value) == [("size", "42"), ("new", "true"), ("name", "x")]
    assert coerce.flat_map_entries(value, missing="") == [("size", "42"), ("new", "true"), ("gone", ""), ("name", "x")]
    # the same dict as a struct column (a JSON lines import) gives the same entries
    column, bad = coerce.to_flat_maps(pa.array([{"size": 42, "new": True, "name": "x"}]), "attributes")
    assert column.to_pylist() == [coerce.flat_map_entries(value)] and not bad.to_pylist()[0]
    assert coerce.flat_map_entries(None) is None
    with pytest.raises(ValidationError, match="must be an object"):
        coerce.flat_map_entries([1, 2])
    with pytest.raises(ValidationError, match="key 'a' must be a scalar"):
        coerce.flat_map_entries({"a": {"b": 1}}, "context")
    maps = coerce.flat_maps_from_dicts([{"device": "app"}, None])
    assert maps.type == FLAT_MAP and maps.to_pylist() == [[("device", "app")], None]


def test_json_texts_round_trip_through_json_maps_and_lists() -> None:
    maps = pa.array([[("a", "1")], None], FLAT_MAP)
    texts = coerce.json_texts(maps)
    assert texts.to_pylist() == ['{"a":"1"}', None]
    back, bad = coerce.json_maps(texts)
    assert back.to_pylist() == maps.to_pylist() and not any(bad.to_pylist())
    lists = coerce.json_texts(pa.array([["x", "y"]], pa.list_(pa.string())))
    assert coerce.json_string_lists(lists).to_pylist() == [["x", "y"]]
    assert coerce.json_texts(pa.nulls(2, FLAT_MAP)).to_pylist() == [None, None]


def test_all_null_columns_skip_duckdb() -> None:
    maps, bad = coerce.json_maps(pa.nulls(3, pa.string()))
    assert maps.type == FLAT_MAP and maps.to_pylist() == [None] * 3 and bad.to_pylist() == [False] * 3
    lists = coerce.json_string_lists(pa.nulls(2, pa.string()))
    assert lists.type == pa.list_(pa.string()) and lists.to_pylist() == [None, None]
