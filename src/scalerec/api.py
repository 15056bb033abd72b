"""The Python API for notebooks: fit on a pandas/Polars frame or a store, recommend by external id.

    import scalerec
    model = scalerec.fit(df, "ease", columns={"user_id": "customer", "item_id": "sku"})
    model.recommend("40001", n=10)          # ['MUG-01', ...]: plain str ids, seen items excluded

Frames go through the same validation as `scalerec import` (``scalerec.data.validate``); the
matrix, the models and the evaluation protocol are the CLI's own. Results are plain Python lists
or pyarrow Tables, never NumPy scalars.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.config import Settings, load_settings
from scalerec.errors import UnknownItemError, UnknownUserError, ValidationError

__all__ = ["Model", "evaluate", "events_table", "fit", "load_production", "open_store"]

_ID_COLUMNS = ("user_id", "item_id", "session_id")


def _settings(settings: Settings | None, data_dir: str | Path | None = None) -> Settings:
    base = settings if settings is not None else load_settings()
    if data_dir is not None:
        base = base.model_copy(update={"data": base.data.model_copy(update={"dir": Path(data_dir)})})
    return base


def open_store(data_dir: str | Path, *, settings: Settings | None = None) -> Any:
    """The DataStore of an existing data directory (``scalerec init`` / an import made it)."""
    from scalerec.data.store import DataStore
    from scalerec.errors import NotFoundError

    from scalerec.data.value_types import with_store_value_types

    s = _settings(settings, data_dir)
    if not DataStore.exists(s):
        raise NotFoundError(f"{str(data_dir)!r} is not a scalerec data directory; create it with `scalerec -d {data_dir} init`")
    store = DataStore.open(s)
    weighted = with_store_value_types(s, store.catalog)  # event types whose imported values weight
    if weighted is s:
        return store
    store.close()
    return DataStore.open(weighted)


def _to_arrow(frame: Any) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    if hasattr(frame, "to_arrow"):  # polars DataFrame / LazyFrame
        frame = frame.collect() if hasattr(frame, "collect") else frame
        return frame.to_arrow()
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is optional
        pd = None
    if pd is not None and isinstance(frame, pd.DataFrame):
        return pa.Table.from_pandas(frame, preserve_index=False)
    raise ValidationError(f"cannot read events from {type(frame).__name__}: pass a pandas or Polars DataFrame, "
                          "a pyarrow Table or a DataStore (scalerec.open_store)")


def events_table(frame: Any, *, columns: Mapping[str, str] | None = None, constants: Mapping[str, Any] | None = None,
                 settings: Settings | None = None) -> pa.Table:
    """A frame's rows as validated events (EVENT_SCHEMA), the way `scalerec import` maps them.

    ``columns`` maps our fields to the frame's ({"user_id": "customer"}); ``constants`` gives every
    row a value. Without an event type every row is a "view"; without a timestamp every event is
    dated today (training then holds out at random, as with `import --no-timestamps`).
    Raises ValidationError naming the first bad rows; nothing is half-converted.
    """
    from scalerec.data.validate import validate_events

    table = _to_arrow(frame)
    rename = {src: dst for dst, src in (columns or {}).items()}
    missing = [src for src in rename if src not in table.column_names]
    if missing:
        raise ValidationError(f"columns {missing} are not in the frame; it has {table.column_names}")
    table = table.rename_columns([rename.get(c, c) for c in table.column_names])
    fills = {"event_type": "view", "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"), **(constants or {})}
    for name, value in fills.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([str(value)] * table.num_rows, pa.string()))
    for name in _ID_COLUMNS:  # ids are text: 40001 and "40001" are one customer
        if name in table.column_names and not pa.types.is_string(table.schema.field(name).type):
            table = table.set_column(table.column_names.index(name), name, pc.cast(table.column(name), pa.string()))
    valid, rejects = validate_events(table, settings or load_settings())
    if rejects.num_rows:
        shown = "; ".join(f"row {line}: {reason}" for line, reason in
                          zip(rejects.column("line").to_pylist()[:3], rejects.column("reason").to_pylist()[:3]))
        raise ValidationError(f"{rejects.num_rows} of {table.num_rows} rows are not valid events: {shown}",
                              details={"rejected": rejects.num_rows})
    return valid


class Model:
    """A fitted model with its id vocabularies: recommend and find similar items by external id."""

    def __init__(self, model: Any, matrix: Any, *, version: str | None = None) -> None:
        self.model = model
        self.matrix = matrix
        self.version = version

    def __repr__(self) -> str:
        return (f"scalerec.Model({self.model.family}, {self.matrix.n_users:,} users, {self.matrix.n_items:,} items"
                + (f", version {self.version})" if self.version else ")"))

    @property
    def family(self) -> str:
        return str(self.model.family)

    @property
    def user_ids(self) -> list[str]:
        return [str(u) for u in self.matrix.user_ids]

    @property
    def item_ids(self) -> list[str]:
        return [str(i) for i in self.matrix.item_ids]

    def _rows(self, user_ids: Sequence[str]) -> np.ndarray:
        rows = self.matrix.user_index(np.asarray([str(u) for u in user_ids], dtype=object))
        if (rows < 0).any():
            unknown = [str(u) for u, r in zip(user_ids, rows) if r < 0][:5]
            raise UnknownUserError(f"user(s) {unknown} have no events in the fitted data; "
                                   "recommend for them after they have some (or use popular items)",
                                   details={"user_ids": unknown})
        return rows

    def _ids(self, cols: np.ndarray) -> list[str]:
        return [str(self.matrix.item_ids[c]) for c in cols if c >= 0]

    def recommend(self, user_id: str, n: int = 10, *, exclude_seen: bool = True) -> list[str]:
        """The user's top-``n`` item ids, best first (items they interacted with left out by default)."""
        table = self.recommend_table([user_id], n, exclude_seen=exclude_seen)
        return [str(i) for i in table.column("item_id").to_pylist()]

    def recommend_table(self, user_ids: Sequence[str], n: int = 10, *, exclude_seen: bool = True) -> pa.Table:
        """Top-``n`` per user as a pyarrow Table (user_id, rank, item_id, score), one row per item."""
        if isinstance(user_ids, str):
            user_ids = [user_ids]
        rows = self._rows(list(user_ids))
        exclude = self.matrix.matrix[rows] if exclude_seen else None
        ids, scores = self.model.recommend(rows, int(n), exclude=exclude)
        keep = ids >= 0
        who = np.repeat(np.arange(len(rows)), keep.sum(axis=1))
        rank = (np.cumsum(keep, axis=1) - 1)[keep]
        return pa.table({
            "user_id": pa.array([str(user_ids[w]) for w in who], pa.string()),
            "rank": pa.array(rank + 1, pa.int32()),
            "item_id": pa.array(self.matrix.item_ids[ids[keep]].astype(str), pa.string()),
            "score": pa.array(scores[keep], pa.float32()),
        })

    def similar(self, item_id: str, n: int = 10) -> list[str]:
        """The ``n`` items most similar to ``item_id`` (never itself), best first."""
        col = self.matrix.item_index(np.asarray([str(item_id)], dtype=object))
        if col[0] < 0:
            raise UnknownItemError(f"item {str(item_id)!r} has no events in the fitted data", details={"item_id": str(item_id)})
        ids, _ = self.model.similar_items(col, int(n))
        return self._ids(ids[0])


