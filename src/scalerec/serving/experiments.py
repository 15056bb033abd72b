"""Which live state serves a request while experiments run: the unit's variant by seeded hash.

:class:`ExperimentRouter` reads the running experiments from the catalogue at each refresh (the
service's watcher polls every MODEL_POLL_S), keeps their versions loaded beside production
(``ServingState.serve_also``, memory-mapped) and answers ``route(unit, placement)`` with no I/O:
a dict lookup, a time check and one hash. The assignment is a pure function of the experiment's
seed, name and the unit, so it is the same in every worker and process.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from scalerec.online.experiments import PRODUCTION, Experiment, list_experiments
from scalerec.online.interleaving import INTERLEAVED
from scalerec.serving.state import LiveState, ServingState

log = logging.getLogger("scalerec.serving")

__all__ = ["ExperimentRouter"]


class ExperimentRouter:
    def __init__(self, catalog: Any, state: ServingState) -> None:
        self.catalog = catalog
        self.state = state
        self._by_placement: dict[str | None, Experiment] = {}

    @property
    def running(self) -> list[Experiment]:
        return list(self._by_placement.values())

    def refresh(self) -> None:
        """Re-read the running experiments and load (or drop) the versions they serve."""
        running = list_experiments(self.catalog, status="running")
        versions = {v.version for e in running for v in e.variants if v.version != PRODUCTION}
        self.state.serve_also(versions)
        self._by_placement = {e.placement: e for e in running}  # one per placement (checked at create)

    def route(self, unit: str | None, placement: str | None) -> tuple[LiveState, str, str] | None:
        """(live state, experiment, variant) for a unit taking part in an experiment now, else None."""
        by = self._by_placement
        if not by or unit is None:
            return None
        exp = by.get(placement) if placement is not None else None
        if exp is None:
            exp = by.get(None)
        if exp is None or not exp.active(int(time.time() * 1_000_000)):
            return None
        if exp.method == "interleave":  # every unit sees both: the service drafts the list from the pair
            live = self.state.current
            return (live, exp.name, INTERLEAVED) if live is not None and self._live_of(exp.variants[1].version) else None
        variant = exp.assign(unit)
        live = self._live_of(variant.version)
        if live is None:  # its version failed to load: the unit is left out rather than mislabelled
            return None
        return live, exp.name, variant.name

    def _live_of(self, version: str) -> LiveState | None:
        return self.state.current if version == PRODUCTION else self.state.extra.get(version)

    def pair(self, name: str) -> tuple[tuple[LiveState, str], tuple[LiveState, str]]:
        """The live states and names of an interleaving experiment's two variants."""
        exp = next(e for e in self._by_placement.values() if e.name == name)
        a, b = exp.variants
        la, lb = self._live_of(a.version), self._live_of(b.version)
        assert la is not None and lb is not None  # route() checked both
        return (la, a.name), (lb, b.name)
