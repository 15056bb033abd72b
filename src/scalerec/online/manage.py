"""What the CLI and the admin API do with experiments and KPIs, in one place (both call these)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from scalerec.errors import ConflictError, StorageError
from scalerec.online import experiments as ex
from scalerec.online.kpis import KpiWindow, kpis
from scalerec.online.report import experiment_report

__all__ = ["create_experiment", "kpi_rows", "offline_vs_online", "promote_winner"]


def create_experiment(catalog: Any, registry: Any, name: str, variants: list[str | ex.Variant], *,
                      placement: str | None = None, start: Any = None, end: Any = None, seed: int = 0,
                      method: str = "split") -> ex.Experiment:
    """Validate (``NAME=VERSION:WEIGHT`` strings or Variants) and store a new running experiment."""
    parsed = [v if isinstance(v, ex.Variant) else ex.parse_variant(v) for v in variants]
    versions = {v.version for v in registry.list(check=False)}
    exp = ex.validate(name, parsed, placement=placement, start=start, end=end, seed=seed, versions=versions, method=method)
    return ex.create(catalog, exp)


def kpi_rows(settings: Any, store: Any, *, by: list[str], since: Any = None, until: Any = None,
             window_hours: float | None = None) -> dict[str, Any]:
    w = KpiWindow.from_settings(settings, since=since, until=until, window_hours=window_hours)
    return {"by": by, "since_us": w.since_us, "until_us": w.until_us,
            "attribution_window_hours": w.window_us / 3.6e9, "rows": kpis(store, w, by=by)}


def promote_winner(settings: Any, store: Any, registry: Any, name: str, *, force: bool = False) -> dict[str, Any]:
    """Promote the experiment's winning variant's version to production and stop the experiment.

    Refuses (ConflictError) when the report has no winner (too little evidence, no significant
    lift, a sample-ratio mismatch) unless ``force``; a winner serving "production" only stops it.
    """
    exp = ex.get(store.catalog, name)
    report = experiment_report(settings, store, exp)
    winner = report["winner"]
    if winner is None:
        if not force:
            raise ConflictError(f"experiment {name!r} has no winner yet: {report['verdict']}; "
                                "wait for more evidence or pass --force with --variant")
        raise ConflictError("--force needs the variant to promote; pass --variant NAME")
    return _promote(store, registry, exp, winner, report)


def promote_variant(settings: Any, store: Any, registry: Any, name: str, variant: str) -> dict[str, Any]:
    """Promote a chosen variant whatever the report says (the operator's call, recorded as forced)."""
    exp = ex.get(store.catalog, name)
    exp.variant(variant)
    return _promote(store, registry, exp, variant, experiment_report(settings, store, exp), forced=True)


def _promote(store: Any, registry: Any, exp: ex.Experiment, winner: str, report: dict[str, Any],
             forced: bool = False) -> dict[str, Any]:
    version = exp.variant(winner).version
    promoted = None
    if version != ex.PRODUCTION:
        note = f"experiment {exp.name}: {report['verdict']}"[:500]
        promoted = registry.promote(version, force=True, note=note).version
    stopped = ex.stop(store.catalog, exp.name)
    ex.save(store.catalog, replace(stopped, winner=winner))
    return {"experiment": exp.name, "winner": winner, "promoted": promoted, "forced": forced,
            "verdict": report["verdict"]}


def offline_vs_online(settings: Any, store: Any, registry: Any, *, since: Any = None, until: Any = None) -> list[dict[str, Any]]:
    """Per registered version: its offline test figures (manifest) beside its online KPIs."""
    w = KpiWindow.from_settings(settings, since=since, until=until)
    online = {r["model_version"]: r for r in kpis(store, w, by=["version"])}
    out = []
    for mv in registry.list(check=False):
        try:
            test = mv.typed_manifest().test_metrics
        except StorageError:  # an unreadable manifest: no offline figures, the online ones still shown
            test = {}
        row = {"version": mv.version, "stage": mv.stage, "family": mv.family, "offline_test": test,
               "online": {k: online[mv.version][k] for k in ("impressions", "ctr", "cart_rate", "conversion", "revenue_per_1000")}
               if mv.version in online else None}
        out.append(row)
    return out
