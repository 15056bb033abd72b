"""Simulated shoppers of the synthetic shop who react to what they are shown.

The world is the one :func:`scalerec.datasets.synth.generate_store` draws for the same arguments
(the same catalogue and customers, with their hidden tastes): a shopper's affinity for an item is
their taste weight for its category relative to their top one (0 outside their favourites, plus a
small floor) times the
style boost when the item has their latent style, scaled into [0, 1]. Shown a list, the shopper
looks at position p with probability ``1 / log2(p + 1)`` (position bias), clicks an item looked
at with probability ``click x affinity``, carts a clicked item with ``cart`` and buys a carted one
with ``buy``. Because every probability is known, :meth:`Shoppers.expected` gives the true
expected clicks and purchases of a list, so an experiment's estimated lift can be checked against
the true one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np

from scalerec.datasets.synth import N_FAVOURITES, STYLE_BOOST, make_catalog, make_users
from scalerec.errors import ValidationError

__all__ = ["Shoppers", "SimulationResult", "simulate"]


class Shoppers:
    """The behaviour model over the shop of ``(n_users, n_items, seed, days, start)``."""

    def __init__(self, n_users: int, n_items: int, *, seed: int, days: int = 180,
                 start: date | datetime | str | None = None, click: float = 1.0, cart: float = 0.6,
                 buy: float = 0.7) -> None:
        for name, p in (("click", click), ("cart", cart), ("buy", buy)):
            if not 0 < p <= 1:
                raise ValidationError(f"{name} must be a probability in (0, 1], got {p!r}")
        self.catalog = make_catalog(n_items, seed=seed, days=days, start=start)
        self.users = make_users(n_users, seed=seed, days=days, start=start)
        self.click, self.cart, self.buy = click, cart, buy
        self.item_ids = np.asarray(self.catalog.item_ids.to_pylist())
        self.user_ids = np.asarray(self.users.user_ids.to_pylist())
        self._item_col = {s: j for j, s in enumerate(self.item_ids.tolist())}
        self._user_row = {s: i for i, s in enumerate(self.user_ids.tolist())}
        self.price = dict(zip(self.item_ids.tolist(), self.catalog.price.tolist()))

    def affinity(self, user_id: str, item_ids: list[str]) -> np.ndarray:
        """float [len(item_ids)] in [0, 1]: the shopper's hidden liking of each item (0 for unknown ids)."""
        u = self._user_row[user_id]
        cols = np.array([self._item_col.get(i, -1) for i in item_ids], np.int64)
        known = cols >= 0
        c = np.maximum(cols, 0)
        cats, weights = self.users.fav_categories[u], self.users.fav_weights[u]
        w = weights.astype(np.float64)
        taste = (self.catalog.category[c][:, None] == cats[None, :N_FAVOURITES]) @ (w / w.max())  # 1: the top category
        style = np.where(self.catalog.style[c] == self.users.style[u], 1.0 + STYLE_BOOST, 1.0)
        return np.where(known, (0.02 + taste) * style / (1.02 * (1.0 + STYLE_BOOST)), 0.0)

    def probabilities(self, user_id: str, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(P(click), P(purchase)) per position of the shown list."""
        look = 1.0 / np.log2(np.arange(len(item_ids)) + 2.0)
        p_click = np.clip(self.click * look * self.affinity(user_id, item_ids), 0.0, 1.0)
        return p_click, p_click * self.cart * self.buy

    def expected(self, user_id: str, item_ids: list[str]) -> dict[str, float]:
        """The list's true expected clicks, purchases and revenue."""
        pc, pb = self.probabilities(user_id, item_ids)
        prices = np.array([self.price.get(i, 0.0) for i in item_ids])
        return {"clicks": float(pc.sum()), "purchases": float(pb.sum()), "revenue": float((pb * prices).sum())}

    def react(self, user_id: str, item_ids: list[str], rng: np.random.Generator,
              recommendation_id: str | None = None) -> list[dict[str, Any]]:
        """The events one shopper makes on one shown list (clicks, carts, purchases; each item at most once)."""
        pc, _ = self.probabilities(user_id, item_ids)
        clicked = rng.random(len(item_ids)) < pc
        carted = clicked & (rng.random(len(item_ids)) < self.cart)
        bought = carted & (rng.random(len(item_ids)) < self.buy)
        out = []
        for kind, mask in (("click", clicked), ("add_to_cart", carted), ("purchase", bought)):
            for j in np.flatnonzero(mask).tolist():
                out.append({"user_id": user_id, "item_id": item_ids[j], "event_type": kind,
                            "recommendation_id": recommendation_id})
        return out

    def sample_users(self, n: int, rng: np.random.Generator) -> list[str]:
        """``n`` shoppers drawn by their activity (the heavy-tailed session rate of the shop)."""
        p = self.users.activity.astype(np.float64)
        return self.user_ids[rng.choice(len(p), size=n, p=p / p.sum())].tolist()


@dataclass
class SimulationResult:
    sessions: int = 0
    events: int = 0
    #: variant -> true expected {clicks, purchases, revenue, impressions} of what was served
    expected: dict[str, dict[str, float]] = field(default_factory=dict)

    def true_lift(self, variant: str, control: str, kpi: str = "purchases") -> float:
        """The true relative lift per impression of ``variant`` over ``control`` on ``kpi``."""
        t, c = self.expected[variant], self.expected[control]
        return (t[kpi] / t["impressions"]) / (c[kpi] / c["impressions"]) - 1.0


def simulate(shoppers: Shoppers, recommend: Callable[[str], dict[str, Any]],
             post_events: Callable[[list[dict[str, Any]]], None], *, sessions: int, seed: int = 0,
             result: SimulationResult | None = None) -> SimulationResult:
    """Run ``sessions`` visits: a shopper (by activity) is served a list by ``recommend(user_id)``
    (a response dict: items, recommendation_id, variant), reacts, and ``post_events`` stores the
    events, which echo the list's recommendation_id. Accumulates into ``result`` when given."""
    rng = np.random.default_rng(seed)
    res = result or SimulationResult()
    for user in shoppers.sample_users(sessions, rng):
        resp = recommend(user)
        items = [i["item_id"] for i in resp["items"]]
        exp = res.expected.setdefault(str(resp.get("variant")), {"clicks": 0.0, "purchases": 0.0, "revenue": 0.0,
                                                                  "impressions": 0.0})
        for k, v in shoppers.expected(user, items).items():
            exp[k] += v
        exp["impressions"] += 1
        events = shoppers.react(user, items, rng, resp["recommendation_id"])
        if events:
            post_events(events)
        res.sessions += 1
        res.events += len(events)
    return res
