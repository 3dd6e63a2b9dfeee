"""The public Python API of gpo-bench: what the command line calls and only renders.

`run` runs one method on one task (or reuses the finished run) and returns its `RunRecord`; `load_runs` reads
the finished runs of a folder back as the same records (`Runs`, with `.to_frame()`); `leaderboard` computes the
board of a list of records (`Board`, with `to_markdown()`, `to_csv()`, `to_html()`); `compare` pairs two rows
over the episodes they share and returns one `Comparison` per K and subset; `run_sweep` runs a grid of runs
(the one `gpo-bench sweep` runs) and returns their records and what failed (`SweepResult`); `list_tasks` and
`list_methods` name what is installed. Not `methods` nor `sweep`: those names are the modules
`gpo_bench.methods` and `gpo_bench.sweep`, which `gpo_bench.<name>` would give once imported. See
docs/python-api.md."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .aggregate import Comparison
from .board import Board, build_board
from .cards import SPEC_LIMITS, Limit
from .encoders import split_encoders
from .errors import CardError, DataError, RunFileError
from .pairing import comparisons, select
from .records import RESULT_FILE, RunRecord, Runs, read_record
from .records import load_runs as _load_runs

if TYPE_CHECKING:
    from .sweep import SweepReport


def list_tasks() -> dict[str, str]:
    """Task card name → its description (built-in cards, and those of any --include-path / plugin)."""
    from .cards import load_task_card
    from .discovery import discover, task_names

    discover()
    return {name: load_task_card(name).description for name in task_names()}


def list_methods() -> dict[str, str]:
    """Method card name → its description."""
    from .cards import load_method_card
    from .discovery import discover, method_names

    discover()
    return {name: load_method_card(name).description for name in method_names()}


def run(
    task: str,
    method: str,
    *,
    data_dir: Path | str | None = None,
    shots: list[int] | tuple[int, ...] | None = None,
    seeds: list[int] | tuple[int, ...] | None = None,
    train_frac: float | None = None,
    settings: dict | None = None,
    output_dir: Path | str = "results",
    encoder: str | None = None,
    model: str | None = None,
    split_seed: int = 0,
    limit_items: int | None = None,
    device: str = "auto",
    force: bool = False,
    resume: bool = False,
    cache_dir: Path | str | None = None,
    strict: bool = False,
) -> RunRecord:
    """Run `method` on `task` into `output_dir/runs/<run id>/` (or reuse the finished run of the same spec unless
    `force`) and return its record. `shots` (default: the task card's grid), `seeds` (default 0, 1, 2),
    `train_frac` (default: the card's), `settings` (overrides of the method card's settings) and `encoder`
    (default minilm; ignored by methods without features) are what `gpo-bench run` takes as flags; `model` is the
    method's language model (its `model` setting) and the encoder's where `encoder` is `"model"`; `strict` makes
    the loader's warnings (unknown names, empty files) errors, as `--strict` does."""
    from .loaders.common import resolve_data_dir
    from .run_folder import with_model
    from .runner import RunSpec, execute, run_id

    spec = RunSpec(
        task=task,
        method=method,
        encoder=encoder or RunSpec.encoder,
        shots=None if shots is None else tuple(int(k) for k in shots),
        seeds=RunSpec.seeds if seeds is None else tuple(int(s) for s in seeds),
        train_frac=train_frac,
        split_seed=split_seed,
        limit_items=limit_items,
        overrides=dict(settings or {}),
    )
    modelled = with_model(spec, model)
    if model is not None and modelled == spec:
        raise CardError(
            f"--model {model}: method {method!r} has no model setting; to use the model's embeddings, "
            "add --encoder model"
        )
    spec = modelled
    output_dir = Path(output_dir)
    cache = None if cache_dir is None else Path(cache_dir)
    result = execute(spec, resolve_data_dir(data_dir), output_dir, device, force, resume, cache, strict=strict)
    record = read_record(output_dir / "runs" / run_id(result["spec"]))
    return replace(record, reused=bool(result.get("reused")))


def load_runs(
    output_dir: Path | str = "results",
    task: str | list[str] | None = None,
    method: str | list[str] | None = None,
    encoder: str | None = None,
) -> Runs:
    """The finished runs under `output_dir/runs/` as records, keeping only the given task(s), method(s) (a
    method name or row label) and encoder. The result is a list (`Runs`) whose `.skipped` names every folder
    left out (unreadable, failed, unfinished) and whose `.to_frame()` is a pandas DataFrame with one row per
    run, K and test group."""
    return _load_runs(output_dir, task, method, encoder)


def leaderboard(runs: list[RunRecord], shots: int | None = None, versus: str | None = None) -> Board:
    """The board of these runs: one K per column (`shots`, else 20 where run, else the column's largest K), each
    row's paired difference to `versus` (a row label or method name; default: each column's strongest simple
    baseline). The folders `load_runs` skipped are among its notes. A DataError where `shots` is not run at all
    or `versus` names no row, naming what exists."""
    return build_board(runs, shots, versus, getattr(runs, "skipped", None))


@dataclass(frozen=True)
class Pairing:
    """`compare`'s answer: the two sides (row labels and their runs) and one Comparison per K and subset;
    `str()` is what `gpo-bench compare` prints."""

    a: str
    b: str
    runs_a: list[RunRecord]
    runs_b: list[RunRecord]
    comparisons: list[Comparison]

    def __str__(self) -> str:
        from .pairing import describe

        return describe(self.a, self.b, self.runs_a, self.runs_b, self.comparisons)


def compare(
    runs: list[RunRecord],
    a: str | RunRecord,
    b: str | RunRecord,
    *,
    task: str | None = None,
    train_frac: float | None = None,
    shots: list[int] | None = None,
) -> Pairing:
    """A − B over the same (test group, seed) episodes at each K both ran (or `shots`): `a` and `b` are row
    labels or method names among `runs` (on `task`, needed where the runs hold several, and `train_frac`,
    needed where a row ran several), or two RunRecords. Sides with different seeds are paired on the seeds
    they share; each Comparison's `note` says so."""
    if isinstance(a, RunRecord) and isinstance(b, RunRecord):
        if a.task != b.task:
            raise DataError(f"cannot pair runs of different tasks ({a.task} and {b.task})")
        return Pairing(a.row, b.row, [a], [b], comparisons([a], [b], shots))
    if isinstance(a, RunRecord) or isinstance(b, RunRecord):
        raise DataError("give two row names or two run records, not one of each")
    if task is None:
        present = sorted({r.task for r in runs})
        if len(present) != 1:
            raise DataError(f"the runs hold tasks {', '.join(present) or 'none'}; name one (task=, --task)")
        task = present[0]
    side_a = select(runs, a, task, train_frac)
    side_b = select(runs, b, task, side_a[0].train_frac)
    return Pairing(side_a[0].row, side_b[0].row, side_a, side_b, comparisons(side_a, side_b, shots))


def read_run(folder: Path | str) -> RunRecord:
    """The record of one run folder (its result.json); a DataError naming the file where it cannot be used."""
    try:
        return read_record(Path(folder))
    except RunFileError as error:
        raise DataError(str(error)) from None


@dataclass(frozen=True)
class SweepResult:
    """`run_sweep`'s answer. `folders`: every run folder of the grid, in plan order; `runs`: the records of those
    that are finished (run now or before; `runs.skipped` names a result.json that cannot be read); `failed`: run
    folder → why it failed (the traceback is in the folder's error.json); `stopped`: why the sweep ended before
    running every run (an error outside any one run), else None; `report`: the sweep's counts and timings (None
    with `dry_run`). `str()` is what `gpo-bench sweep` prints: the summary, or with `dry_run` one line per
    planned run and its state."""

    folders: list[Path]
    runs: Runs
    failed: dict[Path, str]
    stopped: str | None
    report: SweepReport | None
    text: str

    def __str__(self) -> str:
        return self.text


def _listed(name: str, value: str | Sequence | int | float | None, limit: Limit | None = None) -> tuple | None:
    """`run_sweep`'s argument `name`: one value or several (a list, or comma-separated as the flags take them) as a
    tuple, each number checked against `limit` (a CardError naming the argument and the values it takes)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [v.strip() for v in value.split(",") if v.strip()]
    else:
        parts = list(value) if isinstance(value, Sequence) else [value]
    if not parts:
        raise CardError(f"run_sweep({name}=...) is empty; give at least one value or leave it out")
    if limit is None:
        return tuple(str(part) for part in parts)
    return tuple(_checked(name, part, limit) for part in parts)


def _checked(name: str, value: object, limit: Limit) -> object:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # a string that is no number: `check` names it
            value = limit.kind(value)
    return limit.check(value, f"run_sweep({name}=...)")


def run_sweep(
    tasks: str | Sequence[str] | None = None,
    methods: str | Sequence[str] | None = None,
    *,
    file: Path | str | None = None,
    encoders: str | Sequence[str] | None = None,
    model: str | None = None,
    train_fracs: str | Sequence[float] | float | None = None,
    shots: str | Sequence[int] | None = None,
    seeds: str | Sequence[int] | None = None,
    split_seed: int | None = None,
    seeds_together: bool | None = None,
    limit_items: int | None = None,
    settings: dict | None = None,
    data_dir: Path | str | None = None,
    output_dir: Path | str = "results",
    device: str = "auto",
    force: bool = False,
    cache_dir: Path | str | None = None,
    strict: bool = False,
    jobs: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
    dry_run: bool = False,
) -> SweepResult:
    """Run every combination of `tasks` × `methods` × `encoders` × `train_fracs` × seed sets into
    `output_dir/runs/` (each run evaluates every K of `shots`), as `gpo-bench sweep` does with the same flags:
    finished runs are reused unless `force`, a failing run leaves error.json in its folder and the others go on.
    `file` is a YAML sweep file whose fields the arguments given here (not None) replace; `settings` maps
    `setting` (every method whose card has it) or `method.setting` to a value, on top of the file's `set`;
    `model` names the language model of every method with a `model` setting and of the encoder `"model"`.
    A method that trains several seeds at once (gpo) gets one run for all `seeds` unless `seeds_together` is
    False. `jobs` runs that many at once (one process each); `backend="ray"` makes each run a Ray task asking
    for `cpus_per_run` CPUs and `gpus_per_run` GPUs. With `dry_run` nothing runs: `str()` of the result lists
    each planned run and its state. A bad name, setting or sweep file raises before anything runs."""
    from .loaders.common import resolve_data_dir
    from .sweep import Options, absolute, describe, make_grid, plan
    from .sweep import sweep as run_grid

    fields = {
        "tasks": _listed("tasks", tasks),
        "methods": _listed("methods", methods),
        "encoders": _listed("encoders", split_encoders(encoders) if isinstance(encoders, str) else encoders),
        "model": model,
        "train_fracs": _listed("train_fracs", train_fracs, SPEC_LIMITS["train_frac"]),
        "shots": _listed("shots", shots, SPEC_LIMITS["shots"]),
        "seeds": _listed("seeds", seeds, SPEC_LIMITS["seeds"]),
        "split_seed": None if split_seed is None else _checked("split_seed", split_seed, SPEC_LIMITS["split_seed"]),
        "seeds_together": seeds_together,
        "limit_items": _checked("limit_items", limit_items, SPEC_LIMITS["limit_items"]),  # None: every item
    }
    grid = make_grid(None if file is None else Path(file), fields)
    if settings:  # as `--set` pairs do: on top of the file's overrides
        grid = replace(grid, overrides={**grid.overrides, **settings})
    planned = plan(grid)

    options = absolute(
        Options(
            resolve_data_dir(data_dir),
            Path(output_dir),
            device,
            force,
            None if cache_dir is None else Path(cache_dir),
            strict,
        )
    )
    folders = [Path(output_dir) / "runs" / run.run_id for run in planned]
    if dry_run:
        return SweepResult(folders, Runs(), {}, None, None, describe(planned, options))
    report = run_grid(planned, options, jobs, backend, ray_address, cpus_per_run, gpus_per_run)
    failed = {Path(output_dir) / "runs" / outcome.run_id: outcome.error or "" for outcome in report.failed}
    records, unreadable = [], []
    for folder in folders:
        if folder in failed or not (folder / RESULT_FILE).exists():
            continue
        try:
            records.append(read_record(folder))
        except RunFileError as error:
            unreadable.append(f"skipped run folder {folder}: {error}")
    return SweepResult(
        folders, Runs(records, unreadable), failed, report.stopped, report, report.summary(Path(output_dir))
    )
