"""The statistics of one board cell and of one paired comparison, from run records.

A cell's runs give a seeds × groups table of per-group means, one row per seed of each run
(`metrics[K][metric]["per_seed"]`; a sweep's run holds one seed, or all of them where the method trains
them at once); the cell's mean is the mean over rows of the mean over groups, and its CI is
`gpo_bench.stats.bootstrap_ci` of that table (resampling rows and groups), as in a single run, so that three
runs of one seed and one run of three seeds give the same cell. Runs of the cell that did not run this K are
left out of it. Where the headline is accuracy pooled over items (`metric: accuracy`, PersonalRewardBench), the
cell is the mean over runs of the pooled accuracy and its CI `stats.pooled_bootstrap_ci` (items resampled within
each run; a run's items are rebuilt from its pooled accuracy and item count, exact as item scores are 0 or 1).
Two sides are paired over the (seed, group) episodes they share: on their common seeds, saying so where their
seed sets differ."""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError
from .records import OVERALL, POOLED, RunRecord
from .stats import PairedDifference, bootstrap_ci, paired_difference, pooled_bootstrap_ci

CI_SEED = 0


@dataclass(frozen=True)
class CellStats:
    mean: float
    ci: tuple[float, float]
    n: int  # rows of the cell's table: one per seed of each run (pooled accuracy: one per run)
    seeds: tuple[int, ...]
    n_groups: int
    headroom: float | None = None  # (mean - uniform) / (ceiling - uniform) where the column has a ceiling


FLOOR_TOLERANCE = 1e-9  # a cell this close to the majority floor is at it (the same answers, summed in another order)
PARTS = ("answered", "unanswered")  # the coverage split: target items some seen group answered, and the rest


@dataclass(frozen=True)
class Bounds:
    """A column's floors on the same targets (`uniform`; on accuracy tasks `majority`, the floor headroom is
    measured from) and sampling-noise ceiling (None, with the reason)."""

    uniform: float
    ceiling: float | None
    note: str
    majority: float | None = None

    def headroom(self, mean: float) -> float | None:
        if self.majority is not None:
            return (mean - self.majority) / (1.0 - self.majority) if self.majority < 1.0 else None
        if self.ceiling is None or self.ceiling <= self.uniform:
            return None
        return (mean - self.uniform) / (self.ceiling - self.uniform)

    def below(self, mean: float) -> bool:
        """Whether a cell's mean is below the majority floor (worse than always giving the most common answer)."""
        return self.majority is not None and mean < self.majority - FLOOR_TOLERANCE


@dataclass(frozen=True)
class Part:
    """One part of a cell's coverage split: its share of the cell's predictions and its score, aggregated like
    the cell (mean over seeds of the mean over groups; pooled accuracy: over items); None where the part is empty."""

    share: float
    mean: float | None
    predictions: int


@dataclass(frozen=True)
class Comparison:
    """A − B at one K and subset over the episodes both sides ran; `note` says what was left out (seeds only one
    side ran), None where nothing was."""

    shots: int
    subset: str
    difference: PairedDifference
    seeds: tuple[int, ...]
    note: str | None
    # coverage part → A − B over the (seed, group) pairs with targets in that part (overall, where both sides'
    # runs recorded the per-group values of the coverage split)
    parts: dict[str, PairedDifference] = field(default_factory=dict)
    # the majority floor on these targets, like the per-group values paired (accuracy tasks, overall; result.json)
    floor: float | None = None
    shares: dict[str, float] = field(default_factory=dict)  # coverage part → its share of side A's predictions

    def below_floor(self) -> tuple[bool, bool]:
        """Whether side A's and side B's means over the paired episodes are below the majority floor."""
        if self.floor is None:
            return False, False
        low = self.floor - FLOOR_TOLERANCE
        return self.difference.mean_a < low, self.difference.mean_b < low


def column_bounds(runs: list[RunRecord], shots: int, per_group: bool = False) -> Bounds | None:
    """The column's floors and ceiling at K, from the row whose runs cover the most seeds (every method shares
    the episodes of a seed, so any complete row gives the same values); None where no run recorded them. The
    majority floor is the one aggregated like the column's headline (pooled accuracy: `majority_pooled`; with
    `per_group`, always like the per-group values); None where a run of that row lacks it (alignment tasks, runs
    written before it)."""
    by_row: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        if shots in run.reference:
            by_row[run.row].append(run)
    if not by_row:
        return None
    fullest = max(by_row.values(), key=lambda rs: (len({s for r in rs for s in r.seeds}), -len(rs)))
    blocks = [r.reference[shots] for r in fullest]
    ceilings = [b["ceiling"] for b in blocks]
    ceiling = None if any(c is None for c in ceilings) else float(np.mean(ceilings))
    key = "majority_pooled" if fullest[0].metric == POOLED and not per_group else "majority"
    floors = [b.get(key) for b in blocks]
    majority = None if any(f is None for f in floors) else float(np.mean(floors))
    return Bounds(float(np.mean([b["uniform"] for b in blocks])), ceiling, str(blocks[0]["ceiling_note"]), majority)


