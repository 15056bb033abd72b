"""API keys: roles read < write < admin, stored hashed (SHA-256) in table ``api_keys`` of catalog.db.

A key is ``sr_<key_id>_<secret>``; only its hash and the public ``key_id`` are stored, so a
leaked database does not leak keys and ``scalerec keys list`` can show which key is which.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scalerec.data.catalog import CatalogStore, open_catalog
from scalerec.errors import (
    AuthenticationError, NotFoundError, PermissionDeniedError, RateLimitedError, ValidationError,
)

ROLES = ("read", "write", "admin")
ROLE_LEVEL = {role: i for i, role in enumerate(ROLES)}
KEY_PREFIX = "sr_"
#: How long a key check is cached in a process; a revocation elsewhere takes effect within this.
CACHE_TTL_S = 2.0


@dataclass(frozen=True)
class ApiKey:
    """A stored key's public record (never the secret)."""

    key_id: str
    role: str
    name: str | None
    created_at: str
    revoked_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id, "role": self.role, "name": self.name,
            "created_at": self.created_at, "revoked_at": self.revoked_at,
        }


def hash_key(key: str) -> str:
    # Keys carry 192 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyStore:
    """Create, list, revoke and check API keys in the catalogue database (its ``api_keys`` table).

    ``source`` is a catalogue URL, a SQLite path (its directory is created), or an open store.
    """

    def __init__(self, source: str | Path | CatalogStore) -> None:
        self.catalog: CatalogStore = (
            source if isinstance(source, CatalogStore) else open_catalog(source, create_dirs=True)
        )
        self.db_path = getattr(self.catalog, "path", None)
        self._cache: dict[str, tuple[float, str | None]] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> "ApiKeyStore":
        return cls(settings.data.resolved_catalog_url())

    def create(self, role: str, name: str | None = None) -> tuple[str, ApiKey]:
        """A new key of ``role``: returns (the secret key, shown once; its stored record)."""
        if role not in ROLE_LEVEL:
            raise ValidationError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.catalog.add_api_key(key_id, hash_key(key), role, name, now)
        return key, ApiKey(key_id, role, name, now, None)

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        return [ApiKey(*r) for r in self.catalog.api_key_rows(include_revoked)]

    def count_active(self) -> int:
        return self.catalog.count_active_api_keys()

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke by public id (the part after ``sr_`` shown by ``keys list``)."""
        key_id = key_id.removeprefix(KEY_PREFIX).split("_")[0]
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self.catalog.revoke_api_key(key_id, now) is None:
            raise NotFoundError(f"no API key with id {key_id!r}; `scalerec keys list` shows the ids")
        self._cache.clear()
        return next(k for k in self.list() if k.key_id == key_id)

    def role_of(self, key: str) -> str | None:
        """The role of a valid, unrevoked key, else None (cached for CACHE_TTL_S)."""
        now = time.monotonic()
        # keyed by the key itself (held in this process only): a hit needs no hash per request
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_TTL_S:
            return hit[1]
        role = self.catalog.api_key_role(hash_key(key))
        if len(self._cache) > 10_000:  # bounded: random invalid keys must not grow memory
            self._cache.clear()
        self._cache[key] = (now, role)
        return role


class FailedAuthLimiter:
    """Token buckets of failed authentications per client address, in process.

    A client may fail ``burst`` times, then once per ``1 / rate`` seconds; past that it is refused
    (429, Retry-After) before its key is looked up. At most ``max_clients`` buckets are kept: when
    full, the oldest quarter is dropped (amortised O(1); a dropped client starts afresh).
    """

    def __init__(
        self, burst: int = 20, rate: float = 1.0, max_clients: int = 10_000, clock: Any = time.monotonic
    ) -> None:
        self.burst = float(burst)
        self.rate = float(rate)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when counted)

    def _tokens(self, client: str, now: float) -> float:
        bucket = self._buckets.get(client)
        if bucket is None:
            return self.burst
        return min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)

    def retry_after(self, client: str | None) -> int | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        if client is None or client not in self._buckets:
            return None
        tokens = self._tokens(client, self.clock())
        return None if tokens >= 1.0 else max(1, math.ceil((1.0 - tokens) / self.rate))

    def failed(self, client: str | None) -> None:
        """Count one failed authentication of ``client``."""
        if client is None:
            return
        now = self.clock()
        tokens = self._tokens(client, now) - 1.0
        buckets = self._buckets
        if client not in buckets and len(buckets) >= self.max_clients:
            for old in list(itertools.islice(buckets, max(1, self.max_clients // 4))):
                del buckets[old]
        buckets.pop(client, None)  # re-inserted last: the dict's order is the age order
        buckets[client] = (tokens, now)

    def __len__(self) -> int:
        return len(self._buckets)


class Authenticator:
    """Checks a request's key against a required role, with a failed-authentication limiter.

    ``insecure_dev`` admits every request only while no key exists: the key table is checked per
    request in that mode (one indexed count) and once a key exists the server stays secured for
    the rest of its life (revoking every key does not reopen it).
    """

    def __init__(
        self,
        store: ApiKeyStore | None,
        *,
        insecure_dev: bool = False,
        limiter: FailedAuthLimiter | None = None,
    ) -> None:
        self.store = store
        self.enabled = not insecure_dev and store is not None
        self.limiter = limiter or FailedAuthLimiter()

    def _secured(self) -> bool:
        if self.enabled:
            return True
        if self.store is not None and self.store.count_active() > 0:
            self.enabled = True  # a key was created while open: secured from this request on
        return self.enabled

    def check(self, key: str | None, required: str, client: str | None = None) -> str:
        """The caller's role if it may act as ``required``; raises 401/403, or 429 when ``client``
        (its address) failed authentication too often."""
        if not self._secured():
            return "admin"
        wait = self.limiter.retry_after(client)
        if wait is not None:
            raise RateLimitedError(
                f"too many failed authentications from this address; retry in {wait} s with a valid key",
                retry_after=wait, details={"retry_after": wait},
            )
        if not key:
            self.limiter.failed(client)
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                "(create one with `scalerec keys create --role read`)"
            )
        assert self.store is not None
        role = self.store.role_of(key)
        if role is None:
            self.limiter.failed(client)
            raise AuthenticationError("invalid or revoked API key; create a new one with `scalerec keys create`")
        if ROLE_LEVEL[role] < ROLE_LEVEL[required]:
            raise PermissionDeniedError(
                f"this key has role {role!r} but the endpoint needs {required!r}; use a key with that role",
                details={"role": role, "required": required},
            )
        return role