def _events(data: Any, columns: Mapping[str, str] | None, constants: Mapping[str, Any] | None,
            settings: Settings) -> Any:
    """A store (or its directory) as it is; a frame validated into events."""
    if isinstance(data, (str, Path)):
        return open_store(data, settings=settings)
    if callable(getattr(data, "events", None)):  # a DataStore
        return data
    return events_table(data, columns=columns, constants=constants, settings=settings)


def fit(data: Any, model: str = "ease", *, columns: Mapping[str, str] | None = None,
        constants: Mapping[str, Any] | None = None, settings: Settings | None = None, **params: Any) -> Model:
    """Fit model family ``model`` (popular, itemknn, rp3beta, ease, als, ...) with ``params`` on all of
    ``data``: a pandas/Polars frame or pyarrow Table of events (see :func:`events_table`), a DataStore
    or a data directory. The [matrix] and [events] settings apply as in `scalerec train`."""
    from scalerec.data.matrix import matrix_from_settings
    from scalerec.data.snapshot import load_events
    from scalerec.models import make_model

    s = settings or load_settings()
    m = make_model(model, **params)
    events = load_events(_events(data, columns, constants, s))
    matrix = matrix_from_settings(events, s, **m.matrix_overrides())
    return Model(m.fit(matrix), matrix)


def evaluate(data: Any, models: Sequence[str] | Mapping[str, Any] = ("popular", "ease"), *, k: int = 20,
             split: str = "auto", columns: Mapping[str, str] | None = None, constants: Mapping[str, Any] | None = None,
             settings: Settings | None = None) -> pa.Table:
    """Compare model families on the CLI's protocol (default: auto) over ``data``; one row per
    model and metric with its bootstrap interval (model, metric, value, low, high) as a pyarrow Table."""
    from scalerec.data.snapshot import load_events
    from scalerec.evaluation import compare
    from scalerec.evaluation.splits import make_protocol
    from scalerec.models import make_model

    s = settings or load_settings()
    events = load_events(_events(data, columns, constants, s))
    test, _ = make_protocol(split, events, settings=s, validation=False)
    chosen = {name: make_model(name) for name in models} if not isinstance(models, Mapping) else {
        name: make_model(name, **dict(p)) for name, p in models.items()}
    result = compare(chosen, test, k=(k,), confidence=s.evaluation.confidence,
                     bootstrap_samples=s.evaluation.bootstrap_samples, seed=s.evaluation.seed)
    rows: dict[str, list[Any]] = {"model": [], "metric": [], "value": [], "low": [], "high": []}
    for r in result.results:
        for key, value in r.metrics.items():
            band = r.intervals.get(key) or {}
            for col, v in zip(rows, (r.name, key, value, band.get("low"), band.get("high"))):
                rows[col].append(None if v is None else (str(v) if col in ("model", "metric") else float(v)))
    return pa.table({"model": pa.array(rows["model"], pa.string()), "metric": pa.array(rows["metric"], pa.string()),
                     "value": pa.array(rows["value"], pa.float64()), "low": pa.array(rows["low"], pa.float64()),
                     "high": pa.array(rows["high"], pa.float64())})


def load_production(data_dir: str | Path, *, settings: Settings | None = None) -> Model:
    """The data directory's production model version (as `scalerec serve` serves it)."""
    from scalerec.registry import Registry

    s = _settings(settings, data_dir)
    lv = Registry(s, read_only=True).load(None)
    return Model(lv.model, lv.matrix, version=lv.version)
