"""`scalerec train`, `scalerec tune report` and `scalerec models list|show|promote|rollback|delete`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from scalerec.cli._app import app, console, get_settings, get_store
from scalerec.cli._cluster import cluster_option, with_cluster
from scalerec.cli._registry_help import RegistryHelpCommand
from scalerec.cli._split_cli import parse_ratios, print_protocol
from scalerec.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.registry import ModelVersion
    from scalerec.training.pipeline import TrainResult

tune_app = typer.Typer(help="Inspect hyperparameter searches (tuning.db).", no_args_is_help=True)
models_app = typer.Typer(help="Registered model versions: list, inspect, promote, roll back, delete.", no_args_is_help=True)
app.add_typer(tune_app, name="tune")
app.add_typer(models_app, name="models")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(value: Any, interval: dict[str, Any] | None) -> str:
    """``0.1234 [0.1100, 0.1370]``: a figure and its bootstrap interval (the figure alone when it has none)."""
    if not interval:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(interval.get('low'))}, {_fmt(interval.get('high'))}]"


def _bytes(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _params(params: dict[str, Any] | None) -> str:
    if not params:
        return "-"
    return ", ".join(f"{k}={_fmt(v, 4) if isinstance(v, float) else v}" for k, v in params.items())


# ---------------------------------------------------------------------------------- train
class _ProgressView:
    """Renders pipeline ProgressEvents as rich progress bars, one per stage (and per family)."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def __call__(self, ev: Any) -> None:
        key = f"{ev.stage}:{ev.family}" if ev.stage == "search" else ev.stage
        label = f"search {ev.family}" if ev.stage == "search" else ev.stage
        detail = ev.detail if ev.stage != "search" else (f"best {ev.best:.4f}" if ev.best is not None else "")
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(label, total=ev.total, detail=detail)
        self.progress.update(self.tasks[key], completed=ev.done, total=ev.total, detail=detail)


def _selection_line(sel: dict[str, Any]) -> str:
    """Why the family won (training.select's record), with the tied finalists' figures and intervals."""
    from rich.markup import escape

    parts = [f"{sel.get('chosen')} by {sel.get('decided_by')}: {sel.get('reason')}"]
    for family, f in (sel.get("finalists") or {}).items():
        figures = [f"validation {_interval(f['validation']['mean'], f['validation'])}"]
        if "second_fold" in f:
            figures.append(f"second fold {_interval(f['second_fold']['mean'], f['second_fold'])}")
        parts.append(f"{family}: " + ", ".join(figures))
    return escape("; ".join(parts))


