"""Loaders turn a raw source into the data model (`TaskData`) and nothing else; each registers
itself in `LOADERS` under the name task cards use. `survey` and `user_pairs` read your own data in
two documented formats. `load_task` loads a task once per process."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from ..cards import TaskCard
from ..data import TaskData
from ..discovery import discover
from ..registry import LOADERS
from . import (  # noqa: F401  (registration)
    globalopinionqa,
    opinionqa,
    preferences,
    survey,
    synthetic,
    synthetic_pairwise,
    user_pairs,
)

__all__ = ["LOADERS", "clear_loaded_tasks", "load_task"]

log = logging.getLogger(__name__)
_TASKS: dict[tuple[str, str], TaskData] = {}


def load_task(card: TaskCard, data_dir: Path | None) -> TaskData:
    """Load (once per process per card and folder) and validate a task through its card's loader. The key is the
    card's whole content, not its file: a card changed in code (another `source`, say) is loaded anew."""
    key = (json.dumps(dataclasses.asdict(card), sort_keys=True, default=str), str(data_dir))
    if key not in _TASKS:
        discover()  # the card may name a plugin's loader
        _TASKS[key] = LOADERS.get(card.loader)(card, data_dir)
        task = _TASKS[key]
        log.info("task %s: %d groups, %d items; dropped %s", card.name, len(task.groups), len(task.items), task.drops)
    return _TASKS[key]


def clear_loaded_tasks() -> None:
    """Forget every task loaded in this process, so that the next load reads its files again (as a new process
    would): for a notebook whose data files changed."""
    _TASKS.clear()
