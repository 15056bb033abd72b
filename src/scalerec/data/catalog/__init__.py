"""The catalogue database behind one interface: items, users, pending events, metadata, the
serving change feed, API keys and model stages.

``open_catalog(url)`` parses the URL here (the one parser) and hands it to the backend registered
for its scheme; ``sqlite:///PATH`` (the default, ``<data_dir>/catalog.db``) is
:class:`~scalerec.data.catalog.sqlite.SqliteCatalog`. A new backend is one module that implements
:class:`CatalogStore` and calls :func:`register_backend` (or is listed in ``_BUILTIN``).

Tables cross the interface as pyarrow tables in ITEM_SCHEMA / USER_SCHEMA / EVENT_SCHEMA; single
rows as plain dicts or tuples. Backends raise :class:`~scalerec.errors.StorageError` (its subclass
:class:`~scalerec.errors.StorageBusyError` when another writer held the database too long), never
their driver's exceptions.

Pending events are the write-ahead buffer of events posted over HTTP: ``add_pending_events``
returns only once they are durable. A compactor moves them into the event log with
``drain_pending_events`` (claims a batch under a token) → write the batch to the log →
``ack_pending(token)`` (deletes it). See ``DataStore.flush_pending`` for how a crash between those
steps is resolved without losing or duplicating events.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from scalerec.errors import ConfigError

__all__ = [
    "ApiKeyTable",
    "CatalogStore",
    "CatalogURL",
    "ChangeFeedStore",
    "ModelStageTable",
    "SqliteCatalog",
    "StageTransaction",
    "SUPPORTED_SCHEMES",
    "open_catalog",
    "parse_catalog_url",
    "register_backend",
    "supported_schemes",
]


# --------------------------------------------------------------------------------------------
# the protocol


@runtime_checkable
class ChangeFeedStore(Protocol):
    """What serving reads to follow the catalogue: a sequence of changes (kind, key) that the
    backend records itself on every write to items and users (by any writer), and the recent events
    of users that the served model may not know yet (pending events + compacted ones kept until a
    model trained on them is in production). Times are UTC microseconds; ``since_us`` bounds are
    inclusive."""

    def change_head(self) -> int: ...
    def changes_since(self, cursor: int, limit: int = 100_000) -> list[tuple[int, str, str]]: ...
    def record_change(self, kind: str, key: str) -> None: ...
    def deleted_users_since(self, since_iso: str | None) -> set[str]: ...
    def recent_user_events(self, user_id: str, since_us: int, limit: int) -> list[tuple[str, str, float]]: ...
    def forget_recent_events(self, user_id: str) -> int: ...
    def prune_recent_events(self, before_us: int) -> int: ...
    def pending_head(self) -> int: ...
    def fresh_users_snapshot(self, since_us: int) -> tuple[int, list[str]]: ...
    def fresh_users_between(self, after_id: int, upto_id: int, since_us: int) -> list[str]: ...


@runtime_checkable
class ApiKeyTable(Protocol):
    """Hashed API keys; rows are (key_id, role, name, created_at, revoked_at)."""

    def add_api_key(self, key_id: str, key_hash: str, role: str, name: str | None, created_at: str) -> None: ...
    def api_key_rows(self, include_revoked: bool = True) -> list[tuple[str, str, str | None, str, str | None]]: ...
    def count_active_api_keys(self) -> int: ...
    def revoke_api_key(self, key_id: str, at: str) -> bool | None: ...
    def api_key_role(self, key_hash: str) -> str | None: ...


class StageTransaction(Protocol):
    """The model-stage writes that must commit together (with the caller's file step inside)."""

    def version_names(self) -> list[str]: ...
    def insert_version(self, row: dict[str, Any]) -> None: ...
    def promote(self, version: str, at: str, *, forced: bool, note: str | None) -> None: ...
    def restore(self, current: str, target: str, at: str) -> None: ...
    def delete_version(self, version: str) -> None: ...


@runtime_checkable
class ModelStageTable(Protocol):
    """The registry's stage table: one dict per version (columns of ``model_versions``)."""

    def model_versions(self, stage: str | None = None) -> list[dict[str, Any]]: ...
    def model_version(self, version: str) -> dict[str, Any] | None: ...
    def production_version(self) -> dict[str, Any] | None: ...
    def promoted_before(self, promoted_at: str) -> list[dict[str, Any]]: ...
    def adopt_model_version(self, row: dict[str, Any]) -> bool: ...
    def stage_transaction(self) -> AbstractContextManager[StageTransaction]: ...


@runtime_checkable
class CatalogStore(ChangeFeedStore, ApiKeyTable, ModelStageTable, Protocol):
    """What every catalogue backend provides (see SqliteCatalog for the semantics)."""

    url: str

    def upsert_items(self, table: pa.Table | Iterable[pa.Table]) -> int: ...
    def upsert_users(self, table: pa.Table | Iterable[pa.Table]) -> int: ...
    def get_item(self, item_id: str) -> dict[str, Any] | None: ...
    def get_user(self, user_id: str) -> dict[str, Any] | None: ...
    def delete_item(self, item_id: str) -> bool: ...
    def delete_user(self, user_id: str) -> bool: ...
    def patch_item(self, item_id: str, **fields: Any) -> dict[str, Any]: ...
    def items_table(self, columns: Sequence[str] | None = None) -> pa.Table: ...
    def users_table(self) -> pa.Table: ...
    def count_items(self) -> int: ...
    def count_users(self) -> int: ...
    def add_pending_events(self, table: pa.Table) -> int: ...
    def pending_events_table(self, *, user_id: str | None = None) -> pa.Table: ...
    def count_pending_events(self) -> int: ...
    def drain_pending_events(self, max_rows: int) -> tuple[pa.Table, str]: ...
    def ack_pending(self, token: str) -> int: ...
    def release_pending(self, token: str | None = None) -> int: ...
    def pending_claims(self) -> list[str]: ...
    def claimed_pending_table(self, token: str) -> pa.Table: ...
    def delete_user_pending_events(self, user_id: str) -> int: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str | None) -> None: ...
    def close(self) -> None: ...
    # ingestion: an event batch stored with its Idempotency-Key in one transaction; import fingerprints
    def add_pending_events_once(
        self, table: pa.Table, key: str, body_hash: str, response: str, *, now_us: int, retention_us: int
    ) -> tuple[bool, str, str]: ...
    def import_fingerprint(self, fingerprint: str) -> dict[str, Any] | None: ...
    def record_import_fingerprint(self, fingerprint: str, txid: str, source: str, rows: int, imported_at: str) -> None: ...


