"""Worker processes: the cores this process may use, and pools of spawned workers (and the manager of their
message queues) that end with the process that started them and log as it does."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.managers import SyncManager

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def exit_with_parent(parent: int) -> None:
    """In a worker: end this process once the process that started it is gone. A parent stopped by SIGTERM
    or SIGKILL (`timeout`, `kill`, a batch scheduler) would otherwise leave its workers training."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def start_worker(parent: int, log_level: int | None) -> None:
    exit_with_parent(parent)
    if log_level is not None and not logging.getLogger().handlers:
        logging.basicConfig(level=log_level, format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT)


def worker_pool(workers: int, log_level: int | None = None) -> ProcessPoolExecutor:
    """`workers` spawned processes (fork would copy torch's thread pools) that exit with this process;
    with `log_level`, each logs at that level in the CLI's format (else it configures its own logging)."""
    spawn = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=spawn, initializer=start_worker, initargs=(os.getpid(), log_level))


def queue_manager() -> SyncManager:
    """A started manager, for queues that workers can be handed (`.Queue()`), whose server process ends with
    this process as the pool's workers do: a parent killed with SIGKILL would otherwise leave it running."""
    manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(exit_with_parent, (os.getpid(),))
    return manager


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel the work not yet started and end the running workers now, so that an interrupted parent does
    not wait for them to finish (Python 3.14's `ProcessPoolExecutor.terminate_workers`; its process table
    before that)."""
    running = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in running:
        process.terminate()
