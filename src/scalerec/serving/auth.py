"""API keys: roles read < write < admin, stored hashed (SHA-256) in table ``api_keys`` of catalog.db.

A key is ``sr_<key_id>_<secret>``; only its hash and the public ``key_id`` are stored, so a
leaked database does not leak keys and ``scalerec keys list`` can show which key is which.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scalerec.data.catalog import CatalogStore, open_catalog, parse_catalog_url
from scalerec.errors import AuthenticationError, NotFoundError, PermissionDeniedError, ValidationError

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


def db_path_from_url(url: str) -> Path:
    """The file of a ``sqlite:///PATH`` catalogue URL."""
    parsed = parse_catalog_url(url)
    if parsed.scheme != "sqlite" or parsed.path is None:
        raise ValidationError(f"API keys need a sqlite:/// catalogue, got {url!r}")
    return Path(parsed.path)


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
        h = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and now - hit[0] < CACHE_TTL_S:
            return hit[1]
        role = self.catalog.api_key_role(h)
        if len(self._cache) > 10_000:  # bounded: random invalid keys must not grow memory
            self._cache.clear()
        self._cache[h] = (now, role)
        return role


class Authenticator:
    """Checks a request's key against a required role; disabled only in insecure dev mode."""

    def __init__(self, store: ApiKeyStore | None, *, enabled: bool = True) -> None:
        self.store = store
        self.enabled = enabled and store is not None

    def check(self, key: str | None, required: str) -> str:
        """The caller's role if it may act as ``required``; raises 401/403 otherwise."""
        if not self.enabled:
            return "admin"
        if not key:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                "(create one with `scalerec keys create --role read`)"
            )
        assert self.store is not None
        role = self.store.role_of(key)
        if role is None:
            raise AuthenticationError("invalid or revoked API key; create a new one with `scalerec keys create`")
        if ROLE_LEVEL[role] < ROLE_LEVEL[required]:
            raise PermissionDeniedError(
                f"this key has role {role!r} but the endpoint needs {required!r}; use a key with that role",
                details={"role": role, "required": required},
            )
        return role
