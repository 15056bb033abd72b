"""The registry of cluster twins (no Ray needed: twins only touch Ray inside fit)."""

from __future__ import annotations

import pytest

from scalerec.cluster import ClusterTwin, register_twin, registered_twins, twin_for
from scalerec.models import ALS, ItemKNN, MostPopular


def test_the_distributed_families_are_registered_by_family() -> None:
    from scalerec.cluster.als import DistributedALS
    from scalerec.cluster.knn import DistributedItemKNN

    assert twin_for("als") is DistributedALS and DistributedALS.local_class() is ALS
    assert twin_for("itemknn") is DistributedItemKNN and DistributedItemKNN.local_class() is ItemKNN
    assert twin_for("popular") is None
    assert set(registered_twins()) == {"als", "itemknn"}


def test_a_second_twin_of_a_family_and_non_twins_are_refused() -> None:
    class OtherALS(ClusterTwin, ALS):
        pass

    with pytest.raises(TypeError, match="already has"):
        register_twin(OtherALS)
    with pytest.raises(TypeError, match="not a ClusterTwin"):
        register_twin(MostPopular)  # type: ignore[type-var]
    assert twin_for("als") is not OtherALS