# --------------------------------------------------------------------------------------------
# URLs and the backend registry


@dataclass(frozen=True)
class CatalogURL:
    """A parsed catalogue URL: ``scheme``, the ``url`` as given (canonical for a plain path), and
    for file backends (``scheme:///PATH``) the ``path``."""

    scheme: str
    url: str
    path: str | None = None


#: A backend factory: the parsed URL and whether to create missing parent directories.
Factory = Callable[..., CatalogStore]


@dataclass
class _Backend:
    factory: Factory | str  # "module:attr" is imported on first use (drivers load only when used)
    usage: str
    needs_path: bool

    def resolve(self) -> Factory:
        if isinstance(self.factory, str):
            module, attr = self.factory.split(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self.factory = obj
        return self.factory


_BACKENDS: dict[str, _Backend] = {
    "sqlite": _Backend("scalerec.data.catalog.sqlite:SqliteCatalog.from_url", "sqlite:///PATH", True),
}


def register_backend(scheme: str, factory: Factory | str, *, usage: str, needs_path: bool = False) -> None:
    """Make ``open_catalog`` open ``scheme://...`` URLs with ``factory(CatalogURL, create_dirs=bool)``.

    ``usage`` is the URL form shown in errors; ``needs_path`` marks file backends
    (``scheme:///PATH``, the part after the third slash is the path).
    """
    _BACKENDS[scheme.lower()] = _Backend(factory, usage, needs_path)


def supported_schemes() -> tuple[str, ...]:
    """The URL forms of the registered backends (for messages)."""
    return tuple(b.usage for b in _BACKENDS.values())


def parse_catalog_url(url: str | Path) -> CatalogURL:
    """Parse a catalogue URL; a plain path (or Path) means a SQLite file. ConfigError when malformed
    or of an unregistered scheme."""
    if isinstance(url, Path):
        return CatalogURL("sqlite", f"sqlite:///{url}", str(url))
    text = str(url)
    if "://" not in text:
        if not text:
            raise ConfigError("empty catalogue URL; use sqlite:///PATH")
        return CatalogURL("sqlite", f"sqlite:///{text}", text)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    backend = _BACKENDS.get(scheme)
    if backend is None:
        raise ConfigError(
            f"unsupported catalogue URL scheme {scheme!r} in {text!r}; supported: {', '.join(supported_schemes())}"
        )
    if not backend.needs_path:
        return CatalogURL(scheme, text)
    if not rest.startswith("/") or len(rest) == 1:
        raise ConfigError(
            f"catalogue URL {text!r} has no path; use {scheme}:///relative/path.db or {scheme}:////abs/path.db"
        )
    return CatalogURL(scheme, text, rest[1:])


def open_catalog(url: str | Path | CatalogURL, *, create_dirs: bool = False) -> CatalogStore:
    """Open the catalogue store named by ``url`` (``sqlite:///PATH``; a plain path means SQLite).

    ``create_dirs`` creates a file backend's missing parent directory (else StorageError).
    """
    parsed = url if isinstance(url, CatalogURL) else parse_catalog_url(url)
    return _BACKENDS[parsed.scheme].resolve()(parsed, create_dirs=create_dirs)


def __getattr__(name: str) -> Any:
    # Backends load lazily (a PostgreSQL driver only when used); SqliteCatalog is re-exported here.
    if name == "SqliteCatalog":
        from scalerec.data.catalog.sqlite import SqliteCatalog

        return SqliteCatalog
    if name == "SUPPORTED_SCHEMES":
        return supported_schemes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
