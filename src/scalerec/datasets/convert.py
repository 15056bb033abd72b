"""Published data sets to the files their presets read: ``python -m scalerec.datasets.convert``.

Only Online Retail needs it: UCI publishes it as a spreadsheet (``Online Retail.xlsx``), which is
converted to the gzip CSV that ``--preset online-retail`` reads (the layout of
``../shared/datasets/online-retail/online_retail.csv.gz``). MovieLens files are read as published.
Reading .xlsx needs ``pip install fastexcel`` (polars' Excel engine); it is not a dependency.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import polars as pl

__all__ = ["online_retail_frame", "convert_online_retail"]

_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")


def online_retail_frame(sheet: pl.DataFrame) -> pl.DataFrame:
    """The spreadsheet's rows in the CSV's text layout: ids as written (CustomerID 17850, not
    17850.0; stock codes such as 85123A kept), InvoiceDate as ``YYYY-MM-DD HH:MM:SS``."""
    missing = [c for c in _COLUMNS if c not in sheet.columns]
    if missing:
        raise ValueError(f"not the Online Retail sheet: columns {missing} are missing (it has {sheet.columns})")
    date = pl.col("InvoiceDate")
    date = date.dt.strftime("%Y-%m-%d %H:%M:%S") if sheet.schema["InvoiceDate"] != pl.String else date
    customer = pl.col("CustomerID")
    if sheet.schema["CustomerID"].is_numeric():
        customer = customer.cast(pl.Int64).cast(pl.String)
    return sheet.select(
        pl.col("InvoiceNo").cast(pl.String), pl.col("StockCode").cast(pl.String), pl.col("Description").cast(pl.String),
        pl.col("Quantity").cast(pl.Int64), date.alias("InvoiceDate"), pl.col("UnitPrice").cast(pl.Float64),
        customer.alias("CustomerID"), pl.col("Country").cast(pl.String),
    )


def convert_online_retail(xlsx: str | Path, out: str | Path) -> int:
    """Write ``out`` (.csv or .csv.gz) from the published spreadsheet; returns the rows written."""
    sheet = pl.read_excel(xlsx, schema_overrides={"InvoiceNo": pl.String, "StockCode": pl.String})
    frame = online_retail_frame(sheet)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = frame.write_csv()
    if out.name.endswith(".gz"):
        with gzip.open(out, "wt", encoding="utf-8", newline="") as fh:
            fh.write(text)
    else:
        out.write_text(text, encoding="utf-8")
    return frame.height


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scalerec.datasets.convert", description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=["online-retail"])
    p.add_argument("source", type=Path, help="the published file (Online Retail.xlsx)")
    p.add_argument("out", type=Path, help="where the preset's file goes, e.g. ../shared/datasets/online-retail/online_retail.csv.gz")
    args = p.parse_args(argv)
    try:
        n = convert_online_retail(args.source, args.out)
    except ImportError as exc:
        print(f"error: reading .xlsx needs fastexcel: pip install fastexcel ({exc})", file=sys.stderr)
        return 2
    print(f"wrote {n:,} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
