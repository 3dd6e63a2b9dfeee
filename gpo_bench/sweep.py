"""`gpo-bench sweep`: a grid of runs from flags or a YAML file (`sweep_grid`), run one after another, in a
process pool (`--jobs N`) or as Ray tasks (`--backend ray`) (`sweep_backends`). This module holds the sweep
itself: which planned runs are finished already (`run_states`), running the rest, its summary (`SweepReport`)
and the `--dry-run` listing (`describe`); the names callers use from the other two are importable from here.

One run is one `RunSpec` per (task, method, encoder, train-frac, seed) with every K inside it (GPO
trains once per seed and is evaluated at each K); a method that trains several seeds at once (`fit_seeds`:
GPO, one batched ensemble on CUDA, one process per seed on the CPU) gets one run for all the grid's seeds
unless `seeds_together` is off. Runs are independent units: the same spec always
names the same run folder (`run_folder.run_id`), a finished run (`run_folder.run_state`: a valid result.json whose
predictions.jsonl still matches, on the same data) is skipped, so an interrupted sweep resumes where it
stopped (GPO continues from its checkpoint), and a failing run leaves `error.json` in its run folder while
the others go on. Each run holds its folder's lock while it executes, so two sweeps on one output folder
never run the same run twice: the second waits and reuses the first one's result."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .cards import load_task_card
from .errors import DataError
from .files import write_atomic
from .loaders import load_task
from .records import ERROR_FILE, RESULT_FILE
from .run_folder import data_identity, run_state
from .runner import limit_items
from .sweep_backends import Options, Outcome, absolute, run_all
from .sweep_grid import Grid, PlannedRun, load_sweep_file, make_grid, plan

__all__ = [
    "Grid",
    "Options",
    "PlannedRun",
    "SweepReport",
    "absolute",
    "describe",
    "load_sweep_file",
    "make_grid",
    "plan",
    "run_states",
    "sweep",
]

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    total: int
    finished_before: list[str] = field(default_factory=list)
    done: list[Outcome] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str | None = None  # why the sweep stopped before running every run

    def summary(self, output_dir: Path) -> str:
        reused = sum(o.reused for o in self.done)
        lines = [
            f"sweep: {self.total} runs: {len(self.finished_before)} already finished, {len(self.done) - reused} ran "
            f"now, {len(self.failed)} failed"
            + (f", {reused} finished by another process" if reused else "")
            + f" ({self.seconds:.0f} s)"
        ]
        for outcome in self.failed:
            folder = output_dir / "runs" / outcome.run_id
            lines.append(f"  FAILED {folder}: {outcome.error} (details in {folder / ERROR_FILE})")
        if self.stopped:
            lines.append(f"  STOPPED before the end: {self.stopped}")
        return "\n".join(lines)


def run_states(runs: list[PlannedRun], options: Options) -> dict[str, tuple[str, str]]:
    """run id → (state, why) from `run_state`, checked against the data each run would load now
    (loaded once per task and item limit). A run whose data cannot be loaded is `to run`: it fails in its
    own process, with its own error.json."""
    fingerprints: dict[tuple, dict | None] = {}
    states = {}
    for run in runs:
        folder = run.folder(options.output_dir)
        if not (folder / RESULT_FILE).exists():
            states[run.run_id] = ("failed", "") if (folder / ERROR_FILE).exists() else ("new", "")
            continue
        key = (run.resolved["task"], run.resolved["limit_items"])
        if key not in fingerprints:
            try:
                task = load_task(load_task_card(key[0]), options.data_dir)
                fingerprints[key] = data_identity(limit_items(task, key[1]))
            except DataError as error:
                log.warning("cannot load task %s to check its finished runs (%s)", key[0], error)
                fingerprints[key] = None
        if fingerprints[key] is None:
            states[run.run_id] = ("new", "")
        else:
            states[run.run_id] = run_state(folder, fingerprints[key])[::2]
    return states


def check_writable(folder: Path) -> None:
    """Fail at once, naming the folder, where run folders cannot be created (read-only, full, a file in the
    way), rather than once per run."""
    probe = folder / f".write-test-{os.getpid()}"
    write_atomic(probe, "")
    probe.unlink()


def sweep(
    runs: Iterable[PlannedRun],
    options: Options,
    jobs: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
) -> SweepReport:
    """Run the planned runs that are not finished (all of them with `options.force`); a run whose
    result.json is broken or was computed on other data runs again, and the log says why."""
    runs = list(runs)
    started = time.perf_counter()
    result = SweepReport(total=len(runs))
    states = {} if options.force else run_states(runs, options)
    pending = []
    for run in runs:
        state, why = states.get(run.run_id, ("new", ""))
        if state == "finished":
            result.finished_before.append(run.run_id)
            continue
        if state in ("broken", "other-data"):
            log.warning("%s; running it again", why)
        pending.append(run)
    if pending:  # finished runs are only read: a read-only output folder will do for them
        check_writable(options.output_dir / "runs")
    progress = tqdm(total=len(pending), desc="sweep", unit="run")

    def report(run: PlannedRun, outcome: Outcome) -> None:
        (result.done if outcome.ok else result.failed).append(outcome)
        status = (
            f"done   {run.run_id} ({outcome.seconds:.0f} s{', by another process' * outcome.reused})"
            if outcome.ok
            else f"FAILED {run.run_id}: {outcome.error}"
        )
        progress.write(status)
        progress.set_postfix(failed=len(result.failed))
        progress.update()

    try:
        run_all(pending, options, report, jobs, backend, ray_address, cpus_per_run, gpus_per_run)
    except Exception as error:  # noqa: BLE001  (the sweep still ends with its summary)
        result.stopped = f"{type(error).__name__}: {' '.join(str(error).split())}"
    finally:
        progress.close()
    result.seconds = time.perf_counter() - started
    return result


def describe(runs: list[PlannedRun], options: Options) -> str:
    """One line per planned run (for --dry-run): its state (finished, to run, failed, or why it runs again)
    and what it runs."""
    states = run_states(runs, options)
    lines = []
    for run in runs:
        state, why = states[run.run_id]
        label = {"new": "to run", "other-data": "stale"}.get(state, state)
        r = run.resolved
        lines.append(
            f"{label:<9} {run.folder(options.output_dir)}  task={r['task']} method={r['method']} "
            f"encoder={r['encoder']} train_frac={r['train_frac']} seed{'s' * (len(r['seeds']) > 1)}="
            f"{','.join(map(str, r['seeds']))} "
            f"shots={','.join(map(str, r['shots']))}" + (f"  ({why})" if state in ("broken", "other-data") else "")
        )
    return "\n".join(lines)
