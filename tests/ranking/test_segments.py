"""Customer groups: attribute and derived segments, metrics per group with intervals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scalerec.errors import ValidationError
from scalerec.ranking.segments import segment_metrics, user_segments

USERS = pa.table({
    "user_id": ["u1", "u2", "u3", "u4"],
    "attributes": pa.array([[("country", "FR")], [("country", "DE")], [("country", "FR")], None],
                           pa.map_(pa.string(), pa.string())),
})


def test_attribute_and_derived_segments() -> None:
    seg = user_segments(["country", "activity", "new_vs_returning"], USERS, np.array(["u1", "u2", "u3", "u4"]),
                        np.array([0, 2, 5, 40]))
    assert seg["country"].tolist() == ["FR", "DE", "FR", "unknown"]
    assert seg["activity"].tolist() == ["light", "light", "regular", "heavy"]
    assert seg["new_vs_returning"].tolist() == ["new", "returning", "returning", "returning"]
    with pytest.raises(ValidationError, match="unknown segment 'city'.*country"):
        user_segments(["city"], USERS, np.array(["u1"]), np.array([1]))


def test_metrics_per_segment_with_intervals() -> None:
    values = {"ndcg@20": np.array([1.0, 0.0, 0.5, 0.25])}
    out = segment_metrics(values, {"country": np.array(["FR", "DE", "FR", "unknown"])},
                          confidence=0.9, n_boot=200, seed=0, min_users=2)
    fr = out["country"]["FR"]
    assert fr["ndcg@20"]["mean"] == pytest.approx(0.75)
    assert fr["ndcg@20"]["low"] <= 0.75 <= fr["ndcg@20"]["high"]
    assert fr["_n_users"] == 2 and fr["_enough"] and not out["country"]["DE"]["_enough"]
