"""Typed exceptions: each carries its HTTP status and renders one JSON error shape."""

from __future__ import annotations

from typing import Any


class ScalerecError(Exception):
    """Base of every error scalerec raises on purpose.

    ``status`` is the HTTP status the API answers with; ``type`` is the stable machine name in
    the JSON error shape ``{"error": {"type", "message", "details"}}``.
    """

    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, "details": self.details}}


class ConfigError(ScalerecError):
    """A setting is wrong: the message names the key, the value and what is allowed."""

    status = 500
    type = "config_error"


class ValidationError(ScalerecError, ValueError):
    """Input data or a request is malformed."""

    status = 422
    type = "validation_error"


class DataImportError(ValidationError):
    """An import found bad rows; ``details`` lists the first ones with line numbers and reasons."""

    type = "import_error"


class EmptyDataError(ValidationError):
    """There is no data where some is needed (an empty file, an empty split, an empty window)."""

    type = "empty_data"


class NotFoundError(ScalerecError, LookupError):
    status = 404
    type = "not_found"


class UnknownUserError(NotFoundError):
    type = "unknown_user"


class UnknownItemError(NotFoundError):
    type = "unknown_item"


class ModelNotFoundError(NotFoundError):
    type = "model_not_found"


class NotFittedError(ScalerecError, ValueError):
    """A model was used before ``fit`` (or ``load``)."""

    status = 503
    type = "not_fitted"


class ModelCapacityError(ValidationError):
    """A model refuses data of this size (for example EASE above its item limit)."""

    type = "model_capacity"


class ConflictError(ScalerecError):
    status = 409
    type = "conflict"


class LeaseLostError(ConflictError):
    """A job's lease (see scalerec.data.lease) expired and another holder took it: the job stopped
    between two blocks, before writing anything further (nothing partial is left)."""

    type = "lease_lost"


class AuthenticationError(ScalerecError):
    status = 401
    type = "unauthenticated"


class PermissionDeniedError(ScalerecError):
    status = 403
    type = "forbidden"


class PayloadTooLargeError(ScalerecError):
    status = 413
    type = "payload_too_large"


class UnsupportedMediaTypeError(ScalerecError):
    """A request body is not in the media type the endpoint reads (JSON)."""

    status = 415
    type = "unsupported_media_type"


class RateLimitedError(ScalerecError):
    """Too many requests (e.g. failed authentications) from one client; retry after ``retry_after`` s."""

    status = 429
    type = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class ServiceUnavailableError(ScalerecError):
    status = 503
    type = "unavailable"


class StorageError(ScalerecError):
    """The data directory is unusable (corrupt file, locked database, disk full)."""

    status = 500
    type = "storage_error"


class StorageBusyError(StorageError):
    """The catalogue database stayed locked by another writer past the busy timeout; retrying may work
    (503 with Retry-After: lock contention is not a crash)."""

    status = 503
    type = "storage_busy"


class RuleError(ValidationError):
    """A merchandising rule does not parse or names something unknown; ``details`` holds the rule,
    the 0-based ``position`` of the problem and a one-line pointer to it."""

    type = "invalid_rule"

    def __init__(self, message: str, *, rule: str, position: int, field: str | None = None) -> None:
        pointer = f"{rule}\n{' ' * position}^"
        where = f"{field}: " if field else ""
        super().__init__(
            f"{where}invalid rule at position {position} (column {position + 1}): {message}",
            details={"rule": rule, "position": position, "column": position + 1, "field": field,
                     "problem": message, "pointer": pointer},
        )
        self.position = position
