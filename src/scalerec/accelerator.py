"""One factory for the GPU path: the GPU builds of implicit (ALS) and FAISS (IVF search) when present.

``accelerator(device)`` answers, for the two components that have GPU builds, whether to use them:

- ``"auto"`` (default): the GPU build where it is installed and sees a device, the CPU one otherwise;
- ``"cpu"``: always the CPU builds;
- ``"gpu"``: the GPU builds, or :class:`~scalerec.errors.ConfigError` saying which one is missing.

The setting is the ``device`` argument, else the ``SCALEREC_DEVICE`` environment variable (so a
training job, a serving worker and a Ray worker all read the same choice), else ``"auto"``.
Only FAISS's IVF index has a GPU build; HNSW always searches on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from scalerec.errors import ConfigError

Device = Literal["auto", "cpu", "gpu"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
#: the environment variable that sets the device when no argument does
DEVICE_ENV = "SCALEREC_DEVICE"


@lru_cache(maxsize=1)
def _implicit_gpu() -> str | None:
    """None when implicit's CUDA build is usable, else why not (probed once per process)."""
    try:
        import implicit.gpu
    except ImportError as exc:  # pragma: no cover - implicit is a core dependency
        return f"implicit is not importable ({exc})"
    if not implicit.gpu.HAS_CUDA:
        return "implicit was built without CUDA (pip's implicit wheel is CPU-only; install implicit from conda-forge with CUDA)"
    return None


@lru_cache(maxsize=1)
def _faiss_gpu() -> str | None:
    """None when FAISS's GPU build sees at least one device, else why not."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is a core dependency
        return f"faiss is not importable ({exc})"
    if not hasattr(faiss, "index_cpu_to_all_gpus") or not hasattr(faiss, "get_num_gpus"):
        return "faiss is the CPU build (install faiss-gpu)"
    if faiss.get_num_gpus() < 1:
        return "faiss sees no GPU"
    return None


@dataclass(frozen=True)
class Accelerator:
    """The choice for each component: ``als_gpu`` / ``faiss_gpu``, and why the CPU where it is the CPU."""

    device: str
    als_gpu: bool
    faiss_gpu: bool
    reasons: dict[str, str]

    def als_class(self) -> type:
        """implicit's ALS class to fit with: ``implicit.gpu.als`` or ``implicit.cpu.als``."""
        if self.als_gpu:
            from implicit.gpu.als import AlternatingLeastSquares
        else:
            from implicit.cpu.als import AlternatingLeastSquares
        return AlternatingLeastSquares

    def faiss_index(self, index: Any, kind: str) -> Any:
        """``index`` moved to every GPU when FAISS's GPU build is chosen and ``kind`` has one (IVF)."""
        if not (self.faiss_gpu and kind == "ivf"):
            return index
        import faiss

        return faiss.index_cpu_to_all_gpus(index)

    def describe(self) -> dict[str, str]:
        """``{"als": "gpu" | "cpu: why", "faiss": ...}`` for logs and model metadata."""
        return {
            name: "gpu" if on else f"cpu: {self.reasons.get(name, 'device=cpu')}"
            for name, on in (("als", self.als_gpu), ("faiss", self.faiss_gpu))
        }


def faiss_to_cpu(index: Any) -> Any:
    """A CPU copy of a FAISS index that may live on the GPU (for writing it to disk)."""
    import faiss

    if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
        return faiss.index_gpu_to_cpu(index)
    return index


def accelerator(device: str | None = None) -> Accelerator:
    """The builds to use under ``device`` (argument, else ``$SCALEREC_DEVICE``, else ``"auto"``).

    Raises ConfigError for an unknown device, and for ``"gpu"`` when a GPU build is missing
    (the message names each missing one and how to install it).
    """
    chosen = (device if device is not None else os.environ.get(DEVICE_ENV, "auto")).strip().lower()
    if chosen not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES} (argument or ${DEVICE_ENV}), got {chosen!r}")
    if chosen == "cpu":
        return Accelerator("cpu", False, False, {"als": "device=cpu", "faiss": "device=cpu"})
    missing = {name: why for name, why in (("als", _implicit_gpu()), ("faiss", _faiss_gpu())) if why is not None}
    if chosen == "gpu" and missing:
        detail = "; ".join(f"{name}: {why}" for name, why in missing.items())
        raise ConfigError(
            f"device=gpu was asked but the GPU builds are not usable here ({detail}); "
            f"set device=auto (or unset ${DEVICE_ENV}) to fall back to the CPU"
        )
    return Accelerator(chosen, "als" not in missing, "faiss" not in missing, missing)
