"""Rendering a `board.Board` as the leaderboard files: Markdown, long-format CSV and a self-contained HTML page
(`<output>/leaderboard.{md,csv,html}`). Nothing is computed here beyond formatting."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

from . import render_coverage as cov
from .aggregate import CI_SEED, Bounds, CellStats
from .files import write_atomic
from .references import Column, Reference
from .stats import BOOTSTRAP_SAMPLES, CI_LEVEL, PairedDifference

if TYPE_CHECKING:  # board.Board renders itself through this module
    from .board import Board

REPORTED = "reported by the paper"
CEILING = "sampling ceiling"
OURS = "gpo-bench"

CI_NOTE = (
    f"Cells: mean over seeds of the mean over test groups, [{CI_LEVEL:.0%} CI], n = seeds (over the cell's runs). "
    f"CI: percentile bootstrap ({BOOTSTRAP_SAMPLES} resamples, seed {CI_SEED}) of that mean, resampling seeds and "
    "test groups with replacement from the seeds × groups table of each seed's per-group means "
    "(gpo_bench.stats.bootstrap_ci, as for a single run). Pooled accuracy (PersonalRewardBench): mean over runs "
    "of the accuracy pooled over items, CI resampling items within each run (gpo_bench.stats.pooled_bootstrap_ci)."
)
CSV_FIELDS = (
    "source",
    "row",
    "method",
    "variant",
    "model",
    "task",
    "train_frac",
    "subset",
    "shots",
    "metric",
    "mean",
    "ci_low",
    "ci_high",
    "n",
    "seeds",
    "n_groups",
    "setting",
    "citation",
    "headroom",
    "versus",
    "diff_mean",
    "diff_ci_low",
    "diff_ci_high",
    "p_improvement",
    *cov.CSV_FIELDS,
)


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _fmt_reference(value: float) -> str:
    """As published: 3 decimals, 4 where the paper gave a percentage with two (57.29% → 0.5729)."""
    text = f"{value:.4f}".rstrip("0")
    return text + "0" * (5 - len(text))


def _cell_text(stats: CellStats) -> str:
    headroom = "" if stats.headroom is None else f" · {round(stats.headroom, 2) + 0.0:.0%}"  # + 0.0: no "-0%"
    return f"{_fmt(stats.mean)} [{_fmt(stats.ci[0])}, {_fmt(stats.ci[1])}] n={stats.n}{headroom}"


CEILING_ROW = "sampling ceiling (the true distribution scored against a survey of its size)"
BOUNDS_NOTE = (
    "Floor and ceiling: `uniform` is the floor; the sampling ceiling is what each test group's own distribution "
    "scores against a survey of the size behind it (seeded parametric bootstrap, on the same target items). "
    "After a cell, its headroom: (score − uniform) / (ceiling − uniform)."
)


def _ceiling_text(bounds: Bounds | None) -> str:
    if bounds is None:
        return "—"
    return _fmt(bounds.ceiling) if bounds.ceiling is not None else bounds.note.split(":")[0]


def _difference_text(diff: PairedDifference) -> str:
    return f"{diff.mean:+.3f} [{diff.ci[0]:+.3f}, {diff.ci[1]:+.3f}] P={diff.probability_of_improvement:.2f}"


DIFFERENCE_NOTE = (
    "Paired differences: each row minus the column's strongest simple baseline (or `--versus`), over the same "
    "(test group, seed) episodes; [95% paired bootstrap CI resampling groups and seeds jointly]; P = probability of "
    "improvement (rliable: per group, over seeds, ties half; averaged over groups)."
)


def _best(board: Board) -> dict[Column, str]:
    best = {}
    for column, _, _ in board.columns:
        scored = [(board.cells[(row, column)].mean, row) for row in board.rows if (row, column) in board.cells]
        if scored:
            best[column] = max(scored)[1]
    return best


def _header(column: Column, shots: int, metric: str) -> str:
    return f"{column.label()} · K={shots} ({metric})"


def _citations(board: Board) -> list[tuple[str, str, str]]:
    """(source id, citation, note) of every reference source, in file order."""
    seen: dict[str, tuple[str, str, str]] = {}
    for ref in board.references:
        seen.setdefault(ref.source, (ref.source, ref.citation, ref.note))
    return list(seen.values())


def published(references: list[Reference]) -> list[tuple[Reference, str]]:
    """One line per published row: its first Reference and its values, e.g. "40%: 0.920 · 60%: 0.925"."""
    grouped: dict[tuple, list[Reference]] = {}
    for ref in references:
        grouped.setdefault((ref.source, ref.task, ref.subset, ref.setting, ref.label, ref.model), []).append(ref)
    return [
        (
            refs[0],
            " · ".join(
                _fmt_reference(r.value) if r.train_frac is None else f"{r.train_frac:.0%}: {_fmt_reference(r.value)}"
                for r in refs
            ),
        )
        for refs in grouped.values()
    ]


def _difference_fields(board: Board, row: str, column: Column) -> dict:
    if (diff := board.differences.get((row, column))) is None:
        return {}
    return {
        "versus": board.versus[column],
        "diff_mean": repr(diff.mean),
        "diff_ci_low": repr(diff.ci[0]),
        "diff_ci_high": repr(diff.ci[1]),
        "p_improvement": repr(diff.probability_of_improvement),
    }


def to_csv(board: Board) -> str:
    """Long format: one line per (row, column) of ours, then every published number."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in board.rows:
        for column, shots, metric in board.columns:
            if (stats := board.cells.get((row, column))) is None:
                continue
            method, variant = board.row_names[row]
            writer.writerow(
                {
                    "source": OURS,
                    "row": row,
                    "method": method,
                    "variant": variant,
                    "task": column.task,
                    "train_frac": column.train_frac,
                    "subset": column.subset,
                    "shots": shots,
                    "metric": metric,
                    "mean": repr(stats.mean),
                    "ci_low": repr(stats.ci[0]),
                    "ci_high": repr(stats.ci[1]),
                    "n": stats.n,
                    "seeds": " ".join(map(str, stats.seeds)),
                    "n_groups": stats.n_groups,
                    "headroom": "" if stats.headroom is None else repr(stats.headroom),
                    **_difference_fields(board, row, column),
                    **cov.csv_fields(board, row, column),
                }
            )
    for column, shots, metric in board.columns:
        if (bounds := board.bounds.get(column)) is not None:
            writer.writerow(
                {
                    "source": CEILING,
                    "row": CEILING_ROW,
                    "task": column.task,
                    "train_frac": column.train_frac,
                    "subset": column.subset,
                    "shots": shots,
                    "metric": metric,
                    "mean": "" if bounds.ceiling is None else repr(bounds.ceiling),
                    "setting": bounds.note,
                }
            )
    writer.writerows(cov.floor_csv_rows(board))
    for ref in board.references:
        writer.writerow(
            {
                "source": REPORTED,
                "row": ref.row,
                "method": ref.method,
                "model": ref.model,
                "task": ref.task,
                "train_frac": "" if ref.train_frac is None else ref.train_frac,
                "subset": ref.subset,
                "shots": "" if ref.shots is None else ref.shots,
                "metric": ref.metric,
                "mean": repr(ref.value),
                "setting": ref.setting or "",
                "citation": ref.citation,
            }
        )
    return out.getvalue()


