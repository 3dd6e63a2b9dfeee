"""`gpo-bench plot shots` (headline metric against K per method, 95% bootstrap CI bands, one panel per task,
published points as stars) and `gpo-bench plot groups` (per-group values of each method on one task, with
CI bars). They draw run records (`records.load_runs`) with the board's own cells (`board.column_cells`, one per K, and
`aggregate.group_stats`), so a point is the leaderboard's cell, and write PNG and SVG under `<output>/plots/`
with the Agg backend, colour-blind-safe palettes (Okabe–Ito; Paul Tol's muted for language-model rows) and the
legend outside the data. Rows without a run at a K are left out there, and the returned notes say so."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, ScalarFormatter

from .aggregate import group_stats
from .board import check_shots, column_cells, group_cells, pick_shots, pick_train_frac
from .errors import DataError
from .records import OVERALL, RunRecord, group_metric
from .references import Column, load_references
from .render import REPORTED

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
TOL_MUTED = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499")
PALETTES = {False: OKABE_ITO, True: TOL_MUTED}  # the language-model rows' colours are never the others'
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7 against 8 or 9 colours: no two of 56 rows share both
LINESTYLES = {False: "-", True: "--"}  # solid: the methods on embeddings; dashed: the language-model rows
REFERENCE_MARKERS = ("*", "p", "h", "8")
LEGEND_FONT_SIZE = 9  # points; a legend row, label spacing and padding included, is under 1.75 of it high
FLOOR_LABEL = "majority floor (the seen groups' most common answer)"
METRIC_LABELS = {
    "alignment": "alignment score (0–1, higher is better)",
    "accuracy": "accuracy pooled over pairs (fraction, higher is better)",
    "user_accuracy": "accuracy, mean over users (fraction, higher is better)",
}


def is_language_model_row(row: str) -> bool:
    """A row of a language-model method: its label names the model (`records.variant`)."""
    return "model=" in row


def _style(rows: list[str]) -> dict[str, dict]:
    """A fixed, distinct look per row. Language-model rows are dashed with hollow markers in Paul Tol's muted
    colours, the others solid with filled markers in Okabe–Ito's (both colour-blind safe); within each family the
    colours and the markers cycle at different lengths, so no two rows of a board look alike."""
    style = {}
    for lm, palette in PALETTES.items():
        family = [row for row in rows if is_language_model_row(row) == lm]
        for i, row in enumerate(family):
            colour = palette[i % len(palette)]
            style[row] = {
                "color": colour,
                "marker": MARKERS[i % len(MARKERS)],
                "linestyle": LINESTYLES[lm],
                "markerfacecolor": "white" if lm else colour,
            }
    return style


def check_runs(runs: list[RunRecord], where: Path, tasks: list[str] | None) -> None:
    """A DataError where there is nothing to draw, or a requested task has no runs."""
    if not runs:
        wanted = f" for tasks {', '.join(tasks)}" if tasks else ""
        raise DataError(f"no finished runs under {where / 'runs'}{wanted} match; run `gpo-bench sweep` first")
    missing = sorted(set(tasks or ()) - {r.task for r in runs})
    if missing:
        raise DataError(f"no finished runs of task(s) {', '.join(missing)} under {where / 'runs'}")


def _save(fig: Figure, name: str, output_dir: Path) -> list[Path]:
    FigureCanvasAgg(fig)
    folder = output_dir / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    # No date and fixed element ids in the SVG: the same runs give the same file.
    with matplotlib.rc_context({"svg.hashsalt": "gpo-bench"}):
        for path in paths:
            fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Date": None} if path.suffix == ".svg" else None)
    return paths


def _legend_outside(fig: Figure, axes: list) -> None:
    """One legend for all panels, right of the data, without repeated labels; in as many columns as keep it
    within the figure's height, so it never runs over the caption below the panels."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    rows_that_fit = max(1, int(fig.get_figheight() * 72 / (1.75 * LEGEND_FONT_SIZE)))
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
        fontsize=LEGEND_FONT_SIZE,
        ncols=max(1, math.ceil(len(handles) / rows_that_fit)),
    )


def plot_shots(
    runs: list[RunRecord], output_dir: Path, tasks: list[str] | None = None, train_frac: float | None = None
) -> tuple[list[Path], list[str]]:
    """Write the shot-scaling figure as PNG and SVG under `output_dir/plots/`; return their paths and the notes."""
    fig, name, notes = shots_figure(runs, tasks, train_frac)
    return _save(fig, name, output_dir), notes


