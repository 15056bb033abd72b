"""scalerec: a self-hosted, scalable recommendation engine for online stores.

In a notebook: ``scalerec.fit(frame_or_store, "ease")``, ``scalerec.evaluate(...)``,
``scalerec.open_store(dir)``, ``scalerec.load_production(dir)``, ``scalerec.models`` (the families);
see docs/python-api.md.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["Model", "__version__", "evaluate", "events_table", "fit", "load_production", "models", "open_store"]

_API = {"Model", "evaluate", "events_table", "fit", "load_production", "open_store"}


def __getattr__(name: str) -> Any:
    # Imported on first use: `python -m scalerec` and worker processes must not pay for the models.
    if name in _API:
        from scalerec import api

        return getattr(api, name)
    if name == "models":
        import importlib

        return importlib.import_module("scalerec.models")
    raise AttributeError(f"module 'scalerec' has no attribute {name!r}")
