"""Self-contained HTML report of a model comparison: tables and plotly charts (plotly.js inlined from the plotly package), no external assets."""

from __future__ import annotations

import html
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scalerec.data.export import give_user_mode
from scalerec.charts import CONFIG, PALETTE, bar_figure, plotly_js, to_json
from scalerec.errors import StorageError
from scalerec.evaluation.evaluate import LOWER_IS_BETTER, ComparisonResult, parse_metric_key

__all__ = ["render_html_report", "write_html_report"]

METRIC_HELP = {
    "precision": "share of the top k that is relevant",
    "recall": "share of the relevant items found in the top k",
    "ndcg": "rank-discounted hits, 1 = ideal order",
    "map": "mean average precision",
    "mrr": "1 / rank of the first hit",
    "hit_rate": "users with at least one hit",
    "coverage": "share of the catalogue recommended to anyone",
    "popularity_bias": "mean popularity percentile of recommended items (lower = more long tail)",
}

CSS = """
:root { --fg:#1d2433; --muted:#5b6477; --line:#e3e7ef; --bg:#f6f8fb; --card:#fff; --accent:#0072B2; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color:var(--fg);
       background:var(--bg); }
header { background:#17324d; color:#fff; padding:24px 40px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header p { margin:0; color:#c9d6e6; }
main { max-width:1180px; margin:0 auto; padding:24px 40px 40px; }
h2 { font-size:17px; margin:28px 0 12px; }
.facts { display:flex; flex-wrap:wrap; gap:10px; }
.fact { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:130px; }
.fact b { display:block; font-size:17px; }
.fact span { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; background:var(--card); border:1px solid var(--line);
        border-radius:8px; overflow:hidden; }
th, td { padding:7px 10px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th:first-child, td:first-child { text-align:left; }
th { background:#eef2f8; font-weight:600; font-size:12px; color:var(--muted); }
td.best { font-weight:700; color:#00734f; }
.swatch { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:6px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(350px, 1fr)); gap:14px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card h3 { margin:0; font-size:14px; }
.card p { margin:2px 0 8px; color:var(--muted); font-size:12px; }
code { font-size:12px; background:#eef2f8; padding:1px 4px; border-radius:3px; }
footer { color:var(--muted); font-size:12px; border-top:1px solid var(--line); margin-top:32px; padding-top:12px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float, seconds: bool = False) -> str:
    if seconds:
        return f"{value:.2f} s" if value >= 0.01 else f"{value * 1000:.1f} ms"
    return f"{value:.4f}"


class _Charts:
    """The report's plotly charts: a placeholder div each, drawn by one script at the end."""

    def __init__(self) -> None:
        self.figures: list[dict[str, Any]] = []

    def bar(self, labels: list[str], values: list[float], *, seconds: bool = False,
            intervals: list[dict[str, Any] | None] | None = None) -> str:
        """One horizontal bar per model, each interval as an error bar (times in seconds)."""
        self.figures.append(bar_figure(labels, values, intervals=intervals, unit=" s" if seconds else ""))
        return f"<div class='chart' id='chart-{len(self.figures) - 1}'></div>"

    def script(self) -> str:
        calls = "".join(
            f"Plotly.newPlot('chart-{i}', f[{i}].data, f[{i}].layout, {json.dumps(CONFIG)});" for i in range(len(self.figures))
        )
        figures = "[" + ",".join(to_json(f) for f in self.figures) + "]"
        return f"<script>{plotly_js()}</script><script>(function(){{var f={figures};{calls}}})();</script>"


def _protocol_section(protocol: dict[str, Any] | None) -> list[str]:
    """What was held out and why: the rule that fired, its reason, the parts' windows and sizes."""
    if not protocol:
        return []
    out = [
        "<h2>Protocol</h2>",
        f"<p><b>{_e(protocol.get('split', '?'))}</b> &rarr; <b>{_e(protocol.get('rule', '?'))}</b>"
        + (" (held-out users, folded in)" if protocol.get("fold_in") else "") + f": {_e(protocol.get('reason', ''))}</p>",
        "<table><thead><tr><th>part</th><th>window start (UTC)</th><th>window end (UTC)</th><th>events</th>"
        "<th>share</th><th>users</th><th>items to find</th></tr></thead><tbody>",
    ]
    for label in ("test", "validation"):
        part = protocol.get(label)
        if not part:
            continue
        start = str(part.get("start") or "-")[:16].replace("T", " ")
        end = str(part.get("end") or "-")[:16].replace("T", " ")
        out.append(
            f"<tr><td>{label}</td><td>{_e(start)}</td><td>{_e(end)}</td><td>{int(part.get('events', 0)):,}</td>"
            f"<td>{float(part.get('share', 0.0)):.1%}</td><td>{int(part.get('users', 0)):,}</td>"
            f"<td>{int(part.get('interactions', 0)):,}</td></tr>"
        )
    out.append("</tbody></table>")
    out.extend(f"<p style='color:#D55E00'><b>Warning.</b> {_e(w)}</p>" for w in protocol.get("warnings") or [])
    return out


