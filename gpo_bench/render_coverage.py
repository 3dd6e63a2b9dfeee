"""The leaderboard's per-person parts, rendered for `render`: the `majority` floor row of accuracy columns and the
mark on cells below it, and the coverage split (a cell's score on items some seen group answered and on items none
did, with each part's share, and the paired difference to the column's `versus` row by part) as a section of the
Markdown and HTML boards and as columns of the CSV. Shown only where the runs recorded these blocks, so boards of
alignment runs without a coverage block are rendered as before. Nothing is computed here beyond formatting."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING

from .aggregate import PARTS, Part
from .references import Column
from .stats import PairedDifference

if TYPE_CHECKING:  # board.Board renders itself through render and this module
    from .board import Board

Header = Callable[[Column, int, str], str]  # a column's title from (column, K, metric), as render._header
FLOOR = "majority floor"
FLOOR_ROW = "majority floor (always the seen groups' most common answer, same targets)"
BELOW = "▼"
FLOOR_NOTE = (
    "Accuracy columns: the floor is `majority`, the score of always giving the seen groups' most common answer "
    "position (pooled over items of the same width, from result.json's reference block, on the very targets of the "
    "column; pooled-accuracy columns: pooled over items like their headline); headroom there is "
    f"(score − majority) / (1 − majority). {BELOW} marks a cell below that floor: worse than no method at all."
)
PART_LABEL = {"answered": "items some seen group answered", "unanswered": "items no seen group answered"}
COVERAGE_NOTE = (
    "Where the score comes from: each cell's score on target items some seen group answered and on items none did "
    "(share of the cell's predictions: score, aggregated like the cell), from result.json's coverage block. "
    "Δ: the paired difference to the column's paired-differences row on that part, over the (test group, seed) "
    "episodes with targets in the part [95% paired bootstrap CI]."
)
CSV_FIELDS = (
    "floor",
    "below_floor",
    *(f"{part}_{what}" for part in PARTS for what in ("share", "mean")),
    *(f"diff_{part}_{what}" for part in PARTS for what in ("mean", "ci_low", "ci_high")),
)


def has_floor(board: Board) -> bool:
    return any(b.majority is not None for b in board.bounds.values())


def mark(board: Board, row: str, column: Column) -> str:
    """The below-floor mark after a cell's text ("" where the cell is at or above the floor, or has none)."""
    return f" {BELOW}" if board.below_floor(row, column) else ""


def floor_cells(board: Board) -> list[str]:
    """The floor row's text per shown column ("—" where the column has no majority floor)."""
    out = []
    for column, _, _ in board.columns:
        bounds = board.bounds.get(column)
        out.append(f"{bounds.majority:.3f}" if bounds is not None and bounds.majority is not None else "—")
    return out


def html_floor_row(board: Board, column_attrs: Callable[[Column, int], str]) -> str:
    """The HTML board's floor row; `column_attrs(column, K)` gives a cell's data-* attributes of its column."""
    tds = [
        f'<td data-source="{FLOOR}" {column_attrs(c, k)} data-mean="{b.majority!r}">{text}</td>'
        if (b := board.bounds.get(c)) is not None and b.majority is not None
        else "<td>—</td>"
        for (c, k, _), text in zip(board.columns, floor_cells(board), strict=True)
    ]
    return f'<tr class="reference floor"><td>{html.escape(FLOOR_ROW)}</td>{"".join(tds)}</tr>'


def _part_text(part: Part) -> str:
    return f"{part.share:.1%}: " + ("—" if part.mean is None else f"{part.mean:.3f}")


def _diff_text(diff: PairedDifference) -> str:
    return f"{diff.mean:+.3f} [{diff.ci[0]:+.3f}, {diff.ci[1]:+.3f}]"


def coverage_text(board: Board, row: str, column: Column) -> str:
    """ "answered 51%: 0.818 · unanswered 49%: 0.719", then "Δ +0.000 [..] · +0.055 [..]" where paired by part."""
    parts = board.coverage.get((row, column))
    if parts is None:
        return "—"
    text = f"answered {_part_text(parts['answered'])} · unanswered {_part_text(parts['unanswered'])}"
    if diffs := board.part_differences.get((row, column)):
        text += " · Δ " + " · ".join(f"{part} {_diff_text(diffs[part])}" for part in PARTS if part in diffs)
    return text


