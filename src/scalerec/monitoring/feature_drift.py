"""Feature drift: the distributions the ranking stage's features are made of, per day, against the
baseline days (judged like every drift check, see :mod:`scalerec.monitoring.drift`).

- **item attributes** of the day's events: the item's primary category, its price band (the
  catalogue's own price quintiles, fixed across days) and the values of the most used keys of
  ``attributes``;
- **user attributes** of the day's active users (each user once a day): the most used keys, as they
  were when the day closed where the monitor froze that day (``user_attributes_daily.jsonl``),
  else the users' current attributes;
- **request context**: the ``context`` sent with recommendation requests (``weather``, ``device``,
  ...), read from the recommendation log (``<data_dir>/logs/recommendations-*.jsonl``), one count
  per served list.

One DuckDB pass each, on the connection that already holds the day-stamped events ``ev``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scalerec.serving.reclog import LOG_GLOB

_FILE_DAY = re.compile(r"recommendations-(\d{4}-\d{2}-\d{2})-")

#: Attribute keys checked per side (the most used ones), and price bands.
TOP_KEYS = 5
PRICE_BANDS = 5


def _catalogue_tables(store: Any) -> tuple[pa.Table, pa.Table]:
    items = store.catalog.items_table(columns=["item_id", "categories", "price", "attributes"])
    users = store.catalog.users_table().select(["user_id", "attributes"])
    return items, users


def _reclog_files(store: Any, since: dt.date | None) -> list[str]:
    """The recommendation log's files written on ``since`` or later (a file is named by the day it
    was written, its records' day or the next one): one pass over the window, not the retention."""
    root = Path(store.dir) / "logs"
    out = []
    for p in sorted(root.glob(LOG_GLOB)) if root.is_dir() else []:
        m = _FILE_DAY.match(p.name)
        if since is None or m is None or dt.date.fromisoformat(m.group(1)) >= since:
            out.append(str(p))
    return out


#: The day's active users' attribute counts as they were when the day closed, one JSON line per day
#: (``<data_dir>/monitoring/``): the catalogue keeps only users' current attributes.
USER_SNAPSHOTS = "user_attributes_daily.jsonl"


def _snapshots(store: Any) -> Path:
    return Path(store.dir) / "monitoring" / USER_SNAPSHOTS


def read_user_snapshots(store: Any) -> dict[dt.date, dict[str, list[tuple[str, int]]]]:
    """day -> feature -> (value, count) of the frozen days."""
    path = _snapshots(store)
    out: dict[dt.date, dict[str, list[tuple[str, int]]]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            out[dt.date.fromisoformat(rec["day"])] = {f: [(str(v), int(n)) for v, n in vals] for f, vals in rec["features"].items()}
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _freeze(store: Any, rows: dict[str, list[tuple]], day: dt.date, frozen: dict[dt.date, Any]) -> None:
    """Append ``day``'s user attribute counts (computed now, from the attributes the store has when
    the day has just closed) unless the day is frozen already."""
    if day in frozen:
        return
    feats = {f: [[str(v), int(n)] for d, v, n in r if d == day] for f, r in rows.items() if f.startswith("user.")}
    path = _snapshots(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"day": day.isoformat(), "features": feats}) + "\n")
    frozen[day] = {f: [(v, n) for v, n in vals] for f, vals in feats.items()}


def aggregate(con: Any, store: Any, since: dt.date | None = None, freeze: dt.date | None = None) -> dict[str, list[tuple]]:
    """feature -> (day, value, count) rows of every feature distribution, every day (the request
    context from ``since`` on). User attributes: a frozen day's counts as they were when it closed
    (``freeze``: freeze that day's now, as the server's monitor does once a day), other days from
    the current attributes."""
    items, users = _catalogue_tables(store)
    con.register("fd_items", items)
    con.register("fd_users", users)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    con.execute("CREATE TEMP VIEW fd_ev AS SELECT user_id, item_id, day FROM ev")
    rows: dict[str, list[tuple]] = {}
    if items.num_rows:
        rows["item.category"] = [(d, v, n) for d, v, n in q(
            "SELECT e.day, coalesce(i.categories[1], '(none)'), count(*) FROM fd_ev e "
            "JOIN fd_items i USING (item_id) GROUP BY ALL")]
        prices = items.column("price").drop_null().to_numpy(zero_copy_only=False)
        if prices.size >= PRICE_BANDS:
            edges = np.unique(np.quantile(prices, np.linspace(0, 1, PRICE_BANDS + 1)[1:-1]))
            case = " ".join(f"WHEN i.price < {float(e)!r} THEN 'band {k + 1}'" for k, e in enumerate(edges))
            rows["item.price_band"] = q(
                f"SELECT e.day, CASE WHEN i.price IS NULL THEN '(none)' {case} ELSE 'band {len(edges) + 1}' END, count(*) "
                "FROM fd_ev e JOIN fd_items i USING (item_id) GROUP BY ALL")
        rows.update(_attribute_rows(con, "SELECT e.day, i.attributes AS a FROM fd_ev e JOIN fd_items i USING (item_id)", "item"))
    if users.num_rows:
        current = _attribute_rows(
            con, "SELECT d.day, u.attributes AS a FROM (SELECT DISTINCT day, user_id FROM fd_ev) d JOIN fd_users u USING (user_id)",
            "user")
        frozen = read_user_snapshots(store)
        if freeze is not None:
            _freeze(store, current, freeze, frozen)
        for f in set(current) | {f for feats in frozen.values() for f in feats}:
            rows[f] = [r for r in current.get(f, []) if r[0] not in frozen] + [
                (d, v, n) for d, feats in frozen.items() for v, n in feats.get(f, [])]
    files = _reclog_files(store, since)
    if files:
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        ctx = q(
            "WITH r AS (SELECT CAST(timezone('UTC', to_timestamp(\"at\")) AS DATE) AS day, context FROM read_json("
            f"[{listing}], columns={{'at': 'DOUBLE', 'context': 'MAP(VARCHAR, VARCHAR)'}}, format='newline_delimited', "
            "ignore_errors=true)), kv AS (SELECT day, unnest(map_keys(context)) AS k, unnest(map_values(context)) AS v "
            "FROM r WHERE context IS NOT NULL) SELECT day, k, v, count(*) FROM kv GROUP BY ALL")
        for d, k, v, n in ctx:
            rows.setdefault(f"request.{k}", []).append((d, v, n))
    return rows


def _attribute_rows(con: Any, source: str, side: str) -> dict[str, list[tuple]]:
    """Per-day value counts of the ``TOP_KEYS`` most used attribute keys of ``source`` (day, a)."""
    kv = (f"WITH s AS ({source}), kv AS (SELECT day, unnest(map_keys(a)) AS k, unnest(map_values(a)) AS v "
          "FROM s WHERE a IS NOT NULL)")
    keys = [r[0] for r in con.execute(f"{kv} SELECT k FROM kv GROUP BY k ORDER BY count(*) DESC, k LIMIT {TOP_KEYS}").fetchall()]
    if not keys:
        return {}
    listing = ", ".join("'" + str(k).replace("'", "''") + "'" for k in keys)
    out: dict[str, list[tuple]] = {}
    for d, k, v, n in con.execute(f"{kv} SELECT day, k, v, count(*) FROM kv WHERE k IN ({listing}) GROUP BY ALL").fetchall():
        out.setdefault(f"{side}.{k}", []).append((d, v, n))
    return out

