"""Data layer: entities and validation, event log, catalogue store, importers, generator, matrices."""

import os as _os

# Bulk imports and generation allocate and free ~100 MB of Arrow buffers per chunk. With Arrow's
# default allocator (mimalloc) purging freed pages after 10 ms, every chunk faulted them back in:
# ~20% of an import's CPU was kernel page-fault time. A 1 s delay keeps them across chunks
# (read lazily by mimalloc, so setting it here still applies; an explicit value wins).
_os.environ.setdefault("MIMALLOC_PURGE_DELAY", "1000")
