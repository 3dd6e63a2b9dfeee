"""GPO's seeds trained in parallel on the CPU: each seed in its own spawned worker process (`workers`), all at
once, reporting its steps and best validation score to the parent's one progress bar through a queue."""

from __future__ import annotations

import contextlib
import logging
from queue import Empty

import torch
from tqdm.auto import tqdm

from ...workers import queue_manager, stop_workers, worker_pool
from ..base import Setup
from .training import train


class QueueProgress:
    """The part of tqdm that `train` uses, in a worker process: steps and the best validation score go
    to the parent's bar through a queue."""

    def __init__(self, queue, seed: int) -> None:
        self.queue, self.seed = queue, seed

    def update(self, n: int = 1) -> None:
        self.queue.put((self.seed, n, None))

    def set_postfix(self, best: str, **_) -> None:
        self.queue.put((self.seed, 0, best))

    def close(self) -> None:
        pass


def fit_in_worker(method_class: type, settings: dict, setup: Setup, threads: int, queue) -> tuple[dict, dict]:
    """In a worker process: train one seed (as `GPO.fit`; `method_class` is GPO) with `threads` torch threads →
    its best parameters and fit facts."""
    torch.set_num_threads(threads)
    method = method_class(settings, setup)
    fit = train([method], QueueProgress(queue, setup.seed))[0]
    return method.model.state_dict(), dict(fit, threads=threads)


def train_in_processes(
    method_class: type, settings: dict, setups: list[Setup], threads: int
) -> list[tuple[dict, dict]]:
    """Each setup's seed trained in its own worker process, all at once, under one progress bar →
    per seed, its best parameters and fit facts. Each worker keeps its own checkpoint (so --resume
    continues every seed)."""
    seeds = [setup.seed for setup in setups]
    best = dict.fromkeys(seeds, "-")
    bar = tqdm(
        total=settings["max_steps"] * len(seeds),
        desc=f"gpo seeds {','.join(map(str, seeds))} ({len(seeds)} processes x {threads} thread{'s' * (threads > 1)})",
        unit="step",
    )
    level = logging.getLogger("gpo_bench").getEffectiveLevel()
    with queue_manager() as manager:
        queue, pool = manager.Queue(), worker_pool(len(setups), level)
        try:
            futures = [pool.submit(fit_in_worker, method_class, settings, setup, threads, queue) for setup in setups]
            finished = False
            while not finished:
                finished = all(future.done() for future in futures)  # then drain what they sent last
                with contextlib.suppress(Empty):
                    while True:
                        seed, steps, score = queue.get(timeout=0.2)
                        bar.update(steps)
                        if score is not None:
                            best[seed] = score
                            bar.set_postfix(best=" ".join(best.values()))
            results = [future.result() for future in futures]
        except BaseException:
            stop_workers(pool)
            raise
    pool.shutdown()
    bar.close()
    return results
