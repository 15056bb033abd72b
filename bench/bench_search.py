"""Search cost per family, an older checkout against this one on the same store in the same run.

Usage (from the repository root; the old checkout from ``git worktree add /tmp/old-search main``):

    .venv/bin/python bench/bench_search.py --old /tmp/old-search --dataset synth
    .venv/bin/python bench/bench_search.py --old /tmp/old-search --dataset online-retail --trials 6

For each checkout (old first, then this one, alternating over ``--rounds``) a child process runs the
real ``train()`` pipeline on one store (``--models``, ``--trials`` per family, ``--jobs``, seed 0,
no promotion) with that checkout's ``src`` first on ``PYTHONPATH``, pinned to ``--cores`` CPUs. The
child wraps ``tune_family`` (both checkouts search through it) to time each family's search and
sample its peak RSS. Prints per family and checkout: trials (pruned), search wall seconds, peak RSS
and the best validation score, then the winner; appends one JSON line to bench/results/search.jsonl.
Only APIs both checkouts have are used (``train``, ``TrainOptions``, ``FamilyResult``).

Online Retail data: Daqing Chen, UCI Machine Learning Repository (doi 10.24432/C5BW33), CC BY 4.0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CSV = ROOT.parent / "shared" / "datasets" / "online-retail" / "online_retail.csv.gz"


def _prepare(data_dir: Path, dataset: str) -> None:
    """Create the store once (both checkouts then read the same events)."""
    from scalerec.config import Settings
    from scalerec.data.store import DataStore

    settings = Settings(data={"dir": data_dir})
    with DataStore.open(settings) as store:
        if store.log.count():
            return
        if dataset == "synth":
            from scalerec.datasets.synth import generate_store

            generate_store(store, n_users=4000, n_items=1500, n_events=150_000, seed=1, days=120)
        else:
            from scalerec.data.importers import import_file

            import_file(store, "events", CSV, preset="online-retail")


def child(args: argparse.Namespace) -> None:
    """One search in this process (the checkout on PYTHONPATH); prints one JSON line."""
    import scalerec.training.pipeline as pipeline
    import scalerec.training.tuning as tuning
    from scalerec.config import Settings
    from scalerec.training import TrainOptions, train
    from scalerec.training.pipeline import measure_peak_rss

    data_dir = Path(args.data_dir)
    (data_dir / "tuning.db").unlink(missing_ok=True)  # every run searches from scratch
    per_family: dict[str, dict[str, float]] = {}
    original = tuning.tune_family

    def timed(family: str, **kw: Any) -> Any:
        t = time.perf_counter()
        with measure_peak_rss() as mem:
            res = original(family, **kw)
        row = per_family.setdefault(family, {"search_s": 0.0, "peak_rss_mib": 0.0})
        row["search_s"] += time.perf_counter() - t
        row["peak_rss_mib"] = max(row["peak_rss_mib"], mem["peak_rss_bytes"] / 2**20)
        return res

    tuning.tune_family = timed  # the new search looks it up here ...
    pipeline.tune_family = timed  # ... the old one through the pipeline's import
    settings = Settings(data={"dir": data_dir})
    split = "online-retail" if args.dataset == "online-retail" else None
    t = time.perf_counter()
    result = train(settings, TrainOptions(models=args.models.split(","), trials=args.trials, jobs=args.jobs,
                                          split=split, seed=0, promote=False))
    wall = time.perf_counter() - t
    families = {
        f.family: {
            "trials": f.trials_total,
            "pruned": getattr(f, "trials_pruned", 0),
            "best": f.best_value,
            "default": f.default_value,
            "dropped": getattr(f, "dropped", ""),
            **{k: round(v, 2) for k, v in per_family.get(f.family, {}).items()},
        }
        for f in result.families
    }
    print(json.dumps({"train_s": round(wall, 2), "winner": result.best_family, "winner_value": result.metrics.get(result.metric),
                      "families": families}))


def _run(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--data-dir", str(args.data_dir),
           "--dataset", args.dataset, "--models", args.models, "--trials", str(args.trials), "--jobs", str(args.jobs)]
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    cores = sorted(os.sched_getaffinity(0))[: args.cores]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if proc.returncode != 0:
        raise SystemExit(f"bench_search: the search in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--old", type=Path, help="the older checkout (e.g. git worktree add /tmp/old-search main)")
    ap.add_argument("--dataset", choices=("synth", "online-retail"), default="synth")
    ap.add_argument("--data-dir", type=Path, help="the store (default bench/work/search-<dataset>)")
    ap.add_argument("--models", default="popular,itemknn,ease,als")
    ap.add_argument("--trials", type=int, default=6, help="trials per family (the old search's fixed share)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    args.data_dir = args.data_dir or ROOT / "bench" / "work" / f"search-{args.dataset}"
    if args.child:
        child(args)
        return

    from rich.console import Console
    from rich.table import Table

    sys.path.insert(0, str(HERE))
    from _common import append_result, load_line, machine_info

    console = Console(width=max(120, shutil.get_terminal_size().columns))
    args.data_dir.mkdir(parents=True, exist_ok=True)
    _prepare(args.data_dir, args.dataset)
    machine = machine_info()
    trees = ([("old", args.old.resolve())] if args.old else []) + [("new", ROOT)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for _ in range(args.rounds):
        for name, tree in trees:
            runs[name].append(_run(tree, args))
    table = Table(title=f"search per family: {args.dataset}, {args.trials} trials per family, jobs {args.jobs}, "
                        f"{args.cores} cores", title_justify="left")
    for col in ("tree", "family", "trials (pruned)", "search s", "peak RSS MiB", "best", "dropped"):
        table.add_column(col, overflow="fold")
    for name, _ in trees:
        last = runs[name][-1]
        for fam, row in last["families"].items():
            table.add_row(name, fam, f"{row['trials']} ({row['pruned']})", f"{row.get('search_s', 0):.1f}",
                          f"{row.get('peak_rss_mib', 0):.0f}", f"{row['best']:.4f}" if row["best"] is not None else "-",
                          row["dropped"] or "")
        total = sum(r.get("search_s", 0) for r in last["families"].values())
        table.add_row(name, "[b]all[/b]", "", f"{total:.1f}", "", f"winner {last['winner']} {last['winner_value']:.4f}", "")
    console.print(table)
    console.print(load_line(machine))
    if not args.no_save:
        path = append_result("search", {"dataset": args.dataset, "models": args.models, "trials": args.trials,
                                        "jobs": args.jobs, "cores": args.cores, "old": str(args.old) if args.old else None,
                                        "runs": runs}, machine=machine)
        console.print(f"appended to {path}")


if __name__ == "__main__":
    main()