def plot_groups(
    runs: list[RunRecord],
    output_dir: Path,
    task: str,
    shots: int | None = None,
    train_frac: float | None = None,
) -> tuple[list[Path], list[str]]:
    """Write the per-group figure as PNG and SVG under `output_dir/plots/`; return their paths and the notes."""
    fig, name, notes = groups_figure(runs, task, shots, train_frac)
    return _save(fig, name, output_dir), notes


def shots_figure(
    runs: list[RunRecord], tasks: list[str] | None = None, train_frac: float | None = None
) -> tuple[Figure, str, list[str]]:
    """Headline metric against K for every row, one panel per task; the figure, its file name and notes on what
    was left out."""
    notes = []
    tasks = list(tasks or sorted({r.task for r in runs}))
    style = _style(sorted({r.row for r in runs}))
    references = load_references()
    fig = Figure(figsize=(4.8 * len(tasks), 4.2), layout="constrained")
    axes = list(fig.subplots(1, len(tasks), squeeze=False)[0])
    cited = {}
    for ax, task in zip(axes, tasks, strict=True):
        frac = pick_train_frac(task, runs, train_frac)
        task_runs = [r for r in runs if r.task == task and math.isclose(r.train_frac, frac)]
        all_shots = sorted(set().union(*(r.shots() for r in task_runs)))
        by_row = next(rows for column, rows in group_cells(task_runs).items() if column.subset == OVERALL)
        by_shots = {k: column_cells(by_row, Column(task, frac), k) for k in all_shots}
        for row in sorted(by_row):
            points = [(k, by_shots[k][1][row]) for k in all_shots if row in by_shots[k][1]]
            if missing := [k for k in all_shots if row not in by_shots[k][1]]:
                notes.append(f"{task} · train {frac:.0%}: {row} has no run at K={missing}; those points left out")
            ks = [k for k, _ in points]
            look = style[row]
            ax.plot(ks, [s.mean for _, s in points], label=row, linewidth=1.8, markersize=5, **look)
            ax.fill_between(
                ks, [s.ci[0] for _, s in points], [s.ci[1] for _, s in points], color=look["color"], alpha=0.12, lw=0
            )
        ceiling = [(k, b.ceiling) for k in all_shots if (b := by_shots[k][0]) and b.ceiling is not None]
        if ceiling:
            ax.plot(
                [k for k, _ in ceiling],
                [c for _, c in ceiling],
                color="black",
                linestyle="-.",  # dashed lines are the language-model rows
                linewidth=1.2,
                label="sampling ceiling (true distribution vs a survey of its size)",
            )
        if floor := [(k, b.majority) for k in all_shots if (b := by_shots[k][0]) and b.majority is not None]:
            ax.plot(*zip(*floor, strict=True), color="0.45", linestyle=(0, (1, 2)), linewidth=1.6, label=FLOOR_LABEL)
        plotted = {r.method: r.row for r in task_runs}
        points: dict[tuple, list] = {}  # one marker per published value, naming every model that reported it
        for ref in references:
            if (
                ref.task == task
                and ref.shots is not None
                and ref.subset == OVERALL
                and ref.method in plotted
                and (ref.train_frac is None or math.isclose(ref.train_frac, frac))
            ):
                points.setdefault((ref.method, ref.label, ref.source, ref.shots, ref.value), []).append(ref.model)
                cited[ref.source] = ref.citation
        for i, ((method, label, source, k, value), models) in enumerate(points.items()):
            ax.scatter(
                [k],
                [value],
                s=110,
                marker=REFERENCE_MARKERS[i % len(REFERENCE_MARKERS)],
                color=style[plotted[method]]["color"],
                edgecolors="black",
                linewidths=0.7,
                zorder=5,
                label=f"{label} · {', '.join(models)}, {REPORTED} [{source}]",
            )
        all_shots = sorted(set(all_shots) | {k for _, _, _, k, _ in points})
        ax.set_xscale("symlog", linthresh=1, linscale=0.5)
        ax.set_xticks(all_shots)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("K: context items per test group (log scale)")
        ax.set_ylabel(METRIC_LABELS.get(task_runs[0].metric, task_runs[0].metric))
        ax.set_title(f"{task} · {frac:.0%} of groups meta-train")
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    caption = (
        "Lines: mean over test groups and runs (seeds); bands: 95% bootstrap CI resampling groups and seeds; "
        "black dash-dot: the sampling-noise ceiling, where the source gives respondent counts."
    )
    if any(is_language_model_row(row) for row in style):
        caption += " Coloured dashed lines with hollow markers: language-model rows."
    if any(line.get_label() == FLOOR_LABEL for ax in axes for line in ax.get_lines()):
        caption += " Grey dots: the majority floor (accuracy: always the seen groups' most common answer)."
    caption += "".join(f"\n[{source}] {citation}" for source, citation in cited.items())
    fig.suptitle("Shot scaling", fontweight="bold")
    fig.text(0.0, -0.02, caption, ha="left", va="top", fontsize=7.5, wrap=True)
    name = "shots-" + "+".join(tasks) + (f"-train{train_frac}" if train_frac is not None else "")
    return fig, name, notes