def to_markdown(board: Board) -> str:
    citations = _citations(board)
    number = {source: i + 1 for i, (source, _, _) in enumerate(citations)}
    best = _best(board)
    lines = [
        "# gpo-bench leaderboard",
        "",
        f"{board.n_runs} runs read from runs/*/result.json. {CI_NOTE} Bold: the best of our rows in each column. "
        f"Rows marked *{REPORTED}* are published numbers, shown for reference and not part of any mean.",
        "",
        "| method | " + " | ".join(_header(c, k, m) for c, k, m in board.columns) + " |",
        "| --- |" + " --- |" * len(board.columns),
    ]
    for row in board.rows:
        cells = []
        for column, _, _ in board.columns:
            stats = board.cells.get((row, column))
            text = _cell_text(stats) + cov.mark(board, row, column) if stats else "—"
            cells.append(f"**{text}**" if best.get(column) == row else text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if board.bounds:
        lines.append(
            f"| *{CEILING_ROW}* | " + " | ".join(_ceiling_text(board.bounds.get(c)) for c, _, _ in board.columns) + " |"
        )
    if cov.has_floor(board):
        lines.append(f"| *{cov.FLOOR_ROW}* | " + " | ".join(cov.floor_cells(board)) + " |")
    for label, source, values in board.reference_rows():
        cells = [_fmt_reference(values[c]) if c in values else "—" for c, _, _ in board.columns]
        lines.append(f"| {label}, *{REPORTED}* [{number[source]}] | " + " | ".join(cells) + " |")
    if board.bounds:
        lines += ["", BOUNDS_NOTE + (f" {cov.FLOOR_NOTE}" if cov.has_floor(board) else "")]
    if board.differences:
        lines += ["", "## Paired differences", "", DIFFERENCE_NOTE, ""]
        lines += [
            "| method | "
            + " | ".join(f"{_header(c, k, m)} vs {board.versus.get(c, '—')}" for c, k, m in board.columns)
            + " |"
        ]
        lines += ["| --- |" + " --- |" * len(board.columns)]
        for row in board.rows:
            cells = [
                _difference_text(d) if (d := board.differences.get((row, c))) else "—" for c, _, _ in board.columns
            ]
            if any(cell != "—" for cell in cells):
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += cov.markdown_section(board, _header)
    lines += ["", "## Published numbers (reported by the papers, not computed here)", ""]
    lines += ["| task | subset | K | method | model | setting | metric | value by meta-train fraction | source |"]
    lines += ["| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for first, values in published(board.references):
        lines.append(
            f"| {first.task} | {first.subset} | {first.shots if first.shots is not None else '—'} | {first.label} | "
            f"{first.model} | {first.setting or ''} | {first.metric} | {values} | [{number[first.source]}] |"
        )
    lines += ["", "## Citations", ""]
    lines += [f"[{number[source]}] {citation}. {note}." for source, citation, note in citations]
    if board.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in board.notes]
    return "\n".join(lines) + "\n"


STYLE_FILE = Path(__file__).resolve().parent / "report_assets" / "leaderboard.css"  # inlined into the page


def to_html(board: Board) -> str:
    """A self-contained page (inline CSS, no scripts); each number also sits in data-* attributes."""
    esc = html.escape
    citations = _citations(board)
    number = {source: i + 1 for i, (source, _, _) in enumerate(citations)}
    best = _best(board)

    def column_attrs(column: Column, shots: int) -> str:
        return (
            f'data-task="{esc(column.task)}" data-train-frac="{column.train_frac!r}" '
            f'data-subset="{esc(column.subset)}" data-shots="{shots}"'
        )

    head = "".join(f"<th>{esc(_header(c, k, m))}</th>" for c, k, m in board.columns)
    body = []
    for row in board.rows:
        tds = []
        for column, shots, _ in board.columns:
            stats = board.cells.get((row, column))
            if stats is None:
                tds.append("<td>—</td>")
                continue
            below = board.below_floor(row, column)
            tds.append(
                f'<td class="{"best" if best.get(column) == row else "cell"}{" below" if below else ""}" '
                f'data-source="{OURS}" '
                f'data-row="{esc(row)}" {column_attrs(column, shots)} data-mean="{stats.mean!r}" '
                f'data-ci-low="{stats.ci[0]!r}" data-ci-high="{stats.ci[1]!r}" data-n="{stats.n}"'
                + ("" if stats.headroom is None else f' data-headroom="{stats.headroom!r}"')
                + (' data-below-floor="true"' if below else "")
                + f">{esc(_cell_text(stats) + cov.mark(board, row, column))}</td>"
            )
        body.append(f"<tr><td>{esc(row)}</td>{''.join(tds)}</tr>")
    if board.bounds:
        tds = [
            f'<td data-source="{CEILING}" {column_attrs(c, k)} data-mean="{b.ceiling!r}">{_fmt(b.ceiling)}</td>'
            if (b := board.bounds.get(c)) is not None and b.ceiling is not None
            else f'<td title="{esc(b.note) if b else ""}">{esc(_ceiling_text(b))}</td>'
            for c, k, _ in board.columns
        ]
        body.append(f'<tr class="reference"><td>{esc(CEILING_ROW)}</td>{"".join(tds)}</tr>')
    if cov.has_floor(board):
        body.append(cov.html_floor_row(board, column_attrs))
    differences = []
    for row in board.rows:
        tds = [
            f'<td data-row="{esc(row)}" data-versus="{esc(board.versus[c])}" {column_attrs(c, k)} '
            f'data-diff="{d.mean!r}" data-ci-low="{d.ci[0]!r}" data-ci-high="{d.ci[1]!r}" '
            f'data-p-improvement="{d.probability_of_improvement!r}">{esc(_difference_text(d))}</td>'
            if (d := board.differences.get((row, c)))
            else "<td>—</td>"
            for c, k, _ in board.columns
        ]
        if any((row, c) in board.differences for c, _, _ in board.columns):
            differences.append(f"<tr><td>{esc(row)}</td>{''.join(tds)}</tr>")
    difference_head = "".join(
        f"<th>{esc(_header(c, k, m))} vs {esc(board.versus.get(c, '—'))}</th>" for c, k, m in board.columns
    )
    for label, source, values in board.reference_rows():
        tds = [
            f'<td data-source="{REPORTED}" data-row="{esc(label)}" {column_attrs(c, k)} data-mean="{values[c]!r}">'
            f"{_fmt_reference(values[c])}</td>"
            if c in values
            else "<td>—</td>"
            for c, k, _ in board.columns
        ]
        body.append(
            f'<tr class="reference"><td>{esc(label)}, {REPORTED} <a href="#ref{number[source]}">[{number[source]}]</a>'
            f"</td>{''.join(tds)}</tr>"
        )
    refs = "".join(
        f"<tr><td>{esc(r.task)}</td><td>{esc(r.subset)}</td><td>{r.shots if r.shots is not None else '—'}</td>"
        f"<td>{esc(r.label)}</td><td>{esc(r.model)}</td><td>{esc(r.setting or '')}</td><td>{esc(r.metric)}</td>"
        f'<td>{esc(values)}</td><td><a href="#ref{number[r.source]}">[{number[r.source]}]</a></td></tr>'
        for r, values in published(board.references)
    )
    cites = "".join(f'<li id="ref{number[s]}">{esc(c)}. {esc(n)}.</li>' for s, c, n in citations)
    notes = "".join(f"<li>{esc(n)}</li>" for n in board.notes)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>gpo-bench leaderboard</title>'
        f"<style>{STYLE_FILE.read_text()}</style></head><body>\n<h1>gpo-bench leaderboard</h1>\n"
        f'<p class="note">{board.n_runs} runs read from runs/*/result.json. {esc(CI_NOTE)} Bold: the best of our '
        f"rows in each column. Grey italic rows are published numbers ({REPORTED}), shown for reference and not "
        "part of any mean.</p>\n"
        f'<table id="leaderboard"><thead><tr><th>method</th>{head}</tr></thead><tbody>\n'
        + "\n".join(body)
        + "\n</tbody></table>\n"
        + (f'<p class="note">{esc(BOUNDS_NOTE)}</p>\n' if board.bounds else "")
        + (f'<p class="note">{esc(cov.FLOOR_NOTE)}</p>\n' if cov.has_floor(board) else "")
        + (
            f'<h2>Paired differences</h2><p class="note">{esc(DIFFERENCE_NOTE)}</p>\n'
            f'<table id="differences"><thead><tr><th>method</th>{difference_head}</tr></thead><tbody>\n'
            + "\n".join(differences)
            + "\n</tbody></table>\n"
            if differences
            else ""
        )
        + cov.html_section(board, _header)
        + "<h2>Published numbers (reported by the papers, not computed here)</h2>\n"
        '<table id="references"><thead><tr><th>task</th><th>subset</th><th>K</th><th>method</th><th>model</th>'
        "<th>setting</th><th>metric</th><th>value by meta-train fraction</th><th>source</th></tr></thead>"
        f"<tbody>{refs}</tbody></table>\n"
        f"<h2>Citations</h2><ol>{cites}</ol>\n"
        + (f"<h2>Notes</h2><ul>{notes}</ul>\n" if notes else "")
        + "</body></html>\n"
    )


def write(board: Board, output_dir: Path) -> list[Path]:
    """Write leaderboard.md, .csv and .html into `output_dir` (atomically); return their paths."""
    paths = []
    for suffix, render in ((".md", to_markdown), (".csv", to_csv), (".html", to_html)):
        path = output_dir / f"leaderboard{suffix}"
        write_atomic(path, render(board))
        paths.append(path)
    return paths
