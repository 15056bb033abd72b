"""The cell convention: raw summed weights (capped at 1 under recency) vs cells normalised by the strongest type weight.

Usage (from the repository root):

    .venv/bin/python bench/bench_cells.py                      # all three stores
    .venv/bin/python bench/bench_cells.py --skip-retail        # the synthetic stores only
    .venv/bin/python bench/bench_cells.py --skip-retail --shop-relevant purchase   # + the shop with purchases relevant

One run per store scores the same models on the same split twice, once with ``[matrix] normalise =
false`` (the convention before it existed: a purchase of weight 10 under the models' recency cap of
1 saturates the cell until it is 3.3 half-lives old, and any event saturates it) and once with
``normalise = true`` (cells divided by the strongest positive type weight of the data), and reports
each figure with its bootstrap interval and the paired difference (new - old) over the same users.

Stores: (a) the synthetic shop (`scalerec synth`: views, carts, purchases), (b) MovieLens-like
ratings (the synthetic shop's reviews alone: explicit 1-5 stars tied to each item's hidden appeal),
(c) Online Retail from ../shared (purchases and returns). The split is the default protocol
(`split auto`) of each store. Appends one JSON line per store to bench/results/cells.jsonl.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from _common import append_result

from scalerec.config import Settings
from scalerec.data.store import DataStore
from scalerec.evaluation.evaluate import evaluate_per_user
from scalerec.evaluation.splits import make_protocol
from scalerec.evaluation.stats import paired_test
from scalerec.models import make_model

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared" / "datasets" / "online-retail" / "online_retail.csv.gz"
console = Console(width=200)
HALF_LIFE = 30.0  # the models' recency design (cap 1): where the two conventions differ most
#: (label, family, params): the class defaults, and with recency weighting (which caps cells at 1)
MODELS = (
    ("rp3beta", "rp3beta", {}),
    ("rp3beta +recency", "rp3beta", {"recency_half_life_days": HALF_LIFE}),
    ("ease", "ease", {}),
    ("ease +recency", "ease", {"recency_half_life_days": HALF_LIFE}),
    ("itemknn +recency", "itemknn", {"recency_half_life_days": HALF_LIFE}),
)


def _score(events: Any, normalise: bool, relevant: list[str] | None) -> dict[str, Any]:
    settings = Settings(matrix={"normalise": normalise})
    if relevant is None:
        split, _ = make_protocol("auto", events, settings=settings, validation=False)
    else:  # the temporal split with only these types' held-out items relevant
        split, _ = make_protocol("temporal", events, settings=settings, validation=False,
                                 test_days=settings.training.test_days, relevant_types=relevant)
    out: dict[str, Any] = {"protocol": split.protocol.rule if split.protocol else split.name,
                           "test_users": int(len(split.test_users)), "models": {}}
    for label, family, params in MODELS:
        model = make_model(family, **params)
        model.fit(split.train_for(model))
        ev = evaluate_per_user(model, split, k=(20,), metrics=("recall", "ndcg"), catalogue_detail=False)
        out["models"][label] = {"ev": ev, "iv": ev.intervals(seed=0)}
    return out


def compare(name: str, events: Any, relevant: list[str] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    keys = ("recall@20", "ndcg@20")
    old, new = _score(events, False, relevant), _score(events, True, relevant)
    row: dict[str, Any] = {"store": name, "protocol": new["protocol"], "test_users": new["test_users"], "models": {}}
    for label, *_ in MODELS:
        a, b = old["models"][label], new["models"][label]
        assert np.array_equal(a["ev"].users, b["ev"].users), "both conventions must be scored on the same users"
        entry: dict[str, Any] = {}
        for key in keys:
            p = paired_test(b["ev"].per_user[key], a["ev"].per_user[key], seed=0)
            entry[key] = {"old": a["ev"].metrics[key], "old_iv": a["iv"][key].to_dict(),
                          "new": b["ev"].metrics[key], "new_iv": b["iv"][key].to_dict(),
                          "diff": p.mean_diff, "diff_low": p.low, "diff_high": p.high}
        row["models"][label] = entry
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def synthetic_shop(root: Path, n_users: int, n_events: int, reviews: float) -> DataStore:
    from scalerec.datasets.synth import generate_store

    store = DataStore.open(Settings(data={"dir": root}))
    generate_store(store, n_users=n_users, n_items=max(200, n_users // 5), n_events=n_events, seed=7,
                   days=180, reviews=reviews)
    return store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-retail", action="store_true")
    ap.add_argument("--shop-users", type=int, default=5000)
    ap.add_argument("--shop-events", type=int, default=300_000)
    ap.add_argument("--shop-relevant", default=None,
                    help="also score the shop on a temporal split where only these types are relevant (e.g. purchase)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cells-") as tmp:
        store = synthetic_shop(Path(tmp) / "shop", args.shop_users, args.shop_events, reviews=1.0)
        table = store.log.read()
        store.close()
        events = pl.from_arrow(table)
        shop = events.filter(pl.col("event_type") != "rating")
        rows.append(compare(f"synthetic shop ({args.shop_users:,} users, views/carts/purchases)", shop))
        if args.shop_relevant:
            relevant = args.shop_relevant.split(",")
            rows.append(compare(f"synthetic shop ({args.shop_users:,} users), relevant: {args.shop_relevant}",
                                shop, relevant))
        ratings = events.filter(pl.col("event_type") == "rating")
        rows.append(compare(f"MovieLens-like ratings (synthetic reviews, {ratings.height:,} ratings)", ratings))
        if not args.skip_retail:
            if not CSV.is_file():
                console.print(f"Online Retail not found at {CSV}; skipping")
            else:
                from scalerec.data.importers import import_file

                retail = DataStore.open(Settings(data={"dir": Path(tmp) / "retail"}))
                import_file(retail, "events", CSV, preset="online-retail")
                retail_events = pl.from_arrow(retail.log.read())
                retail.close()
                rows.append(compare("Online Retail (purchases, returns)", retail_events))
    out = Table(title="cells: raw summed weights (old) vs normalised by the strongest type weight (new); "
                      "Recall@20 / NDCG@20 [95%], paired new - old [95%]")
    for col in ("store", "protocol", "model", "metric", "old", "new", "new - old"):
        out.add_column(col, overflow="fold")
    for r in rows:
        append_result("cells", r)
        for label, entry in r["models"].items():
            for key, e in entry.items():
                out.add_row(r["store"], f"{r['protocol']} ({r['test_users']:,} users)", label, key,
                            f"{e['old']:.4f} [{e['old_iv']['low']:.4f}, {e['old_iv']['high']:.4f}]",
                            f"{e['new']:.4f} [{e['new_iv']['low']:.4f}, {e['new_iv']['high']:.4f}]",
                            f"{e['diff']:+.4f} [{e['diff_low']:+.4f}, {e['diff_high']:+.4f}]")
    console.print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
