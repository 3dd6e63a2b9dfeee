"""The board: run records grouped into cells and computed once, for the leaderboard files, the web report, the
plots and the Python API alike.

Rows are methods (a method run with non-default settings, encoder, split seed or item limit is its own row),
columns are task × meta-train fraction (× seen / unseen where a result holds `metrics[K][seen|unseen][metric]`),
a cell is `aggregate.cell_stats` of the row's runs in the column at the column's K. Per column: the floors
(`uniform`; on accuracy tasks the `majority` floor, and which cells are below it) and sampling ceiling with each
cell's headroom, and every row's paired difference to `versus` (default: the column's strongest simple
baseline). Per cell of an overall column, where the runs recorded it: the coverage split (`aggregate.coverage_parts`)
and the paired difference by part. Published numbers come from `references`. Cells that cannot be computed
(a row without runs at the column's K) are left out; notes say what was left out and why."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .aggregate import (
    Bounds,
    CellStats,
    Comparison,
    Part,
    cell_stats,
    column_bounds,
    consistency_warnings,
    coverage_parts,
    paired,
)
from .errors import DataError
from .records import OVERALL, POOLED, RunRecord
from .references import Column, Reference, load_references
from .stats import PairedDifference

DEFAULT_SHOTS = 20
# the rows a column's paired differences are taken against by default: the best of these simple baselines
SIMPLE_BASELINES = ("group-mix", "group-knn", "population", "head", "knn", "uniform", "majority")


@dataclass
class Board:
    """Everything a leaderboard shows; `to_markdown()`, `to_csv()` and `to_html()` render it."""

    columns: list[tuple[Column, int, str]]  # (column, K shown, metric)
    rows: list[str]
    cells: dict[tuple[str, Column], CellStats]
    references: list[Reference]
    notes: list[str]  # skipped folders, left-out columns and cells, consistency warnings
    n_runs: int
    bounds: dict[Column, Bounds] = field(default_factory=dict)
    versus: dict[Column, str] = field(default_factory=dict)  # the row each column's paired differences are against
    differences: dict[tuple[str, Column], PairedDifference] = field(default_factory=dict)
    row_names: dict[str, tuple[str, str]] = field(default_factory=dict)  # row label → (method, variant)
    # the coverage split (overall columns, where the runs recorded it): (row, column) → part → share and score,
    # and the paired difference to the column's `versus` row by part
    coverage: dict[tuple[str, Column], dict[str, Part]] = field(default_factory=dict)
    part_differences: dict[tuple[str, Column], dict[str, PairedDifference]] = field(default_factory=dict)

    def below_floor(self, row: str, column: Column) -> bool:
        """Whether the row's cell is below the column's majority floor."""
        bounds, stats = self.bounds.get(column), self.cells.get((row, column))
        return bounds is not None and stats is not None and bounds.below(stats.mean)

    def reference_rows(self) -> list[tuple[str, str, dict[Column, float]]]:
        """(row label, source id, column → value) of the references that match a shown column."""
        rows: dict[tuple[str, str], dict[Column, float]] = {}
        for ref in self.references:
            for column, shots, metric in self.columns:
                if ref.matches(column, metric) and ref.shots in (None, shots):
                    rows.setdefault((ref.row, ref.source), {})[column] = ref.value
        return [(label, source, values) for (label, source), values in rows.items()]

    def to_markdown(self) -> str:
        from .render import to_markdown

        return to_markdown(self)

    def to_csv(self) -> str:
        from .render import to_csv

        return to_csv(self)

    def to_html(self) -> str:
        from .render import to_html

        return to_html(self)

    def write(self, output_dir: Path) -> list[Path]:
        """Write leaderboard.md, .csv and .html into `output_dir` (atomically); return their paths."""
        from .render import write

        return write(self, output_dir)


def group_cells(runs: list[RunRecord]) -> dict[Column, dict[str, list[RunRecord]]]:
    """Column → row → the row's runs in that column (every subset a run holds)."""
    cells: dict[Column, dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for subset in sorted({s for _, s in run.per_group}):
            cells[Column(run.task, run.train_frac, subset)][run.row].append(run)
    return cells


def column_order(column: Column) -> tuple:
    return (column.task, column.train_frac, column.subset != OVERALL, column.subset)


def column_cells(
    by_row: dict[str, list[RunRecord]], column: Column, shots: int
) -> tuple[Bounds | None, dict[str, CellStats], list[str]]:
    """The column's floors and ceiling at K = `shots` (overall columns; pooled accuracy: only its majority floor)
    and each row's statistics over its runs at K with its headroom (rows without a run at K are left out); and the
    consistency warnings."""
    column_runs = [r for row in by_row for r in by_row[row]]
    bounds = column_bounds(column_runs, shots) if column.subset == OVERALL else None
    if column_runs[0].metric == POOLED and (bounds is None or bounds.majority is None):
        bounds = None  # pooled accuracy has no ceiling; its floor is the pooled majority where recorded
    cells, notes = {}, []
    for row, runs in by_row.items():
        used = [r for r in runs if (shots, column.subset) in r.per_group]
        if (stats := cell_stats(used, shots, column.subset)) is None:
            continue
        if bounds is not None:
            stats = replace(stats, headroom=bounds.headroom(stats.mean))
        cells[row] = stats
        notes += consistency_warnings(used, f"{row} / {column.label()}")
    return bounds, cells, notes


def column_differences(
    by_row: dict[str, list[RunRecord]],
    column: Column,
    shots: int,
    cells: dict[str, CellStats],
    versus: str | None,
    order: list[str],
) -> tuple[str | None, dict[str, Comparison], list[str]]:
    """The row the column's paired differences are against (`versus`: a row label or method name; default: the
    strongest simple baseline, the first in `order` among equals; none for pooled accuracy) and each other row's
    paired difference to it, with notes on the pairs that could not be made or lost seeds."""
    if not cells or next(iter(by_row.values()))[0].metric == POOLED:
        return None, {}, []
    present = [row for row in order if row in cells]
    names = {row: (runs[0].method, runs[0].variant) for row, runs in by_row.items()}
    if versus is not None:
        matching = [row for row in present if row == versus or names[row][0] == versus]
        against = matching[0] if len(matching) == 1 else None
        if against is None:
            what = "no row" if not matching else f"several rows ({'; '.join(matching)})"
            return None, {}, [f"{column.label()}: --versus {versus!r} names {what} at K={shots}; no paired differences"]
    else:
        baselines = [row for row in present if names[row][0] in SIMPLE_BASELINES]
        if not baselines:
            return None, {}, []
        against = max(baselines, key=lambda row: cells[row].mean)
    differences, notes = {}, []
    for row in present:
        if row == against:
            continue
        try:
            differences[row] = paired(by_row[row], by_row[against], shots, column.subset)
        except DataError as error:
            notes.append(f"{row} / {column.label()}: no paired difference to {against} ({error})")
            continue
        if differences[row].note:
            notes.append(f"{row} / {column.label()} vs {against}: {differences[row].note}")
    return against, differences, notes


def pick_shots(available: set[int], requested: int | None) -> int:
    """The K to show: the requested one, else 20 (the GPO paper's) where run, else the largest run."""
    if requested is not None:
        return requested
    return DEFAULT_SHOTS if DEFAULT_SHOTS in available else max(available)


def pick_train_frac(task: str, runs: list[RunRecord], requested: float | None) -> float:
    """The requested fraction, else the task card's where it was run, else the smallest one run."""
    from .cards import load_task_card
    from .errors import UnknownNameError

    available = sorted({r.train_frac for r in runs if r.task == task})
    if requested is not None:
        if not any(math.isclose(requested, f) for f in available):
            raise DataError(f"task {task}: no runs with train fraction {requested} (runs have {available})")
        return requested
    try:
        default = load_task_card(task).train_frac
    except UnknownNameError:  # runs of a task whose card is gone
        return available[0]
    return default if any(math.isclose(default, f) for f in available) else available[0]


def check_shots(runs: list[RunRecord], requested: int | None, where: str = "") -> None:
    """A DataError naming the K that exist where no run has the requested K."""
    available = set().union(*(r.shots(s) for r in runs for s in {s for _, s in r.per_group}))
    if requested is not None and requested not in available:
        raise DataError(f"no runs{where} have K={requested} (runs have K={sorted(available)})")


def row_names(runs: list[RunRecord]) -> dict[str, tuple[str, str]]:
    return {run.row: (run.method, run.variant) for run in runs}


def check_versus(runs: list[RunRecord], versus: str | None) -> None:
    """A DataError naming the valid rows where `versus` names none of them."""
    names = row_names(runs)
    if versus is not None and not any(row == versus or method == versus for row, (method, _) in names.items()):
        raise DataError(f"--versus {versus!r} names no row; rows: {', '.join(sorted(names)) or 'none'}")


def build_board(
    runs: list[RunRecord], shots: int | None = None, versus: str | None = None, notes: list[str] | None = None
) -> Board:
    """Collect the runs into cells, one K per column (`shots`, else 20 where run, else the largest K), with each
    column's floor and ceiling and every row's paired difference to `versus` (default: the best simple baseline).
    `notes` (e.g. the folders `load_runs` skipped) come first among the board's notes."""
    notes = list(notes or [])
    check_versus(runs, versus)
    check_shots(runs, shots)
    by_column = group_cells(runs)
    columns, bounds, cells = [], {}, {}
    for column in sorted(by_column, key=column_order):
        by_row = by_column[column]
        available = set().union(*(r.shots(column.subset) for rs in by_row.values() for r in rs))
        chosen = pick_shots(available, shots)
        if chosen not in available:
            notes.append(f"{column.label()}: no run has K={chosen} (runs have K={sorted(available)}); column left out")
            continue
        columns.append((column, chosen, next(iter(by_row.values()))[0].metric))
        column_bound, column_stats, warnings = column_cells(by_row, column, chosen)
        notes += warnings
        if left_out := [row for row in by_row if row not in column_stats]:
            notes.append(f"{column.label()}: no run of {', '.join(left_out)} has K={chosen}; left out of the column")
        if column_bound is not None:
            bounds[column] = column_bound
        cells.update({(row, column): stats for row, stats in column_stats.items()})
    rows = sorted(
        {row for row, _ in cells}, key=lambda row: (-np.mean([s.mean for (r, _), s in cells.items() if r == row]), row)
    )
    board = Board(columns, rows, cells, load_references(), notes, len(runs), bounds, row_names=row_names(runs))
    for column, chosen, _ in columns:
        column_stats = {row: s for (row, c), s in cells.items() if c == column}
        against, differences, pair_notes = column_differences(
            by_column[column], column, chosen, column_stats, versus, rows
        )
        notes += pair_notes
        if against is not None:
            board.versus[column] = against
        board.differences.update({(row, column): c.difference for row, c in differences.items()})
        board.part_differences.update({(row, column): c.parts for row, c in differences.items() if c.parts})
        if column.subset == OVERALL:
            for row, runs in by_column[column].items():
                if (row, column) in cells and (parts := coverage_parts(runs, chosen)) is not None:
                    board.coverage[(row, column)] = parts
    return board
