"""Model selection with the defaults: what the auto protocol chooses, and how the chosen model does on data it never saw.

Usage (from the repository root):

    .venv/bin/python bench/bench_selection.py --minutes 3     # search budget per store (default 3)
    .venv/bin/python bench/bench_selection.py --skip-retail   # the synthetic shop only
    .venv/bin/python bench/bench_selection.py --replay 2026-12-02T07:18   # the finalist rule alone (below)

(a) Online Retail: the file is imported, the Online Retail protocol's test start and test users are
    taken from it, and only the events before that start go into a fresh store; `train` runs there
    with the defaults (split auto, models.enabled) and the budget; the production model is then
    scored on the protocol's test users (their histories as serving folds them in: the production matrix's rows). Goal: Recall@20
    and NDCG@20 >= 0.125.
(b) A front-loaded synthetic shop (most users active only for a day in the first third of the
    period): the same `train`, scored on the auto protocol's own test part.

(c) --replay: the finalist rule (training.select) alone on Online Retail, its finalists the families and
    configurations the recorded runs at that time chose, each also refitted as production and scored on
    the protocol's test users (which the rule never sees).

Prints a table of what the default protocol chose on each store and appends one JSON line per store
to bench/results/selection.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from _common import append_result

ROOT = Path(__file__).resolve().parents[1]
# the front-loaded shop is the tests' own construction (tests/evaluation/test_holdout.py, which imports a CLI fixture)
sys.path[:0] = [str(ROOT / "tests" / d) for d in ("evaluation", "cli", "training", "")]

import scalerec  # noqa: E402
from scalerec.config import Settings  # noqa: E402
from scalerec.data.store import DataStore  # noqa: E402
from scalerec.registry import Registry  # noqa: E402
from scalerec.training import TrainOptions, train  # noqa: E402

CSV = ROOT.parent / "shared" / "datasets" / "online-retail" / "online_retail.csv.gz"
GOAL = 0.125
LABEL = ""
LOAD_BEFORE = 0.0
console = Console(width=200)


def _serving_history(matrix: Any, split: Any) -> Any:
    """The production matrix's rows of the split's users on the split's items: the histories serving
    folds in (the store's cell convention), not the protocol's own (binary, purchases at weight 1)."""
    import numpy as np
    import scipy.sparse as sp

    rows = matrix.user_index(np.asarray(split.train.user_ids).astype(str))
    cols = split.train.item_index(np.asarray(matrix.item_ids).astype(str))
    m = sp.coo_matrix(matrix.matrix[np.maximum(rows, 0)])
    keep = (cols[m.col] >= 0) & (rows[m.row] >= 0)
    return sp.csr_matrix((m.data[keep], (m.row[keep], cols[m.col[keep]])), shape=split.train.matrix.shape,
                         dtype=np.float32)


def _score_production(settings: Settings, split: Any) -> dict[str, float]:
    """The production model of ``settings``' store on ``split``'s test users, their histories as serving
    has them (the production matrix's rows), on the items it knows; with bootstrap intervals."""
    from scalerec.evaluation.evaluate import evaluate_per_user
    from scalerec.training.pipeline import _VocabAdapter

    loaded = Registry(settings).load()
    adapter = _VocabAdapter(loaded, split)
    adapter.history = _serving_history(loaded.matrix, split)
    ev = evaluate_per_user(adapter, split, k=(20,), metrics=("recall", "ndcg"), catalogue_detail=False)
    out: dict[str, Any] = dict(ev.metrics)
    out["intervals"] = {k: iv.to_dict() for k, iv in ev.intervals(seed=0).items()}
    return out


#: per family of the last train: search seconds and the process's peak RSS while it searched (jobs 1: in process)
PER_FAMILY: dict[str, dict[str, float]] = {}


def _train(settings: Settings, store: DataStore, minutes: float, jobs: int) -> tuple[Any, float]:
    import scalerec.training.pipeline as pipeline
    import scalerec.training.tuning as tuning

    original = tuning.tune_family
    PER_FAMILY.clear()

    def measured(family: str, **kw: Any) -> Any:
        with pipeline.measure_peak_rss() as mem:
            res = original(family, **kw)
        row = PER_FAMILY.setdefault(family, {"peak_rss_mib": 0.0})
        row["peak_rss_mib"] = round(max(row["peak_rss_mib"], mem["peak_rss_bytes"] / 2**20), 1)
        return res

    tuning.tune_family = measured  # search_families looks it up in its module
    t0 = time.perf_counter()
    try:
        result = train(settings, TrainOptions(minutes=minutes, jobs=jobs), store=store)
    finally:
        tuning.tune_family = original
    return result, time.perf_counter() - t0


def online_retail(root: Path, minutes: float, jobs: int) -> dict[str, Any]:
    from scalerec.data.importers import import_file
    from scalerec.datasets.online_retail import online_retail_protocol

    full = DataStore.open(Settings(data={"dir": root / "full"}))
    import_file(full, "events", CSV, preset="online-retail")
    protocol = online_retail_protocol(full)
    test_start = protocol.info["test_start"]
    settings = Settings(data={"dir": root / "before"})
    store = DataStore.open(settings)
    store.log.append(full.log.read(end=test_start))  # only what was known before the protocol's test window
    full.close()
    result, wall = _train(settings, store, minutes, jobs)
    store.close()
    scores = _score_production(settings, protocol)
    return _row("online-retail (events before the protocol's test start)", result, wall, minutes, scores,
                scored_on=f"Online Retail protocol: {len(protocol.test_users):,} test users")


def front_loaded_shop(root: Path, minutes: float, jobs: int, n_users: int, n_events: int) -> dict[str, Any]:
    from scalerec.data.schema import EVENT_SCHEMA
    from scalerec.datasets.synth import generate_store
    from test_holdout import front_loaded

    gen = DataStore.open(Settings(data={"dir": root / "gen"}))
    generate_store(gen, n_users=n_users, n_items=max(200, n_users // 5), n_events=n_events, seed=11, days=180)
    table = gen.log.read()
    gen.close()
    shifted = front_loaded(pl.from_arrow(table)).to_arrow().cast(EVENT_SCHEMA)
    settings = Settings(data={"dir": root / "shop"})
    store = DataStore.open(settings)
    store.log.append(shifted)
    result, wall = _train(settings, store, minutes, jobs)
    store.close()
    return _row(f"synthetic shop, front-loaded ({n_users:,} users, {n_events:,} events)", result, wall, minutes,
                dict(result.metrics), scored_on="the auto protocol's test part")


def replay(root: Path, prefix: str) -> dict[str, Any]:
    """The finalist rule alone, on Online Retail, without the search's time lottery: the families and
    configurations chosen by the Online Retail runs of ``bench/results/selection.jsonl`` whose time starts
    with ``prefix`` are the finalists; each is scored on the run protocol's validation part as its trial
    was (value and interval), ``training.select.choose_family`` chooses, and every finalist is refitted on
    all the events as production would be and scored on the Online Retail protocol's test users (for the
    table only: nothing of that test reaches the choice)."""
    import json
    from types import SimpleNamespace

    from scalerec.data.importers import import_file
    from scalerec.data.snapshot import take_snapshot
    from scalerec.datasets.online_retail import online_retail_protocol
    from scalerec.models import make_model
    from scalerec.training.pipeline import (
        _VocabAdapter, fit_and_score, full_matrix, make_run_protocol, make_second_fold, score_intervals,
        uncertainty_options,
    )
    from scalerec.training.select import choose_family
    from scalerec.training.tuning import FamilyResult
    from scalerec.evaluation.evaluate import evaluate_per_user

    runs = [json.loads(line) for line in (ROOT / "bench" / "results" / "selection.jsonl").read_text().splitlines()]
    picked = {r["chosen"]: r["params"] for r in runs if r["time"].startswith(prefix) and r["store"].startswith("online")}
    if len(picked) < 2:
        raise SystemExit(f"runs at {prefix!r} chose {sorted(picked)}: a replay needs two families")
    full = DataStore.open(Settings(data={"dir": root / "full"}))
    import_file(full, "events", CSV, preset="online-retail")
    protocol = online_retail_protocol(full)
    settings = Settings(data={"dir": root / "before"})
    store = DataStore.open(settings)
    store.log.append(full.log.read(end=protocol.info["test_start"]))
    full.close()
    snapshot = take_snapshot(store)
    store.close()
    options = TrainOptions()
    _, valid, _ = make_run_protocol(snapshot, settings, options)
    uncertainty = uncertainty_options(settings)
    results = []
    for family, params in picked.items():
        _, sc = fit_and_score(family, params, valid, "ndcg@20")
        results.append(FamilyResult(family=family, study="replay", best_value=sc.value("ndcg@20"), best_params=params,
                                    best_intervals=score_intervals(sc, uncertainty)))
    winner, record = choose_family(results, valid, lambda: make_second_fold(valid, settings, options), "ndcg@20",
                                   uncertainty=uncertainty)
    on_test = {}
    for f in results:  # production's refit of each finalist, scored on the protocol's test users
        model = make_model(f.family, **(f.best_params or {}))
        matrix = full_matrix(snapshot, settings, **model.matrix_overrides())
        model.fit(matrix)
        adapter = _VocabAdapter(SimpleNamespace(model=model, matrix=matrix), protocol)
        adapter.history = _serving_history(matrix, protocol)
        ev = evaluate_per_user(adapter, protocol, k=(20,), metrics=("recall", "ndcg"), catalogue_detail=False)
        on_test[f.family] = {**ev.metrics, "intervals": {k: iv.to_dict() for k, iv in ev.intervals(seed=0).items()}}
    return {"store": "online-retail replay of " + prefix, "finalists": picked, "selection": record,
            "chosen": winner.family, "on_protocol_test": on_test, "src": str(Path(scalerec.__file__).resolve().parents[1]),
            "load_before_after": [LOAD_BEFORE, round(os.getloadavg()[0], 2)]}


def _row(store: str, result: Any, wall: float, minutes: float, scores: dict[str, float], scored_on: str) -> dict[str, Any]:
    p = result.protocol
    return {
        "store": store,
        "rule": p["rule"],
        "reason": p["reason"],
        "test": p["test"],
        "validation": p["validation"],
        "chosen": result.best_family,
        "params": result.best_params,
        "validation_ndcg@20": result.validation_metrics.get("ndcg@20"),
        "test_ndcg@20": result.metrics.get("ndcg@20"),
        "recall@20": scores.get("recall@20"),
        "ndcg@20": scores.get("ndcg@20"),
        "scored_on": scored_on,
        "intervals": scores.get("intervals") or {k: v for k, v in (result.intervals.get("test") or {}).items()
                                                 if k in ("recall@20", "ndcg@20")},
        "budget_minutes": minutes,
        "train_wall_s": round(wall, 1),
        "families": {f.family: f.best_value for f in result.families},
        # why the chosen family won (training.select; absent on code before the tie rule)
        "selection": getattr(result, "selection", None) or {},
        # where the budget went: trials (pruned), rounds taken part in, search seconds per family
        "spent": {f.family: {"trials": f.trials_total, "pruned": f.trials_pruned, "rounds": f.rounds,
                             "search_s": round(f.wall_s, 1), **PER_FAMILY.get(f.family, {})} for f in result.families},
        # which code ran (the bench script may run another checkout's src on PYTHONPATH) and the load around it
        "src": str(Path(scalerec.__file__).resolve().parents[1]),
        "label": LABEL,
        "load_before_after": [LOAD_BEFORE, round(os.getloadavg()[0], 2)],
    }


def _iv(row: dict[str, Any], key: str) -> str:
    iv = (row.get("intervals") or {}).get(key)
    return f"{row[key]:.4f}" + (f" [{iv['low']:.4f}, {iv['high']:.4f}]" if iv else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="search budget of each train run")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--skip-retail", action="store_true")
    ap.add_argument("--skip-shop", action="store_true", help="Online Retail only")
    ap.add_argument("--shop-users", type=int, default=5000)
    ap.add_argument("--shop-events", type=int, default=300_000)
    ap.add_argument("--label", default="", help="recorded with the result (e.g. before / after)")
    ap.add_argument("--replay", metavar="TIME_PREFIX",
                    help="only the finalist rule on Online Retail: the families chosen by the recorded runs at this time")
    args = ap.parse_args(argv)
    global LABEL, LOAD_BEFORE
    LABEL, LOAD_BEFORE = args.label, round(os.getloadavg()[0], 2)
    if args.replay:
        with tempfile.TemporaryDirectory(prefix="bench-selection-") as tmp:
            row = replay(Path(tmp), args.replay)
        sel = row["selection"]
        console.print(f"chosen: {row['chosen']} by {sel['decided_by']}: {sel['reason']}", soft_wrap=True)
        table = Table(title="finalists: validation and second fold (chose), Online Retail protocol test (not seen)")
        for col in ("family", "validation ndcg@20", "paired - leader", "second fold ndcg@20", "paired - leader (fold)",
                    "test recall@20", "test ndcg@20"):
            table.add_column(col)
        fmt = lambda d: f"{d['mean']:.4f} [{d['low']:.4f}, {d['high']:.4f}]" if d else "-"  # noqa: E731
        for family, f in sel["finalists"].items():
            t = row["on_protocol_test"][family]
            table.add_row(family, fmt(f.get("validation")), fmt(f.get("paired_validation")), fmt(f.get("second_fold")),
                          fmt(f.get("paired_second_fold")),
                          *(f"{t[k]:.4f} [{t['intervals'][k]['low']:.4f}, {t['intervals'][k]['high']:.4f}]"
                            for k in ("recall@20", "ndcg@20")))
        console.print(table)
        append_result("selection_replay", row)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-selection-") as tmp:
        if not args.skip_retail:
            if not CSV.is_file():
                console.print(f"Online Retail not found at {CSV}; skipping (a)")
            else:
                rows.append(online_retail(Path(tmp) / "retail", args.minutes, args.jobs))
                console.print(rows[-1], soft_wrap=True)  # kept even if the next store fails
        if not args.skip_shop:
            rows.append(front_loaded_shop(Path(tmp) / "synth", args.minutes, args.jobs, args.shop_users, args.shop_events))
    table = Table(title=f"what the default protocol chose (search budget {args.minutes:g} min per store, {args.jobs} job)")
    for col in ("store", "rule", "test part", "validation part", "chosen", "val ndcg@20", "test ndcg@20",
                "recall@20 [95%]", "ndcg@20 [95%]", "scored on"):
        table.add_column(col, overflow="fold")
    for r in rows:
        part = lambda d: f"{d['users']:,} users, {d['share']:.0%} of events" + (f", {d['days']:.0f} d" if d.get("days") else "")  # noqa: E731
        table.add_row(r["store"], r["rule"], part(r["test"]), part(r["validation"]), r["chosen"],
                      f"{r['validation_ndcg@20']:.4f}", f"{r['test_ndcg@20']:.4f}", _iv(r, "recall@20"),
                      _iv(r, "ndcg@20"), r["scored_on"])
        append_result("selection", r)
    console.print(table)
    for r in rows:
        console.print(f"{r['store']}: {r['reason']}", soft_wrap=True)
        console.print("  per family (trials, pruned, search s, peak RSS MiB): " + "; ".join(
            f"{f} {v['trials']}, {v['pruned']}, {v['search_s']}, {v.get('peak_rss_mib')}" for f, v in r["spent"].items()),
            soft_wrap=True)
        if r["selection"]:
            console.print(f"  chosen by {r['selection'].get('decided_by')}: {r['selection'].get('reason')}", soft_wrap=True)
            for family, f in (r["selection"].get("finalists") or {}).items():
                console.print(f"    {family}: " + ", ".join(
                    f"{part} {f[part]['mean']:.4f} [{f[part]['low']:.4f}, {f[part]['high']:.4f}]"
                    for part in ("validation", "paired_validation", "second_fold", "paired_second_fold") if part in f),
                    soft_wrap=True)
        if r["store"].startswith("online-retail"):
            ok = r["recall@20"] >= GOAL and r["ndcg@20"] >= GOAL
            console.print(f"goal Recall@20 and NDCG@20 >= {GOAL}: {'met' if ok else 'NOT met'} with a "
                          f"{args.minutes:g}-minute budget", soft_wrap=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
