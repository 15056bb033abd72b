"""Quality past EASE's size limit: families scored on the same test users of a large store's default protocol.

Usage (from the repository root; the store made by `scalerec -d DIR synth --users 300000 --items 100000
--events 10000000`):

    .venv/bin/python bench/bench_catalogue_quality.py --data-dir DIR --models rp3beta,als

The auto protocol's test split (no validation part: nothing is tuned) is built once; each family is
fitted with its class defaults (or ``-p FAMILY.NAME=VALUE``) on its training part and scored on its test
users, NDCG@20 and Recall@20 with a seeded bootstrap interval over users, then every family after the
first against the first by a paired bootstrap over the same users. Fit seconds and the fit's RSS rise
are beside them. Prints a table and appends one JSON line to bench/results/catalogue_quality.jsonl.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import PeakRSS, append_result, load_line, machine_info
from scalerec.config import Settings
from scalerec.data.store import DataStore
from scalerec.evaluation.splits import make_protocol
from scalerec.evaluation.stats import bootstrap_intervals, paired_test
from scalerec.training.pipeline import fit_and_score

console = Console(width=160)
METRICS = ("ndcg@20", "recall@20")


def _params(pairs: list[str]) -> dict[str, dict[str, Any]]:
    import json

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        family, _, name = key.partition(".")
        try:
            out.setdefault(family, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            out.setdefault(family, {})[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models", default="rp3beta,als")
    ap.add_argument("-p", "--param", action="append", default=[], help="FAMILY.NAME=VALUE (JSON value)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    before = machine_info()
    settings = Settings(data={"dir": args.data_dir})
    params = _params(args.param)
    families = [f.strip() for f in args.models.split(",") if f.strip()]
    t0 = time.perf_counter()
    with DataStore.open(settings) as store:
        events = store.log.read()
    import polars as pl

    events = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
    split, _ = make_protocol("auto", events, settings=settings, validation=False, seed=args.seed)
    del events
    split_s = time.perf_counter() - t0
    p = split.protocol
    console.print(f"protocol {p.rule}: {p.reason}; {split.train.n_users:,} users x {split.train.n_items:,} items, "
                  f"{split.train.nnz:,} cells; test: {p.test.describe()} (split {split_s:.0f} s)", soft_wrap=True)
    rows: list[dict[str, Any]] = []
    per_user: dict[str, dict[str, np.ndarray]] = {}
    for family in families:
        t = time.perf_counter()
        with PeakRSS() as rss:
            model, scores = fit_and_score(family, params.get(family, {}), split, "ndcg@20")
        per_user[family] = {m: np.asarray(scores.per_user[m]) for m in METRICS}
        ivs = bootstrap_intervals(per_user[family], n_boot=1000, seed=args.seed)
        rows.append({"family": family, "params": model.get_params(), "seconds": round(time.perf_counter() - t, 1),
                     "rss_rise_mib": round(rss.peak_mib, 1),
                     "intervals": {m: ivs[m].to_dict() for m in METRICS}})
        del model
        console.print(f"{family}: " + ", ".join(f"{m} {ivs[m].mean:.4f} [{ivs[m].low:.4f}, {ivs[m].high:.4f}]"
                                                for m in METRICS) + f" ({rows[-1]['seconds']} s)", soft_wrap=True)
    first = families[0]
    for row in rows[1:]:
        row["paired_vs_" + first] = {
            m: paired_test(per_user[row["family"]][m], per_user[first][m], n_boot=1000, seed=args.seed, min_users=1).to_dict()
            for m in METRICS}
    table = Table(title=f"auto protocol's test users ({len(split.test_users):,}), class defaults unless -p; 95% bootstrap")
    for col in ("family", "NDCG@20", "Recall@20", f"paired NDCG@20 - {first}", "fit+score s", "RSS rise MiB"):
        table.add_column(col)
    for row in rows:
        iv = row["intervals"]
        d = row.get("paired_vs_" + first, {}).get("ndcg@20")
        table.add_row(row["family"], *(f"{iv[m]['mean']:.4f} [{iv[m]['low']:.4f}, {iv[m]['high']:.4f}]" for m in METRICS),
                      f"{d['mean_diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d else "-",
                      str(row["seconds"]), str(row["rss_rise_mib"]))
    console.print(table)
    console.print(load_line(before))
    append_result("catalogue_quality", {
        "data_dir": args.data_dir, "protocol": p.to_dict(), "n_users": split.train.n_users, "n_items": split.train.n_items,
        "nnz": split.train.nnz, "rows": rows, "load_after": round(os.getloadavg()[0], 2),
    }, machine=before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
