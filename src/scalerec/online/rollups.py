"""KPI rollups: the closed days' impressions and attributed events as small aggregates, so the
whole-history KPI query reads those plus the open days, not every shown list.

A day is *closed* once it ended :data:`CLOSE_AFTER_S` ago (the writers' last batches of it are
in). :func:`compact` merges each closed day's impression batch files into one
(:meth:`~scalerec.data.impressions.ImpressionStore.compact`) and then :func:`build` writes the
rollup of every day before the first open one, under ``<data_dir>/kpi_rollup/``::

    current.json            the rollup in force: its folder, the first open day, the attribution
                            window and event types, and the size and mtime of every input file
    r-<uuid>/counts.parquet impressions per day and group (kind, placement, version, strategy,
                            experiment, variant)
    r-<uuid>/att.parquet    the closed days' events attributed to the closed days' impressions,
                            per the impression's day, group and the item: clicks, add-to-carts,
                            purchases and the purchases' value (revenue takes today's prices)
    r-<uuid>/echo.parquet   recommendation ids those events echo that no closed day's list has

:func:`scalerec.online.kpis.kpis` uses the rollup for the whole history when its inputs are
unchanged and its settings are the query's; a late event, a merge or a user's deletion in a
closed day makes it stale, and the query reads everything until the next ``scalerec compact``.
The figures are the same either way (see ``_from_rollup`` there for why).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from scalerec.data.eventlog import _RootLock, _write_json_durable
from scalerec.data.impressions import ImpressionStore
from scalerec.online.kpis import (
    ROLLUP_DIMS,
    ROLLUP_DIR,
    ROLLUP_META,
    KpiWindow,
    _attributed_sql,
    _duck,
    _ev_view,
    _imp_view,
    _storage_errors,
    rollup_inputs,
    rollup_meta,
)

__all__ = ["CLOSE_AFTER_S", "build", "compact", "first_open_day"]

#: A day is closed this long after it ended: impression batches are flushed every few seconds.
CLOSE_AFTER_S = 3600.0


def first_open_day(now: float | None = None) -> dt.date:
    """The first UTC day that is not closed yet (see the module)."""
    t = (time.time() if now is None else now) - CLOSE_AFTER_S
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).date()


@_storage_errors
def build(store: Any, settings: Any, before: dt.date | None = None) -> dict[str, Any]:
    """Write the rollup of the days before ``before`` (default: the first open day) and make it
    the current one. Returns its ``before``, impressions and attributed events."""
    before = first_open_day() if before is None else before
    w = KpiWindow.from_settings(settings)
    imp_store = ImpressionStore(Path(store.dir) / "impressions")
    root = Path(store.dir) / ROLLUP_DIR
    end = dt.datetime(before.year, before.month, before.day, tzinfo=dt.timezone.utc)
    imp_lock = _RootLock.for_root(imp_store.root).hold() if imp_store.root.is_dir() else contextlib.nullcontext()
    with store.maintenance_lock(), imp_lock:  # no merge, scrub or log compaction under the build
        inputs = rollup_inputs(store, imp_store, before)  # before reading: a change after it shows as stale
        con = _duck()
        try:
            _imp_view(con, "imp", imp_store.files(None, end))
            _ev_view(con, w, store.log.files(None, end), None, None, None)
            cols = ["day", *ROLLUP_DIMS]
            att = _attributed_sql(w.window_us, cols, positions=False, revenue=False)
            tables = {
                "counts": con.sql(f"SELECT {', '.join(cols)}, count(*)::BIGINT AS impressions FROM imp "
                                  "GROUP BY ALL").to_arrow_table(),
                "att": con.sql(
                    f"SELECT {', '.join(f'i_{c} AS {c}' for c in cols)}, item_id, "
                    "count(*) FILTER (WHERE is_click)::BIGINT AS clicks, count(*) FILTER (WHERE is_cart)::BIGINT AS carts, "
                    "count(*) FILTER (WHERE is_purchase)::BIGINT AS purchases, "
                    f"sum(value::DOUBLE) FILTER (WHERE is_purchase) AS purchase_value FROM ({att}) GROUP BY ALL"
                ).to_arrow_table(),
                "echo": con.sql("SELECT DISTINCT e.recommendation_id FROM ev e ANTI JOIN imp i "
                                "ON e.recommendation_id = i.recommendation_id "
                                "WHERE e.recommendation_id IS NOT NULL").to_arrow_table(),
            }
        finally:
            con.close()
        root.mkdir(mode=0o700, exist_ok=True)
        name = f"r-{uuid.uuid4().hex}"
        tmp = root / f".{name}"
        tmp.mkdir(mode=0o700)
        for key, table in tables.items():
            pq.write_table(table, tmp / f"{key}.parquet", compression="zstd")
            with open(tmp / f"{key}.parquet", "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, root / name)
        _write_json_durable(root / ROLLUP_META, {"dir": name, "before": before.isoformat(), "built_at": time.time(),
                                                 **rollup_meta(w), "inputs": inputs})
        for entry in os.scandir(root):  # earlier rollups and builds cut short (a reader falls back meanwhile)
            if entry.is_dir() and entry.name.lstrip(".").startswith("r-") and entry.name != name:
                shutil.rmtree(entry.path, ignore_errors=True)
    counts, attributed = tables["counts"], tables["att"]
    n_att = sum(int(attributed.column(c).to_numpy().sum()) for c in ("clicks", "carts", "purchases")) \
        if attributed.num_rows else 0
    return {"before": before.isoformat(), "impressions": int(counts.column("impressions").to_numpy().sum())
            if counts.num_rows else 0, "attributed_events": n_att, "files": len(inputs)}


def compact(store: Any, settings: Any, now: float | None = None) -> dict[str, Any]:
    """Merge the closed days' impression files, then roll the closed days up (what
    ``scalerec compact`` runs after the event log's compaction)."""
    before = first_open_day(now)
    merged = ImpressionStore(Path(store.dir) / "impressions").compact(before)
    return {"impressions": merged, "rollup": build(store, settings, before)}

