"""Named registries that plug-ins fill (import presets, evaluation splits), and the loading of the
built-in plug-ins (``scalerec.datasets``) on a registry's first lookup, so the core never names them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from scalerec.errors import ConfigError, ScalerecError

__all__ = ["BUILTIN_PLUGINS", "NamedRegistry", "load_builtin_plugins"]

#: The package whose import registers the built-in presets and splits.
BUILTIN_PLUGINS = "scalerec.datasets"
_loaded = False

T = TypeVar("T")


def load_builtin_plugins() -> None:
    """Import the built-in plug-ins once (they register themselves)."""
    global _loaded
    if not _loaded:
        _loaded = True
        importlib.import_module(BUILTIN_PLUGINS)


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class NamedRegistry(Generic[T]):
    """Entries by name, in registration order; names and aliases match ignoring case and '_' vs '-'.

    ``unknown(name, names)`` builds the error raised for a name nobody registered.
    """

    def __init__(self, what: str, unknown: Callable[[str, tuple[str, ...]], ScalerecError]) -> None:
        self.what = what
        self._unknown = unknown
        self._entries: dict[str, T] = {}
        self._keys: dict[str, str] = {}  # normalised name or alias -> name

    def add(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        """Register ``entry``; the same name again replaces it (and its aliases). ConfigError when
        the name or an alias belongs to another entry."""
        keys = {_key(name), *map(_key, aliases)}
        for key in keys:
            owner = self._keys.get(key)
            if owner is not None and owner != name:
                raise ConfigError(
                    f"{self.what} name {key!r} is taken by {self.what} {owner!r}; register {name!r} under another name"
                )
        for key in [k for k, v in self._keys.items() if v == name]:
            del self._keys[key]
        self._entries[name] = entry
        self._keys.update(dict.fromkeys(keys, name))
        return entry

    def get(self, name: str) -> T:
        load_builtin_plugins()
        owner = self._keys.get(_key(name))
        if owner is None:
            raise self._unknown(name, tuple(self._entries))
        return self._entries[owner]

    def names(self) -> tuple[str, ...]:
        load_builtin_plugins()
        return tuple(self._entries)

    def entries(self) -> list[T]:
        load_builtin_plugins()
        return list(self._entries.values())

    def snapshot(self) -> tuple[dict[str, T], dict[str, str]]:
        """The current state, for ``restore`` (tests that register throw-away entries)."""
        return dict(self._entries), dict(self._keys)

    def restore(self, state: tuple[dict[str, T], dict[str, str]]) -> None:
        self._entries, self._keys = dict(state[0]), dict(state[1])
