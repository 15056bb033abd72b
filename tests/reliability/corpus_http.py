"""Hostile HTTP requests, one row each: what is sent and the status class it must get.

``expect``: an exact status, ``"4xx"`` (any client error), ``"ok"`` (2xx, or 404 for an id that is
valid but unknown) or ``"any"`` (refused or stored, never a 5xx: the store must survive it). Never a 5xx; every 4xx carries the one error shape; a refused write stores
nothing (the test counts the pending events around it). ``needs`` names the branch whose fix the
row waits for (the test marks it xfail, strict): remove it once that branch is merged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

ITEM = "i000001"
USER = "u_rel_1"
MAX_BYTES = 8 * 1024 * 1024  # serving.max_request_bytes, the default


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    body: Any = None  # JSON-encoded with json.dumps unless raw is given
    raw: bytes | Callable[[], Iterator[bytes]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    role: str | None = "admin"  # the key sent as Bearer; None: no key
    expect: int | str = "4xx"
    needs: str | None = None


def _event(**over: Any) -> dict[str, Any]:
    return {"user_id": USER, "item_id": ITEM, "event_type": "view", **over}


def _raw_event(field_: str, literal: str) -> bytes:
    """An event with ``field_`` set to a raw JSON token (NaN, Infinity: not JSON, Python's json reads them)."""
    body = json.dumps(_event(**{field_: "__X__"}))
    return body.replace('"__X__"', literal).encode()


BAD_IDS = {
    "empty": "", "space": " ", "padded-left": " x1", "padded-right": "x1 ", "tab": "x\t1", "newline": "x1\n",
    "slash": "a/b", "nul": "a\x00b", "ctrl-01": "a\x01b", "del": "a\x7fb", "c1-85": "a\x85b",
    "5000-chars": "x" * 5000, "257-chars": "y" * 257,
}
#: valid ids (to the policy) that are unusual: answered, never a 5xx
ODD_IDS = {"unicode": "ünï-кот-猫", "emoji": "🛒🎁", "rtl-override": "a\u202eb", "256-chars": "z" * 256,
           "percent": "100%", "quote": "it's\"q\"", "sql": "x'; DROP TABLE items;--", "dots": "..", "json": "{}"}


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _id_cases() -> list[Case]:
    out = []
    for name, bad in BAD_IDS.items():
        q = _quote(bad)
        if name != "empty":  # an empty path segment is another route (404/405), covered by routing
            out += [
                Case(f"path-item-{name}", "GET", f"/v1/items/{q}", expect=422 if name != "slash" else "4xx"),
                Case(f"path-put-user-{name}", "PUT", f"/v1/users/{q}", body={}, expect=422 if name != "slash" else "4xx"),
                Case(f"path-recs-{name}", "GET", f"/v1/users/{q}/recommendations", expect=422 if name != "slash" else "4xx"),
            ]
        out += [
            Case(f"event-user-{name}", "POST", "/v1/events", body=_event(user_id=bad), expect=422),
            Case(f"event-item-{name}", "POST", "/v1/events", body=_event(item_id=bad), expect=422),
            Case(f"rank-item-{name}", "POST", "/v1/rank", body={"user_id": USER, "item_ids": [bad]}, expect=422),
        ]
    for name, odd in ODD_IDS.items():
        q = _quote(odd)
        out += [
            Case(f"odd-path-item-{name}", "GET", f"/v1/items/{q}", expect="ok"),
            Case(f"odd-event-{name}", "POST", "/v1/events", body=_event(user_id=odd, item_id=odd), expect="ok"),
        ]
    surrogate = b'{"user_id": "\\ud800", "item_id": "i000001", "event_type": "view"}'
    out.append(Case("event-lone-surrogate", "POST", "/v1/events", raw=surrogate, expect=422))
    out.append(Case("event-raw-surrogate-bytes", "POST", "/v1/events",
                    raw=b'{"user_id": "a\xed\xa0\x80", "item_id": "i000001", "event_type": "view"}', expect="4xx"))
    return out


TIMESTAMPS_REFUSED = {
    "true": (True, None), "false": (False, None), "empty": ("", None), "text": ("yesterday", None),
    "bad-month": ("2024-13-01T00:00:00Z", None), "list": ([1], None), "object": ({"t": 1}, None),
    "1e20": (1e20, None), "-1e12": (-1e12, None), "1e308": (1e308, None),
    "year-9999": ("9999-12-31T23:59:59Z", None), "far-future": (4102444800.0, None),
}
VALUES_REFUSED = {"text": ("lots", None), "list": ([1], None), "bool": (True, "ingest")}
#: finite but absurd values: refused or stored, either way stats, compact and a train must survive them
VALUES_ODD = {"1e20": 1e20, "-1e12": -1e12, "3e38": 3e38, "tiny": 5e-324, "zero": 0, "negative": -1}


def _value_cases() -> list[Case]:
    out = [Case(f"event-ts-{n}", "POST", "/v1/events", body=_event(timestamp=v), expect=422, needs=need)
           for n, (v, need) in TIMESTAMPS_REFUSED.items()]
    out += [Case(f"event-ts-raw-{lit}", "POST", "/v1/events", raw=_raw_event("timestamp", lit), expect=400)
            for lit in ("NaN", "Infinity", "-Infinity", "1e400", "-1E+999")]
    out += [Case(f"event-value-{n}", "POST", "/v1/events", body=_event(value=v), expect=422, needs=need)
            for n, (v, need) in VALUES_REFUSED.items()]
    out += [Case(f"event-value-{n}", "POST", "/v1/events", body=_event(value=v), expect="any") for n, v in VALUES_ODD.items()]
    out += [Case(f"event-value-raw-{lit}", "POST", "/v1/events", raw=_raw_event("value", lit), expect=400)
            for lit in ("NaN", "Infinity", "-Infinity", "1e400")]
    out.append(Case("event-text-holding-NaN-ok", "POST", "/v1/events", body=_event(user_id="NaN-Infinity-1e999"), expect=202))
    out += [
        Case("event-ts-iso-ok", "POST", "/v1/events", body=_event(timestamp="2024-05-01T10:00:00Z"), expect=202),
        Case("event-type-unknown", "POST", "/v1/events", body=_event(event_type="teleport"), expect=422),
        Case("event-type-65", "POST", "/v1/events", body=_event(event_type="v" * 65), expect=422),
        Case("event-type-empty", "POST", "/v1/events", body=_event(event_type=""), expect=422),
        Case("event-extra-field", "POST", "/v1/events", body=_event(admin=True), expect=422),
        Case("event-no-item", "POST", "/v1/events", body={"user_id": USER, "event_type": "view"}, expect=422),
        Case("event-anonymous-no-session", "POST", "/v1/events", body=_event(user_id=None), expect=422),
        Case("event-recid-65", "POST", "/v1/events", body=_event(recommendation_id="r" * 65), expect=422),
        Case("event-context-nested", "POST", "/v1/events", body=_event(context={"a": {"b": 1}}), expect=422),
        Case("batch-empty-list", "POST", "/v1/events", body=[], expect=422),
        Case("batch-empty-events", "POST", "/v1/events", body={"events": []}, expect=422),
        Case("batch-events-null", "POST", "/v1/events", body={"events": None}, expect=422),
        Case("batch-one-bad-of-three", "POST", "/v1/events",
             body={"events": [_event(), _event(item_id=" x"), _event()]}, expect=422),
        Case("batch-10001", "POST", "/v1/events", body=[_event()] * 10_001, expect=413),
        Case("item-price-negative", "PUT", f"/v1/items/{ITEM}x", body={"price": -1}, expect=422),
        Case("item-price-1e400", "PUT", f"/v1/items/{ITEM}x", raw=b'{"price": 1e400}', expect=400),
        Case("item-price-nan", "PUT", f"/v1/items/{ITEM}x", raw=b'{"price": NaN}', expect=400),
        Case("item-available-null", "PATCH", f"/v1/items/{ITEM}", body={"available": None}, expect=422),
        Case("item-empty-patch", "PATCH", f"/v1/items/{ITEM}", body={}, expect=422),
        Case("item-created-at-text", "PUT", f"/v1/items/{ITEM}y", body={"created_at": "soon"}, expect=422),
        Case("user-attributes-nested", "PUT", f"/v1/users/{USER}", body={"attributes": {"a": [1]}}, expect=422),
        Case("session-types-mismatch", "POST", "/v1/sessions/recommendations",
             body={"item_ids": [ITEM, ITEM], "event_types": ["view"]}, expect=422),
        Case("rank-5001-ids", "POST", "/v1/rank", body={"user_id": USER, "item_ids": [ITEM] * 5001}, expect=422),
        Case("rank-no-ids", "POST", "/v1/rank", body={"user_id": USER, "item_ids": []}, expect=422),
    ]
    return out


def _query_cases() -> list[Case]:
    rows = {"n-nan": "n=NaN", "n-neg": "n=-1", "n-zero": "n=0", "n-1e20": "n=1e20", "n-text": "n=abc", "n-501": "n=501",
            "n-huge": "n=" + "9" * 400, "minprice-nan": "min_price=NaN", "minprice-inf": "min_price=inf",
            "minprice-neg": "min_price=-1", "prices-swapped": "min_price=10&max_price=1", "mpc-zero": "max_per_category=0",
            "avail-maybe": "available_only=maybe", "category-5000": "category=" + "c" * 5000}
    out = [Case(f"query-{n}", "GET", f"/v1/users/{USER}/recommendations?{q}", role="read", expect=422) for n, q in rows.items()]
    out += [Case(f"query-popular-{n}", "GET", f"/v1/popular?{q}", role="read", expect=422)
            for n, q in rows.items() if n.startswith(("n-", "minprice"))]
    out.append(Case("query-n-blank", "GET", f"/v1/popular?n=", role="read", expect=200))
    return out


def _chunked() -> Iterator[bytes]:
    yield b"["
    piece = json.dumps(_event()).encode()
    for i in range(MAX_BYTES // len(piece) + 10):
        yield (b"," if i else b"") + piece
    yield b"]"


def _transport_cases() -> list[Case]:
    ev = json.dumps(_event()).encode()
    out = [Case(f"ctype-{n}", "POST", "/v1/events", raw=ev, headers={"content-type": ct}, expect=415)
           for n, ct in {"text": "text/plain", "form": "application/x-www-form-urlencoded", "xml": "application/xml",
                         "multipart": "multipart/form-data; boundary=x", "octet": "application/octet-stream",
                         "none": ""}.items()]
    bad_json = {"open": b"{", "list-open": b"[", "nul-token": b"nul", "trailing": ev + b"xyz", "single-quotes": b"{'a': 1}",
                "latin1": '{"user_id": "caf\xe9", "item_id": "i1", "event_type": "view"}'.encode("latin-1"),
                "nul-byte": ev[:-1] + b"\x00}", "bare-string": b'"x"', "bare-number": b"1", "null": b"null",
                "deep-list": b"[" * 100_000 + b"]" * 100_000, "deep-object": b'{"a":' * 5_000 + b"1" + b"}" * 5_000}
    out += [Case(f"json-{n}", "POST", "/v1/events", raw=raw, expect="4xx") for n, raw in bad_json.items()]
    out.append(Case("json-bom", "POST", "/v1/events", raw=b"\xef\xbb\xbf" + ev, expect="ok"))  # RFC 8259 lets a parser skip it
    out += [
        Case("oversize-content-length", "POST", "/v1/events", raw=b"[" + b" " * (MAX_BYTES + 10) + b"]", expect=413),
        Case("oversize-chunked", "POST", "/v1/events", raw=_chunked, expect=413),
        Case("context-deep", "POST", "/v1/sessions/recommendations",
             body={"item_ids": [ITEM], "context": json.loads('{"a":' * 200 + "1" + "}" * 200)}, expect=422),
    ]
    methods = [("DELETE", "/v1/events"), ("GET", "/v1/events"), ("PUT", "/v1/rank"), ("POST", "/v1/popular"),
               ("PATCH", f"/v1/users/{USER}"), ("POST", f"/v1/items/{ITEM}"), ("DELETE", "/v1/models"), ("TRACE", "/v1/popular")]
    out += [Case(f"method-{m}-{p.split('/')[2]}", m, p, expect=405) for m, p in methods]
    out.append(Case("unknown-path", "GET", "/v1/nothing-here", expect=404))
    return out


def _auth_cases() -> list[Case]:
    ev = _event()
    return [
        Case("auth-missing", "POST", "/v1/events", body=ev, role=None, expect=401),
        Case("auth-wrong-key", "POST", "/v1/events", body=ev, role=None, headers={"authorization": "Bearer sr_nope"}, expect=401),
        Case("auth-bearer-empty", "POST", "/v1/events", body=ev, role=None, headers={"authorization": "Bearer "}, expect=401),
        Case("auth-basic", "POST", "/v1/events", body=ev, role=None, headers={"authorization": "Basic dXNlcjpwYXNz"}, expect=401),
        Case("auth-x-api-key-wrong", "POST", "/v1/events", body=ev, role=None, headers={"x-api-key": "nope"}, expect=401),
        Case("auth-x-api-key-empty-beside-bearer", "POST", "/v1/events", body=ev, headers={"x-api-key": ""}, expect=401),
        Case("auth-key-10k", "GET", "/v1/popular", role=None, headers={"x-api-key": "k" * 10_000}, expect="4xx"),
        Case("auth-read-on-write", "POST", "/v1/events", body=ev, role="read", expect=403),
        Case("auth-write-on-admin", "GET", "/v1/models", role="write", expect=403),
        Case("auth-read-on-delete-user", "DELETE", f"/v1/users/{USER}", role="read", expect=403),
    ]


CASES: list[Case] = [*_id_cases(), *_value_cases(), *_query_cases(), *_transport_cases(), *_auth_cases()]
