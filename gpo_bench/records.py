"""Run records: the one reader of a run folder's `result.json` for everything that reports on runs (the board,
the web report, the plots, `compare` and the Python API). `read_record(folder)` gives a `RunRecord`;
`load_runs(output_dir)` reads every finished run under `output_dir/runs/` into `Runs` (a list of records that
also carries one warning per folder it skipped: unreadable, failed or unfinished). Keys a record does not use
(for example blocks added to result.json by later versions) are ignored."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .cards import load_method_card
from .encoders import DEFAULT_ENCODER, EncoderSpec
from .errors import CardError, RunFileError, UnknownNameError

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.jsonl"
ERROR_FILE = "error.json"
POOLED = "accuracy"  # the headline that is pooled over items; its per-group values are user_accuracy's
OVERALL = "overall"
SUBSETS = ("seen", "unseen")


def group_metric(metric: str) -> str:
    """The summary in a metrics cell that holds per-group values for a run's headline `metric`."""
    return "user_accuracy" if metric == POOLED else metric


@dataclass(frozen=True)
class Cell:
    """One K of a run as result.json records it, over all test groups (a record's `cells`) or over its seen or
    unseen ones (`subset_cells`): the headline's mean and CI over the run's seeds, per-group means, the floors
    (`uniform`; on accuracy tasks `majority`, aggregated like the user-level headline, and `majority_pooled` over
    items), the sampling ceiling and headroom, the fallback counts, and the coverage split (part → share,
    predictions, mean, pooled, n_groups; empty in runs written before it). result.json keeps the floors, ceiling,
    headroom, fallbacks and coverage for all test groups only: a subset's cell has None and none of them."""

    shots: int
    mean: float | None
    ci: tuple[float, float] | None
    per_group: dict[str, float]
    uniform: float | None
    ceiling: float | None
    headroom: float | None
    fallbacks: dict[str, Any]
    majority: float | None = None
    majority_pooled: float | None = None
    coverage: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRecord:
    """One finished run, read from its folder's result.json."""

    folder: Path
    task: str
    method: str
    variant: str  # what sets the run apart from the method card's defaults ("" for a plain run)
    encoder: str | None
    train_frac: float
    seeds: tuple[int, ...]
    metric: str
    fingerprint: str | None
    spec: dict
    cells: dict[int, Cell]  # K → the run's own summary at K (overall)
    subset_cells: dict[tuple[int, str], Cell]  # (K, seen|unseen) → the summary over that subset; {} without subsets
    per_group: dict[tuple[int, str], dict[str, float]]  # (K, subset) → group → mean over the run's seeds
    pooled: dict[tuple[int, str], tuple[float, int]]  # (K, subset) → (pooled accuracy, items), POOLED only
    per_seed: dict[tuple[int, str], dict[int, dict[str, float]]]  # (K, subset) → seed → group → value
    reference: dict[int, dict]  # K → result.json's floor / ceiling block of the overall cell
    episodes: str  # what fixes the episodes besides seed and K: data, split, split seed, item limit
    # (K, coverage part) → seed → group → value: the coverage split's per-group values (runs written since they were)
    coverage_per_seed: dict[tuple[int, str], dict[int, dict[str, float]]] = field(default_factory=dict)
    reused: bool = field(default=False, compare=False)  # `api.run` found this run finished and did not run it

    @property
    def row(self) -> str:
        """The leaderboard row label: the method, with its variant in brackets."""
        return f"{self.method} [{self.variant}]" if self.variant else self.method

    def shots(self, subset: str = OVERALL) -> set[int]:
        return {k for k, s in self.per_group if s == subset}

    def result(self) -> dict:
        """The full result.json content."""
        return json.loads((self.folder / RESULT_FILE).read_text())

    def predictions(self):
        """predictions.jsonl as a pandas DataFrame: one row per (group, item, K, seed) prediction."""
        import pandas as pd

        path = self.folder / PREDICTIONS_FILE
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


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
        if "model" in card_settings and card_settings["model"] == settings.get("model", card_settings["model"]):
            parts.append(f"model={card_settings['model']}")  # a language model's row always names its model
        parts += [f"{k}={settings[k]}" for k in sorted(settings) if card_settings.get(k) != settings[k]]
    if spec.get("split_seed", 0) != 0:
        parts.append(f"split_seed={spec['split_seed']}")
    if spec.get("limit_items") is not None:
        parts.append(f"limit_items={spec['limit_items']}")
    return ", ".join(parts)


def _cell(shots: int, cell: dict, metric: str) -> Cell:
    summary, reference = cell[metric], cell.get("reference") or {}
    return Cell(
        shots=shots,
        mean=None if summary.get("mean") is None else float(summary["mean"]),
        ci=None if summary.get("ci") is None else (float(summary["ci"][0]), float(summary["ci"][1])),
        per_group={str(g): float(v) for g, v in cell[group_metric(metric)]["per_group"].items()},
        uniform=reference.get("uniform"),
        ceiling=reference.get("ceiling"),
        headroom=reference.get("headroom"),
        fallbacks=dict(cell.get("fallbacks") or {}),
        majority=reference.get("majority"),
        majority_pooled=reference.get("majority_pooled"),
        coverage={
            part: {k: v for k, v in values.items() if k != "per_seed"}
            for part, values in (cell.get("coverage") or {}).items()
            if isinstance(values, dict)
        },
    )