def csv_fields(board: Board, row: str, column: Column) -> dict:
    """The CSV's floor and coverage columns of one cell of ours (empty where the board has none)."""
    out: dict = {}
    if (bounds := board.bounds.get(column)) is not None and bounds.majority is not None:
        out["floor"] = repr(bounds.majority)
        out["below_floor"] = str(board.below_floor(row, column)).lower()
    for part, values in board.coverage.get((row, column), {}).items():
        out[f"{part}_share"] = repr(values.share)
        out[f"{part}_mean"] = "" if values.mean is None else repr(values.mean)
    for part, diff in board.part_differences.get((row, column), {}).items():
        out.update({f"diff_{part}_mean": repr(diff.mean), f"diff_{part}_ci_low": repr(diff.ci[0])})
        out[f"diff_{part}_ci_high"] = repr(diff.ci[1])
    return out


def floor_csv_rows(board: Board) -> list[dict]:
    """One CSV line per column with a majority floor (source `majority floor`)."""
    return [
        {
            "source": FLOOR,
            "row": FLOOR_ROW,
            "task": column.task,
            "train_frac": column.train_frac,
            "subset": column.subset,
            "shots": shots,
            "metric": metric,
            "mean": repr(bounds.majority),
            "floor": repr(bounds.majority),
        }
        for column, shots, metric in board.columns
        if (bounds := board.bounds.get(column)) is not None and bounds.majority is not None
    ]


def _titles(board: Board, shown: list, header: Header) -> list[str]:
    return [header(c, k, m) + (f" Δ vs {board.versus[c]}" if c in board.versus else "") for c, k, m in shown]


def markdown_section(board: Board, header: Header) -> list[str]:
    """The coverage section of the Markdown board (no lines where no cell has a coverage split)."""
    if not board.coverage:
        return []
    shown = [(c, k, m) for c, k, m in board.columns if any((row, c) in board.coverage for row in board.rows)]
    lines = ["", "## Where the score comes from", "", COVERAGE_NOTE, ""]
    lines.append("| method | " + " | ".join(_titles(board, shown, header)) + " |")
    lines.append("| --- |" + " --- |" * len(shown))
    for row in board.rows:
        if any((row, c) in board.coverage for c, _, _ in shown):
            lines.append(f"| {row} | " + " | ".join(coverage_text(board, row, c) for c, _, _ in shown) + " |")
    return lines


def html_section(board: Board, header: Header) -> str:
    """The coverage section of the HTML board, each number also in data-* attributes."""
    if not board.coverage:
        return ""
    esc = html.escape
    shown = [(c, k, m) for c, k, m in board.columns if any((row, c) in board.coverage for row in board.rows)]
    head = "".join(f"<th>{esc(title)}</th>" for title in _titles(board, shown, header))
    body = []
    for row in board.rows:
        if not any((row, c) in board.coverage for c, _, _ in shown):
            continue
        tds = []
        for column, shots, _ in shown:
            fields = csv_fields(board, row, column)
            attrs = " ".join(f'data-{k.replace("_", "-")}="{esc(v)}"' for k, v in fields.items())
            tds.append(
                f'<td data-row="{esc(row)}" data-task="{esc(column.task)}" data-train-frac="{column.train_frac!r}" '
                f'data-shots="{shots}" {attrs}>{esc(coverage_text(board, row, column))}</td>'
            )
        body.append(f"<tr><td>{esc(row)}</td>{''.join(tds)}</tr>")
    return (
        f'<h2>Where the score comes from</h2><p class="note">{esc(COVERAGE_NOTE)}</p>\n'
        f'<table id="coverage"><thead><tr><th>method</th>{head}</tr></thead><tbody>\n'
        + "\n".join(body)
        + "\n</tbody></table>\n"
    )
