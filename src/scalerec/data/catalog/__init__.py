"""The catalogue database behind one interface: items, users, pending events, metadata, the
serving change feed, API keys, model stages and user-deletion tombstones.

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

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from scalerec.data.catalog import urls as _urls
from scalerec.data.catalog.urls import (  # noqa: F401  (re-exported: the one URL parser)
    CatalogURL,
    Factory,
    parse_catalog_url,
    register_backend,
    supported_schemes,
)

__all__ = [
    "ApiKeyTable",
    "CatalogStore",
    "CatalogURL",
    "ChangeFeedStore",
    "ModelStageTable",
    "SqliteCatalog",
    "StageTransaction",
    "TombstoneTable",
    "catalog_exists",
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
    def prune_recent_events(
        self, before_us: int, *, batch_rows: int = 2_000, stop: Callable[[], bool] | None = None
    ) -> int: ...
    def prune_changes(
        self, before_iso: str, *, batch_rows: int = 2_000, stop: Callable[[], bool] | None = None
    ) -> int: ...
    def changes_pruned_upto(self) -> int: ...
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
class TombstoneTable(Protocol):
    """Durable per-user deletion records (see ``DataStore.delete_user``): written first (unfinished,
    ``deleted_at`` None) so a crash leaves the user masked, finished with the time the data was gone
    and a JSON report. ``seq`` grows on every write so serving polls one number. Both writes also
    record a ``user_deleted`` change."""

    def begin_user_deletion(self, user_id: str, at_us: int) -> None: ...
    def finish_user_deletion(self, user_id: str, deleted_at_us: int, report: dict[str, Any]) -> None: ...
    def user_tombstone(self, user_id: str) -> dict[str, Any] | None: ...
    def user_tombstones(self, since_seq: int = 0) -> list[tuple[int, str, int | None]]: ...
    def tombstone_head(self) -> int: ...
    def unfinished_user_deletions(self) -> list[str]: ...
    def count_recent_events(self, user_id: str) -> int: ...
    def count_user_pending_events(self, user_id: str) -> int: ...


@runtime_checkable
class CatalogStore(ChangeFeedStore, ApiKeyTable, ModelStageTable, TombstoneTable, Protocol):
    """What every catalogue backend provides (see SqliteCatalog for the semantics)."""

    url: str

    def upsert_items(self, table: pa.Table | Iterable[pa.Table]) -> int: ...
    def upsert_users(self, table: pa.Table | Iterable[pa.Table]) -> int: ...
    def get_item(self, item_id: str) -> dict[str, Any] | None: ...
    def item_availability(self, item_ids: Sequence[str]) -> dict[str, bool]: ...
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


# --------------------------------------------------------------------------------------------
# URLs and the backend registry


def catalog_exists(url: str | Path | CatalogURL) -> bool:
    """False only for a file backend whose file is missing (a read-only open cannot create it)."""
    parsed = url if isinstance(url, CatalogURL) else parse_catalog_url(url)
    return parsed.path is None or Path(parsed.path).is_file()


def open_catalog(url: str | Path | CatalogURL, *, create_dirs: bool = False, read_only: bool = False) -> CatalogStore:
    """Open the catalogue store named by ``url`` (``sqlite:///PATH``; a plain path means SQLite).

    ``create_dirs`` creates a file backend's missing parent directory (else StorageError).
    ``read_only`` opens it for reading only (no schema migration, never the write lock; writes
    raise StorageError): for commands that only report, so they run while another process writes.
    """
    parsed = url if isinstance(url, CatalogURL) else parse_catalog_url(url)
    factory = _urls._BACKENDS[parsed.scheme].resolve()
    if read_only:
        return factory(parsed, create_dirs=False, read_only=True)
    return factory(parsed, create_dirs=create_dirs)


def __getattr__(name: str) -> Any:
    # Backends load lazily (a PostgreSQL driver only when used); SqliteCatalog is re-exported here.
    if name == "SqliteCatalog":
        from scalerec.data.catalog.sqlite import SqliteCatalog

        return SqliteCatalog
    if name == "SUPPORTED_SCHEMES":
        return supported_schemes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
