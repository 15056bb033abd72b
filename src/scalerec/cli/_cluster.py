"""The `--cluster` option of the commands that can run on Ray (train, batch-recommend, serve)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

import typer

from scalerec.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings

CLUSTER_HELP = (
    "Run on a Ray cluster: 'auto' (one started with `ray start --head`), 'ray://host:port', or 'local' "
    "(a private Ray on this machine, listening on 127.0.0.1 only); 'none' runs without Ray. "
    "Default: the cluster.address setting."
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


def cluster_module(name: str) -> ModuleType:
    """``scalerec.cluster.<name>`` (which needs Ray), or ConfigError saying how to install Ray."""
    try:
        return importlib.import_module(f"scalerec.cluster.{name}")
    except ImportError as exc:
        raise ConfigError(
            f"a Ray cluster is configured but the Ray backend is not available ({exc}); install it with "
            "`pip install 'scalerec[ray]'`, or pass --cluster none to run on this machine"
        ) from None
