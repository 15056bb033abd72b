"""The UCI Online Retail dataset: its import preset (events, items, users from the one sales file)
and its reference evaluation protocol, registered as ``--preset online-retail`` and
``--split online-retail``."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.config import EventType
from scalerec.data.coerce import combine, pack_map, parse_number, parse_timestamps, to_text
from scalerec.data.importers.mapping import Stage, quoted
from scalerec.data.importers.presets import Aggregator, Preset, register_preset
from scalerec.data.schema import TIMESTAMP
from scalerec.errors import EmptyDataError
from scalerec.evaluation.splits import Split, _MatrixOptions, _split_temporal, load_events, register_split

__all__ = ["ONLINE_RETAIL", "ONLINE_RETAIL_ATTRIBUTION", "RETAIL_TIME_FORMAT", "online_retail_protocol"]

NAME = "online-retail"
ALIASES = ("onlineretail", "uci-online-retail")
#: The protocol's test window (the dataset README's last 30 days).
TEST_DAYS = 30.0
_NULL = pa.scalar(None, pa.string())


ONLINE_RETAIL_ATTRIBUTION = (
    'Online Retail data: Daqing Chen, "Online Retail", UCI Machine Learning Repository '
    "(doi:10.24432/C5BW33), licensed under Creative Commons Attribution 4.0 International "
    "(CC BY 4.0, https://creativecommons.org/licenses/by/4.0/)."
)


_RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
#: InvoiceDate is UK local time in the source; it is taken as UTC (at most one hour off in summer).
RETAIL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_RETAIL_ADJUSTMENT = "Quantity <= 0 on an invoice that is not a cancellation (stock adjustment)"


def _customer_ids(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """CustomerID as text without a trailing ".0" (the column is float where it has gaps)."""
    text = to_text(arr)
    if pc.any(pc.ends_with(text, ".0")).as_py():  # the regex only where it can change something
        text = pc.replace_substring_regex(text, r"\.0+$", "")
    return text


def _retail_events(src: pa.Table) -> Stage:
    """Quantity > 0 -> purchase (value = Quantity); invoice "C..." -> return (value = |Quantity|).

    Rows without CustomerID are anonymous: user_id null, the invoice is the session. Every event
    carries its invoice as session_id and country/invoice in its context. Other rows with
    Quantity <= 0 are stock adjustments, counted as filtered.
    """
    n = src.num_rows
    column = lambda name: combine(src.column(name))  # noqa: E731
    invoice = to_text(column("InvoiceNo"))
    quantity, bad_q = parse_number(column("Quantity"))
    q = quantity.to_numpy(zero_copy_only=False)
    ts, bad_ts = parse_timestamps(column("InvoiceDate"), RETAIL_TIME_FORMAT)
    no = np.zeros(n, dtype=bool)
    bad_q = no if bad_q is None else bad_q
    missing_q = np.isnan(q) & ~bad_q
    bad_ts = (no if bad_ts is None else bad_ts) & ~bad_q & ~missing_q
    rejects = []
    for mask, reasons in (
        (bad_q, lambda i: quoted("Quantity ", column("Quantity").take(i), " is not a number")),
        (missing_q, lambda i: pa.nulls(len(i), pa.string()).fill_null("Quantity is missing")),
        (bad_ts, lambda i: quoted("InvoiceDate ", column("InvoiceDate").take(i),
                                   f" is not a time in the format {RETAIL_TIME_FORMAT}")),
    ):
        if mask.any():
            idx = np.flatnonzero(mask)
            rejects.append((idx, reasons(pa.array(idx))))
    is_return = pc.fill_null(pc.starts_with(invoice, "C"), False).to_numpy(zero_copy_only=False)
    valid = ~(bad_q | missing_q | bad_ts)
    with np.errstate(invalid="ignore"):
        adjustment = valid & ~is_return & (q <= 0)
    keep = valid & ~adjustment
    table = pa.table(
        {
            "user_id": _customer_ids(column("CustomerID")),
            "item_id": column("StockCode"),
            "event_type": pc.if_else(pa.array(is_return), pa.scalar("return"), pa.scalar("purchase")),
            "timestamp": ts,
            "value": pa.array(np.abs(np.nan_to_num(q)), pa.float64()),
            "session_id": invoice,
            "context": pack_map(n, {"country": column("Country"), "invoice": invoice}),
        }
    )
    filtered = {_RETAIL_ADJUSTMENT: int(adjustment.sum())} if adjustment.any() else {}
    if not keep.all():
        table = table.filter(pa.array(keep))
    return Stage(table, np.flatnonzero(keep), rejects, filtered)


def _retail_frame(src: pa.Table, lines: np.ndarray) -> tuple[pl.DataFrame, list[tuple[np.ndarray, pa.Array]]]:
    """Shared cleaning of an Online Retail chunk for the item and user aggregations."""
    n = src.num_rows
    ts, bad_ts = parse_timestamps(src.column("InvoiceDate"), RETAIL_TIME_FORMAT)
    price, bad_price = parse_number(src.column("UnitPrice"))
    desc = pc.utf8_trim_whitespace(to_text(src.column("Description")))
    rejects: list[tuple[np.ndarray, pa.Array]] = []
    bad = np.zeros(n, dtype=bool)
    for mask, column, why in (
        (bad_ts, "InvoiceDate", f" is not a time in the format {RETAIL_TIME_FORMAT}"),
        (bad_price, "UnitPrice", " is not a number"),
    ):
        if mask is not None:
            new = mask & ~bad
            idx = np.flatnonzero(new)
            if len(idx):
                rejects.append((idx, quoted(f"{column} ", combine(src.column(column)).take(pa.array(idx)), why)))
            bad |= mask
    quantity, _ = parse_number(src.column("Quantity"))
    is_return = pc.fill_null(pc.starts_with(to_text(src.column("InvoiceNo")), "C"), False)
    sale = pc.fill_null(pc.and_(pc.greater(quantity, 0), pc.invert(is_return)), False)
    frame = pl.from_arrow(pa.table({
        "item": to_text(src.column("StockCode")),
        "sale": sale,
        "user": _customer_ids(src.column("CustomerID")),
        "title": pc.if_else(pc.equal(desc, ""), _NULL, desc),
        "price": price,
        "country": to_text(src.column("Country")),
        "ts": ts,
        "line": pa.array(lines),
        "pos": pa.array(np.arange(n, dtype=np.int64)),
        "bad": pa.array(bad),
    }))
    return frame.filter(~pl.col("bad")).drop("bad"), rejects


class _RetailItems(Aggregator):
    """One item per StockCode: title = most frequent non-empty Description; over its sales (Quantity > 0,
    not a "C" invoice): price = lower median of UnitPrice > 0, attributes.country = the country it sells
    to most; created_at = first time it appears; available = true."""

    key = "item"
    needs = _RETAIL_COLUMNS

    def add(self, src: pa.Table, lines: np.ndarray) -> list[tuple[np.ndarray, pa.Array]]:
        frame, rejects = _retail_frame(src, lines)
        no_code = frame.filter(pl.col("item").is_null())
        if no_code.height:
            idx = no_code["pos"].to_numpy()
            rejects.append((idx, pa.array(["StockCode is missing"] * len(idx), pa.string())))
            frame = frame.filter(pl.col("item").is_not_null())
        self._push("first", frame, ["item"], [pl.col("ts").min().alias("first_ts"), pl.col("line").min().alias("first_line")])
        self._push("title", frame.filter(pl.col("title").is_not_null()), ["item", "title"], [pl.len().alias("n")])
        sales = frame.filter(pl.col("sale"))
        self._push("price", sales.filter(pl.col("price") > 0), ["item", "price"], [pl.len().alias("n")])
        self._push("country", sales.filter(pl.col("country").is_not_null()), ["item", "country"], [pl.len().alias("n")])
        return rejects

    def finish(self) -> tuple[pa.Table, np.ndarray]:
        first = self._merged("first", ["item"], [pl.col("ts").min().alias("first_ts"), pl.col("line").min().alias("first_line")],
                             {"item": pl.String, "first_ts": pl.Datetime("us", "UTC"), "first_line": pl.Int64})
        out = (first.join(self._mode("title", "title"), on="item", how="left")
               .join(self._median("price", "price"), on="item", how="left")
               .join(self._mode("country", "country"), on="item", how="left")
               .sort("first_line"))
        table = out.to_arrow()
        items = pa.table({
            "item_id": combine(table.column("item")).cast(pa.string()),
            "title": combine(table.column("title")).cast(pa.string()),
            "price": combine(table.column("price")),
            "available": pa.array(np.ones(table.num_rows, dtype=bool)),
            "attributes": pack_map(table.num_rows, {"country": combine(table.column("country")).cast(pa.string())}),
            "created_at": combine(table.column("first_ts")).cast(TIMESTAMP),
        })
        return items, out["first_line"].to_numpy()


class _RetailUsers(Aggregator):
    """One user per CustomerID: attributes.country = most frequent Country, created_at = first invoice."""

    key = "user"
    needs = _RETAIL_COLUMNS

    def add(self, src: pa.Table, lines: np.ndarray) -> list[tuple[np.ndarray, pa.Array]]:
        frame, rejects = _retail_frame(src, lines)
        anonymous = frame.filter(pl.col("user").is_null()).height
        if anonymous:
            key = "no CustomerID (anonymous purchase)"
            self.filtered[key] = self.filtered.get(key, 0) + anonymous
        frame = frame.filter(pl.col("user").is_not_null())
        self._push("first", frame, ["user"], [pl.col("ts").min().alias("first_ts"), pl.col("line").min().alias("first_line")])
        self._push("country", frame.filter(pl.col("country").is_not_null()), ["user", "country"], [pl.len().alias("n")])
        return rejects

    def finish(self) -> tuple[pa.Table, np.ndarray]:
        first = self._merged("first", ["user"], [pl.col("ts").min().alias("first_ts"), pl.col("line").min().alias("first_line")],
                             {"user": pl.String, "first_ts": pl.Datetime("us", "UTC"), "first_line": pl.Int64})
        out = first.join(self._mode("country", "country"), on="user", how="left").sort("first_line")
        table = out.to_arrow()
        users = pa.table({
            "user_id": combine(table.column("user")).cast(pa.string()),
            "attributes": pack_map(table.num_rows, {"country": combine(table.column("country")).cast(pa.string())}),
            "created_at": combine(table.column("first_ts")).cast(TIMESTAMP),
        })
        return users, out["first_line"].to_numpy()


RETAIL_NOTE = ("InvoiceDate is UK local time in the source and was taken as UTC "
               "(times during British Summer Time are one hour late)")
ONLINE_RETAIL: dict[str, Preset] = {
    "events": Preset(NAME, "events", transform=_retail_events, needs=_RETAIL_COLUMNS, note=RETAIL_NOTE),
    "items": Preset(NAME, "items", aggregator=_RetailItems, needs=_RETAIL_COLUMNS, note=RETAIL_NOTE),
    "users": Preset(NAME, "users", aggregator=_RetailUsers, needs=_RETAIL_COLUMNS, note=RETAIL_NOTE),
}


def online_retail_protocol(events: Any, *, test_days: float = TEST_DAYS) -> Split:
    """The reference protocol of the Online Retail dataset README (expect 1,271 test users).

    Purchases with a user (the importer's ``purchase`` events; cancellations are ``return``
    events and anonymous rows have no user), binary (user, item) interactions; the test window is
    the last 30 days before the newest event of the data; relevant = distinct items bought in the
    window and not in training, restricted to users and items of training.
    """
    raw = load_events(events)
    if raw.height == 0:
        raise EmptyDataError(
            "the Online Retail protocol found no events: import the file first with "
            "`scalerec import events online_retail.csv.gz --preset online-retail`"
        )
    end = raw.get_column("timestamp").max()
    purchases = raw.filter(pl.col("event_type") == "purchase")
    if purchases.filter(pl.col("user_id").is_not_null()).height == 0:
        raise EmptyDataError(
            f"the Online Retail protocol needs 'purchase' events with a user id; the data has {raw.height} events "
            "and none is one: import the file with `scalerec import events FILE --preset online-retail`"
        )
    # The protocol is fixed: no window, decay or minimum counts from the configuration.
    opts = _MatrixOptions(
        event_types={"purchase": EventType(weight=1.0)},
        unknown_type_weight=None,
        binary=True,
        half_life_days=None,
        window_days=None,
        min_user_interactions=1,
        min_item_interactions=1,
        relevant_types=None,
    )
    split = _split_temporal(purchases, opts, test_days=test_days, valid_days=None, now=end, exclude_seen=True)
    split.name = NAME
    split.attribution = ONLINE_RETAIL_ATTRIBUTION
    return split


register_preset(
    NAME, ONLINE_RETAIL, aliases=ALIASES,
    help="UCI Online Retail; its InvoiceDate, UK local time, is taken as UTC",
)
register_split(
    NAME, online_retail_protocol, uses_settings=False, options=("test_days",), default_test_days=TEST_DAYS,
    aliases=ALIASES, help="the dataset's reference protocol: purchases, last 30 days held out",
)
