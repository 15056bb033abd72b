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

import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from scalerec.data.coerce import utc_us
from scalerec.data.impressions import IMPRESSION_SCHEMA, ImpressionStore
from scalerec.errors import StorageError, ValidationError

__all__ = ["DIMENSIONS", "KpiWindow", "attributed_events", "kpis", "parse_since", "position_curve", "unit_outcomes"]

#: --by names -> impression columns
DIMENSIONS = {"version": "model_version", "model_version": "model_version", "strategy": "strategy",
              "placement": "placement", "variant": "variant", "experiment": "experiment", "kind": "kind",
              "day": "day"}
_EVENT_COLS = ["user_id", "session_id", "item_id", "event_type", "timestamp", "value", "recommendation_id"]
T = TypeVar("T")
_US_PER_DAY = 86_400_000_000
MAX_WINDOW_HOURS = 8_760
MAX_SPAN_S = 100 * 365.25 * 86_400
_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm])\s*$")


def parse_since(value: Any, now: float | None = None) -> int | None:
    """``--since``: an ISO date/time, epoch seconds, or a span back from now ("7d", "24h", "30m") -> UTC us."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and (m := _REL.match(value)):
        span = float(m.group(1)) * {"d": 86_400, "h": 3_600, "m": 60}[m.group(2)]
        if span > MAX_SPAN_S:
            raise ValidationError(f"since={value!r} reaches back more than 100 years; give a date instead",
                                  details={"since": value})
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
        if not 0 < hours <= MAX_WINDOW_HOURS:
            raise ValidationError(f"the attribution window must be > 0 and at most {MAX_WINDOW_HOURS} hours (a year), "
                                  f"got {hours!r}", details={"window_hours": window_hours})
        s, u = parse_since(since), parse_since(until)
        if s is not None and u is not None and u <= s:
            raise ValidationError("until must be after since")
        return cls(s, u, int(hours * 3.6e9), tuple(o.click_types), tuple(o.cart_types), tuple(o.purchase_types))


def _imp_view(con: duckdb.DuckDBPyConnection, name: str, files: list[Path], where: str = "true") -> None:
    """View ``name``: the impressions of ``files`` (with ``unit`` and ``day``) that pass ``where``."""
    if files:
        con.execute(f"CREATE VIEW {name}_raw AS SELECT * FROM read_parquet({[str(f) for f in files]!r})")
    else:
        con.register(f"{name}_raw", IMPRESSION_SCHEMA.empty_table())
    con.execute(f"CREATE VIEW {name} AS SELECT *, coalesce(user_id, 's:' || session_id) AS unit, "
                f"epoch_us(\"at\") // {_US_PER_DAY} AS day FROM {name}_raw WHERE {where}")


def _ev_view(con: duckdb.DuckDBPyConnection, w: KpiWindow, files: list[Path], pending: pa.Table | None,
             lo_us: int | None, hi_us: int | None) -> None:
    """View ``ev``: the events of ``files`` (and ``pending``) of the KPI types in [lo_us, hi_us)."""
    types = sorted(set(w.click_types) | set(w.cart_types) | set(w.purchase_types))
    e_lo = "" if lo_us is None else f"timestamp >= make_timestamp({lo_us})::TIMESTAMPTZ"
    e_hi = "" if hi_us is None else f"timestamp < make_timestamp({hi_us})::TIMESTAMPTZ"
    e_where = " AND ".join(x for x in (e_lo, e_hi, f"event_type IN ({', '.join(_q(t) for t in types)})") if x)
    parts = []
    if pending is not None:
        con.register("pending_ev", pending.select(_EVENT_COLS))
        parts.append(f"SELECT {', '.join(_EVENT_COLS)} FROM pending_ev")
    if files:
        parts.append(f"SELECT {', '.join(_EVENT_COLS)} FROM read_parquet({[str(f) for f in files]!r})")
    if not parts:
        con.register("no_ev", pa.table({c: pa.array([], pa.string()) for c in _EVENT_COLS}))
        parts.append(f"SELECT user_id, session_id, item_id, event_type, NULL::TIMESTAMPTZ AS timestamp, "
                     f"NULL::FLOAT AS value, recommendation_id FROM no_ev")
    con.execute(
        "CREATE VIEW ev AS SELECT row_number() OVER () AS eid, user_id, session_id, item_id, event_type, "
        "timestamp AS ts, value, recommendation_id, coalesce(user_id, 's:' || session_id) AS unit, "
        f"event_type IN ({_in(w.click_types)}) AS is_click, event_type IN ({_in(w.cart_types)}) AS is_cart, "
        f"event_type IN ({_in(w.purchase_types)}) AS is_purchase "
        f"FROM ({' UNION ALL '.join(parts)}) WHERE {e_where}"
    )


def _connect(store: Any, w: KpiWindow, impressions: ImpressionStore | None = None, *,
             where: str = "true") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``imp`` (impressions of the window), ``ev`` (events of
    the KPI types that can be attributed to them) and ``price``."""
    con = _duck()
    imp_store = impressions or ImpressionStore(Path(store.dir) / "impressions")
    lo = "" if w.since_us is None else f"\"at\" >= make_timestamp({w.since_us})::TIMESTAMPTZ"
    hi = "" if w.until_us is None else f"\"at\" < make_timestamp({w.until_us})::TIMESTAMPTZ"
    _imp_view(con, "imp", imp_store.files(_dt(w.since_us), _dt(w.until_us)),
              " AND ".join(x for x in (lo, hi, where) if x))
    ev_end = None if w.until_us is None else w.until_us + w.window_us
    _ev_view(con, w, store.log.files(_dt(w.since_us), _dt(ev_end)), store.catalog.pending_events_table(),
             w.since_us, ev_end)
    con.register("price", store.catalog.items_table(columns=["item_id", "price"]))
    return con


