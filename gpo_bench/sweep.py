"""`gpo-bench sweep`: a grid of runs from flags or a YAML file, run one after another, in a process pool
(`--jobs N`) or as Ray tasks (`--backend ray`).

One run is one `runner.RunSpec` per (task, method, encoder, train-frac, seed) with every K inside it (GPO
trains once per seed and is evaluated at each K); a method that trains several seeds at once (`fit_seeds`:
GPO, one batched ensemble on CUDA, one process per seed on the CPU) gets one run for all the grid's seeds
unless `seeds_together` is off. Runs are independent units: the same spec always
names the same run folder (`runner.run_id`), a finished run (`runner.run_state`: a valid result.json whose
predictions.jsonl still matches, on the same data) is skipped, so an interrupted sweep resumes where it
stopped (GPO continues from its checkpoint), and a failing run leaves `error.json` in its run folder while
the others go on. Each run holds its folder's lock while it executes, so two sweeps on one output folder
never run the same run twice: the second waits and reuses the first one's result."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .cards import SPEC_LIMITS, load_method_card, load_task_card, parse_overrides
from .discovery import discover
from .encoders import DEFAULT_ENCODER
from .errors import CardError, DataError
from .methods.base import Method
from .registry import METHODS
from .runner import (
    ERROR_FILE,
    RESULT_FILE,
    RunSpec,
    data_identity,
    execute,
    limit_items,
    load_task,
    run_id,
    run_state,
    write_atomic,
)
from .workers import usable_cores, worker_pool

log = logging.getLogger(__name__)
# sweep-file field → (accepted item type, is a list)
FILE_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "tasks": (str, True),
    "methods": (str, True),
    "encoders": (str, True),
    "train_fracs": ((int, float), True),
    "shots": (int, True),
    "seeds": (int, True),
    "split_seed": (int, False),
    "seeds_together": (bool, False),
    "limit_items": (int, False),
    "set": (dict, False),
}
# sweep-file field → its range in cards.SPEC_LIMITS (the flags' declaration)
FILE_LIMITS = {"train_fracs": "train_frac", "shots": "shots", "seeds": "seeds", "split_seed": "split_seed"}
FILE_LIMITS["limit_items"] = "limit_items"


@dataclass(frozen=True)
class Grid:
    """The sweep: every combination of its lists; `overrides` keys are `setting` (every method whose card
    has it) or `method.setting` (that method only)."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    encoders: tuple[str, ...] = (DEFAULT_ENCODER,)
    train_fracs: tuple[float | None, ...] = (None,)
    shots: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    split_seed: int = 0
    seeds_together: bool = True  # one run for all seeds where the method trains them at once
    limit_items: int | None = None
    overrides: dict = field(default_factory=dict)

    def method_overrides(self, method: str) -> dict:
        """The overrides that apply to `method` (checked against its card when the spec is resolved)."""
        settings = load_method_card(method).settings
        out = {}
        for key, value in self.overrides.items():
            scope, dot, name = key.rpartition(".")
            if (dot and scope == method) or (not dot and key in settings):
                out[name] = value
        return out

    def check_overrides(self) -> None:
        for key in self.overrides:
            scope, dot, _ = key.rpartition(".")
            if dot and scope not in self.methods:
                raise CardError(f"--set {key}: method {scope!r} is not in this sweep ({', '.join(self.methods)})")
            if not dot and not any(key in load_method_card(m).settings for m in self.methods):
                raise CardError(f"--set {key}: no method of this sweep ({', '.join(self.methods)}) has setting {key!r}")

    def seed_sets(self, method: str) -> list[tuple[int, ...]]:
        """The seeds of each of `method`'s runs: all of them in one run where the method trains several seeds
        at once (and `seeds_together` is on), else one run per seed."""
        discover()  # the card may name a plugin's method
        if self.seeds_together and hasattr(METHODS.get(load_method_card(method).implementation), "fit_seeds"):
            return [self.seeds]
        return [(seed,) for seed in self.seeds]

    def specs(self) -> list[RunSpec]:
        """One RunSpec per (task, method, encoder, train-frac, seed set), in that nesting order."""
        self.check_overrides()
        return [
            RunSpec(
                task=task,
                method=method,
                encoder=encoder,
                shots=self.shots,
                seeds=seeds,
                train_frac=train_frac,
                split_seed=self.split_seed,
                limit_items=self.limit_items,
                overrides=self.method_overrides(method),
            )
            for task in self.tasks
            for method in self.methods
            for encoder in self.encoders
            for train_frac in self.train_fracs
            for seeds in self.seed_sets(method)
        ]


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    resolved: dict
    run_id: str

    def folder(self, output_dir: Path) -> Path:
        return output_dir / "runs" / self.run_id


def plan(grid: Grid) -> list[PlannedRun]:
    """Resolve every spec (a bad task, method or setting fails here, before anything runs) and drop
    duplicates: methods without features ignore the encoder, so several grid points can be one run."""
    planned: dict[str, PlannedRun] = {}
    for spec in grid.specs():
        resolved = spec.resolved()
        rid = run_id(resolved)
        planned.setdefault(rid, PlannedRun(spec, resolved, rid))
    return list(planned.values())