def render_html_report(result: ComparisonResult, *, title: str = "scalerec evaluation report") -> str:
    """The report as one HTML string (CSS, plotly.js and the figures inline; nothing is fetched from the network)."""
    charts = _Charts()
    names = [r.name for r in result.results]
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    keys = result.metric_keys
    best = {key: result.best(key).name for key in keys} if len(names) > 1 else {}
    split = result.split
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    facts = [
        (split.get("name", "?"), "split"),
        (result.on, "evaluated on"),
        (f"{split.get('n_test_users', 0):,}", "evaluated users"),
        (f"{split.get('n_train_users', 0):,}", "training users"),
        (f"{split.get('n_items', 0):,}", "items"),
        (f"{split.get('train_interactions', 0):,}", "training interactions"),
    ]
    if split.get("test_start"):
        facts.append((f"{str(split['test_start'])[:16].replace('T', ' ')}", "test window starts (UTC)"))
    if split.get("strong_generalisation"):
        facts.append(("yes", "held-out users (fold-in)"))

    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1><p>{len(names)} model(s) on split <b>{_e(split.get('name', '?'))}</b>"
        f" · cut-offs k = {_e(', '.join(str(k) for k in result.ks))} · generated {_e(generated)}</p></header>",
        "<main>",
        "<h2>Split</h2><div class='facts'>",
        *(f"<div class='fact'><b>{_e(v)}</b><span>{_e(label)}</span></div>" for v, label in facts),
        "</div>",
        *_protocol_section(split.get("protocol")),
        "<h2>Results</h2><table><thead><tr><th>model</th>",
        *(f"<th>{_e(key)}</th>" for key in keys),
        "<th>fit</th><th>recommend</th></tr></thead><tbody>",
    ]
    for r, colour in zip(result.results, colours):
        row = [f"<tr><td><span class='swatch' style='background:{colour}'></span>{_e(r.name)}</td>"]
        for key in keys:
            css = " class='best'" if best.get(key) == r.name else ""
            iv = r.intervals.get(key)
            span = f"<br><small>[{iv['low']:.3f}, {iv['high']:.3f}]</small>" if iv else ""
            row.append(f"<td{css}>{_fmt(r.metrics[key])}{span}</td>")
        row.append(f"<td>{_fmt(r.fit_s, True)}</td><td>{_fmt(r.recommend_s, True)}</td></tr>")
        out.append("".join(row))
    out.append("</tbody></table>")
    if best:
        out.append("<p style='color:#5b6477;font-size:12px'>Bold green: best value of the column "
                   "(lowest for popularity_bias).</p>")
    if result.uncertainty:
        u = result.uncertainty
        out.append(f"<p style='color:#5b6477;font-size:12px'>Brackets and whiskers: {u['confidence']:.0%} "
                   f"intervals, {u['bootstrap_samples']} bootstrap resamples of the evaluated users (seed {u['seed']}).</p>")

    out.append("<h2>Metrics</h2><div class='grid'>")
    for key in keys:
        name, k = parse_metric_key(key)
        direction = "lower is better" if name in LOWER_IS_BETTER else "higher is better"
        chart = charts.bar(names, [r.metrics[key] for r in result.results],
                           intervals=[r.intervals.get(key) for r in result.results])
        out.append(
            f"<div class='card'><h3>{_e(key)}</h3><p>{_e(METRIC_HELP.get(name, ''))} · {direction}</p>{chart}</div>"
        )
    out.append("</div><h2>Time</h2><div class='grid'>")
    out.append(
        "<div class='card'><h3>fit time</h3><p>wall-clock seconds to fit on the training matrix</p>"
        f"{charts.bar(names, [r.fit_s for r in result.results], seconds=True)}</div>"
    )
    out.append(
        f"<div class='card'><h3>recommend time</h3><p>wall-clock seconds for the top {max(result.ks)} of "
        f"all {split.get('n_test_users', 0):,} evaluated users</p>"
        f"{charts.bar(names, [r.recommend_s for r in result.results], seconds=True)}</div>"
    )
    out.append("</div><h2>Models</h2><table><thead><tr><th>model</th><th>family</th>"
               "<th style='text-align:left'>parameters</th></tr></thead><tbody>")
    for r in result.results:
        params = ", ".join(f"{k}={v}" for k, v in r.params.items()) or "defaults"
        out.append(f"<tr><td>{_e(r.name)}</td><td>{_e(r.family)}</td>"
                   f"<td style='text-align:left;white-space:normal'><code>{_e(params)}</code></td></tr>")
    out.append("</tbody></table><footer>")
    if result.attribution:
        out.append(f"<p><b>Data attribution.</b> {_e(result.attribution)}</p>")
    out.append("<p>Generated by scalerec. Full-catalogue ranking with each user's known items excluded; "
               "ranking metrics are averaged over the evaluated users.</p></footer></main>")
    out.append(charts.script() + "</body></html>")
    return "\n".join(out)


def write_html_report(result: ComparisonResult, path: str | Path, *, title: str = "scalerec evaluation report") -> Path:
    """Write the report to ``path`` atomically (a temporary file renamed into place). Returns the path."""
    path = Path(path)
    text = render_html_report(result, title=title)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise StorageError(f"cannot write the report to {path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    give_user_mode(tmp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