def _storage_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """DuckDB's errors as StorageError (the one kind the callers handle), never the driver's."""
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except duckdb.Error as exc:
            raise StorageError(f"the KPI query failed: {exc}") from exc
    return wrapped


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


def _attributed_sql(window_us: int, carry: list[str], positions: bool = True, *, direct: str = "imp",
                    window: str = "imp", revenue: bool = True) -> str:
    """SQL of the attributed events: (rid, pos, how, unit, item_id, ts, is_click, is_cart, is_purchase,
    revenue) plus the impression's ``carry`` columns (as ``i_<name>``). Without ``positions`` the
    direct events' positions are left null (the join then never reads the shown lists); without
    ``revenue`` the event's ``value`` comes instead of revenue (no price join). ``direct`` and
    ``window`` name the impression views each join reads (both the window's ``imp`` by default).

    One pass of the events against the impressions' ids finds the direct ones (a left join: the
    rest fall out of it); the rest are joined to the same unit's impressions of the window
    (a hash join on the unit, then the time range and a list search on those few rows only),
    the latest one that showed the item winning. The shown lists are never unnested.
    """
    keep = "".join(f", i.{c} AS i_{c}" for c in carry)
    keep_w = "".join(f", arg_max(i.{c}, i.\"at\") AS i_{c}" for c in carry)
    keep_r = "".join(f", i_{c}" for c in carry)
    return f"""
    WITH e1 AS MATERIALIZED (
        SELECT e.*, i.recommendation_id AS rid, {"list_position(i.items, e.item_id)" if positions else "NULL::BIGINT"} AS pos{keep}
        FROM ev e LEFT JOIN {direct} i ON e.recommendation_id = i.recommendation_id
    ),
    rest AS MATERIALIZED (SELECT row_number() OVER () AS eid, * FROM e1 WHERE rid IS NULL),
    win AS (
        SELECT r.eid, arg_max(i.recommendation_id, i."at") AS rid,
               arg_max(list_position(i.items, r.item_id), i."at") AS pos{keep_w}
        FROM rest r JOIN {window} i ON i.unit = r.unit
             AND i."at" <= r.ts AND r.ts < i."at" + to_microseconds({int(window_us)})
        WHERE list_contains(i.items, r.item_id)
        GROUP BY r.eid
    ),
    att AS (
        SELECT rid, pos, 'direct' AS how, unit, item_id, ts, is_click, is_cart, is_purchase, value{keep_r}
        FROM e1 WHERE rid IS NOT NULL
        UNION ALL
        SELECT w.rid, w.pos, 'window' AS how, r.unit, r.item_id, r.ts, r.is_click, r.is_cart, r.is_purchase,
               r.value{"".join(f", w.i_{c}" for c in carry)}
        FROM win w JOIN rest r USING (eid)
    )
    """ + ("""
    SELECT a.* EXCLUDE (value),
           CASE WHEN a.is_purchase THEN a.value * coalesce(p.price, 0) ELSE 0 END AS revenue
    FROM att a LEFT JOIN price p ON p.item_id = a.item_id
    """ if revenue else "SELECT * FROM att")


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


