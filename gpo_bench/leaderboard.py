"""`gpo-bench leaderboard`: read the run folders (`<output>/runs/*/result.json`, and only them) and write
`<output>/leaderboard.{md,csv,html}`: rows = methods (a method run with non-default settings, encoder,
split seed or item limit is its own row), columns = task × meta-train fraction (× seen / unseen where a
result holds `metrics[K][seen|unseen][metric]`), cells = mean and 95% CI over seeds with their number n.

A cell's runs give a seeds × groups table of per-group means, one row per seed of each run
(`metrics[K][metric]["per_seed"]`; a sweep's run holds one seed, or all of them where the method trains
them at once); the cell's mean is the mean over rows of the mean over groups, and its CI is
`gpo_bench.stats.bootstrap_ci` of that table (resampling rows and groups), as in a single run, so that three
runs of one seed and one run of three seeds give the same cell.
Where the headline is accuracy pooled over items (`metric: accuracy`, PersonalRewardBench), the cell is the
mean over runs of the pooled accuracy and its CI `stats.pooled_bootstrap_ci` (items resampled within each
run; a run's items are rebuilt from its pooled accuracy and item count, exact as item scores are 0 or 1).
Published numbers (`reference_results.yaml`) are shown as separate rows marked "reported by the paper"
with their citation, never mixed into our means. A folder whose result.json cannot be read is reported
and skipped."""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import yaml

from .cards import load_method_card
from .encoders import DEFAULT_ENCODER, EncoderSpec
from .errors import CardError, DataError, RunFileError, UnknownNameError
from .files import write_atomic
from .stats import BOOTSTRAP_SAMPLES, CI_LEVEL, PairedDifference, bootstrap_ci, paired_difference, pooled_bootstrap_ci

log = logging.getLogger(__name__)

CI_SEED = 0
CI_NOTE = (
    f"Cells: mean over seeds of the mean over test groups, [{CI_LEVEL:.0%} CI], n = seeds (over the cell's runs). "
    f"CI: percentile bootstrap ({BOOTSTRAP_SAMPLES} resamples, seed {CI_SEED}) of that mean, resampling seeds and "
    "test groups with replacement from the seeds × groups table of each seed's per-group means "
    "(gpo_bench.stats.bootstrap_ci, as for a single run). Pooled accuracy (PersonalRewardBench): mean over runs "
    "of the accuracy pooled over items, CI resampling items within each run (gpo_bench.stats.pooled_bootstrap_ci)."
)
POOLED = "accuracy"  # the headline that is pooled over items; its per-group values are user_accuracy's


def group_metric(metric: str) -> str:
    """The summary in a metrics cell that holds per-group values for a run's headline `metric`."""
    return "user_accuracy" if metric == POOLED else metric


DEFAULT_SHOTS = 20
# the rows a column's paired differences are taken against by default: the best of these simple baselines
SIMPLE_BASELINES = ("group-mix", "group-knn", "population", "head", "knn", "uniform")
OVERALL = "overall"
SUBSETS = ("seen", "unseen")
REPORTED = "reported by the paper"
CEILING = "sampling ceiling"
OURS = "gpo-bench"
REFERENCES_FILE = Path(__file__).resolve().parent / "reference_results.yaml"
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
)


@dataclass(frozen=True)
class Run:
    """What the leaderboard and plots need from one result.json."""

    folder: Path
    task: str
    method: str
    variant: str
    encoder: str | None
    train_frac: float
    seeds: tuple[int, ...]
    metric: str
    fingerprint: str | None
    per_group: dict[tuple[int, str], dict[str, float]]  # (K, subset) → group → mean over the run's seeds
    pooled: dict[tuple[int, str], tuple[float, int]]  # (K, subset) → (pooled accuracy, items), POOLED only
    per_seed: dict[tuple[int, str], dict[int, dict[str, float]]]  # (K, subset) → seed → group → value
    reference: dict[int, dict]  # K → result.json's floor / ceiling block of the overall cell
    episodes: str  # what fixes the episodes besides seed and K: data, split, split seed, item limit

    @property
    def row(self) -> str:
        return f"{self.method} [{self.variant}]" if self.variant else self.method

    def shots(self, subset: str = OVERALL) -> set[int]:
        return {k for k, s in self.per_group if s == subset}


@dataclass(frozen=True)
class Column:
    task: str
    train_frac: float
    subset: str = OVERALL

    def label(self) -> str:
        subset = "" if self.subset == OVERALL else f" · {self.subset}"
        return f"{self.task} · train {self.train_frac:.0%}{subset}"