def coverage_parts(runs: list[RunRecord], shots: int) -> dict[str, Part] | None:
    """The coverage split of a cell's runs at K (overall test groups): per part its share of all the runs'
    predictions and its score, the runs' part scores weighted by their seeds (pooled accuracy: `pooled`, else
    `mean`); None where a run of the cell has no coverage block (written before it)."""
    used = [r for r in runs if shots in r.cells]
    if not used or any(not r.cells[shots].coverage for r in used):
        return None
    key = "pooled" if used[0].metric == POOLED else "mean"
    total = sum(r.cells[shots].coverage[part]["predictions"] for r in used for part in PARTS)
    out = {}
    for part in PARTS:
        blocks = [(r.cells[shots].coverage[part], len(r.seeds)) for r in used]
        scored = [(b[key], n) for b, n in blocks if b[key] is not None]
        out[part] = Part(
            share=sum(b["predictions"] for b, _ in blocks) / total if total else 0.0,
            mean=float(np.average([v for v, _ in scored], weights=[n for _, n in scored])) if scored else None,
            predictions=sum(b["predictions"] for b, _ in blocks),
        )
    return out


def cell_table(runs: list[RunRecord], shots: int, subset: str = OVERALL) -> tuple[np.ndarray, list[str]]:
    """seeds × groups table of per-group means (NaN where a row lacks the group) for one K: a row per seed of
    each run that ran K (a run without per-seed values: one row, its per-group means, at its first seed); 0 × 0
    where none did. Rows go in seed order, so a bootstrap over the table does not depend on how the seeds were
    spread over runs or on the run folders' names."""
    key = (shots, subset)
    by_seed = []
    for r in runs:
        if key in r.per_seed:
            by_seed += list(r.per_seed[key].items())
        elif key in r.per_group:
            by_seed.append((min(r.seeds, default=0), r.per_group[key]))
    rows = [row for _, row in sorted(by_seed, key=lambda entry: entry[0])]
    if not rows:
        return np.empty((0, 0)), []
    groups = sorted(set().union(*rows))
    return np.array([[row.get(g, np.nan) for g in groups] for row in rows], dtype=float), groups


def cell_stats(runs: list[RunRecord], shots: int, subset: str = OVERALL) -> CellStats | None:
    """Mean over seeds of the mean over groups (or over runs of the pooled accuracy), and its bootstrap CI;
    None where no run has this K."""
    table, groups = cell_table(runs, shots, subset)
    if not len(table):
        return None
    used = [r for r in runs if (shots, subset) in r.per_group]
    if used[0].metric == POOLED:
        cells = [r.pooled[(shots, subset)] for r in used]
        items = [np.repeat([1.0, 0.0], [round(mean * n), n - round(mean * n)]) for mean, n in cells]
        mean, ci = float(np.mean([m for m, _ in cells])), pooled_bootstrap_ci(items, CI_SEED)
    else:
        mean, ci = float(np.mean(np.nanmean(table, axis=1))), bootstrap_ci(table, CI_SEED)
    return CellStats(
        mean=mean,
        ci=ci,
        n=len(table) if used[0].metric != POOLED else len(used),
        seeds=tuple(sorted({s for r in used for s in r.seeds})),
        n_groups=len(groups),
    )


def group_stats(runs: list[RunRecord], shots: int, subset: str = OVERALL) -> dict[str, CellStats]:
    """Per test group: mean over seeds and a bootstrap CI over seeds (the same bootstrap, one group)."""
    table, groups = cell_table(runs, shots, subset)
    out = {}
    for j, group in enumerate(groups):
        column = table[~np.isnan(table[:, j]), j : j + 1]
        out[group] = CellStats(float(column.mean()), bootstrap_ci(column, CI_SEED), len(column), (), 1)
    return out


def seed_group_table(
    runs: list[RunRecord], shots: int, subset: str = OVERALL, part: str | None = None
) -> dict[tuple[int, str], float]:
    """(seed, group) → the group's mean over its targets (or over its targets in coverage `part`), over one
    side's runs."""
    table: dict[tuple[int, str], float] = {}
    for run in runs:
        source = run.per_seed.get((shots, subset), {}) if part is None else run.coverage_per_seed.get((shots, part), {})
        for seed, groups in source.items():
            table.update({(seed, group): value for group, value in groups.items()})
    return table


def _ran(runs: list[RunRecord], subset: str) -> str:
    return "; ".join(f"{r.folder.name} ran K={sorted(r.shots(subset))}" for r in runs)