def load_sweep_file(path: Path) -> dict:
    """A YAML sweep file → Grid fields; an unknown key or a wrong type names the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CardError(f"{path}: cannot read the sweep file ({' '.join(str(error).split())})") from None
    if not isinstance(raw, dict):
        raise CardError(f"{path}: a sweep file must be a YAML mapping of {', '.join(FILE_FIELDS)}")
    out = {}
    for key, value in raw.items():
        if key not in FILE_FIELDS:
            raise CardError(f"{path}: unknown field {key!r} (known: {', '.join(FILE_FIELDS)})")
        types, is_list = FILE_FIELDS[key]
        if is_list:
            if isinstance(value, str) and types is str:
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not value:
                raise CardError(f"{path}: field {key!r} must be a non-empty list, got {value!r}")
            bad = [v for v in value if not isinstance(v, types) or isinstance(v, bool)]
            if bad:
                raise CardError(f"{path}: field {key!r} holds {bad[0]!r}, which is not a {_type_names(types)}")
            out[key] = tuple(value)
        elif value is not None and (not isinstance(value, types) or isinstance(value, bool) != (types is bool)):
            raise CardError(f"{path}: field {key!r} must be a {_type_names(types)}, got {value!r}")
        else:
            out[key] = value
        if key in FILE_LIMITS and value is not None:
            limit = SPEC_LIMITS[FILE_LIMITS[key]]
            checked = [limit.check(v, f"{path}: field {key!r}") for v in (out[key] if is_list else [value])]
            out[key] = tuple(checked) if is_list else checked[0]
    if "set" in out:
        out["overrides"] = {str(k): v for k, v in (out.pop("set") or {}).items()}
    return out


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def make_grid(file: Path | None, flags: dict) -> Grid:
    """The sweep file's fields, then the flags that were given (not None) on top; `set` pairs add to the
    file's overrides. Tasks and methods must come from one or the other. Where `--methods` narrows a file's
    methods, the file's overrides of the methods left out are dropped (a flag's are still checked)."""
    fields = load_sweep_file(file) if file else {}
    if flags.get("methods") and "overrides" in fields:
        kept = set(flags["methods"])
        fields["overrides"] = {
            key: value
            for key, value in fields["overrides"].items()
            if not key.rpartition(".")[1] or key.rpartition(".")[0] in kept
        }
    pairs = flags.get("set") or []
    fields.update({k: v for k, v in flags.items() if v is not None and k != "set"})
    fields["overrides"] = {**fields.get("overrides", {}), **parse_overrides(pairs)}
    missing = [name for name in ("tasks", "methods") if not fields.get(name)]
    if missing:
        where = f"{file} or the flags" if file else "the flags (or a --file)"
        raise CardError(f"a sweep needs {' and '.join(missing)}: give them in {where}")
    return Grid(**fields)


@dataclass(frozen=True)
class Options:
    """How each run executes (paths absolute, so workers elsewhere write to the same folders)."""

    data_dir: Path | None
    output_dir: Path
    device: str = "auto"
    force: bool = False
    cache_dir: Path | None = None
    strict: bool = False  # the loaders' warnings are errors


@dataclass(frozen=True)
class Outcome:
    run_id: str
    ok: bool
    seconds: float
    error: str | None = None
    reused: bool = False  # another process finished this run while this sweep waited for its lock


def record_failure(run: PlannedRun, output_dir: Path, error: str, details: str) -> None:
    """Write `error.json` into the run folder (the leaderboard reads only result.json). It never raises: a
    folder that cannot be written is named in a warning, and the sweep goes on to its summary."""
    report = {
        "run_id": run.run_id,
        "error": error,
        "traceback": details,
        "spec": run.resolved,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        write_atomic(run.folder(output_dir) / ERROR_FILE, json.dumps(report, indent=2) + "\n")
    except Exception as problem:  # noqa: BLE001  (the failure being recorded matters more)
        log.warning("could not record the failure of %s (%s)", run.run_id, problem)


def run_one(run: PlannedRun, options: Options) -> Outcome:
    """Execute one run; any exception becomes `error.json` and a failed Outcome, so the sweep goes on."""
    started = time.perf_counter()
    try:
        discover()  # a spawned worker imports the include folders' and entry points' plugins afresh
        result = execute(
            run.spec,
            options.data_dir,
            options.output_dir,
            options.device,
            force=options.force,
            resume=not options.force,
            cache_dir=options.cache_dir,
            strict=options.strict,
        )
    except Exception as error:  # one failing run must not stop the others
        message = f"{type(error).__name__}: {' '.join(str(error).split())}"
        record_failure(run, options.output_dir, message, traceback.format_exc())
        return Outcome(run.run_id, False, time.perf_counter() - started, message)
    return Outcome(run.run_id, True, time.perf_counter() - started, reused=bool(result.get("reused")))


def quiet_run_one(run: PlannedRun, options: Options, threads: int | None = None) -> Outcome:
    """run_one with execute's per-run progress bar (stderr) and the package's INFO logs off, so that the
    sweep shows one bar and one line per run; warnings and errors still reach stderr (and, in-process, every
    log line with -v).
    `threads` sets torch's thread count (worker processes share the machine's cores)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if not logging.getLogger().handlers:  # a fresh worker process
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    package = logging.getLogger("gpo_bench")
    level = package.level
    if package.getEffectiveLevel() > logging.DEBUG:
        package.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            return run_one(run, options)
    finally:
        logging.captureWarnings(False)
        package.setLevel(level)


