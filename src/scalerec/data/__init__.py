"""Data layer: entities and validation, event log, catalogue store, importers, generator, matrices."""

import os as _os

# Keep freed Arrow pages across import chunks, not faulted back in (read lazily; explicit wins).
_os.environ.setdefault("MIMALLOC_PURGE_DELAY", "1000")
