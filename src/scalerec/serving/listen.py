"""Run an ASGI app under uvicorn with one listening socket per worker process (``SO_REUSEPORT``).

uvicorn's ``workers=N`` binds one socket in the supervisor and every worker accepts from it: all
workers wake on a new connection and whichever runs first accepts every connection queued, so
clients that open their keep-alive connections together (a load balancer's pool, a load generator)
land mostly on one worker while the other idles. With a socket per worker bound with
``SO_REUSEPORT`` the kernel hands each new connection to one worker by a hash of its addresses,
whichever worker is awake. The supervisor (uvicorn's, with its health checks and restarts) still
binds the port first so that a second server on it fails at start; it never listens on it, so no
connection is queued there. Where ``SO_REUSEPORT`` is missing (not Linux/BSD) or with one worker,
this is plain ``uvicorn.run``.

A worker that stops drops the connections still queued on its own socket (the shared socket
kept them for the others); uvicorn replaces it, as before. This module imports nothing heavy: each
worker imports it before it answers uvicorn's first health check.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

__all__ = ["reuse_port_available", "run"]

logger = logging.getLogger("uvicorn.error")


def reuse_port_available() -> bool:
    return hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith(("linux", "freebsd"))


def _reuse_port_socket(family: int, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _worker_sockets(family: int, address: Any) -> list[socket.socket]:
    """Called in each worker as it unpickles its arguments: its own socket on the supervisor's address."""
    from uvicorn.config import STARTUP_FAILURE

    try:
        return [_reuse_port_socket(family, address)]
    except OSError as exc:
        logger.error("cannot bind %s: %s", address, exc)
        sys.exit(STARTUP_FAILURE)  # uvicorn's supervisor stops instead of restarting it in a loop


class _PerWorker(list):  # type: ignore[type-arg]
    """The socket list uvicorn sends to each spawned worker: the supervisor's socket here, a new
    ``SO_REUSEPORT`` socket on the same address in each worker (made as the worker unpickles it)."""

    def __reduce__(self) -> tuple[Any, ...]:
        sock = self[0]
        return _worker_sockets, (sock.family, sock.getsockname())


def run(app: str, *, host: str, port: int, workers: int, reuse_port: bool = True, **kwargs: Any) -> None:
    """``uvicorn.run(app, host=..., port=..., workers=..., **kwargs)`` with a socket per worker
    (``reuse_port=False``: uvicorn's one shared socket)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    if workers <= 1 or not reuse_port or not reuse_port_available():
        uvicorn.run(app, host=host, port=port, workers=workers, **kwargs)
        return
    config = uvicorn.Config(app, host=host, port=port, workers=workers, **kwargs)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = _reuse_port_socket(family, (host, port))
    except OSError as exc:
        logger.error("cannot bind %s:%s: %s", host, port, exc)
        sys.exit(STARTUP_FAILURE)
    logger.info("Uvicorn running on http://%s:%d, %d workers with a socket each (SO_REUSEPORT)", host,
                sock.getsockname()[1], workers)
    try:
        Multiprocess(config, sockets=_PerWorker([sock])).run()
    except KeyboardInterrupt:  # pragma: no cover
        pass
    finally:
        sock.close()
