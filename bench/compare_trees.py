"""Run one benchmark script against two checkouts in the same run, alternating, and print the ratios.

Usage (the old checkout from ``git worktree add /tmp/old <commit>``):

    .venv/bin/python bench/compare_trees.py --old /tmp/old --rounds 2 \
        --script bench_import.py --results import.jsonl \
        --key 'results/0/import_rows_per_s' --key 'results/input=ev.csv/import_cpu_s' -- --no-save

Each round runs the script of each tree (its own ``bench/`` copy, so either side may use module paths
the other lacks) with that tree's ``src`` first on ``PYTHONPATH``, old and new alternating so load
drifts hit both. A script appends its result to ``<tree>/bench/results/<results>``; the last line
after each run is read back and the ``--key`` paths (``/`` between parts; integers index lists; ``label=value``
selects the list element whose ``label`` equals ``value``) are compared. Prints a table (best and
median per side, new/old ratio of the medians) and appends one JSON line to
``bench/results/compare.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from _common import append_result, load_line, machine_info

HERE = Path(__file__).resolve().parent
NEW_ROOT = HERE.parent


def _pick(record: Any, path: str) -> float | None:
    node = record
    for part in path.split("/"):
        if isinstance(node, list):
            if "=" in part:
                field, value = part.split("=", 1)
                node = next((x for x in node if str(x.get(field)) == value), None)
            else:
                node = node[int(part)] if int(part) < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
        if node is None:
            return None
    return float(node) if isinstance(node, (int, float)) else None


def _last_line(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None


def _run(root: Path, script: str, args: list[str], results: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    before = _last_line(root / "bench" / "results" / results)
    proc = subprocess.run([sys.executable, str(root / "bench" / script), *args], cwd=root, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"compare_trees: {script} failed in {root} (exit {proc.returncode})")
    after = _last_line(root / "bench" / "results" / results)
    if after is None or after == before:
        raise SystemExit(f"compare_trees: {script} in {root} appended nothing to bench/results/{results}")
    return after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--old", type=Path, required=True, help="the older checkout (a git worktree)")
    ap.add_argument("--script", required=True, help="a script under bench/, e.g. bench_import.py")
    ap.add_argument("--results", required=True, help="its results file name under bench/results/")
    ap.add_argument("--key", action="append", required=True, help="path of a figure in its JSON line, parts split by /")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--note", default="")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="arguments after -- go to the script")
    opts = ap.parse_args()
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    load0 = load_line()
    values: dict[str, dict[str, list[float]]] = {side: {k: [] for k in opts.key} for side in ("old", "new")}
    for _ in range(opts.rounds):
        for side, root in (("old", opts.old.resolve()), ("new", NEW_ROOT)):
            record = _run(root, opts.script, args, opts.results)
            for key in opts.key:
                v = _pick(record, key)
                if v is not None:
                    values[side][key].append(v)
    table = Table(title=f"{opts.script}: old {opts.old} vs new, {opts.rounds} rounds alternating ({load0})")
    for col in ("figure", "old median", "new median", "new/old"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    rows = []
    for key in opts.key:
        old, new = values["old"][key], values["new"][key]
        mo = statistics.median(old) if old else None
        mn = statistics.median(new) if new else None
        ratio = (mn / mo) if mo and mn is not None else None
        rows.append({"key": key, "old": old, "new": new, "ratio_of_medians": ratio})
        table.add_row(key, f"{mo:.4g}" if mo is not None else "-", f"{mn:.4g}" if mn is not None else "-",
                      f"{ratio:.3f}" if ratio is not None else "-")
    Console().print(table)
    append_result("compare", {"script": opts.script, "args": args, "old": str(opts.old), "rounds": opts.rounds,
                              "note": opts.note, "load_before": load0, "load_after": load_line(), "figures": rows},
                  machine=machine_info())


if __name__ == "__main__":
    main()
