"""Paired comparison of two leaderboard rows (or two run folders), for `gpo-bench compare` and `gb.compare`,
over the very same episodes. Methods that share the data, split, seeds and K see the same context and targets
for every (test group, seed), so their difference is measured per (group, seed) and bootstrapped jointly
(`aggregate.paired`): far tighter than two unpaired CIs. Sides with different seed sets are paired on their
common seeds, saying so; sides whose episodes differ are refused with a message that says what differs. This
module picks the sides and the K (`select`, `comparisons`) and formats the result (`describe`)."""

from __future__ import annotations

import math

from .aggregate import CI_SEED, Comparison, paired
from .errors import DataError
from .records import OVERALL, RunRecord
from .render_coverage import BELOW


def select(runs: list[RunRecord], name: str, task: str, train_frac: float | None) -> list[RunRecord]:
    """The runs of one leaderboard row on a task and meta-train fraction: the row labelled `name` (`method` or
    `method [variant]`), else the one row of method `name` (several: ambiguous, refused)."""
    mine = [r for r in runs if r.task == task and (train_frac is None or math.isclose(r.train_frac, train_frac))]
    rows = sorted({r.row for r in mine if r.row == name}) or sorted({r.row for r in mine if r.method == name})
    if not rows:
        known = sorted({r.row for r in mine})
        raise DataError(f"no finished runs of {name!r} on {task}; rows there: {', '.join(known) or 'none'}")
    if len(rows) > 1:
        raise DataError(f"{name!r} names several rows on {task}: {'; '.join(rows)}; pass the full row label")
    chosen = [r for r in mine if r.row == rows[0]]
    fracs = sorted({r.train_frac for r in chosen})
    if len(fracs) > 1:
        raise DataError(f"{rows[0]} ran on {task} with train fractions {fracs}; pick one with --train-frac")
    return chosen


def _shots(runs: list[RunRecord]) -> set[int]:
    return {k for r in runs for k in r.shots()}


def comparisons(a: list[RunRecord], b: list[RunRecord], shots: list[int] | None = None) -> list[Comparison]:
    """A − B at each K in `shots` (default: every K both sides ran), overall and on each seen / unseen subset
    side A has; a DataError naming the K each side ran where a requested K is missing."""
    both = _shots(a) & _shots(b)
    if shots:
        if missing := [k for k in shots if k not in both]:
            raise DataError(
                f"K={missing} not run by both sides (A ran K={sorted(_shots(a))}, B ran K={sorted(_shots(b))})"
            )
    elif not both:
        raise DataError(f"the two sides have no K in common (A ran K={sorted(_shots(a))}, B ran K={sorted(_shots(b))})")
    subsets = sorted({s for r in a for _, s in r.per_group}, key=lambda s: s != OVERALL)
    return [paired(a, b, k, subset) for k in (shots or sorted(both)) for subset in subsets]


def floor_lines(rows: list[Comparison]) -> list[str]:
    """Per K with a majority floor (accuracy tasks): the floor and which side is below it."""
    lines = []
    for row in rows:
        if row.floor is None:
            continue
        below = [side for side, low in zip("AB", row.below_floor(), strict=True) if low]
        where = f"{' and '.join(below)} below it {BELOW}" if below else "neither side below it"
        lines.append(f"K={row.shots}: majority floor {row.floor:.4f} (the seen groups' most common answer); {where}")
    return lines


def part_lines(rows: list[Comparison]) -> list[str]:
    """The paired difference split by coverage part, where both sides' runs recorded it."""
    split = [row for row in rows if row.parts]
    if not split:
        return []
    lines = [
        "Where the difference comes from: target items some seen group answered (answered) or none did "
        "(unanswered), with the part's share of A's predictions, paired over the (test group, seed) pairs with "
        "targets in the part:",
        f"{'K':>4} {'part':>10} {'share':>6} {'A':>7} {'B':>7} {'A − B':>8}  {'95% CI (paired)':>19}  {'P(A>B)':>6}  "
        f"{'pairs':>5}",
    ]
    for row in split:
        for part, diff in row.parts.items():
            lines.append(
                f"{row.shots:>4} {part:>10} {row.shares.get(part, math.nan):6.1%} {diff.mean_a:7.4f} "
                f"{diff.mean_b:7.4f} {diff.mean:+8.4f}  "
                f"[{diff.ci[0]:+.4f}, {diff.ci[1]:+.4f}]  {diff.probability_of_improvement:6.2f}  {diff.n_pairs:>5}"
            )
    return lines


def describe(label_a: str, label_b: str, a: list[RunRecord], b: list[RunRecord], rows: list[Comparison]) -> str:
    """The printed comparison: one line per K (and per seen/unseen subset where the runs have them), then what
    was left out."""
    lines = [
        f"{a[0].task} · train {a[0].train_frac:.0%}: A = {label_a}, B = {label_b} ({a[0].metric}); "
        "paired over (test group, seed): same context and targets",
        f"{'K':>4} {'subset':>8} {'A':>7} {'B':>7} {'A − B':>8}  {'95% CI (paired)':>19}  {'P(A>B)':>6}  "
        f"{'groups A better/tied/worse':>26}  {'pairs':>5}",
    ]
    for row in rows:
        diff = row.difference
        lines.append(
            f"{row.shots:>4} {row.subset:>8} {diff.mean_a:7.4f} {diff.mean_b:7.4f} {diff.mean:+8.4f}  "
            f"[{diff.ci[0]:+.4f}, {diff.ci[1]:+.4f}]  {diff.probability_of_improvement:6.2f}  "
            f"{f'{diff.wins}/{diff.ties}/{diff.losses}':>26}  {diff.n_pairs:>5}"
        )
    lines.append(
        "CI: percentile bootstrap of the mean paired difference, resampling test groups and seeds jointly "
        f"(seed {CI_SEED}); P(A>B): rliable's probability of improvement (per group over seeds, ties half)."
    )
    lines += floor_lines(rows) + part_lines(rows)
    lines += [f"note: {note}" for note in dict.fromkeys(row.note for row in rows if row.note)]
    return "\n".join(lines)
