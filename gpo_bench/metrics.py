"""The exact metrics of DESIGN.md and their aggregation.

- OpinionQA alignment: 1 - W1(pred, target) / (max(ord) - min(ord)) on the options' ordinal values.
- Alignment without ordinal values: 1 - Jensen-Shannon distance (natural log, range [0, sqrt(ln 2)]).
- Accuracy: the argmax of the prediction is the chosen candidate; an exact tie counts wrong.
Aggregation: mean over a group's items, mean over groups, mean over seeds; also pooled over items.
CIs: percentile bootstrap resampling groups and seeds with replacement, from an explicit seed; the
pooled mean's CI resamples items within each seed."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .data import DataError, check_distribution

BOOTSTRAP_SAMPLES = 2000
CI_LEVEL = 0.95
CI_METHOD = (
    f"percentile bootstrap ({BOOTSTRAP_SAMPLES} resamples, {CI_LEVEL:.0%}) of the mean over groups and seeds, "
    "resampling groups and seeds with replacement; pooled_ci resamples items within each seed"
)


def wasserstein_alignment(pred: np.ndarray, target: np.ndarray, ordinal: np.ndarray) -> float:
    """1 - W1/(range of the ordinal values); W1 is the area between the two CDFs."""
    order = np.argsort(ordinal, kind="stable")
    values = np.asarray(ordinal, float)[order]
    cdf_gap = np.cumsum(np.asarray(pred, float)[order] - np.asarray(target, float)[order])[:-1]
    distance = float(np.sum(np.abs(cdf_gap) * np.diff(values)))
    return 1.0 - distance / (values[-1] - values[0])


def js_alignment(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - Jensen-Shannon distance with the natural log (scipy's default base)."""
    p = np.asarray(pred, float) / np.sum(pred)
    q = np.asarray(target, float) / np.sum(target)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / m[mask])))

    return 1.0 - float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    pred = np.asarray(pred, float)
    top = np.flatnonzero(pred == pred.max())
    return float(len(top) == 1 and target[top[0]] == np.max(target))


def item_score(
    metric: str, pred: np.ndarray, target: np.ndarray, ordinal: tuple | None, where: str = "prediction"
) -> float:
    """One item's score; a prediction that is not a distribution, or a NaN score, is an error."""
    check_distribution(pred, len(target), where)
    if metric == "accuracy":
        return accuracy(pred, target)
    score = wasserstein_alignment(pred, target, np.asarray(ordinal)) if ordinal else js_alignment(pred, target)
    if not np.isfinite(score):
        raise DataError(f"{where}: alignment is NaN")
    return score


@dataclass
class Summary:
    """The aggregates of one (run, K) cell."""

    mean: float
    ci: tuple[float, float]
    pooled: float
    pooled_ci: tuple[float, float]
    per_group: dict[str, float]
    n_groups: int
    n_items: int
    n_seeds: int

    def as_dict(self) -> dict:
        return {
            "mean": self.mean,
            "ci": list(self.ci),
            "pooled": self.pooled,
            "pooled_ci": list(self.pooled_ci),
            "per_group": self.per_group,
            "n_groups": self.n_groups,
            "n_items": self.n_items,
            "n_seeds": self.n_seeds,
        }


def bootstrap_ci(table: np.ndarray, seed: int) -> tuple[float, float]:
    """`table[seed, group]` of group means (NaN where absent) → CI of the grand mean."""
    rng = np.random.default_rng(seed)
    n_seeds, n_groups = table.shape
    seeds = rng.integers(0, n_seeds, size=(BOOTSTRAP_SAMPLES, n_seeds))
    groups = rng.integers(0, n_groups, size=(BOOTSTRAP_SAMPLES, n_groups))
    sampled = table[seeds[:, :, None], groups[:, None, :]]
    means = np.nanmean(np.nanmean(sampled, axis=2), axis=1)
    alpha = (1 - CI_LEVEL) / 2
    low, high = np.nanquantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def pooled_bootstrap_ci(by_seed: list[np.ndarray], seed: int) -> tuple[float, float]:
    """CI of the item-pooled mean: items resampled with replacement within each seed."""
    rng = np.random.default_rng(seed)
    means = np.mean(
        [v[rng.integers(0, len(v), size=(BOOTSTRAP_SAMPLES, len(v)))].mean(axis=1) for v in by_seed], axis=0
    )
    alpha = (1 - CI_LEVEL) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def summarize(scores: list[tuple[int, str, float]], ci_seed: int) -> Summary:
    """(seed, group, item score) records → mean over items, groups, seeds; pooled; bootstrap CI."""
    by_cell: dict[tuple[int, str], list[float]] = defaultdict(list)
    for seed, group, score in scores:
        by_cell[(seed, group)].append(score)
    seeds = sorted({s for s, _ in by_cell})
    groups = sorted({g for _, g in by_cell})
    table = np.full((len(seeds), len(groups)), np.nan)
    for (seed, group), values in by_cell.items():
        table[seeds.index(seed), groups.index(group)] = np.mean(values)
    by_seed = [np.array([s for sd, _, s in scores if sd == seed]) for seed in seeds]
    return Summary(
        mean=float(np.mean(np.nanmean(table, axis=1))),
        ci=bootstrap_ci(table, ci_seed),
        pooled=float(np.mean([v.mean() for v in by_seed])),
        pooled_ci=pooled_bootstrap_ci(by_seed, ci_seed),
        per_group={g: float(np.nanmean(table[:, j])) for j, g in enumerate(groups)},
        n_groups=len(groups),
        n_items=len(scores),
        n_seeds=len(seeds),
    )