def _summary(result: "TrainResult") -> None:
    from rich import box

    table = Table(title=f"search: best {result.metric} per family (* = chosen)", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("family", no_wrap=True)
    table.add_column("trials", justify="right", no_wrap=True)
    table.add_column("default", justify="right", no_wrap=True)
    table.add_column("best [interval]", justify="right", no_wrap=True)
    table.add_column("wall s", justify="right", no_wrap=True)
    table.add_column("best configuration", overflow="fold")
    for f in result.families:
        trials = f"{f.trials_total} (+{f.trials_new})" + (f", {f.trials_failed} failed" if f.trials_failed else "")
        note = f.error or (f.stopped if f.stopped and f.stopped != "trial budget reached" else "")
        table.add_row(
            f.family + (" *" if f.family == result.best_family else ""),
            trials,
            _fmt(f.default_value),
            _interval(f.best_value, f.best_intervals.get(result.metric)),
            f"{f.wall_s:.1f}",
            _params(f.best_params) + (f" [dim]({note})[/dim]" if note else ""),
        )
    console.print(table)
    v = result.version
    p = result.promotion
    info = Table(show_header=False, box=None)
    info.add_column(style="bold")
    info.add_column()
    assert v is not None
    info.add_row("version", f"{v.version} ({v.stage})")
    info.add_row("model", f"{result.best_family} {_params(result.best_params)}")
    if result.selection:
        info.add_row("chosen", _selection_line(result.selection))
    iv = result.intervals
    level = f", {iv['confidence']:.0%} interval over users" if iv else ""
    info.add_row(f"{result.metric} test", _interval(result.metrics.get(result.metric), (iv.get("test") or {}).get(result.metric))
                 + f" (chosen configuration, scored once{level})")
    info.add_row(f"{result.metric} validation",
                 _interval(result.validation_metrics.get(result.metric), (iv.get("validation") or {}).get(result.metric))
                 + " (where it was chosen)")
    at = result.metric.partition("@")[2]
    for key in (f"coverage@{at}", f"popularity_bias@{at}"):  # how wide and how popular the chosen lists are
        if key in result.metrics:
            info.add_row(f"{key} test", _interval(result.metrics[key], (iv.get("test") or {}).get(key)))
    info.add_row("data", f"{result.snapshot.get('event_count', 0):,} events, "
                 f"{result.snapshot.get('min_timestamp', '?')[:19]} .. {result.snapshot.get('max_timestamp', '?')[:19]}")
    info.add_row("refit", f"{result.fit_s:.1f} s, peak memory {_bytes(result.peak_rss_bytes)}")
    verdict = "promoted to production" if p.get("promoted") else "kept as candidate"
    info.add_row("gate", f"{verdict}: {p.get('reason')}" + (" [forced]" if p.get("forced") else ""))
    if result.ranking:
        from rich.markup import escape

        info.add_row("ranking", escape(f"{result.ranking.get('status')}: {result.ranking.get('reason')}"))
    console.print(info)
    print_protocol(result.protocol)


@app.command("train", cls=RegistryHelpCommand)
def train_cmd(
    ctx: typer.Context,
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Trial budget: N x the number of families in all, shared by successive halving (better families get more; default: setting training.trials)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Wall-time budget of the whole search, in minutes. Not reproducible end to end: the protocol, spaces and "
                                         "each family's first configurations are the same for a seed, but how many trials fit (so the "
                                         "halving and the winner) follows the machine's load; --trials is deterministic for a seed at any --jobs."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Trials run in parallel."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated families (default: setting models.enabled)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Primary metric, e.g. ndcg@20, recall@10."),
    split: Optional[str] = typer.Option(
        None, "--split", "-s",
        help="{SPLITS} (default: config training.split, itself 'auto': a hold-out sized from the data).",
    ),
    test_days: Optional[float] = typer.Option(
        None, "--test-days",
        help="Test window in days of a temporal split; with the default 'auto' split, asks for a temporal "
        "window this long ({PROTOCOL_TEST_DAYS}).",
    ),
    valid_days: Optional[float] = typer.Option(
        None, "--valid-days", help="Validation window before the test window, days (temporal; default: as long as the test window)."
    ),
    leave_k: Optional[int] = typer.Option(None, "--leave-k", min=1, help="Items held out per user (leave-last split; default 1)."),
    ratios: Optional[str] = typer.Option(
        None, "--ratios", help="train,test or train,valid,test (random split; default 0.8,0.2)."
    ),
    test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="Share of users held out (users split; default 0.1)."),
    if_new_events: Optional[int] = typer.Option(
        None, "--if-new-events", min=0, help="Train only if at least N events arrived since production's snapshot."
    ),
    force: bool = typer.Option(False, "--force", help="Promote even if the gate refuses (recorded)."),
    no_promote: bool = typer.Option(False, "--no-promote", help="Register as a candidate only."),
    seed: int = typer.Option(0, "--seed", help="Seed of the TPE sampler and of the random / users / auto splits."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (no progress bars)."),
    cluster: Optional[str] = cluster_option(),
) -> None:
    """Tune each model family on a validation part, score the chosen one once on a test part it never
    saw, refit it on all data, register it, and promote it if it passes the gate (on the test part).

    The protocol (what is held out, and why) is printed and stored in the version's manifest.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from scalerec.monitoring.training import recorded_run
    from scalerec.training.pipeline import TrainOptions, train

    if force and no_promote:
        raise ValidationError("--force and --no-promote contradict each other; pass one of them")
    settings = with_cluster(get_settings(ctx), cluster)
    families = [m.strip() for m in models.split(",") if m.strip()] if models else None
    options = TrainOptions(
        models=families, trials=trials, minutes=minutes, jobs=jobs, metric=metric, split=split,
        test_days=test_days, valid_days=valid_days, ratios=parse_ratios(ratios), leave_k=leave_k,
        test_fraction=test_fraction, if_new_events=if_new_events, force=force, promote=not no_promote, seed=seed,
    )
    store = get_store(ctx)
    with recorded_run(settings) as run:  # the server reads this run's figures (monitoring/training.py)
        if as_json:
            result = train(settings, options, store=store)
        else:
            columns = (
                TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[detail]}"),
            )
            with Progress(*columns, console=console, transient=False) as bar:
                result = train(settings, options, store=store, progress=_ProgressView(bar))
        run["result"] = result
    if result.status == "skipped":
        if as_json:
            console.print_json(json.dumps({"status": "skipped", "reason": result.reason, "new_events": result.new_events}))
        else:
            console.print(f"skipped: {result.reason}", soft_wrap=True)
        return
    if as_json:
        v = result.version
        console.print_json(
            json.dumps(
                {
                    "status": result.status,
                    "version": v.version if v else None,
                    "stage": v.stage if v else None,
                    "family": result.best_family,
                    "params": result.best_params,
                    "metrics": {"test": result.metrics, "validation": result.validation_metrics},
                    "intervals": result.intervals,
                    "protocol": result.protocol,
                    "warnings": result.warnings,
                    "promotion": result.promotion,
                    "fit_s": result.fit_s,
                    "peak_rss_bytes": result.peak_rss_bytes,
                    "families": [f.to_dict() for f in result.families],
                    "ranking": {k: result.ranking.get(k) for k in ("status", "reason", "test")} if result.ranking else None,
                    "selection": result.selection,
                },
                default=str,
            )
        )
    else:
        _summary(result)
    _exit_if_refused(result)


#: `scalerec train`'s exit status when the gate refused to decide (typed errors exit 2)
REFUSED_EXIT_CODE = 3


def _exit_if_refused(result: "TrainResult") -> None:
    """A gate that refused to decide fails the command (production kept); --force had promoted."""
    p = result.promotion
    if p.get("refused") and not p.get("forced") and not p.get("reason", "").startswith("not promoted (--no-promote)"):
        from scalerec.cli._app import err_console

        err_console.print(f"error: the promotion gate {p.get('reason')}; pass --force to promote anyway",
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=REFUSED_EXIT_CODE)


# ---------------------------------------------------------------------------------- tune report
@tune_app.command("report")
def tune_report(
    ctx: typer.Context,
    family: Optional[str] = typer.Option(None, "--family", help="Only this model family."),
    top: int = typer.Option(10, "--top", min=0, help="Trials shown per study, best first (0 = all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the trials of each study in tuning.db and the best configuration per family."""
    from scalerec.training.tuning import load_report

    settings = get_settings(ctx)
    studies = load_report(settings.data.dir, family)
    if as_json:
        console.print_json(json.dumps(studies, default=str))
        return
    if not studies:
        console.print("no searches yet: run `scalerec train`")
        return
    best_per_family: dict[str, tuple[float, dict[str, Any], str, dict[str, Any] | None]] = {}
    for st in studies:
        higher = st.get("direction") != "minimize"
        trials = st["trials"]
        done = [t for t in trials if t["value"] is not None]
        done.sort(key=lambda t: t["value"], reverse=higher)
        shown = done if top == 0 else done[:top]
        states: dict[str, int] = {}
        for t in trials:
            states[t["state"]] = states.get(t["state"], 0) + 1
        title = f"{st['study']}  ({st.get('metric') or '?'}; " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"
        table = Table(title=title, title_justify="left")
        for col in ("#", "value [interval]", "params", "fit s", "note"):
            table.add_column(col, justify="right" if col in ("#", "value [interval]", "fit s") else "left")
        for t in shown:
            iv = (t.get("intervals") or {}).get(st.get("metric") or "")
            table.add_row(str(t["number"]), _interval(t["value"], iv), _params(t["params"]), _fmt(t["fit_s"], 2),
                          "default" if t["default"] else ("repeat (not refitted)" if t.get("duplicate") else
                                                           (f"pruned at iteration {t['pruned_at']}" if t.get("pruned_at") else "")))
        failed = [t for t in trials if t["state"] == "fail" and t["error"]]
        if failed:
            table.caption = f"{len(failed)} failed; last: {failed[-1]['error']}"
        console.print(table)
        if st["best"] is not None:
            fam = st["family"]
            val = st["best"]["value"]
            cur = best_per_family.get(fam)
            if cur is None or (val > cur[0] if higher else val < cur[0]):
                best_per_family[fam] = (val, st["best"]["params"], st["study"], st["best"], st.get("metric") or "")
    summary = Table(title="best configuration per family (validation; \\[bootstrap interval over users])", title_justify="left")
    for col in ("family", "value \\[interval]", "coverage", "popularity bias", "params", "study"):
        summary.add_column(col, overflow="fold")
    for fam, (val, params, name, best, metric) in sorted(best_per_family.items()):
        ivs, at = best.get("intervals") or {}, metric.partition("@")[2]
        catalogue = [_interval((best.get("metrics") or {}).get(key), ivs.get(key))
                     for key in (f"coverage@{at}", f"popularity_bias@{at}")]  # --json: per trial
        summary.add_row(fam, _interval(val, ivs.get(metric)), *catalogue, _params(params), name)
    console.print(summary)
    _print_rounds(settings.data.dir, family)


