"""Bad import files, one row each: how to write it and the kind it is imported as.

Every row must end in a DataImportError (EmptyDataError for a file without data rows) whose message
names the file, and write nothing. ``needs`` names the branch whose fix the row waits for (marked
xfail, strict, by the test): remove it once that branch is merged.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HEADER = b"user_id,item_id,event_type,timestamp\n"


def _rows(n: int, start: int = 0) -> bytes:
    return b"".join(b"u%d,i%06d,view,2024-05-01T10:%02d:00Z\n" % (i, 1 + i % 100, i % 60) for i in range(start, start + n))


@dataclass(frozen=True)
class BadFile:
    id: str
    name: str
    content: Callable[[], bytes]
    kind: str = "events"
    needs: str | None = None
    empty: bool = False  # EmptyDataError expected


def _gzip_truncated() -> bytes:
    data = gzip.compress(HEADER + _rows(5000))
    return data[: len(data) // 2]


def _random_bytes() -> bytes:
    rng = random.Random(17)
    return bytes(rng.randrange(256) for _ in range(20_000))


def _jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


_EV = json.dumps({"user_id": "u1", "item_id": "i000001", "event_type": "view", "timestamp": "2024-05-01T10:00:00Z"})

FILES: list[BadFile] = [
    BadFile("latin1-in-utf8", "mixed.csv", lambda: HEADER + _rows(100) + "u1,caf\xe9,view,2024-05-01T10:00:00Z\n".encode("latin-1"), needs="ingest"),
    BadFile("nul-in-field", "nul.csv", lambda: HEADER + _rows(10) + b"u\x001,i000001,view,2024-05-01T10:00:00Z\n"),
    BadFile("bom-mid-file", "bom.csv", lambda: HEADER + _rows(10) + b"\xef\xbb\xbfu1,i000001,view,2024-05-01T10:00:00Z\n", needs="ingest"),
    BadFile("missing-item-column", "cols.csv", lambda: b"user_id,sku_typo,event_type,timestamp\n" + _rows(10)),
    BadFile("unknown-columns-only", "unknown.csv", lambda: b"a,b,c\n1,2,3\n4,5,6\n"),
    BadFile("10mb-line-no-newline", "long.csv", lambda: HEADER + b"u1," + b"x" * (10 * 1024 * 1024)),
    BadFile("truncated-gzip", "trunc.csv.gz", _gzip_truncated),
    BadFile("not-gzip", "fake.csv.gz", lambda: HEADER + _rows(10)),
    BadFile("extra-fields", "extra.csv", lambda: HEADER + _rows(10) + b"u1,i000001,view,2024-05-01T10:00:00Z,1,2,3\n"),
    BadFile("unclosed-quote", "quote.csv", lambda: HEADER + _rows(10) + b'"u1,i000001,view,2024-05-01T10:00:00Z\n' + _rows(10, 10)),
    BadFile("random-bytes", "noise.csv", _random_bytes),
    BadFile("padded-ids", "padded.csv", lambda: HEADER + _rows(10) + b" u1,i000001,view,2024-05-01T10:00:00Z\n"),
    BadFile("slash-id", "slash.csv", lambda: HEADER + _rows(10) + b"u/1,i000001,view,2024-05-01T10:00:00Z\n"),
    BadFile("5000-char-id", "longid.csv", lambda: HEADER + _rows(10) + b"u" * 5000 + b",i000001,view,2024-05-01T10:00:00Z\n"),
    BadFile("bad-timestamp", "badts.csv", lambda: HEADER + _rows(10) + b"u1,i000001,view,yesterday\n"),
    BadFile("future-timestamp", "future.csv", lambda: HEADER + _rows(10) + b"u1,i000001,view,2200-01-01T00:00:00Z\n"),
    BadFile("epoch-1e20", "epoch.csv", lambda: HEADER + _rows(10) + b"u1,i000001,view,1e20\n"),
    BadFile("nan-timestamp", "nan.csv", lambda: HEADER + _rows(10) + b"u1,i000001,view,NaN\n"),
    BadFile("bad-row-at-the-end", "late.csv", lambda: HEADER + _rows(50_000) + b"u1,,view,2024-05-01T10:00:00Z\n"),
    BadFile("jsonl-broken-line", "broken.jsonl", lambda: _jsonl([_EV] * 20 + ['{"user_id": "u1", "item_id": '])),
    BadFile("jsonl-not-objects", "arrays.jsonl", lambda: _jsonl([_EV, "[1, 2, 3]", '"text"', "42"])),
    BadFile("jsonl-deep", "deep.jsonl", lambda: _jsonl([_EV, '{"user_id": ' + "[" * 5000 + "]" * 5000 + "}"]), needs="ingest"),
    BadFile("parquet-garbage", "bad.parquet", lambda: b"PAR1" + b"\x00" * 1000),
    BadFile("items-negative-price", "items.csv", lambda: b"item_id,title,price\ni1,a,1.0\ni2,b,-5\n", kind="items"),
    BadFile("items-nan-price", "items_nan.csv", lambda: b"item_id,title,price\ni1,a,1.0\ni2,b,NaN\n", kind="items"),
    BadFile("empty-file", "empty.csv", lambda: b"", empty=True),
    BadFile("header-only", "header.csv", lambda: HEADER, empty=True),
]


def write(case: BadFile, folder: Path) -> Path:
    path = folder / case.name
    path.write_bytes(case.content())
    return path
