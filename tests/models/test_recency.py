"""Recency weighting as a hyperparameter: matrix overrides, validation, search space, persistence."""

from __future__ import annotations

import optuna
import pytest

from scalerec.errors import ValidationError
from scalerec.models import MODELS, make_model

RECENCY_FAMILIES = ["ease", "itemknn", "als", "bpr"]


@pytest.mark.parametrize("family", RECENCY_FAMILIES)
def test_recency_half_life_becomes_a_capped_decayed_matrix(family):
    assert make_model(family).matrix_overrides() == {}
    model = make_model(family, recency_half_life_days=30)
    assert model.matrix_overrides() == {"half_life_days": 30.0, "cap": 1.0, "binary": False}
    assert model.get_params()["recency_half_life_days"] == 30


@pytest.mark.parametrize("family", RECENCY_FAMILIES)
def test_bad_half_life_is_refused_at_fit(family):
    import numpy as np
    import scipy.sparse as sp

    X = sp.random(20, 15, density=0.3, format="csr", dtype=np.float32, random_state=0)
    with pytest.raises(ValidationError, match="recency_half_life_days"):
        make_model(family, recency_half_life_days=-1).fit(X)


@pytest.mark.parametrize("family", RECENCY_FAMILIES)
def test_search_space_explores_recency(family):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        params = MODELS[family].search_space(trial)
        value = params["recency_half_life_days"]
        seen.add(value is None)
        if value is not None:
            assert 14.0 <= value <= 365.0
        study.tell(trial, 0.0)
    assert seen == {True, False}
