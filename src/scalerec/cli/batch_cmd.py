"""`scalerec batch-recommend`: top-n for every user as sharded Parquet, locally or on a Ray cluster."""

from __future__ import annotations

import json
from typing import Optional

import typer

from scalerec.cli._app import app, console, get_settings
from scalerec.cli._cluster import cluster_option, with_cluster


@app.command("batch-recommend")
def batch_recommend_cmd(
    ctx: typer.Context,
    out: str = typer.Option(..., "--out", "-o", help="Output directory or object-store URL (s3://BUCKET/PREFIX?...): "
                            "part-<shard>.parquet files, one per user shard."),
    n: int = typer.Option(100, "--n", "-n", min=1, help="Recommendations per user."),
    version: Optional[str] = typer.Option(None, "--version", help="Model version (default: production)."),
    cluster: Optional[str] = cluster_option(),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Local worker processes (without --cluster)."),
    shard_users: Optional[int] = typer.Option(None, "--shard-users", min=1, help="Users per shard file."),
    include_seen: bool = typer.Option(False, "--include-seen", help="Also recommend items the user already has."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier batch output in --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (no progress bar)."),
) -> None:
    """Score every user of the model and write their top-n; rerun the same command to resume."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from scalerec.serving.batch import batch_recommend
    from scalerec.execution import get_executor

    settings = with_cluster(get_settings(ctx), cluster)
    executor = get_executor(settings, jobs or 1)
    with executor:
        if as_json:
            result = batch_recommend(
                settings, out, n=n, version=version, executor=executor, shard_users=shard_users,
                exclude_seen=not include_seen, overwrite=overwrite,
            )
        else:
            columns = (TextColumn("shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task("shards", total=None)
                result = batch_recommend(
                    settings, out, n=n, version=version, executor=executor, shard_users=shard_users,
                    exclude_seen=not include_seen, overwrite=overwrite,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    console.print(
        f"{result.n_users:,} users x top {result.n} of model {result.version} -> {result.out_dir} "
        f"({result.shards_total} shards: {result.shards_done} written, {result.shards_skipped} already done; "
        f"{result.users_per_s:,.0f} users/s on {executor!r})",
        markup=False,
        highlight=False,
    )
