"""Which model versions hold a deleted user, and which of them must not serve that user.

A deletion leaves a tombstone (``user_tombstones`` in the catalogue): unfinished while it runs,
then finished at ``deleted_at``, the time the user's data was gone from the event log, the pending
buffer and the catalogue. The rule, applied at every model load and change-feed poll:

- an unfinished tombstone masks the user in every version (a crash mid-deletion stays safe);
- a finished one masks the user in every version whose data is older than ``deleted_at``
  (data time = the earlier of the snapshot's newest event and the version's creation): such a
  version was trained on the deleted data. A version trained later holds only events stored after
  the deletion: those of a *new* user under the same id (a user who comes back), not masked.

A masked user is served exactly like an id the model never saw (the fallback list, the same
reasons), so responses do not reveal that the user existed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["masked_users", "masks", "version_data_time_us", "versions_holding"]

#: A tombstone as serving reads it: (user_id, deleted_at_us or None while unfinished).
Tombstone = tuple[str, "int | None"]


def version_data_time_us(manifest: dict[str, Any]) -> int | None:
    """When a version's data ends (UTC microseconds): min(snapshot end, created_at); None if unknown."""
    from scalerec.registry.manifest import Manifest, parse_time

    typed = Manifest.from_dict(manifest)
    times = [t for t in (typed.snapshot_end, parse_time(manifest.get("created_at"))) if t is not None]
    return int(min(times).timestamp() * 1_000_000) if times else None


def masked_users(vocab: np.ndarray, tombstones: Iterable[Tombstone], data_time_us: int | None) -> frozenset[str]:
    """The users of ``vocab`` (a version's sorted user ids) that the tombstones mask (see the module)."""
    rows = list(tombstones)
    if not rows or len(vocab) == 0:
        return frozenset()
    ids = np.array([r[0] for r in rows], dtype=str)
    when = np.array([-1 if r[1] is None else r[1] for r in rows], dtype=np.int64)
    pos = np.minimum(np.searchsorted(vocab, ids), len(vocab) - 1)
    held = np.asarray(vocab[pos]) == ids
    hide = np.ones(len(rows), bool) if data_time_us is None else (when < 0) | (when >= data_time_us)
    return frozenset(ids[held & hide].tolist())


def versions_holding(models_dir: Path, user_id: str) -> list[dict[str, Any]]:
    """Versions under ``models_dir`` whose training matrix has a row for ``user_id``:
    ``{"version", "data_time_us", "created_at"}`` each, oldest first (vocabularies memory-mapped)."""
    out: list[dict[str, Any]] = []
    if not models_dir.is_dir():
        return out
    for d in sorted(models_dir.iterdir()):
        vocab_path = d / "matrix" / "user_ids.npy"
        if d.name.startswith(".") or not vocab_path.is_file():
            continue
        try:
            vocab = np.load(vocab_path, mmap_mode="r", allow_pickle=False)
            manifest = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            continue  # a broken version is never served (the registry's health check)
        if len(vocab) and bool(np.asarray(vocab[min(int(np.searchsorted(vocab, user_id)), len(vocab) - 1)]) == user_id):
            out.append({"version": d.name, "data_time_us": version_data_time_us(manifest),
                        "created_at": manifest.get("created_at")})
    return out


def masks(deleted_at_us: int | None, data_time_us: int | None) -> bool:
    """Whether a tombstone (finished at ``deleted_at_us``, None: unfinished) masks a version's row."""
    return deleted_at_us is None or data_time_us is None or deleted_at_us >= data_time_us
