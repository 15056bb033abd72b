"""`scalerec monitor drift|rules|grafana|figures` and `scalerec capacity`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from scalerec.cli._app import app, console, get_settings, get_store

monitor_app = typer.Typer(help="Drift, alert rules, Grafana dashboard and the server's figures.", no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")


def _json(data: Any) -> None:
    console.print_json(json.dumps(_finite(data), default=str))


def _finite(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _write_or_print(text: str, out: Optional[Path]) -> None:
    if out is None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
        return
    from scalerec.errors import StorageError

    if not out.parent.is_dir():
        raise StorageError(f"cannot write {out}: directory {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    console.print(f"wrote {out}", markup=False, highlight=False)


@monitor_app.command("drift")
def drift_cmd(
    ctx: typer.Context,
    day: Optional[str] = typer.Option(None, "--day", help="UTC day to judge (YYYY-MM-DD); default the last complete day."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Judge one day of events against the baseline window ([monitoring] baseline_days); exit 1 when drifted."""
    import datetime as dt

    from scalerec.errors import ValidationError
    from scalerec.monitoring.drift import drift_report
    from scalerec.monitoring.paths import drift_report as report_path

    settings = get_settings(ctx)
    if day is not None:
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            raise ValidationError(f"--day must be a date like 2026-11-30, got {day!r}") from None
    report = drift_report(get_store(ctx, read_only=True), settings, day=day)
    path = report_path(settings)
    if path.parent.parent.is_dir():
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(_finite(report), default=str))  # the server's alert rules read it
    if as_json:
        _json(report)
    else:
        if not report["judged"]:
            console.print(f"{report.get('day') or '-'}: not judged: {report.get('reason')}", markup=False, highlight=False)
        else:
            t = Table(title=f"Drift on {report['day']} vs {len(report['baseline_days'])} baseline days")
            for col in ("check", "statistic", "threshold", "drifted", "detail"):
                t.add_column(col, justify="right" if col in ("statistic", "threshold") else "left")
            for c in report["checks"]:
                t.add_row(c["check"], f"{c['statistic']:.4f}", f"{c['threshold']:.4f}", "DRIFT" if c["drifted"] else "ok", c["detail"])
            console.print(t)
    if report.get("drifted"):
        raise typer.Exit(1)


@monitor_app.command("rules")
def rules_cmd(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, "--out", help="Write the YAML to this file instead of printing it."),
) -> None:
    """The effective [[alerts]] rules (defaults included) as Prometheus alerting rules (YAML)."""
    import yaml

    from scalerec.monitoring.alerts import prometheus_rules

    _write_or_print(yaml.safe_dump(prometheus_rules(get_settings(ctx)), sort_keys=False, width=200), out)


@monitor_app.command("grafana")
def grafana_cmd(
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON to this file instead of printing it."),
) -> None:
    """A Grafana dashboard over /metrics (import it in Grafana; pick your Prometheus data source)."""
    from scalerec.monitoring.grafana import grafana_dashboard

    _write_or_print(json.dumps(grafana_dashboard(), indent=2), out)


