"""User-bootstrap intervals and the paired candidate-vs-production test on simulated per-user metrics."""

from __future__ import annotations

import numpy as np
import pytest

from scalerec.errors import ValidationError
from scalerec.evaluation.stats import DECISIONS, PairedResult, bootstrap_ci, bootstrap_means, paired_test

HIT_RATE, HIT_MEAN = 0.3, 0.4  # per-user recall: 0 for most users, Beta(2, 3) for the others
TRUE_MEAN = HIT_RATE * HIT_MEAN


def per_user_recall(rng: np.random.Generator, n: int) -> np.ndarray:
    """Zero-inflated values in [0, 1], shaped like a per-user Recall@20."""
    return (rng.random(n) < HIT_RATE) * rng.beta(2.0, 3.0, n)


def test_interval_covers_the_true_mean_at_about_the_stated_rate() -> None:
    rng = np.random.default_rng(123)
    repeats, covered, widths = 200, 0, []
    for rep in range(repeats):
        mean, low, high = bootstrap_ci(per_user_recall(rng, 300), confidence=0.95, n_boot=500, seed=rep)
        assert low <= mean <= high
        covered += low <= TRUE_MEAN <= high
        widths.append(high - low)
    assert covered / repeats >= 0.90
    # and it is not trivially wide: about 2 x 1.96 standard errors of the mean
    sd = np.sqrt(HIT_RATE * (0.04 + HIT_MEAN**2) - TRUE_MEAN**2)  # Beta(2,3): variance 0.04
    assert np.median(widths) == pytest.approx(2 * 1.96 * sd / np.sqrt(300), rel=0.15)


def test_lower_confidence_gives_a_narrower_interval() -> None:
    x = per_user_recall(np.random.default_rng(0), 500)
    _, lo95, hi95 = bootstrap_ci(x, confidence=0.95)
    _, lo80, hi80 = bootstrap_ci(x, confidence=0.80)
    assert lo95 < lo80 < hi80 < hi95


def test_same_seed_same_result_other_seed_other_result() -> None:
    x = per_user_recall(np.random.default_rng(1), 400)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)
    a = paired_test(x + 0.01, x[::-1], seed=3)
    assert a == paired_test(x + 0.01, x[::-1], seed=3)
    np.testing.assert_array_equal(bootstrap_means(x, n_boot=50, seed=2), bootstrap_means(x, n_boot=50, seed=2))


def test_chunked_resampling_matches_one_index_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    import scalerec.evaluation.stats as stats

    x = per_user_recall(np.random.default_rng(2), 100)
    whole = bootstrap_means(x, n_boot=64, seed=5)
    rng = np.random.default_rng(5)
    np.testing.assert_allclose(whole, x[rng.integers(0, 100, size=(64, 100))].mean(axis=1))
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 1000)  # 10 resamples per chunk
    np.testing.assert_allclose(bootstrap_means(x, n_boot=64, seed=5), whole)


def test_constant_values_give_a_point_interval() -> None:
    assert bootstrap_ci(np.full(10, 0.25)) == (0.25, 0.25, 0.25)


def test_a_truly_better_model_is_better() -> None:
    rng = np.random.default_rng(4)
    production = per_user_recall(rng, 1500)
    # the candidate finds something more for a fifth of the users
    candidate = np.clip(production + (rng.random(1500) < 0.2) * rng.uniform(0.05, 0.3, 1500), 0, 1)
    result = paired_test(candidate, production, tolerance=0.002)
    assert isinstance(result, PairedResult) and result.decision == "better"
    assert 0 < result.low < result.mean_diff < result.high
    assert result.mean_diff == pytest.approx(candidate.mean() - production.mean())
    assert result.n_users == 1500 and result.to_dict()["decision"] == "better"
    # and the other way round it is worse
    assert paired_test(production, candidate, tolerance=0.002).decision == "worse"


def test_a_noisy_tie_is_not_better() -> None:
    rng = np.random.default_rng(5)
    decisions = []
    for seed in range(20):
        base = per_user_recall(rng, 800)
        # same expected quality: each model wins on some users, loses on others
        noise = rng.normal(0.0, 0.05, (2, 800))
        a, b = np.clip(base + noise[0], 0, 1), np.clip(base + noise[1], 0, 1)
        decisions.append(paired_test(a, b, tolerance=0.02, seed=seed).decision)
    assert decisions.count("better") <= 2  # about 2.5% expected at 95%
    assert decisions.count("not worse") >= 15  # a tie is within a generous tolerance


def test_tolerance_separates_not_worse_from_worse() -> None:
    rng = np.random.default_rng(6)
    production = per_user_recall(rng, 2000)
    candidate = np.clip(production - 0.005 + rng.normal(0, 0.01, 2000), 0, 1)
    assert paired_test(candidate, production, tolerance=0.02).decision == "not worse"
    assert paired_test(candidate, production, tolerance=0.0).decision == "worse"


def test_too_few_users_is_undecided() -> None:
    rng = np.random.default_rng(7)
    production = per_user_recall(rng, 40)
    result = paired_test(production + 0.5, production, min_users=50)
    assert result.decision == "undecided" and result.n_users == 40
    assert result.low > 0  # the interval is still reported
    assert paired_test(production + 0.5, production, min_users=40).decision == "better"
    assert set(DECISIONS) == {"better", "not worse", "worse", "undecided"}


@pytest.mark.parametrize(
    "call",
    [
        lambda: bootstrap_ci([]),
        lambda: bootstrap_ci([[0.1, 0.2]]),
        lambda: bootstrap_ci([0.1, float("nan")]),
        lambda: bootstrap_ci(["a", "b"]),
        lambda: bootstrap_ci([0.1, 0.2], confidence=1.0),
        lambda: bootstrap_ci([0.1, 0.2], n_boot=0),
        lambda: paired_test([0.1, 0.2], [0.1]),
        lambda: paired_test([0.1, 0.2], [0.1, 0.3], tolerance=-0.1),
        lambda: paired_test([0.1, 0.2], [0.1, 0.3], min_users=0),
    ],
)
def test_bad_input_raises_validation_error(call) -> None:
    with pytest.raises(ValidationError):
        call()