_SUMS = ("count(*) FILTER (WHERE is_click) AS clicks, count(*) FILTER (WHERE is_cart) AS carts, "
         "count(*) FILTER (WHERE is_purchase) AS purchases, sum(revenue)::DOUBLE AS revenue")


def _grouped(dims: list[str], a_filter: str = "true", i_filter: str = "true", window_us: int = 0) -> str:
    """KPI counts per ``dims``: impressions counted from the impressions alone, attributed events
    summed per the impression columns they carry; joined on the groups (nulls equal)."""
    g = ", ".join(dims) if dims else "'all' AS total"
    gi = ", ".join(f"i_{d} AS {d}" for d in dims) if dims else "'all' AS total"
    on = " AND ".join(f"im.{d} IS NOT DISTINCT FROM ag.{d}" for d in dims) if dims else "im.total = ag.total"
    cols = ", ".join(f"im.{d}" for d in dims) if dims else "im.total"
    return f"""
    WITH a AS ({_attributed_sql(window_us, dims, positions=False)}),
    ag AS (SELECT {gi}, {_SUMS} FROM a WHERE {a_filter} GROUP BY ALL),
    im AS (SELECT {g}, count(*) AS impressions FROM imp WHERE {i_filter} GROUP BY ALL)
    SELECT {cols}, im.impressions, coalesce(ag.clicks, 0)::BIGINT AS clicks, coalesce(ag.carts, 0)::BIGINT AS carts,
           coalesce(ag.purchases, 0)::BIGINT AS purchases, coalesce(ag.revenue, 0)::DOUBLE AS revenue
    FROM im LEFT JOIN ag ON {on}
    """


@_storage_errors
def kpis(store: Any, w: KpiWindow, by: tuple[str, ...] | list[str] = ("version",), *,
         impressions: ImpressionStore | None = None, rollup: bool = True) -> list[dict[str, Any]]:
    """KPI rows grouped by ``by`` (names in :data:`DIMENSIONS`), largest groups first. The whole
    history comes from the KPI rollup when a current one exists (see :mod:`scalerec.online.rollups`;
    the same figures), else (or without ``rollup``) from the impression and event files."""
    dims = _dims(by)
    imp_store = impressions or ImpressionStore(Path(store.dir) / "impressions")
    rows = _from_rollup(store, w, dims, imp_store) if rollup and w.since_us is None and w.until_us is None else None
    if rows is None:
        con = _connect(store, w, imp_store)
        rows = con.sql(_grouped(dims, window_us=w.window_us) + " ORDER BY impressions DESC").to_arrow_table().to_pylist()
        con.close()
    for r in rows:
        _rates(r)
        r.pop("total", None)
        if r.get("day") is not None:
            r["day"] = (date(1970, 1, 1) + timedelta(days=int(r["day"]))).isoformat()
    return rows


# -- the whole history from the rollup -------------------------------------------------------
ROLLUP_DIR = "kpi_rollup"
ROLLUP_META = "current.json"
#: The impression columns a rollup keeps (with ``day``): every dimension but the unit.
ROLLUP_DIMS = ["kind", "placement", "model_version", "strategy", "experiment", "variant"]


def rollup_meta(w: KpiWindow) -> dict[str, Any]:
    """What a rollup's figures depend on besides its input files: the window and the event types."""
    return {"window_us": int(w.window_us), "types": [list(w.click_types), list(w.cart_types), list(w.purchase_types)]}


def rollup_inputs(store: Any, imp_store: ImpressionStore, before: date) -> dict[str, list[int]]:
    """Size and mtime of every impression and event file of the days before ``before`` (a rollup's
    inputs: a batch, merge, scrub or late event there changes them)."""
    end = datetime(before.year, before.month, before.day, tzinfo=timezone.utc)
    base = Path(store.dir)
    out: dict[str, list[int]] = {}
    for f in [*imp_store.files(None, end), *store.log.files(None, end)]:
        try:
            st = f.stat()
        except FileNotFoundError:  # merged away between the listing and the stat: not this state
            out[str(f)] = [-1, -1]
            continue
        out[str(f.relative_to(base)) if f.is_relative_to(base) else str(f)] = [st.st_size, st.st_mtime_ns]
    return out