def _print_rounds(data_dir: Any, family: Optional[str], last: int = 3) -> None:
    """The successive-halving rounds of the latest searches: trials per family, pruned, who was dropped and why."""
    from scalerec.training.tuning import load_schedules

    for run in load_schedules(data_dir)[-last:]:
        budget = ", ".join(f"{k} {v}" for k, v in run["budget"].items() if v is not None)
        table = Table(title=f"search of {run['started']} ({budget}; seed {run['seed']})", title_justify="left")
        for col in ("round", "family", "trials", "pruned", "failed", "best", "outcome"):
            table.add_column(col, justify="right" if col in ("round", "trials", "pruned", "failed", "best") else "left",
                             overflow="fold")
        for rnd in run["rounds"]:
            for fam, info in rnd["families"].items():
                if family is not None and fam != family:
                    continue
                outcome = ("kept" + (f" ({info['reason']})" if info["reason"] else "")) if info["kept"] else info["reason"]
                table.add_row(str(rnd["round"]), fam, str(info["trials"]), str(info["pruned"]), str(info["failed"]),
                              _fmt(info["best"]), outcome)
        console.print(table)


# ---------------------------------------------------------------------------------- models
def _registry(ctx: typer.Context, *, read_only: bool = False) -> Any:
    from scalerec.registry import Registry

    return Registry(get_settings(ctx), read_only=read_only)


