"""The GPU/CPU factory: the CPU choice, the forced settings, and the error when a GPU is asked and absent."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scalerec.accelerator import DEVICE_ENV, _faiss_gpu, _implicit_gpu, accelerator, faiss_to_cpu
from scalerec.errors import ConfigError
from scalerec.models.als import ALS
from scalerec.serving.index import ExactIndex, FaissIndex

GPU_BUILDS = _implicit_gpu() is None and _faiss_gpu() is None


def _matrix() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 60, 900), rng.integers(0, 40, 900)
    C = sp.csr_matrix((np.ones(900, dtype=np.float32), (rows, cols)), shape=(60, 40))
    C.sum_duplicates()
    return C


def test_cpu_forced_picks_the_cpu_builds() -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    acc = accelerator("cpu")
    assert not acc.als_gpu and not acc.faiss_gpu
    assert acc.als_class() is AlternatingLeastSquares
    index = object()
    assert acc.faiss_index(index, "ivf") is index
    assert acc.describe() == {"als": "cpu: device=cpu", "faiss": "cpu: device=cpu"}


def test_auto_uses_each_gpu_build_only_where_it_is_usable() -> None:
    acc = accelerator("auto")
    assert acc.als_gpu == (_implicit_gpu() is None)
    assert acc.faiss_gpu == (_faiss_gpu() is None)
    for name, on in (("als", acc.als_gpu), ("faiss", acc.faiss_gpu)):
        assert acc.describe()[name] == ("gpu" if on else f"cpu: {acc.reasons[name]}")


def test_gpu_asked_and_absent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if GPU_BUILDS:
        assert accelerator("gpu").als_gpu and accelerator("gpu").faiss_gpu
        return
    with pytest.raises(ConfigError, match="device=gpu was asked") as err:
        accelerator("gpu")
    if _implicit_gpu() is not None:
        assert "implicit" in str(err.value) and "CUDA" in str(err.value)
    if _faiss_gpu() is not None:
        assert "faiss" in str(err.value)
    # the environment setting reaches the ALS fit: no silent CPU fit when a GPU was demanded
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(ConfigError, match="device=gpu"):
        ALS(factors=4, iterations=2, random_state=0).fit(_matrix())


def test_an_unknown_device_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="device must be one of"):
        accelerator("tpu")
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(ConfigError, match="'cuda'"):
        accelerator()


def test_cpu_setting_fits_als_and_builds_a_searchable_ivf_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    C = _matrix()
    model = ALS(factors=8, iterations=3, random_state=0).fit(C)
    assert isinstance(model.item_factors_, np.ndarray) and model.item_factors_.shape == (40, 8)
    vectors = np.random.default_rng(1).random((400, 8), dtype=np.float32)
    index = FaissIndex.build(vectors, "ivf", nlist=4, nprobe=4)
    assert faiss_to_cpu(index.index) is index.index  # on the CPU already
    # every list probed (nprobe = nlist): the IVF answer is the exact one
    got, _ = index.search(vectors[:3], 5)
    want, _ = ExactIndex(vectors).search(vectors[:3], 5)
    np.testing.assert_array_equal(got, want)
