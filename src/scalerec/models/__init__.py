"""Model zoo: one Recommender contract, a registry of families and a factory."""

from __future__ import annotations

from typing import Any

from scalerec.errors import ValidationError
from scalerec.models.als import ALS, BPR
from scalerec.models.base import MODELS, Recommender
from scalerec.models.ease import EASE
from scalerec.models.knn import ItemKNN
from scalerec.models.popular import MostPopular, Trending
from scalerec.models.rp3beta import RP3beta

# The registry itself lives in models.base (Recommender.load reads it without importing the families).
MODELS.update({cls.family: cls for cls in (MostPopular, Trending, ItemKNN, RP3beta, EASE, ALS, BPR)})


def make_model(name: str, **params: Any) -> Recommender:
    """A new, unfitted model of family ``name`` (a key of MODELS) with these hyperparameters."""
    try:
        klass = MODELS[name]
    except KeyError:
        raise ValidationError(
            f"unknown model family {name!r}; choose one of {', '.join(sorted(MODELS))}"
        ) from None
    try:
        return klass(**params)
    except TypeError as exc:
        raise ValidationError(
            f"bad hyperparameters for {name!r}: {exc}; valid: {sorted(klass._param_names())}"
        ) from None


__all__ = ["ALS", "BPR", "EASE", "MODELS", "ItemKNN", "MostPopular", "RP3beta", "Recommender", "Trending", "make_model"]
