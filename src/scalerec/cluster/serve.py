"""Serving on Ray Serve: the RecommendService HTTP app as an autoscaled deployment behind Ray's proxy.

Each replica builds its own :class:`~scalerec.serving.service.RecommendService` and the same
FastAPI app as `scalerec serve` (``create_app``), so the API, auth, errors and hot swap are the
single-machine ones; Ray Serve adds the HTTP proxy on every node, routing, replica health checks
(a dead replica is replaced) and autoscaling between ``[cluster.serve] min_replicas`` and
``max_replicas`` aiming at ``target_ongoing_requests`` in-flight requests per replica.

Replicas share state the way `scalerec serve` processes on several machines do: with
``[data] catalog_url`` (PostgreSQL) and ``store_url`` (an object store) set, the data directory
is only each node's model cache and need not be shared; with the embedded set-up every node must
see the data directory (a shared filesystem). Prometheus metrics at ``/v1/metrics`` are
per replica (the proxy picks one), not cluster totals.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import serve

from scalerec.cluster.ray_executor import connect

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings

APP_NAME = "scalerec"
DEPLOYMENT_NAME = "RecommendService"


@serve.ingress()
class RecommendIngress:
    """One replica: a RecommendService over the shared data directory, behind its FastAPI app."""

    def __init__(self, settings_json: str, insecure_dev: bool) -> None:
        from scalerec.config import Settings

        self._settings = Settings(**json.loads(settings_json))
        self._insecure_dev = insecure_dev

    def __serve_build_asgi_app__(self) -> Any:
        # Ray Serve calls this on the replica after __init__: the app (and its service with the
        # model watcher) is built where it runs, never pickled.
        from scalerec.serving.http.app import create_app

        return create_app(self._settings, insecure_dev=self._insecure_dev, watch=True)


def autoscaling_config(settings: "Settings") -> dict[str, Any]:
    """Ray Serve's autoscaling_config from ``[cluster.serve]``."""
    cfg = settings.cluster.serve
    return {
        "min_replicas": cfg.min_replicas,
        "initial_replicas": max(1, cfg.min_replicas),
        "max_replicas": cfg.max_replicas,
        "target_ongoing_requests": cfg.target_ongoing_requests,
    }


def build_application(settings: "Settings", *, insecure_dev: bool = False) -> Any:
    """The Ray Serve application (bound deployment) for these settings."""
    cfg = settings.cluster.serve
    # Replicas run in other processes (maybe other machines) with another working directory.
    resolved = settings.model_copy(update={"data": settings.data.model_copy(update={"dir": Path(settings.data.dir).resolve()})})
    deployment = serve.deployment(
        RecommendIngress,
        name=DEPLOYMENT_NAME,
        autoscaling_config=autoscaling_config(settings),
        # Admit a few more than the target so the autoscaler sees the queue build up.
        max_ongoing_requests=max(5, math.ceil(2 * cfg.target_ongoing_requests)),
        ray_actor_options={"num_cpus": cfg.replica_cpus},
    )
    return deployment.bind(json.dumps(resolved.model_dump(mode="json")), bool(insecure_dev))


def deploy(
    settings: "Settings", *, host: str | None = None, port: int | None = None, insecure_dev: bool = False
) -> str:
    """Deploy (or update) the app on the cluster of ``[cluster] address``; returns its base URL.

    Waits until the replicas are up and ready. Raises ConfigError when the cluster is unreachable.
    """
    connect(settings.cluster.address)
    host = host or settings.serving.host
    port = int(port or settings.serving.port)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_application(settings, insecure_dev=insecure_dev), name=APP_NAME, route_prefix="/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def undeploy() -> None:
    """Remove the app from the cluster (Ray Serve and the cluster keep running)."""
    serve.delete(APP_NAME)


def serve_until_interrupted(
    settings: "Settings", *, host: str | None = None, port: int | None = None, insecure_dev: bool = False,
    on_ready: Any = None,
) -> None:
    """`scalerec serve --cluster`: deploy, call ``on_ready(url)``, block until Ctrl-C, then undeploy."""
    url = deploy(settings, host=host, port=port, insecure_dev=insecure_dev)
    if on_ready is not None:
        on_ready(url)
    try:
        while True:
            time.sleep(1.0)  # Ctrl-C raises KeyboardInterrupt here
    finally:
        undeploy()


def replica_names() -> list[str]:
    """Actor names of the running replicas of the deployment (namespace "serve")."""
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == "serve" and f"{APP_NAME}#{DEPLOYMENT_NAME}#" in a.get("name", "")
    )
