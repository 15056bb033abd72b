"""The Online Retail spreadsheet's rows (as polars reads .xlsx: floats for ids, datetimes) become the
CSV the preset reads, and import as the published CSV's rows do (made-up rows, the real layout)."""

from __future__ import annotations

import datetime as dt
import gzip

import polars as pl

from scalerec.config import Settings
from scalerec.data.importers import import_file
from scalerec.data.store import DataStore
from scalerec.datasets.convert import online_retail_frame


def test_sheet_rows_become_the_csv_layout_and_import_with_the_preset(tmp_path):
    sheet = pl.DataFrame({
        "InvoiceNo": ["900001", "900001", "C900002"], "StockCode": ["12345A", "67890", "12345A"],
        "Description": ["RED MUG", "BLUE LAMP", "RED MUG"], "Quantity": [6, 2, -1],
        "InvoiceDate": [dt.datetime(2011, 3, 4, 9, 30), dt.datetime(2011, 3, 4, 9, 30), dt.datetime(2011, 3, 5, 10, 0)],
        "UnitPrice": [2.5, 10.0, 2.5], "CustomerID": [99001.0, 99001.0, None], "Country": ["France"] * 3,
    })
    frame = online_retail_frame(sheet)
    assert frame.row(0) == ("900001", "12345A", "RED MUG", 6, "2011-03-04 09:30:00", 2.5, "99001", "France")
    path = tmp_path / "online_retail.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(frame.write_csv())
    store = DataStore.open(Settings(data={"dir": tmp_path / "shop"}))
    try:
        report = import_file(store, "events", path, preset="online-retail")
        assert report.rows_read == 3 and report.imported >= 2
        users = set(store.events(columns=["user_id"]).__next__().column("user_id").to_pylist())
        assert "99001" in users
    finally:
        store.close()
