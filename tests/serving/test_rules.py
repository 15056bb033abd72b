"""The rule language: every operator over made-up item columns (vectorised masks), $references,
missing values, and the typed error with its position."""

from __future__ import annotations

import numpy as np
import pytest

from scalerec.errors import RuleError
from scalerec.serving.rules import ItemColumns, parse_rule, tokenize

# items a..e: categories, prices (c unknown), availability, brand / margin attributes
CATS = {"boots": [0, 1], "rainwear": [2, 4], "socks": [3]}


def _cat_mask(names):
    m = np.zeros(5, bool)
    for nm in names:
        m[CATS.get(nm, [])] = True
    return m


@pytest.fixture
def cols():
    return ItemColumns(
        item_ids=np.array(["a", "b", "c", "d", "e"]),
        available=np.array([True, True, False, True, True]),
        price=np.array([10.0, 20.0, np.nan, 5.0, 40.0]),
        primary_category=np.array([0, 0, 1, 2, 1], np.int32),
        category_names=("boots", "rainwear", "socks"),
        category_mask=_cat_mask,
        numbers={"age_days": np.array([1.0, 50.0, 3.0, 400.0, np.nan]),
                 "popularity": np.array([5.0, 1.0, 0.0, 2.0, 9.0]),
                 "trending": np.zeros(5)},
        attr_keys=np.array(["brand", "brand", "brand", "margin", "margin", "margin"]),
        attr_values=np.array(["X", "Y", "X", "0.5", "abc", " 0.25 "]),
        attr_items=np.array([0, 1, 4, 0, 1, 3]),
    )


def m(rule, cols, env=None, ids=None):
    return parse_rule(rule).mask(cols, ids, env).tolist()


T, F = True, False


@pytest.mark.parametrize("rule,expected", [
    ("price == 10", [T, F, F, F, F]),
    ("price = 10", [T, F, F, F, F]),
    ("price != 10", [F, T, T, T, T]),  # != is "not ==": the unknown price passes
    ("price < 20", [T, F, F, T, F]),
    ("price <= 20", [T, T, F, T, F]),
    ("price > 10", [F, T, F, F, T]),
    ("price >= 10", [T, T, F, F, T]),
    ("20 > price", [T, F, F, T, F]),  # the item column may stand on the right
    ("price in (5, 40)", [F, F, F, T, T]),
    ("price not in (5, 40)", [T, T, T, F, F]),
    ("category == \"boots\"", [T, T, F, F, F]),
    ("category != 'boots'", [F, F, T, T, T]),
    ("category in (\"rainwear\", \"boots\")", [T, T, T, F, T]),
    ("category not in ('rainwear')", [T, T, F, T, F]),
    ("available", [T, T, F, T, T]),
    ("available == false", [F, F, T, F, F]),
    ("not available", [F, F, T, F, F]),
    ("attributes.brand == \"X\"", [T, F, F, F, T]),
    ("attributes.brand != \"X\"", [F, T, T, T, F]),  # no brand passes !=
    ("attributes.brand < \"Y\"", [T, F, F, F, T]),  # text orders lexicographically; missing fails
    ("attributes.brand >= \"Y\"", [F, T, F, F, F]),
    ("attributes.brand in ('Y', 'Z')", [F, T, F, F, F]),
    ("attributes.margin > 0.3", [T, F, F, F, F]),  # numeric view: 'abc' and missing fail
    ("attributes.margin <= 0.25", [F, F, F, T, F]),
    ("attributes.margin in (0.5, 0.25)", [T, F, F, T, F]),
    ("item_id in ('a', 'e')", [T, F, F, F, T]),
    ("item_id > 'c'", [F, F, F, T, T]),
    ("age_days <= 3", [T, F, T, F, F]),
    ("popularity > 1 and price < 30", [T, F, F, T, F]),
    ("price < 10 or price > 30", [F, F, F, T, T]),
    ("not (price < 10 or price > 30)", [T, T, T, F, F]),  # not negates: the unknown price passes
    ("attributes.margin < price", [T, F, F, T, F]),  # two numeric columns, item by item
    ("true", [T, T, T, T, T]),
    ("false or category == 'socks'", [F, F, F, T, F]),
    ("NOT price < 20 AND category IN ('boots')", [F, T, F, F, F]),  # keywords ignore case
])
def test_every_operator(cols, rule, expected):
    assert m(rule, cols) == expected


