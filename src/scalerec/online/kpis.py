"""Attribution and online KPIs: DuckDB over the impression and event Parquet files of a window.

Attribution (each event to at most one impression):

- **direct**: the event echoes a ``recommendation_id`` of an impression in the window; its
  position is the item's place in that list (null when the item was not in it);
- **windowed**: any other event on an item shown to the same user (or session) at most
  ``[online] attribution_window_hours`` before it goes to the latest such impression.

Only the partitions that can hold the window are read: impressions of days overlapping
``[since, until)``, events of days overlapping ``[since, until + attribution window)`` (plus the
pending buffer), so a query costs what its window holds, not the whole history.

KPIs per group (model version, strategy, placement, variant, experiment, kind, day): impressions,
clicks, add-to-carts, purchases and revenue (value x the item's catalogue price) attributed, and
the rates per impression: ``ctr``, ``cart_rate``, ``conversion``, ``revenue_per_1000``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from scalerec.data.coerce import utc_us
from scalerec.data.impressions import IMPRESSION_SCHEMA, ImpressionStore
from scalerec.errors import ValidationError

__all__ = ["DIMENSIONS", "KpiWindow", "attributed_events", "kpis", "parse_since", "position_curve", "unit_outcomes"]

#: --by names -> impression columns
DIMENSIONS = {"version": "model_version", "model_version": "model_version", "strategy": "strategy",
              "placement": "placement", "variant": "variant", "experiment": "experiment", "kind": "kind",
              "day": "day"}
_EVENT_COLS = ["user_id", "session_id", "item_id", "event_type", "timestamp", "value", "recommendation_id"]
_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm])\s*$")


def parse_since(value: Any, now: float | None = None) -> int | None:
    """``--since``: an ISO date/time, epoch seconds, or a span back from now ("7d", "24h", "30m") -> UTC us."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and (m := _REL.match(value)):
        span = float(m.group(1)) * {"d": 86_400, "h": 3_600, "m": 60}[m.group(2)]
        return int(((time.time() if now is None else now) - span) * 1e6)
    return utc_us(value, "since")


@dataclass(frozen=True)
class KpiWindow:
    """What a KPI query reads: impressions in [since_us, until_us), events up to until + window."""

    since_us: int | None
    until_us: int | None
    window_us: int
    click_types: tuple[str, ...]
    cart_types: tuple[str, ...]
    purchase_types: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Any, since: Any = None, until: Any = None, window_hours: float | None = None) -> "KpiWindow":
        o = settings.online
        hours = o.attribution_window_hours if window_hours is None else float(window_hours)
        if not hours > 0:
            raise ValidationError(f"the attribution window must be > 0 hours, got {hours!r}")
        s, u = parse_since(since), utc_us(until, "until")
        if s is not None and u is not None and u <= s:
            raise ValidationError("until must be after since")
        return cls(s, u, int(hours * 3.6e9), tuple(o.click_types), tuple(o.cart_types), tuple(o.purchase_types))


