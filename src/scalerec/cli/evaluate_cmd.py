"""`scalerec evaluate`: split the data directory's events, fit model families, compare them offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from scalerec.cli._app import app, console, err_console, get_settings, get_store
from scalerec.cli._registry_help import RegistryHelpCommand
from scalerec.cli._split_cli import parse_ratios, print_protocol
from scalerec.errors import EmptyDataError, ValidationError


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """"10,20" -> (10, 20); ValidationError naming the option otherwise."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValidationError(f"{what} must be comma-separated integers like 10,20; got {text!r}") from None
    if not values:
        raise ValidationError(f"{what} needs at least one value")
    return values


def parse_value(text: str) -> Any:
    """A --param value: int, float, true/false, none, else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_params(items: list[str], models: list[str]) -> dict[str, dict[str, Any]]:
    """["als.factors=64", ...] -> {"als": {"factors": 64}}; every model must be in ``models``."""
    out: dict[str, dict[str, Any]] = {m: {} for m in models}
    for item in items:
        key, sep, value = item.partition("=")
        model, dot, name = key.strip().partition(".")
        if not sep or not dot or not model or not name:
            raise ValidationError(f"--param must look like MODEL.NAME=VALUE (e.g. als.factors=64); got {item!r}")
        if model not in out:
            raise ValidationError(f"--param {item!r} names model {model!r}, which is not in --models {','.join(models)}")
        out[model][name] = parse_value(value)
    return out


def build_models(names: list[str], params: dict[str, dict[str, Any]], ease_max_items: int) -> dict[str, Any]:
    """Unfitted models by family name (the registry validates names and hyperparameters)."""
    from scalerec.models import make_model

    models: dict[str, Any] = {}
    for name in names:
        kwargs = dict(params.get(name, {}))
        if name == "ease":
            kwargs.setdefault("max_items", ease_max_items)
        models[name] = make_model(name, **kwargs)
    return models


def split_options(
    split: str,
    *,
    test_days: float | None,
    leave_k: int | None,
    ratios: str | None,
    test_fraction: float | None,
    seed: int,
    default_test_days: float,
) -> dict[str, Any]:
    """Keyword options of the named splitter from the command-line flags (flags it does not read are ignored)."""
    from scalerec.evaluation.splits import resolve_split_options

    return resolve_split_options(
        split, test_days=test_days, leave_k=leave_k, ratios=parse_ratios(ratios), test_fraction=test_fraction,
        seed=seed, default_test_days=default_test_days, strict=False,
    )[1]


def print_segments(by_segment: dict[str, Any]) -> None:
    from rich.table import Table

    for model, by_key in by_segment.items():
        for key, groups in by_key.items():
            metrics = sorted({m for g in groups.values() for m in g if not m.startswith("_")})
            table = Table(title=f"{model} by {key}")
            for col in (key, "users", *metrics):
                table.add_column(col)
            for value, g in groups.items():
                cells = [f"{g[m]['mean']:.4f} [{g[m]['low']:.4f}, {g[m]['high']:.4f}]" for m in metrics]
                table.add_row(value + ("" if g["_enough"] else " (few)"), str(g["_n_users"]), *cells)
            console.print(table)


@app.command("evaluate", cls=RegistryHelpCommand)
def evaluate_command(
    ctx: typer.Context,
    split: Optional[str] = typer.Option(
        None, "--split", "-s",
        help="{SPLITS} (default: config training.split, itself 'auto': a hold-out sized from the data).",
    ),
    test_days: Optional[float] = typer.Option(
        None, "--test-days",
        help="Test window in days of a temporal split (default: config training.test_days; {PROTOCOL_TEST_DAYS}); "
        "with the default 'auto' split, asks for a temporal window this long.",
    ),
    k: str = typer.Option("20", "--k", help="Cut-off(s), comma-separated, e.g. 10,20."),
    models: Optional[str] = typer.Option(
        None, "--models", "-m", help="Comma-separated model families (default: config models.enabled)."
    ),
    param: list[str] = typer.Option([], "--param", "-p", help="MODEL.NAME=VALUE hyperparameter, repeatable."),
    metrics: str = typer.Option(
        "precision,recall,ndcg,map,mrr,hit_rate,coverage,popularity_bias", "--metrics", help="Metrics to compute."
    ),
    leave_k: Optional[int] = typer.Option(None, "--leave-k", min=1, help="Items held out per user (leave-last split; default 1)."),
    ratios: Optional[str] = typer.Option(None, "--ratios", help="train,test or train,valid,test (random split; default 0.8,0.2)."),
    test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="Share of users held out (users split; default 0.1)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (random, users and auto splits)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a self-contained HTML report here."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
    segments: Optional[str] = typer.Option(
        None, "--segments",
        help="Report every metric per customer group: user attributes and activity, new_vs_returning, comma-separated.",
    ),
) -> None:
    """Compare model families offline on a split of the data directory's events.

    For the Online Retail reference protocol, import the file first:
    `scalerec import events online_retail.csv.gz --preset online-retail`, then
    `scalerec evaluate --split online-retail`.
    """
    from scalerec.evaluation import compare, make_split, write_html_report
    from scalerec.evaluation.evaluate import check_metrics

    settings = get_settings(ctx)
    from scalerec.evaluation.splits import resolve_split_options

    split_name, options = resolve_split_options(
        split or settings.training.split, test_days=test_days, leave_k=leave_k, ratios=parse_ratios(ratios),
        test_fraction=test_fraction, seed=seed, default_test_days=settings.training.test_days,
        explicit=split is not None,
    )
    ks = parse_ints(k, "--k")
    metric_names = check_metrics([m.strip() for m in metrics.split(",") if m.strip()])
    model_names = [m.strip() for m in (models.split(",") if models else settings.models.enabled) if m.strip()]
    if not model_names:
        raise ValidationError("--models needs at least one model family, e.g. popular,ease")
    params = parse_params(param, model_names)
    # Build (and validate) the models before the possibly long split.
    zoo = build_models(model_names, params, settings.models.ease_max_items)

    store = get_store(ctx)
    try:
        with err_console.status(f"splitting events ({split_name})…"):
            the_split = make_split(split_name, store, settings=settings, part="test", **options)
    except EmptyDataError as exc:
        raise EmptyDataError(f"{exc.message} (data directory {settings.data.dir})", details=exc.details) from None

    status = err_console.status("")

    def progress(name: str, stage: str) -> None:
        status.update(f"{stage} {name}…")

    with status:
        ev = settings.evaluation
        result = compare(
            zoo, the_split, ks, metrics=metric_names, progress=progress,
            confidence=ev.confidence, bootstrap_samples=ev.bootstrap_samples, seed=ev.seed,
        )

    by_segment = None
    if segments:
        from scalerec.ranking.segments import evaluate_segments, segments_html

        with err_console.status("metrics per segment…"):
            by_segment = evaluate_segments(
                zoo, the_split, store.catalog.users_table(), [s.strip() for s in segments.split(",") if s.strip()],
                ks, metric_names, confidence=ev.confidence, n_boot=ev.bootstrap_samples, seed=ev.seed,
                min_users=settings.training.min_gate_users,
            )
    report_path = write_html_report(result, report) if report is not None else None
    if report_path is not None and by_segment is not None:
        html = Path(report_path).read_text()
        Path(report_path).write_text(html.replace("</body>", segments_html(by_segment) + "\n</body>", 1))
    if as_json:
        data = result.to_dict()
        if by_segment is not None:
            data["segments"] = by_segment
        if report_path is not None:
            data["report"] = str(report_path)
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    console.print(result.table())
    if by_segment is not None:
        print_segments(by_segment)

    print_protocol(result.split.get("protocol"))
    if result.attribution:
        console.print(result.attribution, style="dim", markup=False, highlight=False)
    if report_path is not None:
        console.print(f"report written to {report_path}", markup=False, highlight=False)
