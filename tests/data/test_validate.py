"""Validation of raw tables into the event, item and user schemas: conversions, rejects, line numbers."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from scalerec.config import Settings
from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA
from scalerec.data.validate import validate_events, validate_items, validate_users
from scalerec.errors import DataImportError

UTC = dt.timezone.utc
ONLINE_RETAIL = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "online-retail"


@pytest.fixture
def settings(tmp_path):
    return Settings(data={"dir": tmp_path})


def events(**cols):
    base = {"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"], "timestamp": ["2021-01-01 10:00:00"]}
    n = max(len(v) for v in cols.values()) if cols else 1
    base = {k: v * n if len(v) == 1 else v for k, v in base.items()}
    base.update(cols)
    return pa.table(base)


def test_missing_required_column_names_it_and_the_columns_found(settings):
    with pytest.raises(DataImportError) as err:
        validate_events(pa.table({"user_id": ["a"], "item": ["b"], "event_type": ["view"], "timestamp": [1]}), settings)
    msg = err.value.message
    assert "item_id" in msg and "found: user_id, item, event_type, timestamp" in msg
    with pytest.raises(DataImportError, match="item_id"):
        validate_items(pa.table({"title": ["x"]}))
    with pytest.raises(DataImportError, match="user_id"):
        validate_users(pa.table({"id": ["x"]}))


def test_valid_output_has_exactly_the_schema(settings):
    valid, rejects = validate_events(events(), settings)
    assert valid.schema.equals(EVENT_SCHEMA)
    assert rejects.num_rows == 0 and rejects.column_names[:2] == ["line", "reason"]
    assert rejects.schema.field("line").type == pa.int64()
    assert validate_items(pa.table({"item_id": ["a"]}))[0].schema.equals(ITEM_SCHEMA)
    assert validate_users(pa.table({"user_id": ["a"]}))[0].schema.equals(USER_SCHEMA)


def test_empty_input(settings):
    empty = pa.table({c: pa.array([], pa.string()) for c in ["user_id", "item_id", "event_type", "timestamp"]})
    valid, rejects = validate_events(empty, settings)
    assert valid.num_rows == 0 and rejects.num_rows == 0 and valid.schema.equals(EVENT_SCHEMA)


def test_ids_become_strings_and_float_ids_lose_their_fraction(settings):
    valid, _ = validate_events(
        events(user_id=pa.array([40001.0, 40002.0]), item_id=pa.array([90011, 90012])), settings
    )
    assert valid.column("user_id").to_pylist() == ["40001", "40002"]
    assert valid.column("item_id").to_pylist() == ["90011", "90012"]
    # a text column of integer ids that went through a float writer
    valid, _ = validate_events(events(user_id=["40001.0", "12", "40002.0"]), settings)
    assert valid.column("user_id").to_pylist() == ["40001", "12", "40002"]
    # ids are never trimmed: a padded id is rejected (the id policy, data/ids.py)
    _, rejects = validate_events(events(user_id=["40001.0", " 12 ", "40002.0"]), settings)
    assert rejects.column("line").to_pylist() == [2]
    assert "has leading or trailing whitespace" in rejects.column("reason")[0].as_py()
    # ... but a real text id column keeps its values
    valid, _ = validate_events(events(item_id=["2.0", "SKU01A", "v1.0"]), settings)
    assert valid.column("item_id").to_pylist() == ["2.0", "SKU01A", "v1.0"]


def test_timestamps_in_many_forms_become_utc(settings):
    raw = [
        "2021-01-01 10:00:00",  # naive = UTC
        "2021-01-01T10:00:00Z",
        "2021-01-01T11:30:00+01:30",
        "2021-01-01T05:00:00-0500",
        "2021-01-01T10:00:00.250Z",
        "2021-01-01 10:00",
        "2021-01-01",
        "1609495200",  # epoch seconds = 2021-01-01 10:00:00
        "1609495200000",  # epoch milliseconds
    ]
    valid, rejects = validate_events(events(timestamp=raw), settings)
    assert rejects.num_rows == 0
    ten = dt.datetime(2021, 1, 1, 10, tzinfo=UTC)
    expected = [ten, ten, ten, ten, ten + dt.timedelta(milliseconds=250), ten, dt.datetime(2021, 1, 1, tzinfo=UTC), ten, ten]
    assert valid.column("timestamp").to_pylist() == expected


def test_timestamp_columns_of_other_types(settings):
    naive = pa.array([dt.datetime(2021, 1, 1, 10)], pa.timestamp("s"))
    aware = pa.array([dt.datetime(2021, 1, 1, 11, tzinfo=dt.timezone(dt.timedelta(hours=1)))], pa.timestamp("ms", "Europe/Paris"))
    epoch = pa.array([1609495200], pa.int64())
    date = pa.array([dt.date(2021, 1, 1)], pa.date32())
    for col, want in [
        (naive, dt.datetime(2021, 1, 1, 10, tzinfo=UTC)),
        (aware, dt.datetime(2021, 1, 1, 10, tzinfo=UTC)),
        (epoch, dt.datetime(2021, 1, 1, 10, tzinfo=UTC)),
        (date, dt.datetime(2021, 1, 1, tzinfo=UTC)),
    ]:
        valid, _ = validate_events(events(timestamp=col), settings)
        assert valid.column("timestamp").to_pylist() == [want], col.type


def test_rejects_carry_line_numbers_reasons_and_original_values(settings):
    table = events(
        user_id=["u1", None, "u3", "u4", None, "u6"],
        item_id=["i1", "i2", "", "i4", "i5", "i6"],
        event_type=["view", "view", "view", "teleport", "purchase", "PURCHASE"],
        timestamp=["2021-01-01", "2021-02-30", "2021-01-01", "2021-01-01", "2021-01-01", "yesterday"],
        session_id=[None, None, None, None, "s5", None],
    )
    valid, rejects = validate_events(table, settings, first_line=2)  # line 1 is a CSV header
    assert valid.column("user_id").to_pylist() == ["u1", None]  # row 5 is anonymous with a session
    assert valid.column("session_id").to_pylist() == [None, "s5"]
    assert rejects.column("line").to_pylist() == [3, 4, 5, 7]
    reasons = rejects.column("reason").to_pylist()
    assert "user_id is missing" in reasons[0] and "timestamp '2021-02-30' is not a date-time" in reasons[0]
    assert reasons[1] == "item_id is missing"
    assert "event_type 'teleport' is not configured" in reasons[2] and "allow_unknown_types" in reasons[2]
    assert "timestamp 'yesterday'" in reasons[3]
    assert rejects.column("timestamp").to_pylist() == ["2021-02-30", "2021-01-01", "2021-01-01", "yesterday"]
    assert rejects.column("event_type").to_pylist()[2] == "teleport"


def test_event_types_are_normalised_and_unknown_ones_allowed_by_setting(tmp_path):
    strict = Settings(data={"dir": tmp_path})
    valid, rejects = validate_events(events(event_type=["Add-To-Cart", " purchase ", "wishlist"]), strict)
    assert valid.column("event_type").to_pylist() == ["add_to_cart", "purchase"]
    assert rejects.column("line").to_pylist() == [3]
    loose = Settings(data={"dir": tmp_path}, events={"allow_unknown_types": True})
    valid, rejects = validate_events(events(event_type=["wishlist", "a/b"]), loose)
    assert valid.column("event_type").to_pylist() == ["wishlist"]
    assert "must be letters" in rejects.column("reason")[0].as_py()


def test_value_defaults_to_one_and_must_be_finite(settings):
    valid, _ = validate_events(events(), settings)
    assert valid.column("value").to_pylist() == [1.0] and valid.schema.field("value").type == pa.float32()
    valid, rejects = validate_events(events(value=["2.5", None, "abc", "inf", "-3", "1e2"]), settings)
    assert valid.column("value").to_pylist() == [2.5, 1.0, -3.0, 100.0]
    assert rejects.column("line").to_pylist() == [3, 4]
    assert rejects.column("reason").to_pylist() == ["value 'abc' is not a finite number", "value 'inf' is not a finite number"]


def test_context_from_dicts_json_strings_and_maps(settings):
    from_dicts, _ = validate_events(events(context=[{"device": "mobile", "n": 2}, None]), settings)
    assert from_dicts.column("context").to_pylist() == [[("device", "mobile"), ("n", "2")], None]
    from_json, rejects = validate_events(
        events(context=['{"device": "mobile", "ok": true, "w": 1.5}', '{"nested": {"a": 1}}', "[1, 2]", "not json", None]),
        settings,
    )
    assert from_json.column("context").to_pylist() == [[("device", "mobile"), ("ok", "true"), ("w", "1.5")], None]
    assert rejects.column("line").to_pylist() == [2, 3, 4]
    assert all("is not a flat key -> value map" in r for r in rejects.column("reason").to_pylist())
    as_map = pa.array([[("a", 1)], []], pa.map_(pa.string(), pa.int64()))
    valid, _ = validate_events(events(context=as_map), settings)
    assert valid.column("context").to_pylist() == [[("a", "1")], []]


def test_items_conversions_and_checks():
    table = pa.table(
        {
            "item_id": [1, 2, 3, 4, 5],
            "title": ["Mug", "", None, "Lamp", "Cup"],
            "categories": ["kitchen| mugs ||", None, "x", "home", "a|b"],
            "price": ["2.55", "0", "-1", "abc", None],
            "available": ["yes", "0", "true", "maybe", None],
            "attributes": ['{"colour": "red"}', None, "{}", None, '{"size": 3}'],
            "created_at": ["2020-05-01", None, None, None, "2020-05-02T00:00:00Z"],
        }
    )
    valid, rejects = validate_items(table, first_line=10)
    assert valid.column("item_id").to_pylist() == ["1", "2", "5"]
    assert valid.column("title").to_pylist() == ["Mug", None, "Cup"]
    assert valid.column("categories").to_pylist() == [["kitchen", "mugs"], None, ["a", "b"]]
    assert valid.column("price").to_pylist() == [2.55, 0.0, None]
    assert valid.column("available").to_pylist() == [True, False, True]  # missing = available
    assert valid.column("attributes").to_pylist() == [[("colour", "red")], None, [("size", "3")]]
    assert valid.column("created_at").to_pylist()[0] == dt.datetime(2020, 5, 1, tzinfo=UTC)
    assert rejects.column("line").to_pylist() == [12, 13]
    assert rejects.column("reason").to_pylist() == [
        "price '-1' is negative",
        "price 'abc' is not a number; available 'maybe' is not true/false/1/0/yes/no",
    ]


def test_items_categories_from_lists_and_bool_columns():
    table = pa.table(
        {
            "item_id": ["a", "b"],
            "categories": pa.array([["x", " y "], []], pa.list_(pa.string())),
            "available": pa.array([1, 0], pa.int8()),
            "price": pa.array([1, 2], pa.int32()),
        }
    )
    valid, rejects = validate_items(table)
    assert rejects.num_rows == 0
    assert valid.column("categories").to_pylist() == [["x", "y"], []]
    as_json = pa.table({"item_id": ["a", "b", "c"], "categories": ['["x", "y z"]', "p|q", "[a, b]"]})
    from_json, json_rejects = validate_items(as_json)
    assert from_json.column("categories").to_pylist() == [["x", "y z"], ["p", "q"]]
    assert json_rejects.column("reason").to_pylist() == [
        "categories '[a, b]' is neither a JSON list nor '|'-separated names"
    ]
    assert valid.column("available").to_pylist() == [True, False]
    assert valid.column("price").to_pylist() == [1.0, 2.0]


def test_users_attributes_and_missing_ids():
    valid, rejects = validate_users(
        pa.table({"user_id": ["u1", " ", "u3"], "attributes": [{"age_band": "25-34", "vip": True}, None, {"deep": {"x": 1}}]})
    )
    assert valid.column("user_id").to_pylist() == ["u1"]
    assert valid.column("attributes").to_pylist() == [[("age_band", "25-34"), ("vip", "true")]]
    assert rejects.column("line").to_pylist() == [2, 3]
    reasons = rejects.column("reason").to_pylist()
    assert reasons[0] == "user_id is missing"
    assert reasons[1].startswith("attributes '") and reasons[1].endswith("' is not a flat key -> value map")
    assert '"deep":{"x":1}' in rejects.column("attributes")[1].as_py()  # the original value, as JSON


def test_record_batches_and_chunked_columns(settings):
    t = pa.concat_tables([events(item_id=["a", "b"]), events(item_id=["c", ""])])
    assert t.column("item_id").num_chunks == 2
    valid, rejects = validate_events(t, settings)
    assert valid.column("item_id").to_pylist() == ["a", "b", "c"]
    assert rejects.column("line").to_pylist() == [4]
    valid, _ = validate_events(events().to_batches()[0], settings)
    assert valid.num_rows == 1


def test_large_chunk_is_validated_in_bulk(settings):
    n = 100_000
    rng = np.random.default_rng(0)
    ts = (1_600_000_000 + rng.integers(0, 10**7, n)).astype(str).astype(object)
    bad = rng.choice(n, 500, replace=False)
    ts[bad] = "garbage"
    table = pa.table(
        {
            "user_id": rng.integers(0, 1000, n).astype(float),
            "item_id": rng.integers(0, 5000, n).astype(str),
            "event_type": rng.choice(["view", "purchase"], n),
            "timestamp": pa.array(ts.tolist(), pa.string()),
        }
    )
    valid, rejects = validate_events(table, settings, first_line=1)
    assert valid.num_rows == n - 500
    assert sorted(rejects.column("line").to_pylist()) == sorted((bad + 1).tolist())


def test_online_retail_sample_validates():
    path = ONLINE_RETAIL / "online_retail.csv.gz"
    if not path.exists():
        pytest.skip("Online Retail dataset not available")
    with gzip.open(path, "rb") as fh:
        head = b"".join(fh.readline() for _ in range(3001))  # header + 3000 rows
    raw = pacsv.read_csv(pa.py_buffer(head))
    table = pa.table(
        {
            "user_id": raw.column("CustomerID"),
            "item_id": raw.column("StockCode"),
            "event_type": pa.array(["purchase"] * raw.num_rows),
            "timestamp": raw.column("InvoiceDate"),
            "value": raw.column("Quantity"),
            "session_id": raw.column("InvoiceNo").cast(pa.string()),
        }
    )
    valid, rejects = validate_events(table, Settings(), first_line=2)
    assert rejects.num_rows == 0
    assert valid.num_rows == 3000
    # the first row as the file has it: integer customer ids read as floats lose their ".0"
    first, src = valid.slice(0, 1).to_pylist()[0], raw.slice(0, 1).to_pylist()[0]
    assert first["user_id"] == str(int(src["CustomerID"])) and first["item_id"] == str(src["StockCode"])
    assert first["timestamp"] == src["InvoiceDate"].replace(tzinfo=UTC)
    assert first["value"] == float(src["Quantity"])


def test_clean_columns_pass_unchanged_and_dirty_edges_are_rejected(settings):
    # Clean columns skip the edge check; any edge that might be whitespace (ASCII or not) is
    # rejected by the id policy (never stripped), also in a sliced array (non-zero offset) and
    # next to nulls; blank ids are missing.
    raw = pa.array(["zz", "u1", " u2", "u3\t", "\u00a0u4\u00a0", "u 5", "   ", None, "u6"])
    valid, rejects = validate_events(
        pa.table({"user_id": raw.slice(1), "item_id": ["i"] * 8, "event_type": ["view"] * 8,
                  "timestamp": ["2021-01-01"] * 8}),
        settings,
    )
    assert valid.column("user_id").to_pylist() == ["u1", "u 5", "u6"]
    assert rejects.column("line").to_pylist() == [2, 3, 4, 6, 7]  # padded, blank and missing user ids
    reasons = rejects.column("reason").to_pylist()
    assert all("leading or trailing whitespace" in r for r in reasons[:3])
    assert reasons[3:] == ["user_id is missing (anonymous events need a session_id)"] * 2
    clean = pa.array(["a1", "b2", "c3"])
    valid, _ = validate_events(events(item_id=clean), settings)
    assert valid.column("item_id").chunk(0).equals(clean)


def test_event_types_from_dictionary_columns_and_repeated_values(settings):
    et = pa.array(["View", "view", None, "PURCHASE", "wishlist", "view"]).dictionary_encode()
    valid, rejects = validate_events(events(event_type=et), settings)
    assert valid.column("event_type").to_pylist() == ["view", "view", "purchase", "view"]
    assert rejects.column("line").to_pylist() == [3, 5]
    assert rejects.column("reason").to_pylist()[1].startswith("event_type 'wishlist' is not configured")


def test_flat_maps_keep_null_free_maps_and_drop_null_values(settings):
    ctx = pa.array([[("device", "mobile")], [("device", None), ("city", "Oslo")], None, []], pa.map_(pa.string(), pa.string()))
    valid, _ = validate_events(events(context=ctx), settings)
    assert valid.column("context").to_pylist() == [[("device", "mobile")], [("city", "Oslo")], None, []]
    no_nulls = pa.array([[("device", "mobile")], None], pa.map_(pa.string(), pa.string()))
    valid, _ = validate_events(events(context=no_nulls.slice(0)), settings)
    assert valid.column("context").to_pylist() == [[("device", "mobile")], None]
