"""Event types whose values an import mapped: the store remembers them and their values weight the matrix.

A user who maps a value column (play counts, quantities) onto a type that counts by its weight only
(``view``, ``click``, ... by default) means the values to count. The import records such types in the
catalogue (:func:`record`); :func:`with_store_value_types` turns ``use_value`` on for them in the
settings a command runs with, so training, evaluation and serving's fold-in weight those events by
their value. A ``use_value`` that ``scalerec.toml`` sets for the type itself wins: then the import
says the values are ignored and how to count them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from scalerec.config import Settings

#: catalogue metadata key: a JSON list of event type names
META_KEY = "events.value_types"


def recorded(catalog: Any) -> list[str]:
    """The event types whose values imports mapped (sorted)."""
    raw = catalog.get_meta(META_KEY)
    return sorted(json.loads(raw)) if raw else []


def record(catalog: Any, types: Iterable[str]) -> None:
    """Add ``types`` to the recorded ones (a union: an import never takes one back)."""
    new = set(types)
    if new and not new <= set(recorded(catalog)):
        catalog.set_meta(META_KEY, json.dumps(sorted(new | set(recorded(catalog)))))


def configured_off(settings: Settings, event_type: str) -> bool:
    """True when scalerec.toml itself says ``use_value = false`` for this type (not only the default)."""
    t = settings.events.types.get(event_type)
    return t is not None and "use_value" in t.model_fields_set and not t.use_value


def weighted_by_import(settings: Settings, types: Iterable[str]) -> list[str]:
    """Of ``types`` (types a mapped value column came with), those the import makes count by value:
    configured, not using their value yet, and not configured off."""
    ev = settings.events.types
    return sorted(t for t in set(types) if t in ev and not ev[t].use_value and not configured_off(settings, t))


def with_store_value_types(settings: Settings, catalog: Any) -> Settings:
    """``settings`` with ``use_value`` on for the store's recorded types (unless configured off)."""
    turn_on = weighted_by_import(settings, recorded(catalog))
    if not turn_on:
        return settings
    types = dict(settings.events.types)
    for t in turn_on:
        types[t] = types[t].model_copy(update={"use_value": True})
    return settings.model_copy(update={"events": settings.events.model_copy(update={"types": types})})
