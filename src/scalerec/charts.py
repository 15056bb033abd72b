"""Charts: plotly.js as shipped inside the ``plotly`` package (no CDN, works offline) and the
figure specifications (plain dicts plotly.js draws) shared by the evaluation report and the dashboard."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

#: Colour-blind-safe palette (Okabe-Ito), one colour per series in the order given.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
CONFIG = {"displaylogo": False, "responsive": True}


def plotly_js_path() -> Path:
    """plotly.min.js inside the installed ``plotly`` package."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    return plotly_js_path().read_text(encoding="utf-8")


def _layout(title: str | None = None, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "margin": {"l": 120, "r": 20, "t": 30 if title else 10, "b": 40}, "height": 60 + 34 * 4,
        "font": {"family": "Segoe UI, Roboto, Helvetica, Arial, sans-serif", "size": 12},
        "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)", "showlegend": False,
    }
    if title:
        base["title"] = {"text": title, "font": {"size": 13}}
    base.update(extra)
    return base


def bar_figure(labels: list[str], values: list[float], *, intervals: list[dict[str, Any] | None] | None = None,
               unit: str = "", title: str | None = None) -> dict[str, Any]:
    """Horizontal bars, one per label, with each interval (low/high) as an error bar."""
    trace: dict[str, Any] = {
        "type": "bar", "orientation": "h", "y": labels, "x": values,
        "marker": {"color": [PALETTE[i % len(PALETTE)] for i in range(len(labels))]},
        "text": [f"{v:.4g}{unit}" for v in values], "textposition": "outside", "cliponaxis": False,
        "hovertemplate": "%{y}: %{x:.4g}" + unit + "<extra></extra>",
    }
    if intervals and any(iv for iv in intervals):
        plus = [(iv["high"] - v) if iv else 0.0 for iv, v in zip(intervals, values)]
        minus = [(v - iv["low"]) if iv else 0.0 for iv, v in zip(intervals, values)]
        trace["error_x"] = {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "color": "#1d2433"}
    layout = _layout(title, height=60 + 34 * max(1, len(labels)), yaxis={"autorange": "reversed"})
    return {"data": [trace], "layout": layout}


def line_figure(t: list[Any], series: dict[str, list[Any]], *, title: str | None = None, unit: str = "",
                y_title: str | None = None) -> dict[str, Any]:
    """Time series, one line per name."""
    data = [
        {"type": "scatter", "mode": "lines", "name": name, "x": t, "y": ys, "line": {"color": PALETTE[i % len(PALETTE)], "width": 1.6},
         "hovertemplate": name + ": %{y:.4g}" + unit + "<extra></extra>"}
        for i, (name, ys) in enumerate(series.items())
    ]
    layout = _layout(title, height=260, showlegend=len(series) > 1, margin={"l": 60, "r": 20, "t": 30 if title else 10, "b": 40},
                     legend={"orientation": "h", "y": -0.25}, yaxis={"title": {"text": y_title or ""}, "rangemode": "tozero"})
    return {"data": data, "layout": layout}


def stacked_bars(x: list[Any], series: dict[str, list[float]], *, title: str | None = None) -> dict[str, Any]:
    data = [{"type": "bar", "name": n, "x": x, "y": ys, "marker": {"color": PALETTE[i % len(PALETTE)]}}
            for i, (n, ys) in enumerate(series.items())]
    layout = _layout(title, height=260, barmode="stack", showlegend=True, margin={"l": 60, "r": 20, "t": 30 if title else 10, "b": 40},
                     legend={"orientation": "h", "y": -0.25})
    return {"data": data, "layout": layout}


def to_json(figure: dict[str, Any]) -> str:
    """A figure as JSON safe inside an HTML <script>: <, > and & escaped, so no text can close it."""
    return json.dumps(figure, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
