"""Leases in the catalogue: at most one holder of a named job (log maintenance, training, the
retraining schedule) across every process and machine that shares the catalogue.

A file lock only excludes processes that see the same disk; a lease is a row in the catalogue
(``CatalogStore.acquire_lease``) with an expiry that a heartbeat thread pushes forward while the
holder works. A holder that dies stops renewing and its lease expires after ``ttl_s``; on the
holder's own machine a dead process's lease is taken over at once (its pid is gone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from scalerec.errors import LeaseLostError, StorageError

__all__ = ["Lease", "hold_lease", "DEFAULT_TTL_S"]

log = logging.getLogger(__name__)

#: Seconds a lease outlives its last renewal (the heartbeat renews every third of it).
DEFAULT_TTL_S = 30.0
_HOST = socket.gethostname()
_held = threading.local()  # (store id, name) -> the Lease this thread holds: re-entrant within a thread


def _holder_id() -> str:
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _dead_local_holder(holder: str | None) -> bool:
    """Whether ``holder`` names a process of this machine that no longer runs."""
    if not holder:
        return False
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != _HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Lease:
    """One attempt at the lease ``name``; true while held. ``other`` names the holder that had
    it when the attempt failed (host:pid:token)."""

    def __init__(self, catalog: Any, name: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s={ttl_s} must be positive")
        self.catalog, self.name, self.ttl_s = catalog, name, float(ttl_s)
        self.holder = _holder_id()
        self.acquired = False
        self.lost = False
        self.depth = 0
        self.other: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __bool__(self) -> bool:
        return self.acquired

    def try_acquire(self) -> bool:
        ok, current = self.catalog.acquire_lease(self.name, self.holder, self.ttl_s)
        if not ok and _dead_local_holder(current):
            log.warning("lease %r: holder %s is dead on this machine; taking it over", self.name, current)
            self.catalog.release_lease(self.name, current)
            ok, current = self.catalog.acquire_lease(self.name, self.holder, self.ttl_s)
        self.acquired, self.other = ok, (None if ok else current)
        if ok:
            self._beat = threading.Thread(target=self._heartbeat, name=f"lease-{self.name}", daemon=True)
            self._beat.start()
        return ok

    def acquire(self, timeout_s: float | None = None) -> bool:
        """Wait (polling with backoff) until acquired or ``timeout_s`` passed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = 0.02
        while not self.try_acquire():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(pause * 2, 1.0)
        return True

    def check(self) -> None:
        """Raise LeaseLostError when the lease was lost: a job calls this between blocks, so it
        stops before writing anything another holder may now be writing too."""
        if self.lost:
            raise LeaseLostError(
                f"the {self.name!r} lease expired and was taken by another holder (renewals failed for more than "
                f"{self.ttl_s:.0f} s: catalogue unreachable or this process stalled); the job stopped between two "
                "blocks and wrote nothing further; run it again once the other holder is done"
            )

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.catalog.renew_lease(self.name, self.holder, self.ttl_s):
                    self.lost = True
                    log.error("lease %r was lost (expired and taken by another holder)", self.name)
                    return
            except StorageError as exc:  # the catalogue is briefly unreachable: try again next beat
                log.warning("lease %r: renewal failed: %s", self.name, exc.message)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self.acquired:
            self.acquired = False
            with contextlib.suppress(StorageError):
                self.catalog.release_lease(self.name, self.holder)


@contextlib.contextmanager
def hold_lease(
    catalog: Any, name: str, *, ttl_s: float | None = None, blocking: bool = True, timeout_s: float | None = None
) -> Iterator[Lease]:
    """Hold the lease ``name`` for the block; yields the :class:`Lease` (false when not acquired:
    ``blocking=False`` or ``timeout_s`` passed). Re-entrant within a thread. ``ttl_s`` defaults to
    DEFAULT_TTL_S (read at the call)."""
    ttl_s = DEFAULT_TTL_S if ttl_s is None else ttl_s
    key = (id(catalog), name)  # one store object: a second store is another holder (another machine)
    held: dict = _held.__dict__.setdefault("held", {})
    if key in held:
        outer = held[key]  # the outer block holds (and renews) it; its loss is this block's too
        outer.depth += 1
        try:
            yield outer
        finally:
            outer.depth -= 1
        return
    lease = Lease(catalog, name, ttl_s)
    ok = lease.acquire(timeout_s) if blocking else lease.try_acquire()
    if not ok:
        yield lease
        return
    lease.depth = 1
    held[key] = lease
    try:
        yield lease
    finally:
        del held[key]
        lease.release()