@dataclass(frozen=True)
class CellStats:
    mean: float
    ci: tuple[float, float]
    n: int  # rows of the cell's table: one per seed of each run (pooled accuracy: one per run)
    seeds: tuple[int, ...]
    n_groups: int
    headroom: float | None = None  # (mean - uniform) / (ceiling - uniform) where the column has a ceiling


@dataclass(frozen=True)
class Bounds:
    """A column's floor (`uniform` on the same targets) and sampling-noise ceiling (None, with the reason)."""

    uniform: float
    ceiling: float | None
    note: str

    def headroom(self, mean: float) -> float | None:
        if self.ceiling is None or self.ceiling <= self.uniform:
            return None
        return (mean - self.uniform) / (self.ceiling - self.uniform)


def column_bounds(runs: list[Run], shots: int) -> Bounds | None:
    """The column's floor and ceiling at K, from the row whose runs cover the most seeds (every method shares
    the episodes of a seed, so any complete row gives the same values); None where no run recorded them."""
    by_row: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if shots in run.reference:
            by_row[run.row].append(run)
    if not by_row:
        return None
    fullest = max(by_row.values(), key=lambda rs: (len({s for r in rs for s in r.seeds}), -len(rs)))
    blocks = [r.reference[shots] for r in fullest]
    ceilings = [b["ceiling"] for b in blocks]
    ceiling = None if any(c is None for c in ceilings) else float(np.mean(ceilings))
    return Bounds(float(np.mean([b["uniform"] for b in blocks])), ceiling, str(blocks[0]["ceiling_note"]))


@dataclass(frozen=True)
class Reference:
    """One published number (already divided by the source's scale)."""

    source: str
    citation: str
    note: str
    metric: str
    task: str
    method: str
    label: str
    model: str
    value: float
    shots: int | None
    train_frac: float | None
    subset: str
    setting: str | None

    @property
    def row(self) -> str:
        setting = f" · {self.setting}" if self.setting else ""
        return f"{self.label} · {self.model}{setting}"

    def matches(self, column: Column, metric: str) -> bool:
        return (
            self.task == column.task
            and self.metric == metric
            and self.subset == column.subset
            and (self.train_frac is None or math.isclose(self.train_frac, column.train_frac))
        )


