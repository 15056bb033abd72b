"""`scalerec kpis` and `scalerec experiments ...`: online KPIs, experiments and their reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from scalerec.cli._app import app, console, get_settings, get_store

experiments_app = typer.Typer(help="Online experiments: split users between model versions and compare them.",
                              no_args_is_help=True)
app.add_typer(experiments_app, name="experiments")


def _registry(ctx: typer.Context) -> Any:
    from scalerec.registry import Registry

    return Registry(get_settings(ctx))


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, default=str))


@app.command("kpis")
def kpis_cmd(
    ctx: typer.Context,
    by: list[str] = typer.Option(["version"], "--by", help="group by version | strategy | placement | variant | "
                                 "experiment | kind | day (repeatable)"),
    since: Optional[str] = typer.Option(None, "--since", help="from this time: ISO date/time or a span back (7d, 24h)"),
    until: Optional[str] = typer.Option(None, "--until", help="up to this time (ISO); default now"),
    window: Optional[float] = typer.Option(None, "--window-hours", help="attribution window ([online] attribution_window_hours)"),
    positions: bool = typer.Option(False, "--positions", help="also the position curve (CTR and conversion per position)"),
    offline: bool = typer.Option(False, "--offline", help="per version: offline test figures beside the online KPIs"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Impressions, click-through, add-to-cart rate, conversion and revenue per 1,000 impressions of served lists."""
    from scalerec.online.kpis import KpiWindow, position_curve
    from scalerec.online.manage import kpi_rows, offline_vs_online

    settings = get_settings(ctx)
    store = get_store(ctx, read_only=True)
    out = kpi_rows(settings, store, by=by, since=since, until=until, window_hours=window)
    if positions:
        out["positions"] = position_curve(store, KpiWindow.from_settings(settings, since=since, until=until,
                                                                         window_hours=window))
    if offline:
        out["versions"] = offline_vs_online(settings, store, _registry(ctx), since=since, until=until)
    if as_json:
        _print_json(out)
        return
    dims = [c for c in (out["rows"][0] if out["rows"] else {}) if c not in _KPI_COLS]
    t = Table(title=f"KPIs ({out['attribution_window_hours']:g} h attribution window)")
    for c in [*dims, *_KPI_COLS]:
        t.add_column(c, justify="left" if c in dims else "right")
    for r in out["rows"]:
        t.add_row(*[str(r[c]) for c in dims], *[_fmt(r[c]) for c in _KPI_COLS])
    console.print(t if out["rows"] else "no impressions in this window")
    if positions and out["positions"]:
        p = Table(title="position curve")
        for c in ("position", "impressions", "clicks", "ctr", "purchases", "conversion"):
            p.add_column(c, justify="right")
        for r in out["positions"]:
            p.add_row(*[_fmt(r[c]) for c in ("position", "impressions", "clicks", "ctr", "purchases", "conversion")])
        console.print(p)
    if offline:
        o = Table(title="offline (test) vs online")
        for c in ("version", "stage", "family", "offline test", "impressions", "ctr", "conversion", "revenue/1000"):
            o.add_column(c)
        for r in out["versions"]:
            on = r["online"] or {}
            o.add_row(r["version"], r["stage"], str(r["family"]),
                      ", ".join(f"{k}={v:.4f}" for k, v in list(r["offline_test"].items())[:3]),
                      *[_fmt(on.get(k, "")) for k in ("impressions", "ctr", "conversion", "revenue_per_1000")])
        console.print(o)


_KPI_COLS = ["impressions", "clicks", "carts", "purchases", "revenue", "ctr", "cart_rate", "conversion", "revenue_per_1000"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@experiments_app.command("create")
def create_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="a name for the experiment"),
    variant: list[str] = typer.Option(..., "--variant", help="NAME=VERSION:WEIGHT (VERSION may be 'production'); "
                                      "the first is the control; repeat for each variant"),
    placement: Optional[str] = typer.Option(None, "--placement", help="only lists asked for with this placement take part"),
    start: Optional[str] = typer.Option(None, "--start", help="ISO time it starts (default now)"),
    end: Optional[str] = typer.Option(None, "--end", help="ISO time it ends (default: until stopped)"),
    seed: int = typer.Option(0, "--seed", help="seed of the assignment hash"),
    method: str = typer.Option("split", "--method", help="split (each user sees one variant) | interleave "
                               "(team-draft of two variants in every list)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Start an experiment: serving assigns each user (or session) to a variant by a seeded hash."""
    from scalerec.online.manage import create_experiment

    store = get_store(ctx)
    exp = create_experiment(store.catalog, _registry(ctx), name, variant, placement=placement, start=start, end=end,
                            seed=seed, method=method)
    if as_json:
        _print_json(exp.to_dict())
    else:
        console.print(f"experiment {exp.name} running: " + ", ".join(f"{v.name}={v.version}:{v.weight:g}" for v in exp.variants)
                      + (f" on placement {exp.placement}" if exp.placement else "") + "; servers pick it up within seconds")


@experiments_app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Every experiment, running or stopped."""
    from scalerec.online.experiments import list_experiments

    rows = [e.to_dict() for e in list_experiments(get_store(ctx, read_only=True).catalog)]
    if as_json:
        _print_json(rows)
        return
    t = Table(title="experiments")
    for c in ("name", "status", "placement", "variants", "start", "end", "winner"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], r["status"], str(r["placement"] or "every"),
                  ", ".join(f"{v['name']}={v['version']}:{v['weight']:g}" for v in r["variants"]),
                  str(r["start"] or ""), str(r["end"] or ""), str(r["winner"] or ""))
    console.print(t if rows else "no experiments; start one with `scalerec experiments create`")


@experiments_app.command("show")
def show_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    html_out: Optional[Path] = typer.Option(None, "--html", help="also write the report as an HTML page here"),
    pre_days: float = typer.Option(28.0, "--pre-days", help="days before the start used by CUPED"),
) -> None:
    """The experiment's report: KPIs per variant with intervals, lift, SRM check, CUPED, verdict."""
    from scalerec.online.experiments import get
    from scalerec.online.report import experiment_report, report_html, report_text

    settings = get_settings(ctx)
    store = get_store(ctx, read_only=True)
    report = experiment_report(settings, store, get(store.catalog, name), pre_days=pre_days)
    if html_out is not None:
        html_out.write_text(report_html(report), encoding="utf-8")
    if as_json:
        _print_json(report)
    else:
        console.print(report_text(report), markup=False, highlight=False)


@experiments_app.command("stop")
def stop_cmd(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Stop an experiment: every unit gets production again at the servers' next poll."""
    from scalerec.online.experiments import stop

    exp = stop(get_store(ctx).catalog, name)
    console.print(f"experiment {exp.name} stopped at {exp.stopped_at}")


@experiments_app.command("promote-winner")
def promote_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    variant: Optional[str] = typer.Option(None, "--variant", help="with --force: promote this variant whatever the report says"),
    force: bool = typer.Option(False, "--force", help="promote --variant without a significant winner"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Promote the winning variant's version to production and stop the experiment (refused without a winner)."""
    from scalerec.online.manage import promote_variant, promote_winner

    settings = get_settings(ctx)
    store = get_store(ctx)
    if force and variant:
        out = promote_variant(settings, store, _registry(ctx), name, variant)
    else:
        out = promote_winner(settings, store, _registry(ctx), name, force=force)
    if as_json:
        _print_json(out)
    else:
        console.print(f"{out['winner']} won ({out['verdict']}); "
                      + (f"{out['promoted']} is now production" if out["promoted"] else "production kept")
                      + f"; experiment {out['experiment']} stopped")