def _in_process(pending: list[PlannedRun], options: Options, report: Callable[[PlannedRun, Outcome], None]) -> None:
    with logging_redirect_tqdm():
        for run in pending:
            report(run, quiet_run_one(run, options))


def waves(pending: list[PlannedRun]) -> tuple[list[PlannedRun], dict[str, list[PlannedRun]]]:
    """The runs to start at once, and the runs held back until a given run finishes. Parallel runs that
    encode the same (task, encoder) texts would each encode all of them (the cache fills only as they go),
    so one of them leads, preferably one whose method does not train (its cost is the encoding), and the
    others start when it is done and the embedding cache is warm."""
    ready, groups = [], defaultdict(list)
    for run in pending:
        if METHODS.get(run.resolved["implementation"]).needs_features:
            groups[(run.resolved["task"], run.resolved["encoder"], run.resolved["limit_items"])].append(run)
        else:
            ready.append(run)
    held = {}
    for runs in groups.values():
        untrained = [r for r in runs if METHODS.get(r.resolved["implementation"]).fit is Method.fit]
        leader = (untrained or runs)[0]
        held[leader.run_id] = [r for r in runs if r is not leader]
        ready.insert(len(held) - 1, leader)  # leaders first, in plan order
    return ready, held


def _drive(
    pending: list[PlannedRun],
    options: Options,
    start: Callable[[PlannedRun], object],
    wait_one: Callable[[list], tuple[object, Callable[[], Outcome]]],
    report: Callable[[PlannedRun, Outcome], None],
) -> None:
    """Start the ready runs, then, as each finishes, report it and start the runs it was holding back."""
    ready, held = waves(pending)
    running = {start(run): run for run in ready}
    while running:
        handle, get = wait_one(list(running))
        run = running.pop(handle)
        report(run, _result_or_failure(run, options, get))
        running.update({start(follower): follower for follower in held.pop(run.run_id, [])})


def _process_pool(
    pending: list[PlannedRun], options: Options, jobs: int, report: Callable[[PlannedRun, Outcome], None]
) -> None:
    threads = max(1, usable_cores() // jobs)
    pool = worker_pool(jobs)

    def wait_one(futures: list[Future]) -> tuple[Future, Callable[[], Outcome]]:
        done = next(iter(wait(futures, return_when=FIRST_COMPLETED).done))
        return done, done.result

    try:
        _drive(pending, options, lambda run: pool.submit(quiet_run_one, run, options, threads), wait_one, report)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _result_or_failure(run: PlannedRun, options: Options, get: Callable[[], Outcome]) -> Outcome:
    """The worker's Outcome, or a failure when the worker itself died (killed, out of memory, Ray error)."""
    try:
        return get()
    except Exception as error:
        message = f"the worker running this run died ({type(error).__name__}: {error}); rerun the sweep to retry it"
        record_failure(run, options.output_dir, message, traceback.format_exc())
        return Outcome(run.run_id, False, 0.0, message)


def _ray(
    pending: list[PlannedRun],
    options: Options,
    address: str | None,
    cpus: float,
    gpus: float,
    report: Callable[[PlannedRun, Outcome], None],
) -> None:
    """Each run is a Ray task asking for `cpus` CPUs and `gpus` GPUs (fractions share a GPU; the method
    classes do not say which of them use a device, so every run asks alike); results go to the shared
    output folder."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--backend ray needs Ray: pip install 'gpo-bench[ray]'") from None
    ray.init(address=address, ignore_reinit_error=True, logging_level=logging.WARNING, include_dashboard=False)
    task = ray.remote(quiet_run_one)

    def start(run: PlannedRun) -> object:
        return task.options(num_cpus=cpus, num_gpus=gpus).remote(run, options, max(1, int(cpus)))

    def wait_one(refs: list) -> tuple[object, Callable[[], Outcome]]:
        done = ray.wait(refs, num_returns=1)[0][0]
        return done, lambda: ray.get(done)

    try:
        _drive(pending, options, start, wait_one, report)
    finally:
        ray.shutdown()


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
    """run id → (state, why) from `runner.run_state`, checked against the data each run would load now
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
        if backend == "ray":
            _ray(pending, options, ray_address, cpus_per_run, gpus_per_run, report)
        elif jobs > 1 and len(pending) > 1:
            _process_pool(pending, options, jobs, report)
        else:
            _in_process(pending, options, report)
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


def absolute(options: Options) -> Options:
    """The same options with absolute paths (workers may run in another folder or on another node)."""

    def resolve(path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().resolve()

    return replace(
        options,
        data_dir=resolve(options.data_dir),
        output_dir=resolve(options.output_dir),
        cache_dir=resolve(options.cache_dir),
    )