def _from_rollup(store: Any, w: KpiWindow, dims: list[str], imp_store: ImpressionStore) -> list[dict[str, Any]] | None:
    """The whole-history KPI rows from the rollup of the closed days plus the days after them read
    live; None when there is no rollup, or it no longer matches its input files or settings (then
    the caller reads everything).

    Exact by construction: the rollup holds every event of the closed days attributed against the
    closed days' impressions. A later impression cannot claim those events by the window (it comes
    after them) and claims one directly only by echoing an id the rollup found no impression for
    (kept in ``echo``: then None). The open days' events are attributed live, directly against all
    impressions whose id lies in the range of the ids they echo (only the id and group columns are
    read) and by the window against the impressions from their earliest time less the window on.
    """
    root = Path(store.dir) / ROLLUP_DIR
    try:
        meta = json.loads((root / ROLLUP_META).read_text(encoding="utf-8"))
        before = date.fromisoformat(meta["before"])
    except (OSError, ValueError, KeyError):
        return None
    if {k: meta.get(k) for k in ("window_us", "types")} != rollup_meta(w):
        return None
    if rollup_inputs(store, imp_store, before) != meta.get("inputs"):
        return None
    d = root / str(meta["dir"])
    b_us = (before - date(1970, 1, 1)).days * _US_PER_DAY
    con = _duck()
    try:
        for name in ("counts", "att", "echo"):
            con.execute(f"CREATE VIEW r_{name} AS SELECT * FROM read_parquet({str(d / (name + '.parquet'))!r})")
        _imp_view(con, "imp_open", imp_store.files(_dt(b_us), None))
        if con.execute("SELECT count(*) FROM r_echo JOIN imp_open USING (recommendation_id)").fetchall()[0][0]:
            return None  # an open day's list claims a closed day's event directly: read everything
        _ev_view(con, w, store.log.files(_dt(b_us), None), store.catalog.pending_events_table(), None, None)
        first = con.execute("SELECT epoch_us(min(ts)) FROM ev").fetchall()[0][0]
        if first is None:  # no events after the closed days: nothing to join them to
            _imp_view(con, "imp_all", [])
            _imp_view(con, "imp_win", [])
        else:
            # an echoed id lies between the smallest and largest echoed: with time-ordered ids (as
            # served) the merged days' row-group statistics skip every list older than the oldest echo
            lo, hi = con.execute("SELECT min(recommendation_id), max(recommendation_id) FROM ev").fetchall()[0]
            _imp_view(con, "imp_all", imp_store.files() if lo is not None else [],
                      "true" if lo is None else f"recommendation_id BETWEEN {_q(lo)} AND {_q(hi)}")
            _imp_view(con, "imp_win", imp_store.files(_dt(int(first) - w.window_us), None))
        con.register("price", store.catalog.items_table(columns=["item_id", "price"]))
        cols = ["day", *ROLLUP_DIMS]
        g = ", ".join(dims) if dims else "'all' AS total"
        on = " AND ".join(f"im.{c} IS NOT DISTINCT FROM ag.{c}" for c in dims) if dims else "im.total = ag.total"
        sel = ", ".join(f"im.{c}" for c in dims) if dims else "im.total"
        live = _attributed_sql(w.window_us, cols, positions=False, direct="imp_all", window="imp_win")
        sql = f"""
        WITH live AS ({live}),
        counts AS (SELECT {", ".join(cols)}, impressions FROM r_counts
                   UNION ALL SELECT {", ".join(cols)}, count(*) AS impressions FROM imp_open GROUP BY ALL),
        events AS (SELECT {", ".join(cols)}, clicks, carts, purchases, purchase_value * coalesce(p.price, 0) AS revenue
                   FROM r_att a LEFT JOIN price p ON p.item_id = a.item_id
                   UNION ALL SELECT {", ".join(f"i_{c} AS {c}" for c in cols)}, is_click::BIGINT, is_cart::BIGINT,
                   is_purchase::BIGINT, revenue FROM live),
        im AS (SELECT {g}, sum(impressions)::BIGINT AS impressions FROM counts GROUP BY ALL),
        ag AS (SELECT {g}, sum(clicks) AS clicks, sum(carts) AS carts, sum(purchases) AS purchases,
               sum(revenue)::DOUBLE AS revenue FROM events GROUP BY ALL)
        SELECT {sel}, im.impressions, coalesce(ag.clicks, 0)::BIGINT AS clicks, coalesce(ag.carts, 0)::BIGINT AS carts,
               coalesce(ag.purchases, 0)::BIGINT AS purchases, coalesce(ag.revenue, 0)::DOUBLE AS revenue
        FROM im LEFT JOIN ag ON {on} ORDER BY impressions DESC
        """
        return con.sql(sql).to_arrow_table().to_pylist()
    except duckdb.IOException:  # a newer rollup replaced this one while it was read
        return None
    finally:
        con.close()