def test_references_resolve_per_request(cols):
    env = {"item": {"price": 15.0, "category": "boots"}, "user": {"size": "42", "brand": "Y"},
           "context": {"device": "mobile", "max": "25"}}
    assert m("price < $item.price", cols, env) == [T, F, F, T, F]
    assert m("category == $item.category and price < $item.price", cols, env) == [T, F, F, F, F]
    assert m("attributes.brand == $user.brand", cols, env) == [F, T, F, F, F]
    assert m("attributes.brand == $user.attributes.brand", cols, env) == [F, T, F, F, F]
    assert m("price < $context.max", cols, env) == [T, T, F, T, F]  # a numeric string reads as a number
    assert m("$context.device == 'mobile' and price < 6", cols, env) == [F, F, F, T, F]
    assert m("$context.device == 'desktop' or price > 30", cols, env) == [F, F, F, F, T]
    assert m("category in ($item.category, 'socks')", cols, env) == [T, T, F, T, F]
    # a missing reference fails every comparison but !=
    assert m("price < $item.attributes.size", cols, {}) == [F] * 5
    assert m("attributes.brand != $user.brand", cols, {}) == [T] * 5
    assert parse_rule("price < $item.price and $context.x == 1").refs == {"item", "context"}
    assert parse_rule("price < 3").constant


def test_evaluates_over_a_candidate_array(cols):
    ids = np.array([4, 0, 0, 3])
    assert m("price >= 10 and attributes.brand == 'X'", cols, ids=ids) == [T, T, T, F]
    assert parse_rule("price > 1").mask(cols, np.zeros(0, np.int64)).tolist() == []


@pytest.mark.parametrize("rule,position,words", [
    ('category in ("a" and', 17, "expected ')' or ','"),
    ('price < "x"', 6, "price is a number"),
    ("colour == 'red'", 0, "unknown item attribute 'colour'"),
    ("price <", 7, "expected a value"),
    ("$basket.x == 1", 0, "unknown reference $basket"),
    ("(price < 1", 10, "to close the parenthesis"),
    ("price < 1 price", 10, "expected 'and', 'or'"),
    ("price < 1 and 'abc", 14, "close the string"),
    ("price ; 1", 6, "unexpected character ';'"),
    ("", 0, "empty"),
    ("category < 'a'", 9, "supports == and !="),
    ("available == 'yes'", 10, "true or false"),
    ("price", 5, "expected a comparison"),
    ("price in ('a')", 10, "must hold numbers"),
    ("'a' in ('a')", 4, "left side of 'in'"),
    ("category == attributes.brand", 9, "cannot be compared"),
    ("$item == 1", 0, "$item needs a key"),
])
def test_bad_rules_name_the_position(rule, position, words):
    with pytest.raises(RuleError) as err:
        parse_rule(rule, field="filter")
    e = err.value
    assert e.position == position and words in e.message
    assert e.details["rule"] == rule and e.details["position"] == position and e.details["field"] == "filter"
    assert e.details["pointer"].splitlines()[1] == " " * position + "^"
    assert e.status == 422 and e.to_dict()["error"]["type"] == "invalid_rule"


def test_tokenizer_never_evaluates_code():
    toks = tokenize("__import__('os') == 1")
    assert [t.kind for t in toks] == ["name", "punct", "str", "punct", "op", "num", "end"]
    for code in ("__import__('os').system('x') == 1", "__import__('os') == 1", "price.__class__ == 1"):
        with pytest.raises(RuleError):
            parse_rule(code)
    with pytest.raises(RuleError, match="at most"):
        parse_rule("price > 1 and " * 200 + "true")
    with pytest.raises(RuleError, match="nest deeper"):
        parse_rule("(" * 60 + "true" + ")" * 60)


def test_age_days_from_created_at_is_live(monkeypatch):
    import time

    from scalerec.serving import rules

    now = time.time()
    day_us = 86_400e6
    cols = ItemColumns(
        item_ids=np.array(["a", "b", "c"]), available=np.ones(3, bool), price=np.full(3, np.nan),
        primary_category=np.full(3, -1, np.int32), category_names=(), category_mask=lambda names: np.zeros(3, bool),
        numbers={"popularity": np.zeros(3), "trending": np.zeros(3)},
        attr_keys=np.zeros(0, str), attr_values=np.zeros(0, str), attr_items=np.zeros(0, np.int64),
        created_us=np.array([now * 1e6 - 29.5 * day_us, now * 1e6 - 30.5 * day_us, np.nan]),
    )
    np.testing.assert_allclose(cols.age_days(now + 86_400)[:2], [30.5, 31.5], atol=rules.AGE_REFRESH_S / 86_400)
    assert np.isnan(cols.age_days()[2])
    rule = parse_rule("age_days < 30")
    assert "age_days" in rule.paths and rule.mask(cols, None).tolist() == [True, False, False]
    monkeypatch.setattr(rules.time, "time", lambda: now + 86_400)  # a day later: "a" is 30.5 days old
    assert rule.mask(cols, None).tolist() == [False, False, False]
