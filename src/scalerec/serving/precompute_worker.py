"""The process that writes a version's precomputed candidate lists (:mod:`scalerec.serving.precomputed`)
for a serving worker: started at the lowest CPU priority, it loads the version itself (the same
memory-mapped files and cached index), so the minutes of searching at the issue's size neither
take the serving workers' cores from their requests nor hold a worker's GIL.

    python -m scalerec.serving.precompute_worker VERSION K MAX_USERS   (settings JSON in $SCALEREC_PRECOMPUTE_SETTINGS)

It exits (the partial files removed) when the worker that started it is gone.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The environment variable carrying the settings (JSON) of the serving process.
SETTINGS_ENV = "SCALEREC_PRECOMPUTE_SETTINGS"


def command(settings: Any, version: str) -> Callable[[int, int], tuple[list[str], dict[str, str]]]:
    """``builder`` for :func:`scalerec.serving.precomputed.attach`: this module's command line and
    the environment entry that carries ``settings``."""
    env = {SETTINGS_ENV: json.dumps(settings.model_dump(mode="json"))}

    def build(k: int, max_users: int) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-m", "scalerec.serving.precompute_worker", version, str(k), str(max_users)], env

    return build


def main(argv: list[str]) -> int:
    if hasattr(os, "nice"):
        os.nice(19)  # the serving workers' requests first: this runs on the cycles they leave
    version, k, max_users = argv[0], int(argv[1]), int(argv[2])
    parent = os.getppid()

    from scalerec.config import Settings
    from scalerec.registry import Registry
    from scalerec.serving import precomputed
    from scalerec.serving.index import retriever_for

    settings = Settings(**json.loads(os.environ[SETTINGS_ENV]))
    data = Path(settings.data.dir)
    lv = Registry(settings, read_only=True).load(version, mmap=True)
    retriever = retriever_for(lv.model, exact_max_items=settings.serving.exact_index_max_items,
                              cache_path=data / "serving" / "index" / f"{version}.faiss")
    m = lv.matrix.matrix
    try:
        precomputed.ensure_written(data / "serving" / "candidates", version, retriever, m.indptr, m.indices,
                                   m.shape[1], k=k, max_users=max_users, stop=lambda: os.getppid() != parent)
    except precomputed.Stopped:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
