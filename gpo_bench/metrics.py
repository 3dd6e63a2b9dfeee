"""The exact metrics of DESIGN.md and their aggregation.

- OpinionQA alignment: 1 - W1(pred, target) / (max(ord) - min(ord)) on the options' ordinal values.
- Alignment without ordinal values: 1 - Jensen-Shannon distance (natural log, range [0, sqrt(ln 2)]).
- Accuracy: the argmax of the prediction is the chosen candidate; an exact tie counts wrong.
Aggregation: mean over a group's items, mean over groups, mean over seeds; also pooled over items.
CIs: percentile bootstrap resampling groups and seeds with replacement, from an explicit seed; the
pooled mean's CI resamples items within each seed.
- The majority floor of accuracy tasks: the seen groups' most common answer position (`majority_distributions`)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy

from .data import TaskData, check_distribution
from .errors import DataError
from .stats import bootstrap_ci, grand_mean, pooled_bootstrap_ci


def wasserstein_alignment(pred: np.ndarray, target: np.ndarray, ordinal: np.ndarray) -> float | np.ndarray:
    """1 - W1/(range of the ordinal values); W1 is the area between the two CDFs. `pred` may hold one
    distribution per row (the last axis is the options): one score per row."""
    order = np.argsort(ordinal, kind="stable")
    values = np.asarray(ordinal, float)[order]
    cdf_gap = np.cumsum(np.asarray(pred, float)[..., order] - np.asarray(target, float)[..., order], axis=-1)
    distance = np.sum(np.abs(cdf_gap[..., :-1]) * np.diff(values), axis=-1)
    score = 1.0 - distance / (values[-1] - values[0])
    return float(score) if np.ndim(score) == 0 else score


def js_alignment(pred: np.ndarray, target: np.ndarray) -> float | np.ndarray:
    """1 - Jensen-Shannon distance with the natural log (scipy's default base); row-wise like
    `wasserstein_alignment`."""
    p = np.asarray(pred, float) / np.sum(pred, axis=-1, keepdims=True)
    q = np.asarray(target, float) / np.sum(target, axis=-1, keepdims=True)
    m = (p + q) / 2
    divergence = (np.sum(xlogy(p, p) - xlogy(p, m), axis=-1) + np.sum(xlogy(q, q) - xlogy(q, m), axis=-1)) / 2
    score = 1.0 - np.sqrt(np.maximum(0.0, divergence))
    return float(score) if np.ndim(score) == 0 else score


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
    per_seed: dict[str, dict[str, float]]  # seed → group → mean over its items (what paired comparisons pair)
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
            "per_seed": self.per_seed,
            "n_groups": self.n_groups,
            "n_items": self.n_items,
            "n_seeds": self.n_seeds,
        }


def group_table(scores: list[tuple[int, str, float]]) -> tuple[np.ndarray, list[int], list[str]]:
    """(seed, group, item score) records → `table[seed, group]` of the group's mean over its items (NaN where
    a seed lacks the group), with the seeds and groups of its rows and columns."""
    by_cell: dict[tuple[int, str], list[float]] = defaultdict(list)
    for seed, group, score in scores:
        by_cell[(seed, group)].append(score)
    seeds = sorted({s for s, _ in by_cell})
    groups = sorted({g for _, g in by_cell})
    table = np.full((len(seeds), len(groups)), np.nan)
    for (seed, group), values in by_cell.items():
        table[seeds.index(seed), groups.index(group)] = np.mean(values)
    return table, seeds, groups


def summarize(scores: list[tuple[int, str, float]], ci_seed: int) -> Summary:
    """(seed, group, item score) records → mean over items, groups, seeds; pooled; bootstrap CI."""
    table, seeds, groups = group_table(scores)
    by_seed = [np.array([s for sd, _, s in scores if sd == seed]) for seed in seeds]
    return Summary(
        mean=grand_mean(table),
        ci=bootstrap_ci(table, ci_seed),
        pooled=float(np.mean([v.mean() for v in by_seed])),
        pooled_ci=pooled_bootstrap_ci(by_seed, ci_seed),
        per_group={g: float(np.nanmean(table[:, j])) for j, g in enumerate(groups)},
        per_seed={
            str(seed): {g: float(table[i, j]) for j, g in enumerate(groups) if not np.isnan(table[i, j])}
            for i, seed in enumerate(seeds)
        },
        n_groups=len(groups),
        n_items=len(scores),
        n_seeds=len(seeds),
    )


CEILING_DRAWS = 1000
CEILING_METHOD = (
    f"sampling-noise ceiling: per (group, item), the mean score of the group's distribution p against "
    f"Multinomial(n, p)/n over {CEILING_DRAWS} draws (n = the respondents behind p, Kish's effective size "
    "under survey weights, rounded), RNG seeded from (group, item); a cell's ceiling is averaged like its score "
    "(items, then groups, then seeds)"
)


def ceiling_seed(group: str, item: str) -> int:
    """The seed of one (group, item)'s sampling-ceiling bootstrap: from their names, so the same pair gets the same
    estimate in every run, K and seed."""
    return int.from_bytes(hashlib.sha256(f"{group}\0{item}".encode()).digest()[:8], "little")


def sampling_ceiling(metric: str, target: np.ndarray, respondents: float, ordinal: tuple | None, seed: int) -> float:
    """The expected alignment of the true distribution `target` with a survey of `respondents` people drawn
    from it (a parametric bootstrap): what a perfect method can expect to score against sampled data."""
    if metric != "alignment":
        raise ValueError(f"the sampling ceiling is defined for alignment, not {metric}")
    rng = np.random.default_rng(seed)
    n = max(1, round(respondents))
    target = np.asarray(target, float)
    surveys = rng.multinomial(n, target / target.sum(), size=CEILING_DRAWS) / n
    scores = wasserstein_alignment(surveys, target, np.asarray(ordinal)) if ordinal else js_alignment(surveys, target)
    return float(np.mean(scores))


MAJORITY_NOTE = (
    "majority: the seen groups' answers pooled over every item with the same number of candidates (a distribution "
    "over answer positions; for pairwise tasks, over the first and second response), scored like a prediction of its "
    "top position (a tie at the top by its expected coin flip); positions no seen answer reached: the pooled "
    "distribution over all items cut to the item's candidates, else uniform"
)


def majority_distributions(task: TaskData) -> dict[int, np.ndarray]:
    """The seen groups' overall answer distribution per candidate count (`task` holds only what methods may see:
    the seen groups, and for personalized tasks only their pools): item width → the mean of their targets over
    every (group, item) of that width. Pooling over items is the point: with a few answers per item (per-person
    data) an item's own answers are noise, while the most common answer position is stable. Pooling by width
    keeps a 4-point scale's positions apart from a 5-point scale's."""
    sums: dict[int, np.ndarray] = {}
    for group in task.groups.values():
        for target in group.targets.values():
            width = len(target)
            sums[width] = sums.get(width, np.zeros(width)) + np.asarray(target, float)
    return {width: total / total.sum() for width, total in sorted(sums.items()) if total.sum() > 0}


def majority_for(distributions: dict[int, np.ndarray], width: int) -> np.ndarray:
    """The majority distribution for an item of `width` candidates: its width's own, else every width's answers
    pooled over the positions the item has, else uniform."""
    if width in distributions:
        return distributions[width]
    pooled = np.zeros(width)
    for dist in distributions.values():
        pooled[: min(width, len(dist))] += dist[:width]
    return pooled / pooled.sum() if pooled.sum() > 0 else np.full(width, 1.0 / width)


def expected_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """The accuracy of `pred` in expectation over the seeded coin flip that breaks a tie at its top."""
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    top = np.flatnonzero(pred == pred.max())
    return float(np.mean(target[top] == target.max()))
