"""`scalerec serve` (the HTTP API under uvicorn) and `scalerec keys create|list|revoke`."""

from __future__ import annotations

import json
import os
from typing import Optional

import typer
from rich.table import Table

from scalerec.cli._app import app, console, err_console, get_settings
from scalerec.cli._cluster import cluster_module, cluster_option, with_cluster
from scalerec.errors import ConfigError

keys_app = typer.Typer(help="API keys: create, list and revoke (roles read < write < admin).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Optional[str] = typer.Option(None, "--host", help="Interface to bind (default [serving] host, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port (default [serving] port, 8000)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Worker processes sharing memory-mapped models."),
    insecure_dev: bool = typer.Option(False, "--insecure-dev", help="Allow starting without API keys (no auth): development only."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (slower)."),
    cluster: Optional[str] = cluster_option(),
) -> None:
    """Serve the production model over HTTP (/v1/..., docs at /docs) until Ctrl-C.

    With --cluster (or the cluster.address setting) the app runs as an autoscaled Ray Serve deployment.
    """
    from scalerec.data.store import DataStore
    from scalerec.monitoring.metrics import prepare_multiprocess_dir
    from scalerec.serving.auth import ApiKeyStore
    from scalerec.serving import listen
    from scalerec.training.schedule import RetrainScheduler

    settings = with_cluster(get_settings(ctx), cluster)
    host = host or settings.serving.host
    port = port or settings.serving.port
    workers = workers or settings.serving.workers
    DataStore.open(settings).close()
    n_keys = ApiKeyStore.from_settings(settings).count_active()
    if n_keys == 0 and not insecure_dev:
        raise ConfigError(
            "no API keys exist, so the API would be open to anyone: create one with "
            "`scalerec keys create --role admin` (and read/write keys for the shop), or pass --insecure-dev "
            "for local development only"
        )
    if n_keys == 0:
        err_console.print("warning: --insecure-dev and no API keys: every request is admitted until the first key is created", markup=False)
    from scalerec.registry import Registry

    if Registry(settings, read_only=True).production() is None:
        err_console.print("warning: no production model yet: /v1/popular and /v1/trending answer from the store's events, "
                          "personal lists are 503 until `scalerec train` promotes one (picked up without a restart)",
                          markup=False, soft_wrap=True)
    if not settings.cluster.address:
        check_port_free(host, port)
    os.environ["SCALEREC_SERVE_SETTINGS"] = json.dumps(settings.model_dump(mode="json"))
    os.environ["SCALEREC_SERVE_INSECURE_DEV"] = "1" if insecure_dev else "0"
    if workers > 1:
        prepare_multiprocess_dir(settings.data_dir / "serving" / "prometheus")
    scheduler = RetrainScheduler(settings)
    if scheduler.start():
        console.print(f"background retraining every {settings.training.schedule_interval_minutes} min", markup=False)
    if settings.cluster.address:
        serve_until_interrupted = cluster_module("serve").serve_until_interrupted

        def ready(url: str) -> None:
            s = settings.cluster.serve
            console.print(f"serving {settings.data_dir} on Ray Serve at {url}/v1 (docs: {url}/docs), "
                          f"{s.min_replicas}..{s.max_replicas} replicas", markup=False, highlight=False)

        try:
            serve_until_interrupted(settings, host=host, port=port, insecure_dev=insecure_dev, on_ready=ready)
        finally:
            scheduler.stop()
        return
    console.print(f"serving {settings.data_dir} on http://{host}:{port}/v1 (docs: http://{host}:{port}/docs), "
                  f"{workers} worker(s)", markup=False, highlight=False)
    try:
        # one SO_REUSEPORT socket per worker: keep-alive connections spread over the workers (serving/listen.py)
        listen.run(
            "scalerec.serving.http.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            reuse_port=settings.serving.reuse_port,
            access_log=access_log,
            log_level="info" if access_log else "warning",
            timeout_graceful_shutdown=10,
        )
    finally:
        scheduler.stop()


def check_port_free(host: str, port: int) -> None:
    """Fail before "serving on" when the address is taken (uvicorn would only log Errno 98 after it)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve --host {host!r}: {exc.strerror}; pass an address such as 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use (another server?): pass --port N "
                                  "or set [serving] port") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; pass another --host/--port") from None


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    role: str = typer.Option(..., "--role", "-r", help="read (recommendations) | write (+ events, catalogue) | admin (+ models)."),
    name: Optional[str] = typer.Option(None, "--name", help="A label, e.g. 'storefront'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a key; the secret is printed once (only its hash is stored)."""
    from scalerec.data.store import DataStore
    from scalerec.serving.auth import ApiKeyStore

    settings = get_settings(ctx)
    DataStore.open(settings).close()
    key, record = ApiKeyStore.from_settings(settings).create(role, name)
    if as_json:
        console.print_json(json.dumps({"key": key, **record.to_dict()}))
    else:
        console.print(key, markup=False, highlight=False, soft_wrap=True)
        err_console.print(f"created {role} key {record.key_id}; store it now, it is not shown again", markup=False)


@keys_app.command("list")
def keys_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List keys (ids, roles, names, dates; never the secrets)."""
    from scalerec.serving.auth import ApiKeyStore

    keys = ApiKeyStore.from_settings(get_settings(ctx)).list()
    if as_json:
        console.print_json(json.dumps([k.to_dict() for k in keys]))
        return
    table = Table("key id", "role", "name", "created", "revoked")
    for k in keys:
        table.add_row(k.key_id, k.role, k.name or "", k.created_at, k.revoked_at or "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: str = typer.Argument(..., help="The key id shown by `keys list`.")) -> None:
    """Revoke a key (servers stop accepting it within 2 seconds)."""
    from scalerec.serving.auth import ApiKeyStore

    k = ApiKeyStore.from_settings(get_settings(ctx)).revoke(key_id)
    console.print(f"revoked {k.key_id} ({k.role})", markup=False)
