"""The notebook API: top-level exports, frames (pandas, Polars) and stores in, external ids out as
plain str / pyarrow, seen items excluded by default; the docs' example is executed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import scalerec
from scalerec.config import Settings
from scalerec.errors import UnknownUserError, ValidationError

REPO = Path(__file__).resolve().parents[1]


def _sales(n_users: int = 120, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        shelf = 100 if u % 2 else 200  # two tastes: each customer buys from one shelf
        for _ in range(12):
            rows.append((u, f"sku{shelf + int(rng.integers(30))}", f"2024-02-{1 + int(rng.integers(28)):02d}"))
    return pd.DataFrame(rows, columns=["customer", "sku", "day"])


COLUMNS = {"user_id": "customer", "item_id": "sku", "timestamp": "day"}


def test_docs_example_runs():
    text = (REPO / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), {})


def test_top_level_exports():
    for name in ("fit", "evaluate", "open_store", "load_production", "events_table", "Model", "models"):
        assert name in scalerec.__all__ and getattr(scalerec, name) is not None
    assert callable(scalerec.models.make_model)


@pytest.mark.parametrize("kind", ["pandas", "polars", "arrow"])
def test_fit_on_a_frame_recommends_unseen_items_of_the_users_taste(kind):
    df = _sales()
    frame = {"pandas": df, "polars": pl.from_pandas(df), "arrow": pa.Table.from_pandas(df, preserve_index=False)}[kind]
    model = scalerec.fit(frame, "itemknn", columns=COLUMNS)
    seen = set(df.loc[df.customer == 1, "sku"])
    picks = model.recommend("1", n=5)
    assert len(picks) == 5 and all(type(p) is str for p in picks)
    assert not seen & set(picks)
    assert all(p.startswith("sku1") for p in picks)  # customer 1 buys from shelf 100
    with_seen = model.recommend("1", n=40, exclude_seen=False)
    assert seen & set(with_seen)


def test_recommend_table_and_similar_are_arrow_and_str():
    model = scalerec.fit(_sales(), "ease", columns=COLUMNS, l2=50.0)
    table = model.recommend_table(["1", "2"], n=3)
    assert table.schema.field("item_id").type == pa.string() and table.num_rows == 6
    assert table.column("rank").to_pylist() == [1, 2, 3, 1, 2, 3]
    similar = model.similar("sku105", n=4)
    assert "sku105" not in similar and all(s.startswith("sku1") for s in similar)


def test_unknown_user_and_bad_rows_are_named():
    model = scalerec.fit(_sales(), "popular", columns=COLUMNS)
    with pytest.raises(UnknownUserError, match="nobody"):
        model.recommend("nobody")
    bad = _sales().astype({"day": str})
    bad.loc[3, "day"] = "not a date"
    with pytest.raises(ValidationError, match="row"):
        scalerec.fit(bad, "popular", columns=COLUMNS)
    with pytest.raises(ValidationError, match="not in the frame"):
        scalerec.fit(_sales(), "popular", columns={"user_id": "client"})


def test_store_and_production_model(tmp_path):
    from scalerec.datasets.synth import generate_store
    from scalerec.training.pipeline import TrainOptions, train

    settings = Settings(data={"dir": tmp_path / "shop"})
    from scalerec.data.store import DataStore

    store = DataStore.open(settings)
    generate_store(store, n_users=150, n_items=60, n_events=4000, seed=1, days=40)
    store.close()
    model = scalerec.fit(str(tmp_path / "shop"), "popular", settings=settings)
    assert model.recommend(model.user_ids[0], n=3)
    assert train(settings, TrainOptions(models=["popular"], trials=1)).version is not None
    prod = scalerec.load_production(tmp_path / "shop", settings=settings)
    assert prod.version and prod.family == "popular" and len(prod.recommend(prod.user_ids[0], n=3)) == 3
    table = scalerec.evaluate(scalerec.open_store(tmp_path / "shop", settings=settings), ["popular"], settings=settings)
    row = table.filter(pa.compute.equal(table.column("metric"), "ndcg@20")).to_pylist()[0]
    assert row["low"] <= row["value"] <= row["high"]