@monitor_app.command("figures")
def figures_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The latest figures the server recorded and the alerts pending or firing."""
    from scalerec.monitoring.paths import monitoring_dir

    path = monitoring_dir(get_settings(ctx)) / "figures.json"
    if not path.is_file():
        from scalerec.errors import NotFoundError

        raise NotFoundError(f"no figures yet in {path}: `scalerec serve` records them every [monitoring] sample_interval_seconds")
    data = json.loads(path.read_text())
    if as_json:
        _json(data)
        return
    t = Table(title="Figures")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k, v in sorted((data.get("figures") or {}).items()):
        t.add_row(k, "-" if v is None else f"{v:.4g}")
    console.print(t)
    for a in data.get("alerts") or []:
        console.print(f"{a['state']}: {a['summary']}", markup=False, highlight=False)


@app.command("capacity")
def capacity_cmd(
    ctx: typer.Context,
    traffic: str = typer.Option("1x", "--traffic", help="Request rate factor, e.g. 5x for a holiday peak."),
    users: str = typer.Option("1x", "--users", help="User count factor (a new market: 2x)."),
    events: str = typer.Option("1x", "--events", help="Event count factor."),
    items: str = typer.Option("1x", "--items", help="Catalogue size factor."),
    peak_rps: Optional[float] = typer.Option(None, "--peak-rps", help="Today's peak requests/s (default: the server's recorded peak)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Refit the served family on 1/4, 1/2 and all users and "
                                   "project training time from the fitted power law (costs about two refits)."),
    as_json: bool = typer.Option(False, "--json", help="Print the measurements and the projection as JSON."),
) -> None:
    """Measure this store's costs and project the resources a peak or a new market needs."""
    from scalerec.monitoring.capacity import measure, project
    from scalerec.monitoring.history import History, series

    settings = get_settings(ctx)
    measured = measure(settings, store=get_store(ctx, read_only=True), calibrate=calibrate)
    basis = peak_rps
    mix = None
    if basis is None:
        samples = History(settings).read()
        s = series(samples, ["requests_per_second", "fallback_share", "fold_in_share"])
        rps = [v for v in s["requests_per_second"] if v]
        basis = max(rps) if rps else None
        if samples:
            lists = samples[-1].counters.get("lists") or {}
            mix = {k: v for k, v in lists.items() if v} or None
    period_h = (settings.training.schedule_interval_minutes or 24 * 60) / 60
    proj = project(measured, traffic=traffic, users=users, events=events, items=items, peak_rps=basis,
                   retrain_period_hours=period_h, strategy_mix=mix)
    if as_json:
        _json({"measured": measured, "projection": proj})
        return
    gib = lambda b: f"{b / 2**30:.3f} GiB" if b is not None else "-"  # noqa: E731
    m = measured
    t = Table(title="Measured on this store", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    d = m["data"]
    t.add_row("events / users / items", f"{d['events']:,.0f} / {d['users']:,.0f} / {d['items']:,.0f}")
    t.add_row("event log on disk", f"{gib(d['log_bytes'])} ({d['bytes_per_event']:.1f} B per event)")
    if m.get("model"):
        mm = m["model"]
        t.add_row("served model", f"{mm['version']} ({mm['family']}): {gib(mm['total_bytes'])}")
        for part, b in mm["bytes"].items():
            if b:
                t.add_row(f"  scales with {part}", gib(b))
    for strat, us in (m.get("requests_cpu_us") or {}).items():
        t.add_row(f"CPU per request: {strat}", f"{us:,.0f} µs")
    for fam, tr in (m.get("training") or {}).items():
        t.add_row(f"training {fam}", f"{tr['seconds_per_million_events']:,.1f} s per million events")
    if m.get("training_calibration"):
        c = m["training_calibration"]
        pts = ", ".join(f"{q['cells']:,} cells {q['cpu_seconds']:.2f} s" for q in c["points"])
        t.add_row(f"training {c['family']} fitted", f"CPU s = {c['coefficient']:.3g} x cells^{c['exponent']:.2f} ({pts})")
    rk = m.get("ranking")
    if rk:
        what = f"{rk['status']}: bundle {gib(rk['total_bytes'])}" + (
            f", rerank {rk['rerank_cpu_us']:,.0f} µs per personal list" if rk.get("rerank_cpu_us") is not None else "")
        t.add_row("ranking stage", what)
    from scalerec.monitoring.capacity import training_peak_rss

    peak = training_peak_rss(m.get("model"), rk)
    if peak:
        t.add_row("training peak memory", gib(peak) + (" (the ranking stage's)" if (rk or {}).get("training", {}).get("peak_rss_bytes") == peak else " (the refit's)"))
    console.print(t)
    p = proj
    f = p["factors"]
    t = Table(title=f"Projection: traffic {f['traffic']:g}x, users {f['users']:g}x, events {f['events']:g}x, items {f['items']:g}x", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("peak requests/s", f"{p['peak_rps']:,.1f} ({p['peak_rps_basis']})")
    t.add_row("worker processes (or Ray Serve replicas)", str(p["workers"]))
    t.add_row("memory", gib(p["memory_bytes"]))
    t.add_row("  of which the model", gib(p["model_bytes"]))
    t.add_row("disk", gib(p["disk_bytes"]))
    if p["training_seconds"] is not None:
        fam = (m.get("model") or {}).get("family")
        t.add_row("training (refit)", f"{p['training_seconds']:,.0f} s ({(p['training'].get(fam) or {}).get('basis', '')})")
    fam_tr = p["training"].get((m.get("model") or {}).get("family") or "") or {}
    if fam_tr.get("peak_rss_bytes"):
        t.add_row("training peak memory", gib(fam_tr["peak_rss_bytes"]) + f" ({fam_tr.get('memory_basis') or 'one size'})")
    if p["ranking"]["status"] == "active":
        t.add_row("  of the model, the ranking bundle", gib(p["ranking"]["bytes"]))
    t.add_row("memory budget", gib(p["memory_budget_bytes"]) + (f" ({p['memory_budget_basis']})" if p.get("memory_budget_basis") else ""))
    t.add_row("one machine enough", "yes" if p["one_machine_enough"] else "no: " + "; ".join(p["why_cluster"]) + " -> use the Ray cluster")
    console.print(t)
    for n in p["notes"]:
        console.print(f"Note: {n}", markup=False, highlight=False, soft_wrap=True)
    console.print("Assumptions:", markup=False)
    for a in p["assumptions"]:
        console.print(f"  - {a}", markup=False, highlight=False, soft_wrap=True)