def _version_row(v: "ModelVersion") -> list[str]:
    return [
        v.version,
        v.stage + (" (forced)" if v.forced else ""),
        v.family or "-",
        f"{v.metric} {_fmt(v.score)}" if v.metric else "-",
        "ok" if v.error is None else f"[red]broken: {v.error}[/red]",
    ]


@models_app.command("list")
def models_list(
    ctx: typer.Context,
    stage: Optional[str] = typer.Option(None, "--stage", help="candidate | production | archived."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List model versions with their stage, score and health (a broken version is never served)."""
    versions = _registry(ctx, read_only=True).list(stage)
    if as_json:
        console.print_json(json.dumps([{**vars(v), "path": str(v.path)} for v in versions], default=str))
        return
    if not versions:
        console.print("no model versions yet: run `scalerec train`")
        return
    from rich import box

    table = Table(box=box.SIMPLE_HEAD)  # the version name already says when (UTC) it was made
    for col in ("version", "stage", "family", "score", "health"):
        table.add_column(col, no_wrap=col != "health", overflow="fold")
    for v in versions:
        table.add_row(*_version_row(v))
    console.print(table)


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="Version name (see `models list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the stage and the raw manifest as JSON."),
) -> None:
    """A version's summary: stage, model, data, scores, protocol, timings, promotion decision (--json: the manifest)."""
    v = _registry(ctx, read_only=True).get(version)
    out: dict[str, Any] = {"version": v.version, "stage": v.stage, "promoted_at": v.promoted_at,
                           "archived_at": v.archived_at, "forced": v.forced, "note": v.note, "health": v.error or "ok"}
    typed = None
    try:
        out["manifest"] = v.manifest()
        typed = v.typed_manifest()
        metric = typed.primary_metric
        # test: the chosen configuration scored once on data the search never saw; validation: where it was chosen
        out["scores"] = {part: (typed.metrics.get(part) or {}).get(metric) for part in ("test", "validation")}
        intervals = typed.extra.get("intervals") or {}
        out["intervals"] = {part: (intervals.get(part) or {}).get(metric) for part in ("test", "validation")}
    except Exception as exc:  # noqa: BLE001 - a broken version is shown with its error
        out["manifest"] = None
        out["health"] = str(exc)
    if as_json:
        console.print_json(json.dumps(out, default=str))
        return
    info = Table(show_header=False, box=None, title=f"model version {v.version}", title_justify="left")
    info.add_column(style="bold", no_wrap=True)
    info.add_column(overflow="fold")
    stage = v.stage + (" (forced)" if v.forced else "")
    stage += f", promoted {v.promoted_at}" if v.promoted_at else ""
    stage += f", archived {v.archived_at}" if v.archived_at else ""
    info.add_row("stage", stage)
    info.add_row("health", out["health"])
    if v.note:
        info.add_row("note", v.note)
    if typed is not None:
        info.add_row("created", typed.created_at or "-")
        info.add_row("model", f"{typed.family or '-'} {_params(typed.params)}")
        span = (f"{typed.snapshot_start:%Y-%m-%d %H:%M} .. " if typed.snapshot_start else "") + (
            f"{typed.snapshot_end:%Y-%m-%d %H:%M} UTC" if typed.snapshot_end else "")
        events = f"{typed.event_count:,} events" if typed.event_count is not None else "events: -"
        info.add_row("data", f"{events}{', ' + span if span else ''}")
        for part in ("test", "validation"):
            scores = typed.metrics.get(part) or {}
            if scores:
                main = typed.primary_metric
                iv = out["intervals"].get(part) or {}
                bounds = f" [{_fmt(iv.get('low'))}, {_fmt(iv.get('high'))}]" if iv else ""
                shown = [f"{main} {_fmt(scores.get(main))}{bounds}"] + [
                    f"{k} {_fmt(val)}" for k, val in sorted(scores.items()) if k != main and isinstance(val, float)][:6]
                info.add_row(part, ", ".join(shown))
        selection = (typed.extra.get("search") or {}).get("selection")
        if selection:
            info.add_row("chosen", _selection_line(selection))
        if typed.protocol is not None:
            info.add_row("protocol", f"{typed.protocol.split} -> {typed.protocol.rule}: {typed.protocol.reason}")
            info.add_row("  test part", typed.protocol.test.describe())
        info.add_row("fit", f"{_fmt(typed.fit_seconds, 1)} s, peak memory {_bytes(typed.peak_rss_bytes)}")
        if typed.promotion:
            p = typed.promotion
            verdict = "promoted" if p.get("promoted") else "not promoted"
            info.add_row("gate", f"{verdict}: {p.get('reason', '-')}")
    console.print(info)
    console.print(f"raw manifest: scalerec models show {v.version} --json", markup=False, highlight=False)


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="Version to put in production."),
    force: bool = typer.Option(False, "--force", help="Promote even if the promotion gate refused it (recorded)."),
) -> None:
    """Make VERSION the production model (the current one is archived)."""
    v = _registry(ctx).promote(version, force=force)
    console.print(f"{v.version} is now in production" + (" (forced)" if v.forced else ""), soft_wrap=True)


@models_app.command("rollback")
def models_rollback(ctx: typer.Context) -> None:
    """Put the previously promoted version back in production."""
    reg = _registry(ctx)
    before = reg.production()
    v = reg.rollback()
    console.print(f"rolled back: {v.version} is in production again (was {before.version if before else '-'})", soft_wrap=True)


@models_app.command("delete")
def models_delete(ctx: typer.Context, version: str = typer.Argument(..., help="A candidate or archived version.")) -> None:
    """Delete a version that is not in production (its directory and its row)."""
    _registry(ctx).delete(version)
    console.print(f"deleted {version}", soft_wrap=True)
