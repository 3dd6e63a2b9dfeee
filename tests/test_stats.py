"""The statistics module against independent computations: the paired bootstrap against a loop over resamples,
the probability of improvement against scipy's Mann-Whitney U, and the sampling ceiling's limits."""

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from gpo_bench.metrics import js_alignment, sampling_ceiling, wasserstein_alignment
from gpo_bench.stats import BOOTSTRAP_SAMPLES, paired_difference, probability_of_improvement

GROUPS = ["a", "b", "c", "d", "e"]


def tables() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    a = rng.uniform(0.8, 1.0, size=(3, len(GROUPS)))
    b = a - rng.normal(0.02, 0.03, size=a.shape)
    return a, b


def test_paired_difference_equals_a_loop_over_resamples():
    a, b = tables()
    diff = paired_difference(a, b, GROUPS, seed=3)
    hand = a - b
    assert diff.mean == pytest.approx(hand.mean(axis=1).mean())
    assert (diff.mean_a, diff.mean_b) == (pytest.approx(a.mean()), pytest.approx(b.mean()))
    # the same definition, computed one resample at a time: seeds and groups drawn jointly with replacement
    rng = np.random.default_rng(3)
    seeds = rng.integers(0, 3, size=(BOOTSTRAP_SAMPLES, 3))
    groups = rng.integers(0, len(GROUPS), size=(BOOTSTRAP_SAMPLES, len(GROUPS)))
    means = [np.mean([np.mean([hand[s, g] for g in groups[i]]) for s in seeds[i]]) for i in range(BOOTSTRAP_SAMPLES)]
    assert diff.ci == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert diff.ci[0] < diff.mean < diff.ci[1]
    per_group = hand.mean(axis=0)
    assert (diff.wins, diff.ties, diff.losses) == (int((per_group > 0).sum()), 0, int((per_group < 0).sum()))
    assert diff.n_pairs == a.size


def test_a_constant_difference_has_a_zero_width_ci_and_ties_count_half():
    a, _ = tables()
    shifted = paired_difference(a, a - 0.01, GROUPS, seed=0)
    assert shifted.ci == pytest.approx((0.01, 0.01))
    assert 0.5 < shifted.probability_of_improvement < 1.0  # rliable compares every seed of A with every seed of B
    assert paired_difference(a, a - 0.5, GROUPS, seed=0).probability_of_improvement == 1.0
    same = paired_difference(a, a.copy(), GROUPS, seed=0)
    assert (same.mean, same.wins, same.ties, same.losses) == (0.0, 0, len(GROUPS), 0)
    assert same.probability_of_improvement == 0.5


def test_probability_of_improvement_is_rliables_mann_whitney_mean_over_groups():
    a, b = tables()
    expected = np.mean([mannwhitneyu(a[:, j], b[:, j]).statistic / (3 * 3) for j in range(len(GROUPS))])
    assert probability_of_improvement(a, b) == pytest.approx(expected)


def test_missing_pairs_are_left_out():
    a, b = tables()
    a[1, 2] = np.nan
    diff = paired_difference(a, b, GROUPS, seed=0)
    assert diff.n_pairs == a.size - 1
    assert np.isfinite(diff.mean) and np.isfinite(diff.ci).all()


@pytest.mark.parametrize("ordinal", [None, (1.0, 2.0, 3.0)])
def test_sampling_ceiling_is_near_one_for_huge_surveys_lower_for_small_and_seeded(ordinal):
    target = np.array([0.5, 0.3, 0.2])
    huge = sampling_ceiling("alignment", target, 1e6, ordinal, seed=1)
    small = sampling_ceiling("alignment", target, 20, ordinal, seed=1)
    assert huge > 0.995
    assert small < huge - 0.03
    assert sampling_ceiling("alignment", target, 20, ordinal, seed=1) == small
    # one hand-worked draw: a survey of 1 person is one-hot; its expected score weights each option by p
    one = sampling_ceiling("alignment", target, 1, ordinal, seed=5)
    score = (
        (lambda p: wasserstein_alignment(p, target, np.array(ordinal)))
        if ordinal
        else (lambda p: js_alignment(p, target))
    )
    exact = sum(p * score(np.eye(3)[i]) for i, p in enumerate(target))
    assert one == pytest.approx(exact, abs=0.02)
