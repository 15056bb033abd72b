"""Made-up served lists and attributed events of one version over DAYS days (KPI-drop tests)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scalerec.data.impressions import ImpressionStore
from scalerec.data.schema import EVENT_SCHEMA

FIRST = dt.date(2026, 3, 1)
DAYS = 21
CTR, CONVERSION = 0.05, 0.01


def plant(store: Any, *, ctr_of_day=None, impressions_of_day=None, seed: int = 4, version: str = "v1",
          first: dt.date = FIRST) -> None:
    """DAYS days of served lists of ``version`` (plus a few of v0), clicks and purchases echoing their
    recommendation_id; each day's rates wobble by up to +/-15% (weekday-like noise) around CTR/CONVERSION."""
    from scalerec.serving.impressions import to_table

    rng = np.random.default_rng(seed)
    imps, events = [], []
    for d in range(DAYS):
        day = first + dt.timedelta(days=d)
        start = dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp()
        n = impressions_of_day(day) if impressions_of_day else int(rng.integers(1800, 2600))
        wobble = rng.uniform(0.85, 1.15)
        ctr = (ctr_of_day(day) if ctr_of_day else None) or CTR * wobble
        conv = CONVERSION * ctr / CTR  # conversion moves with the CTR
        for k in range(n):
            rid, at = f"{day}-{k}", start + 80_000.0 * k / n
            user = f"u{rng.integers(5000)}"
            imps.append({"recommendation_id": rid, "at": at, "user_id": user, "kind": "user",
                         "model_version": "v0" if k % 50 == 0 else version, "strategy": "model", "items": ["a", "b", "c"]})
            for kind, p in (("click", ctr), ("purchase", conv)):
                if rng.random() < p:
                    events.append({"user_id": user, "item_id": "b", "event_type": kind, "value": 1.0, "recommendation_id": rid,
                                   "timestamp": dt.datetime.fromtimestamp(at + 120, dt.timezone.utc)})
    ImpressionStore(Path(store.dir) / "impressions").write(to_table(imps))
    store.log.append(pa.Table.from_pylist(events, schema=EVENT_SCHEMA))
