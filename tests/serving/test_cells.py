"""Fold-in histories follow the training matrix's cell convention (binary / capped cells)."""

from __future__ import annotations

import numpy as np
import pytest

from scalerec.config import Settings
from scalerec.data.matrix import cell_options, shape_cells


def test_shape_cells_and_manifest_options() -> None:
    values = np.array([0.5, 3.0, 12.0], dtype=np.float32)
    assert shape_cells(values.copy(), binary=True).tolist() == [1.0, 1.0, 1.0]
    assert shape_cells(values.copy(), cap=1.0).tolist() == [0.5, 1.0, 1.0]
    assert shape_cells(values.copy()).tolist() == values.tolist()
    manifest = {
        "data": {"matrix_settings": {"binary": True, "cap": None}},
        "model": {"matrix_overrides": {"half_life_days": 30.0, "cap": 1.0, "binary": False}},
    }
    # the model's own overrides win over the settings it was trained with
    assert cell_options(manifest) == {"binary": False, "cap": 1.0}
    assert cell_options({}) == {"binary": False, "cap": None}


@pytest.mark.slow
def test_service_folds_in_on_the_scale_the_model_learned(tmp_path) -> None:
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.serving.service import RecommendService
    from scalerec.serving.state import history_row
    from scalerec.training.pipeline import TrainOptions, train

    settings = Settings(data={"dir": tmp_path / "data"}, matrix={"half_life_days": 30.0, "cap": 1.0})
    store = DataStore.open(settings)
    generate_store(store, n_users=200, n_items=100, n_events=10_000, seed=3, days=40)
    result = train(settings, TrainOptions(models=["als"], trials=1), store=store)
    store.close()
    assert result.status == "registered"

    service = RecommendService(settings)
    try:
        st = service._live.model
        assert st.cells == {"binary": False, "cap": 1.0}
        # purchases weigh 10 in [events.types]; the model only ever saw cells <= 1
        row = history_row(st, np.array([0, 1, 1]), np.array([10.0, 10.0, 4.0]))
        assert row.data.tolist() == [1.0, 1.0]
        trained = st.seen_data
        assert trained.max() <= 1.0
    finally:
        service.close()
