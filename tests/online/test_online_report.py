"""The report's statistics: interval coverage over replications, CUPED's variance reduction, verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from scalerec.online.experiments import Experiment, Variant
from scalerec.online.report import _cuped, _lift, _ratio, _verdict, srm_check

Z95 = 1.959963984540054


def _units(rng, n, p, q):
    imps = 1 + rng.poisson(3 * q, n).astype(float)  # keen shoppers see more lists and buy more
    y = rng.binomial(imps.astype(int), np.minimum(1.0, p * q)).astype(float)
    return y, imps


@pytest.mark.parametrize("cuped", [False, True])
@pytest.mark.parametrize("p_t", [0.06, 0.25])  # a small lift, and a fivefold one (the treatment must not leak into theta)
def test_lift_intervals_cover_the_true_lift_95_percent_of_the_time(cuped, p_t):
    rng = np.random.default_rng(0)
    p_c, n, reps = 0.05, 800, 400
    true = p_t / p_c - 1
    hits, widths, reductions = 0, [], []
    for _ in range(reps):
        q = rng.gamma(2.0, 0.5, 2 * n)  # each unit's propensity to buy, before and during
        pre = rng.poisson(q * 20.0).astype(float)  # a long pre-period: an informative covariate
        yc, xc = _units(rng, n, p_c, q[:n])
        yt, xt = _units(rng, n, p_t, q[n:])
        y, x = np.r_[yc, yt], np.r_[xc, xt]
        if cuped:
            y, _ = _cuped(y, x, pre, np.r_[np.zeros(n), np.ones(n)])
        rc, vc = _ratio(y[:n], x[:n])
        rt, vt = _ratio(y[n:], x[n:])
        lift = _lift(rt, vt, rc, vc, Z95)
        hits += lift["low"] <= true <= lift["high"]
        widths.append(lift["half_width"])
        if cuped:
            pc, pvc = _ratio(np.r_[yc, yt][:n], x[:n])
            reductions.append(1 - vc / pvc)
    coverage = hits / reps
    assert 0.92 <= coverage <= 0.98, coverage  # binomial sd of a 95% rate over 400 runs: 1.1%
    if cuped:
        assert np.mean(reductions) > 0.1  # the pre-period explains part of each unit's purchases


def test_ratio_variance_matches_the_spread_over_replications():
    rng = np.random.default_rng(1)
    q = np.ones(500)
    ratios, variances = [], []
    for _ in range(300):
        y, x = _units(rng, 500, 0.1, q)
        r, v = _ratio(y, x)
        ratios.append(r)
        variances.append(v)
    assert np.mean(variances) == pytest.approx(np.var(ratios), rel=0.2)


def test_srm_check():
    assert srm_check([0, 0], [1, 1])["p_value"] == 1.0
    r = srm_check([5400, 4600], [1, 1])
    assert r["mismatch"] and r["p_value"] < 1e-10 and r["expected"] == [5000.0, 5000.0]


def _report(lift: dict, units: int = 500, srm: bool = False) -> dict:
    entry = {"lift": lift, "cuped_lift": lift}
    return {"confidence": 0.95, "units": {"control": units, "new": units}, "min_units": 100,
            "srm": {"mismatch": srm, "counts": [units, units], "p_value": 0.5},
            "kpis": {"conversion": {"variants": {"control": {}, "new": entry}}}}


def test_verdicts_say_what_was_found_and_refuse_too_little_evidence():
    exp = Experiment("e", (Variant("control", "production", 50), Variant("new", "v2", 50)))
    up = {"lift": 0.031, "low": 0.019, "high": 0.043, "half_width": 0.012, "significant": True}
    v = _verdict(_report(up), exp)
    assert v["winner"] == "new" and v["verdict"].startswith("new lifts conversion by +3.1% ± 1.2%") and "95%" in v["verdict"]
    flat = {"lift": 0.01, "low": -0.02, "high": 0.04, "half_width": 0.03, "significant": False}
    v = _verdict(_report(flat), exp)
    assert v["winner"] is None and "no significant difference" in v["verdict"]
    v = _verdict(_report(up, units=40), exp)
    assert not v["decided"] and "not enough evidence" in v["verdict"] and "40 users" in v["verdict"]
    v = _verdict(_report(up, srm=True), exp)
    assert not v["decided"] and "sample ratio mismatch" in v["verdict"]
