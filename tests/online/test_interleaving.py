"""Team-draft interleaving: the draft's invariants and the preference statistics."""

from __future__ import annotations

import numpy as np

from scalerec.online.interleaving import interleaving_result, team_draft


def _items(ids):
    return [{"item_id": i, "score": 1.0, "reason": "model"} for i in ids]


def test_team_draft_keeps_each_rankers_order_and_balances_the_teams():
    a = _items(["a", "b", "c", "d", "e", "f"])
    b = _items(["c", "x", "a", "y", "z", "w"])
    for seed in ("r1", "r2", "r3", "r4"):
        out, teams = team_draft(a, b, 6, "A", "B", seed=seed)
        ids = [i["item_id"] for i in out]
        assert len(ids) == len(set(ids)) == 6 and len(teams) == 6
        assert abs(teams.count("A") - teams.count("B")) <= 1
        for name, ranked in (("A", a), ("B", b)):
            mine = [i for i, t in zip(ids, teams) if t == name]
            order = [r["item_id"] for r in ranked]
            assert [order.index(i) for i in mine] == sorted(order.index(i) for i in mine)  # its own order kept
        assert team_draft(a, b, 6, "A", "B", seed=seed) == (out, teams)  # seeded: the same list again
    assert len({tuple(team_draft(a, b, 6, "A", "B", seed=f"s{k}")[1]) for k in range(20)}) > 1  # the coin is used
    out, teams = team_draft(a, [], 3, "A", "B", seed="x")
    assert [i["item_id"] for i in out] == ["a", "b", "c"] and teams == ["A"] * 3


def test_preference_statistics():
    rng = np.random.default_rng(0)
    n = 400
    ca = rng.poisson(1.0, n).astype(float)
    cb = rng.poisson(1.6, n).astype(float)
    r = interleaving_result(np.arange(n), ca, cb, "control", "new", confidence=0.95, n_boot=500, seed=0, min_units=100)
    assert r["winner"] == "new" and r["significant"] and r["low"] > 0 and r["p_value"] < 0.001
    assert r["wins"]["new"] > r["wins"]["control"] and "new is preferred over control" in r["verdict"]
    same = interleaving_result(np.arange(n), ca, rng.poisson(1.0, n).astype(float), "control", "new",
                               confidence=0.95, n_boot=500, seed=0, min_units=100)
    assert same["winner"] is None and same["low"] < 0 < same["high"]
    few = interleaving_result(np.arange(20), ca[:20], cb[:20], "control", "new", confidence=0.95, n_boot=100, seed=0,
                              min_units=100)
    assert few["winner"] is None and "not enough evidence" in few["verdict"]
