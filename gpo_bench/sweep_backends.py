"""How a sweep's runs execute: one run in a worker (`run_one`: a failure becomes the run folder's `error.json`
and the sweep goes on), and the backends that run a list of them (`run_all`): in this process one after another,
in a process pool (`jobs` > 1) or as Ray tasks, starting runs that would encode the same texts only once the first
of them has filled the embedding cache (`waves`)."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from .cards import load_task_card
from .discovery import discover
from .files import write_atomic
from .methods.base import Method
from .records import ERROR_FILE
from .registry import METHODS
from .runner import execute
from .sweep_grid import PlannedRun
from .workers import usable_cores, worker_pool

log = logging.getLogger(__name__)


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
    others start when it is done and the embedding cache is warm. Likewise parallel runs of a method whose
    predictions on survey groups are the same for every seed, K and split (`Method.same_for_every_seed`: an LM
    reading the question, or the group's name) would each score every prompt: the first leads, and the others
    read the prediction cache it filled."""
    ready, groups = [], defaultdict(list)
    for run in pending:
        r = run.resolved
        method = METHODS.get(r["implementation"])
        if method.needs_features:
            groups[("encode", r["task"], r["encoder"], r["limit_items"])].append(run)
        elif method.same_for_every_seed and load_task_card(r["task"]).protocol == "opinion":
            settings = json.dumps(r["settings"], sort_keys=True)
            groups[("predict", r["task"], r["implementation"], settings, r["limit_items"])].append(run)
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


def run_all(
    pending: list[PlannedRun],
    options: Options,
    report: Callable[[PlannedRun, Outcome], None],
    jobs: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
) -> None:
    """Run every pending run on the backend asked for, calling `report` as each one ends."""
    if backend == "ray":
        _ray(pending, options, ray_address, cpus_per_run, gpus_per_run, report)
    elif jobs > 1 and len(pending) > 1:
        _process_pool(pending, options, jobs, report)
    else:
        _in_process(pending, options, report)
