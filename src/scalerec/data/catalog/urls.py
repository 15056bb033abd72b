"""Catalogue URLs: the scheme registry and the one parser (apart from the protocol so that backends
import it without importing the package that loads them)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalerec.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.data.catalog import CatalogStore


@dataclass(frozen=True)
class CatalogURL:
    """A parsed catalogue URL: ``scheme``, the ``url`` as given (canonical for a plain path), and
    for file backends (``scheme:///PATH``) the ``path``."""

    scheme: str
    url: str
    path: str | None = None


#: A backend factory: the parsed URL and whether to create missing parent directories.
Factory = Callable[..., "CatalogStore"]


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
    "postgresql": _Backend("scalerec.data.catalog.postgresql:PostgresCatalog.from_url", "postgresql://HOST/DB", False),
    "postgres": _Backend("scalerec.data.catalog.postgresql:PostgresCatalog.from_url", "postgres://HOST/DB", False),
}


def register_backend(scheme: str, factory: Factory | str, *, usage: str, needs_path: bool = False) -> None:
    """Make ``open_catalog`` open ``scheme://...`` URLs with ``factory(CatalogURL, create_dirs=bool)``.

    ``usage`` is the URL form shown in errors; ``needs_path`` marks file backends
    (``scheme:///PATH``, the part after the third slash is the path).
    """
    _BACKENDS[scheme.lower()] = _Backend(factory, usage, needs_path)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return str(url)
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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