def _connect(store: Any, w: KpiWindow, impressions: ImpressionStore | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``imp`` (impressions of the window), ``ev`` (events of
    the KPI types that can be attributed to them) and ``price``."""
    con = _duck()
    imp_store = impressions or ImpressionStore(Path(store.dir) / "impressions")
    imp_files = imp_store.files(_dt(w.since_us), _dt(w.until_us))
    lo = "" if w.since_us is None else f"\"at\" >= make_timestamp({w.since_us})::TIMESTAMPTZ"
    hi = "" if w.until_us is None else f"\"at\" < make_timestamp({w.until_us})::TIMESTAMPTZ"
    where = " AND ".join(x for x in (lo, hi) if x) or "true"
    if imp_files:
        con.execute(f"CREATE VIEW imp_raw AS SELECT * FROM read_parquet({[str(f) for f in imp_files]!r})")
    else:
        con.register("imp_raw", IMPRESSION_SCHEMA.empty_table())
    con.execute(f"CREATE VIEW imp AS SELECT *, coalesce(user_id, 's:' || session_id) AS unit, "
                f"CAST(\"at\" AS DATE) AS day FROM imp_raw WHERE {where}")
    ev_end = None if w.until_us is None else w.until_us + w.window_us
    ev_files = store.log.files(_dt(w.since_us), _dt(ev_end))
    types = sorted(set(w.click_types) | set(w.cart_types) | set(w.purchase_types))
    e_lo = "" if w.since_us is None else f"timestamp >= make_timestamp({w.since_us})::TIMESTAMPTZ"
    e_hi = "" if ev_end is None else f"timestamp < make_timestamp({ev_end})::TIMESTAMPTZ"
    e_where = " AND ".join(x for x in (e_lo, e_hi, f"event_type IN ({', '.join(_q(t) for t in types)})") if x)
    pending = store.catalog.pending_events_table().select(_EVENT_COLS)
    con.register("pending_ev", pending)
    parts = [f"SELECT {', '.join(_EVENT_COLS)} FROM pending_ev"]
    if ev_files:
        parts.append(f"SELECT {', '.join(_EVENT_COLS)} FROM read_parquet({[str(f) for f in ev_files]!r})")
    con.execute(
        "CREATE VIEW ev AS SELECT row_number() OVER () AS eid, user_id, session_id, item_id, event_type, "
        "timestamp AS ts, value, recommendation_id, coalesce(user_id, 's:' || session_id) AS unit, "
        f"event_type IN ({_in(w.click_types)}) AS is_click, event_type IN ({_in(w.cart_types)}) AS is_cart, "
        f"event_type IN ({_in(w.purchase_types)}) AS is_purchase "
        f"FROM ({' UNION ALL '.join(parts)}) WHERE {e_where}"
    )
    prices = store.catalog.items_table(columns=["item_id", "price"])
    con.register("price", prices)
    return con


def _dt(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


def _duck() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # make_timestamp(us) is UTC, and so are the day boundaries
    return con


def _q(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _in(types: tuple[str, ...]) -> str:
    return ", ".join(_q(t) for t in types) if types else "NULL"


def _attributed_sql(window_us: int) -> str:
    """SQL of the attributed events: (rid, pos, item_id, ts, is_click, is_cart, is_purchase, revenue, how)."""
    return f"""
    WITH ev_t AS MATERIALIZED (SELECT * FROM ev),
    direct AS (
        SELECT e.eid, i.recommendation_id AS rid, list_position(i.items, e.item_id) AS pos, 'direct' AS how
        FROM ev_t e JOIN imp i ON e.recommendation_id = i.recommendation_id
    ),
    rest AS (SELECT e.* FROM ev_t e WHERE e.eid NOT IN (SELECT eid FROM direct)),
    shown AS (
        SELECT recommendation_id AS rid, unit, "at", unnest(items) AS item, generate_subscripts(items, 1) AS pos
        FROM imp WHERE unit IN (SELECT DISTINCT unit FROM rest)
    ),
    windowed AS (
        SELECT r.eid, arg_max(s.rid, s."at") AS rid, arg_max(s.pos, s."at") AS pos, 'window' AS how
        FROM rest r JOIN shown s ON s.unit = r.unit AND s.item = r.item_id
             AND s."at" <= r.ts AND r.ts < s."at" + to_microseconds({int(window_us)})
        GROUP BY r.eid
    ),
    att AS (SELECT * FROM direct UNION ALL SELECT * FROM windowed)
    SELECT a.rid, a.pos, a.how, e.unit, e.item_id, e.ts, e.is_click, e.is_cart, e.is_purchase,
           CASE WHEN e.is_purchase THEN e.value * coalesce(p.price, 0) ELSE 0 END AS revenue
    FROM att a JOIN ev_t e USING (eid) LEFT JOIN price p ON p.item_id = e.item_id
    """


def _dims(by: tuple[str, ...] | list[str]) -> list[str]:
    out = []
    for b in by:
        col = DIMENSIONS.get(str(b).strip().lower())
        if col is None:
            raise ValidationError(f"--by {b!r} is not one of {', '.join(sorted(set(DIMENSIONS) - {'model_version'}))}",
                                  details={"by": b})
        if col not in out:
            out.append(col)
    return out


def kpis(store: Any, w: KpiWindow, by: tuple[str, ...] | list[str] = ("version",), *,
         impressions: ImpressionStore | None = None) -> list[dict[str, Any]]:
    """KPI rows grouped by ``by`` (names in :data:`DIMENSIONS`), largest groups first."""
    dims = _dims(by)
    con = _connect(store, w, impressions)
    sel = ", ".join(f"i.{d}" for d in dims) if dims else "'all' AS total"
    group = ", ".join(f"i.{d}" for d in dims) if dims else "1"
    sql = f"""
    WITH a AS ({_attributed_sql(w.window_us)}),
    per AS (SELECT rid, count(*) FILTER (WHERE is_click) AS clicks, count(*) FILTER (WHERE is_cart) AS carts,
                   count(*) FILTER (WHERE is_purchase) AS purchases, sum(revenue) AS revenue FROM a GROUP BY rid)
    SELECT {sel}, count(*) AS impressions, coalesce(sum(per.clicks), 0)::BIGINT AS clicks,
           coalesce(sum(per.carts), 0)::BIGINT AS carts, coalesce(sum(per.purchases), 0)::BIGINT AS purchases,
           coalesce(sum(per.revenue), 0)::DOUBLE AS revenue
    FROM imp i LEFT JOIN per ON per.rid = i.recommendation_id
    GROUP BY {group} ORDER BY impressions DESC
    """
    rows = con.sql(sql).to_arrow_table().to_pylist()
    con.close()
    for r in rows:
        _rates(r)
        if "day" in r and r["day"] is not None:
            r["day"] = r["day"].isoformat()
    return rows


def _rates(r: dict[str, Any]) -> dict[str, Any]:
    n = r["impressions"] or 0
    r["revenue"] = float(r["revenue"] or 0.0)
    r["ctr"] = r["clicks"] / n if n else 0.0
    r["cart_rate"] = r["carts"] / n if n else 0.0
    r["conversion"] = r["purchases"] / n if n else 0.0
    r["revenue_per_1000"] = 1000.0 * r["revenue"] / n if n else 0.0
    return r


def attributed_events(store: Any, w: KpiWindow, *, impressions: ImpressionStore | None = None) -> pa.Table:
    """Every attributed event of the window (rid, pos, how, unit, item_id, ts, is_*, revenue)."""
    con = _connect(store, w, impressions)
    table = con.sql(_attributed_sql(w.window_us) + " ORDER BY ts, rid").to_arrow_table()
    con.close()
    return table


def position_curve(store: Any, w: KpiWindow, by: str | None = None, *, impressions: ImpressionStore | None = None,
                   max_position: int = 50) -> list[dict[str, Any]]:
    """Per position p (1-based): impressions that showed a p-th item, clicks and purchases
    attributed to the item at p, and their rates (per group of ``by`` when given)."""
    dim = _dims([by])[0] if by else None
    con = _connect(store, w, impressions)
    g = f"{dim}, " if dim else ""
    shown = con.execute(f"SELECT {g}len(items) AS n, count(*) AS k FROM imp GROUP BY ALL").fetchall()
    hits = con.execute(
        f"WITH a AS ({_attributed_sql(w.window_us)}) SELECT {('i.' + dim + ', ') if dim else ''}a.pos, "
        "count(*) FILTER (WHERE a.is_click), count(*) FILTER (WHERE a.is_purchase) "
        f"FROM a JOIN imp i ON i.recommendation_id = a.rid WHERE a.pos IS NOT NULL AND a.pos <= {int(max_position)} GROUP BY ALL"
    ).fetchall()
    con.close()
    groups: dict[Any, np.ndarray] = {}
    for row in shown:
        key, n, k = (row[0], row[1], row[2]) if dim else (None, row[0], row[1])
        arr = groups.setdefault(key, np.zeros(max_position + 2, np.int64))
        arr[min(int(n), max_position + 1)] += k
    counts: dict[tuple[Any, int], tuple[int, int]] = {}
    for row in hits:
        key, pos, c, p = (row[0], row[1], row[2], row[3]) if dim else (None, row[0], row[1], row[2])
        counts[(key, int(pos))] = (int(c), int(p))
    out = []
    for key, arr in groups.items():
        reach = np.cumsum(arr[::-1])[::-1]  # impressions with at least p items
        for p in range(1, max_position + 1):
            if reach[p] == 0:
                break
            c, b = counts.get((key, p), (0, 0))
            row = {"position": p, "impressions": int(reach[p]), "clicks": c, "purchases": b,
                   "ctr": c / reach[p], "conversion": b / reach[p]}
            if dim:
                row[dim] = key
            out.append(row)
    return out


def unit_outcomes(store: Any, w: KpiWindow, experiment: str, *, impressions: ImpressionStore | None = None) -> pa.Table:
    """Per (variant, unit) of one experiment: impressions, attributed clicks, carts, purchases, revenue."""
    con = _connect(store, w, impressions)
    sql = f"""
    WITH a AS ({_attributed_sql(w.window_us)}),
    per AS (SELECT rid, count(*) FILTER (WHERE is_click) AS clicks, count(*) FILTER (WHERE is_cart) AS carts,
                   count(*) FILTER (WHERE is_purchase) AS purchases, sum(revenue) AS revenue FROM a GROUP BY rid)
    SELECT i.variant, i.unit, count(*) AS impressions, coalesce(sum(per.clicks), 0)::DOUBLE AS clicks,
           coalesce(sum(per.carts), 0)::DOUBLE AS carts, coalesce(sum(per.purchases), 0)::DOUBLE AS purchases,
           coalesce(sum(per.revenue), 0)::DOUBLE AS revenue
    FROM imp i LEFT JOIN per ON per.rid = i.recommendation_id
    WHERE i.experiment = {_q(experiment)} AND i.variant IS NOT NULL
    GROUP BY ALL ORDER BY i.variant, i.unit
    """
    table = con.sql(sql).to_arrow_table()
    con.close()
    return table


def pre_period(store: Any, units: list[str], start_us: int, days: float, purchase_types: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each unit's purchases and revenue in the ``days`` before ``start_us`` (all events, attributed
    or not): the CUPED covariates. Returns {"purchases", "revenue"} aligned to ``units``."""
    lo = int(start_us - days * 86_400e6)
    con = _duck()
    files = store.log.files(_dt(lo), _dt(start_us))
    parts = []
    pending = store.catalog.pending_events_table().select(_EVENT_COLS)
    con.register("pending_ev", pending)
    parts.append(f"SELECT {', '.join(_EVENT_COLS)} FROM pending_ev")
    if files:
        parts.append(f"SELECT {', '.join(_EVENT_COLS)} FROM read_parquet({[str(f) for f in files]!r})")
    con.register("units", pa.table({"unit": pa.array(units, pa.string())}))
    con.register("price", store.catalog.items_table(columns=["item_id", "price"]))
    rows = con.execute(
        f"WITH e AS (SELECT coalesce(user_id, 's:' || session_id) AS unit, item_id, value FROM ({' UNION ALL '.join(parts)}) "
        f"WHERE event_type IN ({_in(purchase_types)}) AND timestamp >= make_timestamp({lo})::TIMESTAMPTZ "
        f"AND timestamp < make_timestamp({int(start_us)})::TIMESTAMPTZ) "
        "SELECT e.unit, count(*)::DOUBLE, sum(e.value * coalesce(p.price, 0))::DOUBLE FROM e "
        "JOIN units u ON u.unit = e.unit LEFT JOIN price p ON p.item_id = e.item_id GROUP BY e.unit"
    ).fetchall()
    con.close()
    at = {u: i for i, u in enumerate(units)}
    purchases, revenue = np.zeros(len(units)), np.zeros(len(units))
    for u, n, r in rows:
        purchases[at[u]], revenue[at[u]] = n, r or 0.0
    return {"purchases": purchases, "revenue": revenue}
