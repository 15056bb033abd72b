"""The `--cluster` option of the commands that can run on Ray (train, batch-recommend, serve)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings

CLUSTER_HELP = (
    "Run on a Ray cluster: 'auto' (one started with `ray start --head`), 'ray://host:port', or 'local' "
    "(a private Ray on this machine); 'none' runs without Ray. Default: the cluster.address setting."
)


def cluster_option() -> Any:
    """``--cluster ADDRESS`` (typer option; None when not given)."""
    return typer.Option(None, "--cluster", help=CLUSTER_HELP, show_default=False)


def with_cluster(settings: "Settings", cluster: str | None) -> "Settings":
    """``settings`` with ``[cluster] address`` replaced by the ``--cluster`` value, when one was given."""
    if cluster is None:
        return settings
    address = None if cluster.strip().lower() in ("", "none", "off") else cluster.strip()
    settings.cluster = settings.cluster.model_copy(update={"address": address})
    return settings
