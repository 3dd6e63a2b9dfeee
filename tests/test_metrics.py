import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from gpo_bench.errors import DataError
from gpo_bench.metrics import accuracy, item_score, js_alignment, summarize, wasserstein_alignment


def random_simplex(rng, n):
    return rng.dirichlet(np.ones(n))


def test_wasserstein_alignment_matches_scipy_on_random_cases():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(2, 7))
        ordinal = rng.permutation(np.concatenate([[1.0], rng.uniform(1, 5, n - 2), [5.0]]))
        p, q = random_simplex(rng, n), random_simplex(rng, n)
        expected = 1 - wasserstein_distance(ordinal, ordinal, p, q) / (ordinal.max() - ordinal.min())
        assert wasserstein_alignment(p, q, ordinal) == pytest.approx(expected, abs=1e-12)


def test_js_alignment_matches_scipy_natural_log_on_random_cases():
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = int(rng.integers(2, 7))
        p, q = random_simplex(rng, n), random_simplex(rng, n)
        q[rng.integers(n)] = 0  # zeros must be handled
        q /= q.sum()
        assert js_alignment(p, q) == pytest.approx(1 - jensenshannon(p, q), abs=1e-12)


def test_hand_worked_cases():
    # all mass at the two ends of a 1..3 scale: W1 = 2 = the range, alignment 0
    assert wasserstein_alignment(np.array([1, 0, 0]), np.array([0, 0, 1]), np.array([1, 2, 3])) == pytest.approx(0)
    # half the mass moves one step of a 1..3 scale: W1 = 0.5, alignment 1 - 0.5/2
    assert wasserstein_alignment(np.array([0.5, 0.5, 0]), np.array([0, 1, 0]), np.array([1, 2, 3])) == 0.75
    # ordinal values out of order are sorted by value, not position: options at 1, 2, 1.5 (range 1), W1 = 0.5
    assert wasserstein_alignment(np.array([0, 1, 0]), np.array([0, 0, 1]), np.array([1, 2, 1.5])) == 0.5
    # disjoint supports: JS distance = sqrt(ln 2)
    assert js_alignment(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(1 - np.sqrt(np.log(2)))
    assert js_alignment(np.array([0.3, 0.7]), np.array([0.3, 0.7])) == pytest.approx(1.0)


def test_accuracy_counts_a_tie_wrong():
    assert accuracy(np.array([0.6, 0.4]), np.array([1.0, 0.0])) == 1.0
    assert accuracy(np.array([0.4, 0.6]), np.array([1.0, 0.0])) == 0.0
    assert accuracy(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == 0.0


def test_bad_predictions_are_errors_naming_the_item():
    target = np.array([0.5, 0.5])
    with pytest.raises(DataError, match="group 'g' item 'q1'.*NaN"):
        item_score("alignment", np.array([np.nan, 1.0]), target, None, "group 'g' item 'q1'")
    with pytest.raises(DataError, match="item 'q2'.*sums to 0.9"):
        item_score("alignment", np.array([0.5, 0.4]), target, None, "group 'g' item 'q2'")
    with pytest.raises(DataError, match="expected 2 probabilities"):
        item_score("accuracy", np.array([0.2, 0.3, 0.5]), target, None)


def test_summarize_means_and_bootstrap():
    # seed 0: group a items (1, 0.5) → 0.75, group b → 0.25; seed 1: a → 1, b → 0.5
    scores = [(0, "a", 1.0), (0, "a", 0.5), (0, "b", 0.25), (1, "a", 1.0), (1, "b", 0.5)]
    s = summarize(scores, ci_seed=0)
    assert s.mean == pytest.approx(((0.75 + 0.25) / 2 + (1.0 + 0.5) / 2) / 2)
    assert s.pooled == pytest.approx((np.mean([1, 0.5, 0.25]) + np.mean([1, 0.5])) / 2)
    assert s.per_group == {"a": pytest.approx(0.875), "b": pytest.approx(0.375)}
    assert s.ci[0] <= s.mean <= s.ci[1]
    assert s.ci[0] >= 0.25 and s.ci[1] <= 1.0
    assert summarize(scores, ci_seed=0).ci == s.ci  # seeded
