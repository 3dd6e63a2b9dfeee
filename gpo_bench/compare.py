"""`gpo-bench compare`: paired comparison of two methods over the very same episodes. Methods that share the
data, split, seeds and K see the same context and targets for every (test group, seed), so their difference is
measured per (group, seed) and bootstrapped jointly (`gpo_bench.stats.paired_difference`): far tighter than
two unpaired CIs. Runs whose episodes differ are refused with a message that says what differs."""

from __future__ import annotations

import math
from pathlib import Path

from .errors import DataError, RunFileError
from .leaderboard import CI_SEED, OVERALL, Run, load_runs, paired, parse_run


def select(runs: list[Run], name: str, task: str, train_frac: float | None) -> list[Run]:
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


def describe(label_a: str, label_b: str, a: list[Run], b: list[Run], shots: list[int] | None) -> str:
    """The printed comparison: one line per K (and per seen/unseen subset where the runs have them)."""
    available = sorted({k for r in a for k, s in r.per_seed if s == OVERALL} & {k for r in b for k, s in r.per_seed})
    wanted = shots or available
    if not wanted:
        raise DataError("the two sides have no K in common with per-seed values (re-run them with this version)")
    subsets = sorted({s for r in a for _, s in r.per_seed}, key=lambda s: s != OVERALL)
    lines = [
        f"{a[0].task} · train {a[0].train_frac:.0%}: A = {label_a}, B = {label_b} ({a[0].metric}); "
        "paired over (test group, seed): same context and targets",
        f"{'K':>4} {'subset':>8} {'A':>7} {'B':>7} {'A − B':>8}  {'95% CI (paired)':>19}  {'P(A>B)':>6}  "
        f"{'groups A better/tied/worse':>26}  {'pairs':>5}",
    ]
    for k in wanted:
        for subset in subsets:
            diff = paired(a, b, k, subset)
            mean_a, mean_b = diff.mean_a, diff.mean_b
            lines.append(
                f"{k:>4} {subset:>8} {mean_a:7.4f} {mean_b:7.4f} {diff.mean:+8.4f}  "
                f"[{diff.ci[0]:+.4f}, {diff.ci[1]:+.4f}]  {diff.probability_of_improvement:6.2f}  "
                f"{f'{diff.wins}/{diff.ties}/{diff.losses}':>26}  {diff.n_pairs:>5}"
            )
    lines.append(
        "CI: percentile bootstrap of the mean paired difference, resampling test groups and seeds jointly "
        f"(seed {CI_SEED}); P(A>B): rliable's probability of improvement (per group over seeds, ties half)."
    )
    return "\n".join(lines)


def compare_runs(
    output_dir: Path,
    task: str | None,
    methods: tuple[str, str] | None,
    run_folders: tuple[Path, Path] | None,
    train_frac: float | None,
    encoder: str | None,
    shots: list[int] | None,
) -> str:
    """Resolve the two sides (two method rows of a task, or two run folders) and describe their comparison."""
    if run_folders:
        try:
            a, b = ([parse_run(Path(folder))] for folder in run_folders)
        except RunFileError as error:
            raise DataError(str(error)) from None
        if a[0].task != b[0].task:
            raise DataError(f"cannot pair runs of different tasks ({a[0].task} and {b[0].task})")
        return describe(a[0].row, b[0].row, a, b, shots)
    if not task or not methods:
        raise DataError("give --task and --methods A,B, or --runs FOLDER_A FOLDER_B")
    runs, _ = load_runs(output_dir, [task], encoder)
    a = select(runs, methods[0], task, train_frac)
    b = select(runs, methods[1], task, a[0].train_frac)
    return describe(a[0].row, b[0].row, a, b, shots)