def _rates(r: dict[str, Any]) -> dict[str, Any]:
    n = r["impressions"] or 0
    r["revenue"] = float(r["revenue"] or 0.0)
    r["ctr"] = r["clicks"] / n if n else 0.0
    r["cart_rate"] = r["carts"] / n if n else 0.0
    r["conversion"] = r["purchases"] / n if n else 0.0
    r["revenue_per_1000"] = 1000.0 * r["revenue"] / n if n else 0.0
    return r


@_storage_errors
def attributed_events(store: Any, w: KpiWindow, *, impressions: ImpressionStore | None = None) -> pa.Table:
    """Every attributed event of the window (rid, pos, how, unit, item_id, ts, is_*, revenue)."""
    con = _connect(store, w, impressions)
    table = con.sql(_attributed_sql(w.window_us, []) + " ORDER BY ts, rid").to_arrow_table()
    con.close()
    return table


@_storage_errors
def position_curve(store: Any, w: KpiWindow, by: str | None = None, *, impressions: ImpressionStore | None = None,
                   max_position: int = 50) -> list[dict[str, Any]]:
    """Per position p (1-based): impressions that showed a p-th item, clicks and purchases
    attributed to the item at p, and their rates (per group of ``by`` when given)."""
    dim = _dims([by])[0] if by else None
    con = _connect(store, w, impressions)
    g = f"{dim}, " if dim else ""
    shown = con.execute(f"SELECT {g}len(items) AS n, count(*) AS k FROM imp GROUP BY ALL").fetchall()
    hits = con.execute(
        f"WITH a AS ({_attributed_sql(w.window_us, [dim] if dim else [])}) SELECT {('i_' + dim + ', ') if dim else ''}pos, "
        "count(*) FILTER (WHERE is_click), count(*) FILTER (WHERE is_purchase) "
        f"FROM a WHERE pos IS NOT NULL AND pos > 0 AND pos <= {int(max_position)} GROUP BY ALL"
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


@_storage_errors
def unit_outcomes(store: Any, w: KpiWindow, experiment: str, *, impressions: ImpressionStore | None = None) -> pa.Table:
    """Per (variant, unit) of one experiment: impressions, attributed clicks, carts, purchases, revenue."""
    con = _connect(store, w, impressions, where=f"experiment = {_q(experiment)} AND variant IS NOT NULL")
    sql = _grouped(["variant", "unit"], window_us=w.window_us)
    table = con.sql(f"SELECT variant, unit, impressions, clicks::DOUBLE AS clicks, carts::DOUBLE AS carts, "
                    f"purchases::DOUBLE AS purchases, revenue FROM ({sql}) ORDER BY variant, unit").to_arrow_table()
    con.close()
    return table


@_storage_errors
def interleaved_credits(store: Any, w: KpiWindow, experiment: str, *,
                        impressions: ImpressionStore | None = None) -> tuple[list[str], dict[str, dict[str, float]]]:
    """An interleaving experiment's units (those shown a list) and their attributed clicks per team."""
    con = _connect(store, w, impressions, where=f"experiment = {_q(experiment)} AND teams IS NOT NULL")
    units = [r[0] for r in con.execute("SELECT DISTINCT unit FROM imp ORDER BY unit").fetchall()]
    rows = con.execute(
        f"WITH a AS ({_attributed_sql(w.window_us, ['teams', 'unit'])}) "
        "SELECT i_unit, list_extract(i_teams, pos::INTEGER) AS team, count(*)::DOUBLE FROM a "
        "WHERE is_click AND pos > 0 GROUP BY ALL"
    ).fetchall()
    con.close()
    credits: dict[str, dict[str, float]] = {}
    for unit, team, clicks in rows:
        credits.setdefault(unit, {})[team] = clicks
    return units, credits


@_storage_errors
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
