"""The ranker's forest compiled to machine code with lleaves (LLVM), when that extra is installed.

LightGBM walks its trees node by node; with 150 trees that is most of a served request's rerank
cost. ``scalerec train`` compiles the booster once into the version directory (``booster.so``,
``[ranking] compile``); serving loads it when present and falls back to LightGBM otherwise. The
code is generated for baseline x86-64 (no host-specific instructions), so the file runs on any
x86-64 machine that serves the version, not only the one that trained it. Predictions equal
LightGBM's to float rounding (tests/ranking/test_compiled.py).

Install with ``pip install 'scalerec[fast-ranker]'`` (lleaves 1.3 needs llvmlite < 0.44: it uses
LLVM's legacy pass manager, which later llvmlite releases removed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FILE = "booster.so"
META = "compiled.json"
#: the code's target: baseline x86-64, portable across hosts of that architecture
TARGET_CPU = "x86-64"
_MACHINES = ("x86_64", "AMD64")


def compile_forest(root: Path) -> dict[str, Any]:
    """Compile ``root/booster.txt`` next to it; what happened (``status``: compiled / skipped, why)."""
    try:
        import lleaves
    except ImportError:
        return {"status": "skipped", "reason": "lleaves is not installed (pip install 'scalerec[fast-ranker]')"}
    if platform.machine() not in _MACHINES:
        return {"status": "skipped", "reason": f"compiled forests are built for x86-64, this is {platform.machine()}"}
    t = time.perf_counter()
    model = lleaves.Model(model_file=str(root / "booster.txt"))
    # no inlining: ~9 s instead of 15-120 s to compile 150 trees here, at about the same scoring speed
    model.compile(cache=str(root / FILE), target_cpu=TARGET_CPU, target_cpu_features="", finline=False)
    meta = {"status": "compiled", "target_cpu": TARGET_CPU, "machine": platform.machine(), "sha256": _sha256(root / FILE),
            "lleaves": getattr(lleaves, "__version__", "?"), "seconds": round(time.perf_counter() - t, 1)}
    (root / META).write_text(json.dumps(meta))
    return meta


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_predictor(root: Path) -> Callable[[np.ndarray], np.ndarray] | None:
    """The compiled forest of a version's ranking folder as ``x -> scores`` (one thread), or None
    (not compiled, another architecture, lleaves absent or unable to load it: use LightGBM)."""
    meta_path, so = root / META, root / FILE
    if not meta_path.is_file() or not so.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("machine") not in _MACHINES or platform.machine() not in _MACHINES:
        return None
    if meta.get("sha256") != _sha256(so):  # LLVM aborts the process on a damaged object file: never hand it one
        log.warning("compiled ranker in %s does not match its checksum; LightGBM scores instead", root)
        return None
    try:
        import lleaves

        model = lleaves.Model(model_file=str(root / "booster.txt"))
        model.compile(cache=str(so))  # the file exists: loaded, not compiled again
    except Exception as exc:  # a broken or foreign file must not stop serving: LightGBM scores instead
        log.warning("compiled ranker in %s not used (%s); LightGBM scores instead", root, exc)
        return None
    return lambda x: model.predict(x, n_jobs=1)