def episode_mismatch(a: list[RunRecord], b: list[RunRecord], shots: int, subset: str = OVERALL) -> str | None:
    """Why the two sides cannot be paired at K = `shots` (None when they can): a side without a run at K,
    different data or split, a run at K without per-seed values, or no seed in common."""
    key = (shots, subset)
    for side, runs in (("A", a), ("B", b)):
        if not any(key in r.per_group for r in runs):
            return f"side {side} has no run at K={shots} ({_ran(runs, subset)})"
    a, b = [r for r in a if key in r.per_group], [r for r in b if key in r.per_group]
    identities = {run.episodes for run in a + b}
    if len(identities) > 1:
        fingerprints = sorted({str(run.fingerprint) for run in a + b})
        if len(fingerprints) > 1:
            return f"the data differ (fingerprints {', '.join(fingerprints)})"
        return "the split, split seed or item limit differ"
    for side, runs in (("A", a), ("B", b)):
        if missing := [r.folder.name for r in runs if key not in r.per_seed]:
            return (
                f"side {side} has no per-seed values at K={shots} in {', '.join(missing)} (several seeds in one "
                "run, written before per-seed values were recorded)"
            )
    seeds_a = {seed for seed, _ in seed_group_table(a, shots, subset)}
    seeds_b = {seed for seed, _ in seed_group_table(b, shots, subset)}
    if not seeds_a & seeds_b:
        return f"no seed in common (A: {sorted(seeds_a)}, B: {sorted(seeds_b)})"
    return None


def paired(a: list[RunRecord], b: list[RunRecord], shots: int, subset: str = OVERALL) -> Comparison:
    """A − B over the (seed, group) episodes both sides share, on their common seeds, and the same split by
    coverage part (a group's targets in the part; groups without any there are left out); a DataError where
    they cannot be paired."""
    if reason := episode_mismatch(a, b, shots, subset):
        raise DataError(f"cannot pair these runs at K={shots}: {reason}")
    table_a, table_b = seed_group_table(a, shots, subset), seed_group_table(b, shots, subset)
    seeds_a, seeds_b = sorted({seed for seed, _ in table_a}), sorted({seed for seed, _ in table_b})
    seeds = sorted(set(seeds_a) & set(seeds_b))
    groups = sorted({group for _, group in table_a} | {group for _, group in table_b})
    note = None
    if seeds_a != seeds_b:
        note = f"paired on the common seeds {seeds} at K={shots} (A ran seeds {seeds_a}, B ran {seeds_b})"

    def matrix(table: dict) -> np.ndarray:
        return np.array([[table.get((s, g), np.nan) for g in groups] for s in seeds])

    difference = paired_difference(matrix(table_a), matrix(table_b), groups, CI_SEED)
    parts = {}
    if subset == OVERALL and all((shots, p) in r.coverage_per_seed for r in a + b for p in PARTS):
        for part in PARTS:
            part_a = matrix(seed_group_table(a, shots, part=part))
            part_b = matrix(seed_group_table(b, shots, part=part))
            both = ~np.isnan(part_a) & ~np.isnan(part_b)
            if np.all(np.any(both, axis=1)):  # every seed has a pair in the part; groups without one are left out
                keep = np.any(both, axis=0)
                kept = [g for g, k in zip(groups, keep, strict=True) if k]
                with warnings.catch_warnings():  # a resample may draw no group with targets in the part for a
                    warnings.simplefilter("ignore", RuntimeWarning)  # seed: that seed is left out of its mean
                    parts[part] = paired_difference(part_a[:, keep], part_b[:, keep], kept, CI_SEED)
    bounds = column_bounds(a + b, shots, per_group=True) if subset == OVERALL else None
    floor = None if bounds is None else bounds.majority
    shares = {p: v.share for p, v in (coverage_parts(a, shots) or {}).items()} if subset == OVERALL else {}
    return Comparison(shots, subset, difference, tuple(seeds), note, parts, floor, shares)


def consistency_warnings(runs: list[RunRecord], where: str) -> list[str]:
    """Runs of one cell that should not be averaged blindly: a seed twice, different data or metric."""
    warnings = []
    by_seed = defaultdict(list)
    for run in runs:
        for seed in run.seeds:
            by_seed[seed].append(run.folder.name)
    warnings += [
        f"{where}: seed {s} is in {len(f)} runs ({', '.join(f)}); all counted" for s, f in by_seed.items() if len(f) > 1
    ]
    if len({r.fingerprint for r in runs}) > 1:
        warnings.append(f"{where}: runs were computed on different data (fingerprints differ)")
    if len({r.metric for r in runs}) > 1:
        warnings.append(f"{where}: runs report different metrics {sorted({r.metric for r in runs})}")
    return warnings
