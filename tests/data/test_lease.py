"""Leases in the catalogue (every backend of CATALOG_BACKENDS): one holder at a time, renewal by
heartbeat, expiry of a crashed holder's lease, takeover of a dead local process's lease."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from scalerec.data.catalog import open_catalog
from scalerec.data import lease as lease_mod
from scalerec.data.lease import Lease, hold_lease


def short_leases(monkeypatch, ttl_s: float = 0.6) -> list[Lease]:
    """Leases of ``ttl_s`` from here on (heartbeats every third of it); returns the list every
    acquired lease is appended to, for :func:`steal_lease`."""
    monkeypatch.setattr(lease_mod, "DEFAULT_TTL_S", ttl_s)
    acquired: list[Lease] = []
    real = Lease.try_acquire

    def recording(self: Lease) -> bool:
        ok = real(self)
        if ok:
            acquired.append(self)
        return ok

    monkeypatch.setattr(Lease, "try_acquire", recording)
    return acquired


def steal_lease(catalog, name: str, acquired: list[Lease], thief: str = "other-machine:1:thief",
                timeout_s: float = 60.0) -> None:
    """Another machine takes lease ``name`` (as after its holder's expiry); returns once the
    holder's heartbeat found out (its renewal failed), as it would after a stall."""
    holder = catalog.lease_holder(name)[0]
    assert catalog.release_lease(name, holder) and catalog.acquire_lease(name, thief, 3600)[0]
    victim = next(lease for lease in acquired if lease.holder == holder)
    deadline = time.monotonic() + timeout_s
    while not victim.lost:
        assert time.monotonic() < deadline, "the holder's heartbeat never noticed the stolen lease"
        time.sleep(0.02)


def test_one_holder_at_a_time_and_release_frees_it(catalog):
    ok, holder = catalog.acquire_lease("job", "a:1:x", 30)
    assert ok and holder == "a:1:x"
    assert catalog.acquire_lease("job", "b:2:y", 30) == (False, "a:1:x")
    assert catalog.acquire_lease("job", "a:1:x", 30)[0], "the holder re-acquires (renews) its own lease"
    assert catalog.lease_holder("job")[0] == "a:1:x"
    assert catalog.renew_lease("job", "b:2:y", 30) is False
    assert catalog.release_lease("job", "b:2:y") is False and catalog.release_lease("job", "a:1:x") is True
    assert catalog.lease_holder("job") is None
    assert catalog.acquire_lease("job", "b:2:y", 30) == (True, "b:2:y")
    assert catalog.acquire_lease("other", "a:1:x", 30)[0], "names are independent"


def test_an_expired_lease_goes_to_the_next_holder(catalog):
    # a holder on another machine that stopped renewing (crashed): its lease runs out
    assert catalog.acquire_lease("job", "elsewhere:1:x", 0.2)[0]
    assert Lease(catalog, "job").try_acquire() is False
    time.sleep(0.3)
    lease = Lease(catalog, "job")
    assert lease.try_acquire() and catalog.lease_holder("job")[0] == lease.holder
    assert catalog.renew_lease("job", "elsewhere:1:x", 30) is False, "the old holder learns it lost it"
    lease.release()


def test_the_heartbeat_keeps_a_lease_beyond_its_ttl(catalog):
    with hold_lease(catalog, "job", ttl_s=0.3) as held:
        assert held
        time.sleep(0.7)  # more than twice the TTL: renewed meanwhile
        assert Lease(catalog, "job").try_acquire() is False and not held.lost
        with hold_lease(catalog, "job", blocking=False) as nested:  # re-entrant in this thread
            assert nested
    with hold_lease(catalog, "job", blocking=False) as again:
        assert again


def test_blocking_waits_for_the_holder_and_times_out(catalog):
    assert catalog.acquire_lease("job", "elsewhere:1:x", 30)[0]
    with hold_lease(catalog, "job", timeout_s=0.2) as lease:
        assert not lease and lease.other == "elsewhere:1:x"


def test_a_killed_local_holder_is_taken_over(catalog_url, tmp_path):
    if ":memory:" in catalog_url:
        pytest.skip("a private in-memory catalogue cannot be shared with another process")
    catalog = open_catalog(catalog_url)
    code = (
        "import os, sys, time\n"
        "from scalerec.data.catalog import open_catalog\n"
        "from scalerec.data.lease import Lease\n"
        "lease = Lease(open_catalog(sys.argv[1]), 'job', ttl_s=3600)\n"
        "assert lease.try_acquire()\n"
        "print(lease.holder, flush=True)\n"
        "time.sleep(3600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, catalog_url], stdout=subprocess.PIPE, text=True)
    try:
        holder = child.stdout.readline().strip()
        assert catalog.lease_holder("job")[0] == holder
        assert Lease(catalog, "job").try_acquire() is False, "a live holder keeps it"
    finally:
        child.kill()
        child.wait()
    lease = Lease(catalog, "job")
    assert lease.try_acquire(), "the dead process's hour-long lease is taken over at once"
    lease.release()
    catalog.close()


def test_two_stores_on_one_catalogue_never_maintain_the_log_at_once(tmp_path, catalog_url):
    if ":memory:" in catalog_url:
        pytest.skip("a private in-memory catalogue cannot be shared")
    from scalerec.config import Settings
    from scalerec.data.store import DataStore

    # two machines: separate data directories, one catalogue
    a = DataStore.open(Settings(data={"dir": tmp_path / "a", "catalog_url": catalog_url}))
    b = DataStore.open(Settings(data={"dir": tmp_path / "b", "catalog_url": catalog_url}))
    with a.maintenance_lock() as held:
        assert held
        with b.maintenance_lock(blocking=False) as other:
            assert not other
        assert b.recover() == {}, "recovery waits for the holder"
    with b.maintenance_lock(blocking=False) as other:
        assert other
    a.close()
    b.close()