def _per_group(summary: dict, where: str) -> dict[str, float]:
    values = summary["per_group"]
    if not isinstance(values, dict) or not values:
        raise RunFileError(f"{where}: 'per_group' is empty or not a mapping")
    out = {str(g): float(v) for g, v in values.items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise RunFileError(f"{where}: 'per_group' holds a non-finite value")
    return out


def _short_encoder(label: str) -> str:
    """The encoder label without the settings that are EncoderSpec's defaults."""
    model, *pairs = label.split(",")
    defaults = {f.name: str(f.default) for f in fields(EncoderSpec)}
    return ",".join([model] + [p for p in pairs if defaults.get(p.partition("=")[0]) != p.partition("=")[2]])


def variant(spec: dict) -> str:
    """What sets this run apart from the method card's defaults (empty for a plain run); a run of an older card
    version (the method has changed since) is its own row, never averaged with the current one."""
    parts = []
    try:
        card = load_method_card(spec["method"])
    except (CardError, UnknownNameError):
        card = None
    if card is not None and spec.get("method_version", card.version) != card.version:
        parts.append(f"card v{spec['method_version']}")
    if spec["encoder"] is not None and _short_encoder(spec["encoder"]) != DEFAULT_ENCODER:
        parts.append(f"encoder={_short_encoder(spec['encoder'])}")
    card_settings = None if card is None else card.settings
    settings = spec["settings"] or {}
    if card_settings is None and settings:
        parts.append(f"settings={json.dumps(settings, sort_keys=True)}")
    elif card_settings is not None:
        parts += [f"{k}={settings[k]}" for k in sorted(settings) if card_settings.get(k) != settings[k]]
    if spec.get("split_seed", 0) != 0:
        parts.append(f"split_seed={spec['split_seed']}")
    if spec.get("limit_items") is not None:
        parts.append(f"limit_items={spec['limit_items']}")
    return ", ".join(parts)


def parse_run(folder: Path) -> Run:
    """Read one run folder's result.json; RunFileError names the file and what is wrong."""
    path = folder / "result.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFileError(f"{path}: cannot read it ({error})") from None
    try:
        spec, metric = raw["spec"], raw["metric"]
        grouped = group_metric(metric)
        per_group, pooled, per_seed, reference = {}, {}, {}, {}
        for shots, cell in raw["metrics"].items():
            blocks = [(OVERALL, cell)] + [(s, cell[s]) for s in SUBSETS if isinstance(cell.get(s), dict)]
            if isinstance(cell.get("reference"), dict):
                reference[int(shots)] = cell["reference"]
            for subset, block in blocks:
                key = (int(shots), subset)
                per_group[key] = _per_group(block[grouped], f"{path} K={shots} {subset}")
                if "per_seed" in block[grouped]:
                    per_seed[key] = {
                        int(seed): _per_group({"per_group": values}, f"{path} K={shots} {subset} seed {seed}")
                        for seed, values in block[grouped]["per_seed"].items()
                    }
                elif len(spec["seeds"]) == 1:  # results written before per_seed: one seed is its per_group
                    per_seed[key] = {int(spec["seeds"][0]): per_group[key]}
                if metric == POOLED:
                    pooled[key] = (float(block[POOLED]["mean"]), int(block[grouped]["n_items"]))
        if not per_group:
            raise RunFileError(f"{path}: 'metrics' is empty")
        return Run(
            folder=folder,
            task=str(spec["task"]),
            method=str(spec["method"]),
            variant=variant(spec),
            encoder=spec["encoder"],
            train_frac=float(spec["train_frac"]),
            seeds=tuple(int(s) for s in spec["seeds"]),
            metric=str(metric),
            fingerprint=raw.get("data", {}).get("fingerprint"),
            per_group=per_group,
            pooled=pooled,
            per_seed=per_seed,
            reference=reference,
            episodes=json.dumps(
                [
                    raw.get("data", {}).get("fingerprint"),
                    raw.get("split"),
                    spec.get("split_seed"),
                    spec.get("limit_items"),
                ],
                sort_keys=True,
            ),
        )
    except RunFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise RunFileError(f"{path}: not a gpo-bench result ({type(error).__name__}: {error})") from None


def load_runs(
    output_dir: Path, tasks: list[str] | None = None, encoder: str | None = None
) -> tuple[list[Run], list[str]]:
    """Every readable run under `output_dir/runs/`, filtered; and one warning per skipped folder."""
    runs, skipped = [], []
    wanted_encoder = EncoderSpec.parse(encoder).label() if encoder else None
    for result in sorted((output_dir / "runs").glob("*/result.json")):
        try:
            run = parse_run(result.parent)
        except RunFileError as error:
            skipped.append(f"skipped run folder {result.parent}: {error}")
            log.warning(skipped[-1])
            continue
        if tasks and run.task not in tasks:
            continue
        if wanted_encoder and run.encoder not in (None, wanted_encoder):
            continue
        runs.append(run)
    return runs, skipped


def seed_group_table(runs: list[Run], shots: int, subset: str = OVERALL) -> dict[tuple[int, str], float]:
    """(seed, group) → the group's mean over its targets, over one side's runs."""
    table: dict[tuple[int, str], float] = {}
    for run in runs:
        for seed, groups in run.per_seed.get((shots, subset), {}).items():
            table.update({(seed, group): value for group, value in groups.items()})
    return table


def episode_mismatch(a: list[Run], b: list[Run], shots: int, subset: str = OVERALL) -> str | None:
    """Why the two sides' episodes at K = `shots` differ (None when they are the same)."""
    identities = {run.episodes for run in a + b}
    if len(identities) > 1:
        fingerprints = sorted({str(run.fingerprint) for run in a + b})
        if len(fingerprints) > 1:
            return f"the data differ (fingerprints {', '.join(fingerprints)})"
        return "the split, split seed or item limit differ"
    for side, runs in (("A", a), ("B", b)):
        if missing := [r.folder.name for r in runs if (shots, subset) not in r.per_seed]:
            ran = sorted({k for r in runs for k, s in r.per_seed if s == subset})
            return f"side {side} has no per-seed values at K={shots} in {', '.join(missing)} (it ran K={ran})"
    seeds_a = sorted({seed for seed, _ in seed_group_table(a, shots, subset)})
    seeds_b = sorted({seed for seed, _ in seed_group_table(b, shots, subset)})
    if seeds_a != seeds_b:
        return f"the seeds differ (A: {seeds_a}, B: {seeds_b})"
    return None


def paired(a: list[Run], b: list[Run], shots: int, subset: str = OVERALL) -> PairedDifference:
    """A − B over the (seed, group) episodes both sides share; a DataError where their episodes differ."""
    if reason := episode_mismatch(a, b, shots, subset):
        raise DataError(f"cannot pair these runs at K={shots}: {reason}")
    table_a, table_b = seed_group_table(a, shots, subset), seed_group_table(b, shots, subset)
    seeds = sorted({seed for seed, _ in table_a})
    groups = sorted({group for _, group in table_a} | {group for _, group in table_b})

    def matrix(table: dict) -> np.ndarray:
        return np.array([[table.get((s, g), np.nan) for g in groups] for s in seeds])

    return paired_difference(matrix(table_a), matrix(table_b), groups, CI_SEED)


def cell_table(runs: list[Run], shots: int, subset: str = OVERALL) -> tuple[np.ndarray, list[str]]:
    """seeds × groups table of per-group means (NaN where a row lacks the group) for one K: a row per seed of
    each run (a run without per-seed values: one row, its per-group means)."""
    key = (shots, subset)
    rows = [
        row
        for r in runs
        if key in r.per_group
        for row in ([r.per_seed[key][s] for s in sorted(r.per_seed[key])] if key in r.per_seed else [r.per_group[key]])
    ]
    groups = sorted(set().union(*rows)) if rows else []
    return np.array([[row.get(g, np.nan) for g in groups] for row in rows], dtype=float).reshape(len(rows), -1), groups


def cell_stats(runs: list[Run], shots: int, subset: str = OVERALL) -> CellStats | None:
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


def group_stats(runs: list[Run], shots: int, subset: str = OVERALL) -> dict[str, CellStats]:
    """Per test group: mean over seeds and a bootstrap CI over seeds (the same bootstrap, one group)."""
    table, groups = cell_table(runs, shots, subset)
    out = {}
    for j, group in enumerate(groups):
        column = table[~np.isnan(table[:, j]), j : j + 1]
        out[group] = CellStats(float(column.mean()), bootstrap_ci(column, CI_SEED), len(column), (), 1)
    return out


def consistency_warnings(runs: list[Run], where: str) -> list[str]:
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


def load_references(path: Path = REFERENCES_FILE) -> list[Reference]:
    """The published numbers; a malformed entry is a CardError naming the file, source and row."""
    try:
        raw = yaml.safe_load(path.read_text())
        references = []
        for source in raw["sources"]:
            fracs = source.get("train_fracs")
            for index, row in enumerate(source["rows"]):
                where = f"{path}: source {source.get('id')!r}, row {index + 1}"
                if ("value" in row) == ("values" in row):
                    raise CardError(f"{where}: give either 'value' or 'values'")
                if "values" in row and (not fracs or len(row["values"]) != len(fracs)):
                    raise CardError(f"{where}: 'values' needs one number per entry of the source's 'train_fracs'")
                pairs = zip(fracs, row["values"], strict=True) if "values" in row else [(None, row["value"])]
                references += [
                    Reference(
                        source=source["id"],
                        citation=source["citation"],
                        note=source.get("note", ""),
                        metric=source["metric"],
                        task=row["task"],
                        method=row["method"],
                        label=row["label"],
                        model=row["model"],
                        value=float(value) / float(source["scale"]),
                        shots=source.get("shots"),
                        train_frac=None if frac is None else float(frac),
                        subset=row.get("subset", OVERALL),
                        setting=row.get("setting"),
                    )
                    for frac, value in pairs
                ]
    except CardError:
        raise
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise CardError(f"{path}: malformed reference results ({type(error).__name__}: {error})") from None
    return references


@dataclass
class Leaderboard:
    columns: list[tuple[Column, int, str]]  # (column, K shown, metric)
    rows: list[str]
    cells: dict[tuple[str, Column], CellStats]
    references: list[Reference]
    notes: list[str]  # skipped folders and consistency warnings
    n_runs: int
    bounds: dict[Column, Bounds] = field(default_factory=dict)
    versus: dict[Column, str] = field(default_factory=dict)  # the row each column's paired differences are against
    differences: dict[tuple[str, Column], PairedDifference] = field(default_factory=dict)

    def reference_rows(self) -> list[tuple[str, str, dict[Column, float]]]:
        """(row label, source id, column → value) of the references that match a shown column."""
        rows: dict[tuple[str, str], dict[Column, float]] = {}
        for ref in self.references:
            for column, shots, metric in self.columns:
                if ref.matches(column, metric) and ref.shots in (None, shots):
                    rows.setdefault((ref.row, ref.source), {})[column] = ref.value
        return [(label, source, values) for (label, source), values in rows.items()]


def pick_shots(available: set[int], requested: int | None) -> int:
    """The K to show: the requested one, else 20 (the GPO paper's) where run, else the largest run."""
    if requested is not None:
        return requested
    return DEFAULT_SHOTS if DEFAULT_SHOTS in available else max(available)


def pick_versus(board: Leaderboard, column: Column, versus: str | None) -> str | None:
    """The row a column's paired differences are against: `versus` (a row label or method name), else the
    column's best simple baseline."""
    present = [row for row in board.rows if (row, column) in board.cells]
    if versus is not None:
        matching = [row for row in present if row == versus or row.partition(" [")[0] == versus]
        return matching[0] if len(matching) == 1 else None
    baselines = [row for row in present if row.partition(" [")[0] in SIMPLE_BASELINES]
    return max(baselines, key=lambda row: board.cells[(row, column)].mean) if baselines else None


def build(
    output_dir: Path,
    tasks: list[str] | None = None,
    encoder: str | None = None,
    shots: int | None = None,
    versus: str | None = None,
) -> Leaderboard:
    """Collect the runs into cells, one K per column (`shots`, else 20 where run, else the largest K), with each
    column's floor and ceiling and every row's paired difference to `versus` (default: the best simple baseline)."""
    runs, notes = load_runs(output_dir, tasks, encoder)
    by_cell: dict[tuple[str, Column], list[Run]] = defaultdict(list)
    for run in runs:
        for subset in {s for _, s in run.per_group}:
            by_cell[(run.row, Column(run.task, run.train_frac, subset))].append(run)
    columns, cells, bounds = [], {}, {}
    for column in sorted({c for _, c in by_cell}, key=lambda c: (c.task, c.train_frac, c.subset != OVERALL, c.subset)):
        column_runs = [r for (_, c), rs in by_cell.items() if c == column for r in rs]
        available = set().union(*(r.shots(column.subset) for r in column_runs))
        chosen = pick_shots(available, shots)
        if chosen not in available:
            notes.append(f"{column.label()}: no run has K={chosen} (runs have K={sorted(available)}); column left out")
            continue
        columns.append((column, chosen, column_runs[0].metric))
        column_bound = column_bounds(column_runs, chosen) if column_runs[0].metric != POOLED else None
        if column.subset == OVERALL and column_bound is not None:
            bounds[column] = column_bound
        for (row, c), cell_runs in by_cell.items():
            if c == column and (stats := cell_stats(cell_runs, chosen, column.subset)) is not None:
                if column in bounds:
                    stats = replace(stats, headroom=bounds[column].headroom(stats.mean))
                cells[(row, column)] = stats
                notes += consistency_warnings(cell_runs, f"{row} / {column.label()}")
    rows = sorted(
        {row for row, _ in cells}, key=lambda row: (-np.mean([s.mean for (r, _), s in cells.items() if r == row]), row)
    )
    board = Leaderboard(columns, rows, cells, load_references(), notes, len(runs), bounds)
    for column, chosen, metric in columns:
        if metric == POOLED or (against := pick_versus(board, column, versus)) is None:
            continue
        board.versus[column] = against
        for row in rows:
            if row == against or (row, column) not in cells:
                continue
            try:
                board.differences[(row, column)] = paired(
                    by_cell[(row, column)], by_cell[(against, column)], chosen, column.subset
                )
            except DataError as error:
                notes.append(f"{row} / {column.label()}: no paired difference to {against} ({error})")
    return board


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _fmt_reference(value: float) -> str:
    """As published: 3 decimals, 4 where the paper gave a percentage with two (57.29% → 0.5729)."""
    text = f"{value:.4f}".rstrip("0")
    return text + "0" * (5 - len(text))


def _cell_text(stats: CellStats) -> str:
    headroom = "" if stats.headroom is None else f" · {stats.headroom:.0%}"
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


def _best(board: Leaderboard) -> dict[Column, str]:
    best = {}
    for column, _, _ in board.columns:
        scored = [(board.cells[(row, column)].mean, row) for row in board.rows if (row, column) in board.cells]
        if scored:
            best[column] = max(scored)[1]
    return best


def _header(column: Column, shots: int, metric: str) -> str:
    return f"{column.label()} · K={shots} ({metric})"


def _citations(board: Leaderboard) -> list[tuple[str, str, str]]:
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


def _difference_fields(board: Leaderboard, row: str, column: Column) -> dict:
    if (diff := board.differences.get((row, column))) is None:
        return {}
    return {
        "versus": board.versus[column],
        "diff_mean": repr(diff.mean),
        "diff_ci_low": repr(diff.ci[0]),
        "diff_ci_high": repr(diff.ci[1]),
        "p_improvement": repr(diff.probability_of_improvement),
    }


def to_csv(board: Leaderboard) -> str:
    """Long format: one line per (row, column) of ours, then every published number."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in board.rows:
        for column, shots, metric in board.columns:
            if (stats := board.cells.get((row, column))) is None:
                continue
            method, _, rest = row.partition(" [")
            writer.writerow(
                {
                    "source": OURS,
                    "row": row,
                    "method": method,
                    "variant": rest.rstrip("]"),
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


def to_markdown(board: Leaderboard) -> str:
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
            text = _cell_text(stats) if stats else "—"
            cells.append(f"**{text}**" if best.get(column) == row else text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if board.bounds:
        lines.append(
            f"| *{CEILING_ROW}* | " + " | ".join(_ceiling_text(board.bounds.get(c)) for c, _, _ in board.columns) + " |"
        )
    for label, source, values in board.reference_rows():
        cells = [_fmt_reference(values[c]) if c in values else "—" for c, _, _ in board.columns]
        lines.append(f"| {label}, *{REPORTED}* [{number[source]}] | " + " | ".join(cells) + " |")
    if board.bounds:
        lines += ["", BOUNDS_NOTE]
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


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
tr.reference td { background: #f7f7f7; color: #555; font-style: italic; }
td.best { font-weight: bold; }
.note { max-width: 60em; }
"""


def to_html(board: Leaderboard) -> str:
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
            tds.append(
                f'<td class="{"best" if best.get(column) == row else "cell"}" data-source="{OURS}" '
                f'data-row="{esc(row)}" {column_attrs(column, shots)} data-mean="{stats.mean!r}" '
                f'data-ci-low="{stats.ci[0]!r}" data-ci-high="{stats.ci[1]!r}" data-n="{stats.n}"'
                + ("" if stats.headroom is None else f' data-headroom="{stats.headroom!r}"')
                + f">{esc(_cell_text(stats))}</td>"
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
        f"<style>{STYLE}</style></head><body>\n<h1>gpo-bench leaderboard</h1>\n"
        f'<p class="note">{board.n_runs} runs read from runs/*/result.json. {esc(CI_NOTE)} Bold: the best of our '
        f"rows in each column. Grey italic rows are published numbers ({REPORTED}), shown for reference and not "
        "part of any mean.</p>\n"
        f'<table id="leaderboard"><thead><tr><th>method</th>{head}</tr></thead><tbody>\n'
        + "\n".join(body)
        + "\n</tbody></table>\n"
        + (f'<p class="note">{esc(BOUNDS_NOTE)}</p>\n' if board.bounds else "")
        + (
            f'<h2>Paired differences</h2><p class="note">{esc(DIFFERENCE_NOTE)}</p>\n'
            f'<table id="differences"><thead><tr><th>method</th>{difference_head}</tr></thead><tbody>\n'
            + "\n".join(differences)
            + "\n</tbody></table>\n"
            if differences
            else ""
        )
        + "<h2>Published numbers (reported by the papers, not computed here)</h2>\n"
        '<table id="references"><thead><tr><th>task</th><th>subset</th><th>K</th><th>method</th><th>model</th>'
        "<th>setting</th><th>metric</th><th>value by meta-train fraction</th><th>source</th></tr></thead>"
        f"<tbody>{refs}</tbody></table>\n"
        f"<h2>Citations</h2><ol>{cites}</ol>\n"
        + (f"<h2>Notes</h2><ul>{notes}</ul>\n" if notes else "")
        + "</body></html>\n"
    )


def write(board: Leaderboard, output_dir: Path) -> list[Path]:
    """Write leaderboard.md, .csv and .html into `output_dir` (atomically); return their paths."""
    paths = []
    for suffix, render in ((".md", to_markdown), (".csv", to_csv), (".html", to_html)):
        path = output_dir / f"leaderboard{suffix}"
        write_atomic(path, render(board))
        paths.append(path)
    return paths