def read_record(folder: Path) -> RunRecord:
    """Read one run folder's result.json; RunFileError names the file and what is wrong."""
    path = folder / RESULT_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFileError(f"{path}: cannot read it ({error})") from None
    try:
        spec, metric = raw["spec"], raw["metric"]
        grouped = group_metric(metric)
        per_group, pooled, per_seed, reference, cells = {}, {}, {}, {}, {}
        subset_cells, coverage_per_seed = {}, {}
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
                if subset != OVERALL:
                    subset_cells[key] = _cell(int(shots), block, metric)
            cells[int(shots)] = _cell(int(shots), cell, metric)
            for part, values in (cell.get("coverage") or {}).items():
                if isinstance(values, dict) and isinstance(values.get("per_seed"), dict):
                    coverage_per_seed[(int(shots), part)] = {
                        int(seed): {str(g): float(v) for g, v in groups.items()}
                        for seed, groups in values["per_seed"].items()
                    }
        if not per_group:
            raise RunFileError(f"{path}: 'metrics' is empty")
        return RunRecord(
            folder=folder,
            task=str(spec["task"]),
            method=str(spec["method"]),
            variant=variant(spec),
            encoder=spec["encoder"],
            train_frac=float(spec["train_frac"]),
            seeds=tuple(int(s) for s in spec["seeds"]),
            metric=str(metric),
            fingerprint=raw.get("data", {}).get("fingerprint"),
            spec=spec,
            cells=dict(sorted(cells.items())),
            subset_cells=dict(sorted(subset_cells.items())),
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
            coverage_per_seed=coverage_per_seed,
        )
    except RunFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise RunFileError(f"{path}: not a gpo-bench result ({type(error).__name__}: {error})") from None


class Runs(list):
    """A list of RunRecord with the warnings of the folders `load_runs` skipped (`skipped`) and `to_frame()`."""

    def __init__(self, records=(), skipped: list[str] | None = None) -> None:
        super().__init__(records)
        self.skipped = list(skipped or [])

    def to_frame(self):
        """A pandas DataFrame with one row per run, K, subset and test group: the group's mean over the run's seeds,
        with the run's spec and the subset's mean at K beside it. `subset` is "overall" (every test group, with the
        K's floor, ceiling and headroom) and, for tasks with seen and unseen test groups, "seen" and "unseen" (each
        group once more, under its subset's mean; no floor, ceiling or headroom: result.json has them overall)."""
        import pandas as pd

        rows = []
        for record in self:
            for shots, subset in ((k, s) for k in record.cells for s in (OVERALL, *SUBSETS)):
                cell = record.cells[shots] if subset == OVERALL else record.subset_cells.get((shots, subset))
                for group, value in cell.per_group.items() if cell else ():
                    rows.append(
                        {
                            "run": record.folder.name,
                            "task": record.task,
                            "method": record.method,
                            "variant": record.variant,
                            "row": record.row,
                            "encoder": record.encoder,
                            "train_frac": record.train_frac,
                            "seeds": " ".join(map(str, record.seeds)),
                            "metric": record.metric,
                            "shots": shots,
                            "subset": subset,
                            "group": group,
                            "value": value,
                            "mean": cell.mean,
                            "uniform": cell.uniform,
                            "ceiling": cell.ceiling,
                            "headroom": cell.headroom,
                        }
                    )
        return pd.DataFrame(rows)


def _unfinished(folder: Path) -> str:
    """Why a run folder without result.json was skipped: its error.json's message, or that it is unfinished."""
    error = folder / ERROR_FILE
    if error.exists():
        try:
            message = json.loads(error.read_text()).get("error", "")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            message = "its error.json cannot be read"
        return f"skipped run folder {folder}: the run failed ({' '.join(str(message).split())[:200]})"
    return f"skipped run folder {folder}: unfinished (no result.json yet)"


def load_runs(
    output_dir: Path | str,
    task: str | list[str] | None = None,
    method: str | list[str] | None = None,
    encoder: str | None = None,
) -> Runs:
    """Every readable run under `output_dir/runs/`, keeping only the given task(s), method(s) and encoder (runs of
    methods that use no encoder are kept under any encoder); `.skipped` holds one warning per folder left out."""
    output_dir = Path(output_dir)
    tasks = [task] if isinstance(task, str) else task
    methods = [method] if isinstance(method, str) else method
    wanted_encoder = EncoderSpec.parse(encoder).label() if encoder else None
    runs, skipped = Runs(), []
    for folder in sorted(p for p in (output_dir / "runs").glob("*") if p.is_dir()):
        if not (folder / RESULT_FILE).exists():
            skipped.append(_unfinished(folder))
            log.warning(skipped[-1])
            continue
        try:
            run = read_record(folder)
        except RunFileError as error:
            skipped.append(f"skipped run folder {folder}: {error}")
            log.warning(skipped[-1])
            continue
        if tasks and run.task not in tasks:
            continue
        if methods and run.method not in methods and run.row not in methods:
            continue
        if wanted_encoder and run.encoder not in (None, wanted_encoder):
            continue
        runs.append(run)
    runs.skipped = skipped
    return runs