def groups_figure(
    runs: list[RunRecord], task: str, shots: int | None = None, train_frac: float | None = None
) -> tuple[Figure, str, list[str]]:
    """Per test group: each row's mean over runs with its 95% bootstrap CI over runs (seeds); the figure, its
    file name and notes on the rows left out (no run at K)."""
    runs = [r for r in runs if r.task == task]
    frac = pick_train_frac(task, runs, train_frac)
    runs = [r for r in runs if math.isclose(r.train_frac, frac)]
    check_shots(runs, shots, f" of {task} at train fraction {frac}")
    k = pick_shots(set().union(*(r.shots() for r in runs)), shots)
    every = {row: group_stats([r for r in runs if r.row == row], k) for row in sorted({r.row for r in runs})}
    stats = {row: per_group for row, per_group in every.items() if per_group}
    notes = [f"{task} · train {frac:.0%}: {row} has no run at K={k}; left out" for row in every if row not in stats]
    rows = list(stats)
    style = _style(rows)
    groups = sorted(  # by name first: groups of equal means keep one order (a set's order changes per process)
        sorted({g for per_group in stats.values() for g in per_group}),
        key=lambda g: sum(s[g].mean for s in stats.values() if g in s) / sum(g in s for s in stats.values()),
    )
    fig = Figure(figsize=(8.5, 1.2 + 0.22 * len(groups) * max(2, len(rows)) ** 0.7), layout="constrained")
    ax = fig.subplots()
    step = 0.8 / max(1, len(rows))
    for j, row in enumerate(rows):
        present = [g for g in groups if g in stats[row]]
        ys = [groups.index(g) + 0.4 - step * (j + 0.5) for g in present]  # legend order, top to bottom
        means = [stats[row][g].mean for g in present]
        errors = [
            [m - stats[row][g].ci[0] for g, m in zip(present, means, strict=True)],
            [stats[row][g].ci[1] - m for g, m in zip(present, means, strict=True)],
        ]
        look = style[row]
        ax.errorbar(
            means,
            ys,
            xerr=errors,
            fmt=look["marker"],
            color=look["color"],
            mfc=look["markerfacecolor"],
            markersize=4,
            capsize=2,
            lw=1,
            label=row,
        )
    for i in range(0, len(groups), 2):
        ax.axhspan(i - 0.5, i + 0.5, color="#f2f2f2", zorder=0)
    ax.set_yticks(range(len(groups)), groups)
    ax.set_ylim(-0.5, len(groups) - 0.5)
    metric = group_metric(runs[0].metric)
    ax.set_xlabel(METRIC_LABELS.get(metric, metric))
    ax.set_ylabel("test group")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{task}: per-group {metric} at K={k}, {frac:.0%} of groups meta-train", fontweight="bold")
    _legend_outside(fig, [ax])
    caption = (
        "Points: mean over runs (seeds) of the group's mean over its target items; bars: 95% percentile bootstrap "
        "CI resampling runs (seeds)."
    )
    if any(is_language_model_row(row) for row in rows):
        caption += " Hollow markers: language-model rows."
    fig.text(
        0.0,
        -0.01,
        caption,
        ha="left",
        va="top",
        fontsize=7.5,
        wrap=True,
    )
    return fig, f"groups-{task}-K{k}" + (f"-train{train_frac}" if train_frac is not None else ""), notes
