"""The statistics every report shares, each from an explicit RNG seed: percentile-bootstrap CIs of a
mean over groups and seeds (unpaired, pooled over items, and paired differences) and the probability
of improvement. The runner, the leaderboard, the plots and `gpo-bench compare` all read them here.

Tables are `table[seed, group]` of per-group means (NaN where a seed lacks the group). The bootstrap
resamples seeds and groups jointly with replacement (rliable's stratified bootstrap over runs and
tasks, here seeds and groups); a paired difference is the same bootstrap applied to the table of
per-(seed, group) differences, so the two methods are always resampled together."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CI_LEVEL = 0.95
CI_METHOD = (
    f"percentile bootstrap ({BOOTSTRAP_SAMPLES} resamples, {CI_LEVEL:.0%}) of the mean over groups and seeds, "
    "resampling groups and seeds with replacement; pooled_ci resamples items within each seed"
)
TIE_TOLERANCE = 1e-9  # two per-group scores this close are a tie (float noise of equal predictions)


def grand_mean(table: np.ndarray) -> float:
    """Mean over seeds of the mean over the groups each seed has."""
    return float(np.mean(np.nanmean(table, axis=1)))


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    alpha = (1 - CI_LEVEL) / 2
    low, high = np.nanquantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_ci(table: np.ndarray, seed: int) -> tuple[float, float]:
    """`table[seed, group]` of group means (NaN where absent) → CI of the grand mean."""
    rng = np.random.default_rng(seed)
    n_seeds, n_groups = table.shape
    seeds = rng.integers(0, n_seeds, size=(BOOTSTRAP_SAMPLES, n_seeds))
    groups = rng.integers(0, n_groups, size=(BOOTSTRAP_SAMPLES, n_groups))
    sampled = table[seeds[:, :, None], groups[:, None, :]]
    return _percentiles(np.nanmean(np.nanmean(sampled, axis=2), axis=1))


def pooled_bootstrap_ci(by_seed: list[np.ndarray], seed: int) -> tuple[float, float]:
    """CI of the item-pooled mean: items resampled with replacement within each seed."""
    rng = np.random.default_rng(seed)
    means = np.mean(
        [v[rng.integers(0, len(v), size=(BOOTSTRAP_SAMPLES, len(v)))].mean(axis=1) for v in by_seed], axis=0
    )
    return _percentiles(means)


def probability_of_improvement(a: np.ndarray, b: np.ndarray) -> float:
    """P(A > B) as in rliable (Agarwal et al., 2021): per group (task), the Mann-Whitney probability that a
    seed of A scores above a seed of B (ties count half), averaged over groups. `a`, `b`: [seed, group]."""
    per_group = []
    for j in range(a.shape[1]):
        x, y = a[:, j][~np.isnan(a[:, j])], b[:, j][~np.isnan(b[:, j])]
        if len(x) and len(y):
            gap = x[:, None] - y[None, :]
            per_group.append(np.mean((gap > TIE_TOLERANCE) + 0.5 * (np.abs(gap) <= TIE_TOLERANCE)))
    return float(np.mean(per_group))


@dataclass(frozen=True)
class PairedDifference:
    """A − B over the (seed, group) pairs both have: mean, paired bootstrap CI, probability of improvement,
    and per group (mean over seeds) how many groups A wins, ties or loses."""

    mean: float
    ci: tuple[float, float]
    mean_a: float  # each side's mean over the shared pairs
    mean_b: float
    probability_of_improvement: float
    wins: int
    ties: int
    losses: int
    per_group: dict[str, float]
    n_pairs: int

    def as_dict(self) -> dict:
        return {
            "mean": self.mean,
            "ci": list(self.ci),
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "probability_of_improvement": self.probability_of_improvement,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "per_group": self.per_group,
            "n_pairs": self.n_pairs,
        }


def paired_difference(a: np.ndarray, b: np.ndarray, groups: list[str], seed: int) -> PairedDifference:
    """Paired comparison of two `[seed, group]` tables over the same episodes (same seeds and groups)."""
    if a.shape != b.shape or a.shape[1] != len(groups):
        raise ValueError(f"paired tables differ in shape: {a.shape} vs {b.shape} for {len(groups)} groups")
    both = ~np.isnan(a) & ~np.isnan(b)
    diff = np.where(both, a - b, np.nan)
    per_group = {g: float(np.nanmean(diff[:, j])) for j, g in enumerate(groups) if both[:, j].any()}
    gaps = np.array(list(per_group.values()))
    return PairedDifference(
        mean=grand_mean(diff),
        ci=bootstrap_ci(diff, seed),
        mean_a=grand_mean(np.where(both, a, np.nan)),
        mean_b=grand_mean(np.where(both, b, np.nan)),
        probability_of_improvement=probability_of_improvement(np.where(both, a, np.nan), np.where(both, b, np.nan)),
        wins=int(np.sum(gaps > TIE_TOLERANCE)),
        ties=int(np.sum(np.abs(gaps) <= TIE_TOLERANCE)),
        losses=int(np.sum(gaps < -TIE_TOLERANCE)),
        per_group=per_group,
        n_pairs=int(both.sum()),
    )
