"""The opinion protocol: splitting groups into meta-train / validation / test, and drawing each
test group's K context items. Every random choice comes from an RNG derived from its purpose."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .data import DataError, TaskData


def derived_rng(*parts: object) -> np.random.Generator:
    """An RNG seeded from a stable hash of `parts` (e.g. task, group, K, seed)."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def seen(self) -> tuple[str, ...]:
        """Meta-train and validation groups: what a method without model selection may fit on."""
        return self.train + self.validation

    def as_dict(self) -> dict:
        return {"train": list(self.train), "validation": list(self.validation), "test": list(self.test)}


def split_groups(group_ids: list[str], train_frac: float, val_frac: float, split_seed: int) -> Split:
    """The GPO paper's draw (`np.random.seed(s); np.random.choice(groups, int(n * frac))` are the
    meta-train groups, the rest are test groups), then validation groups carved out of meta-train."""
    n_train = int(len(group_ids) * train_frac)
    if n_train < 2 or n_train >= len(group_ids):
        raise DataError(
            f"train fraction {train_frac} of {len(group_ids)} groups leaves {n_train} meta-train groups and "
            f"{len(group_ids) - n_train} test groups; need at least 2 and 1"
        )
    chosen = [str(g) for g in np.random.RandomState(split_seed).choice(group_ids, size=n_train, replace=False)]
    n_val = min(n_train - 1, max(1, round(val_frac * n_train)))
    test = tuple(g for g in group_ids if g not in chosen)
    return Split(train=tuple(chosen[:-n_val]), validation=tuple(chosen[-n_val:]), test=test)


@dataclass(frozen=True)
class Episode:
    """One group's few-shot problem: K context items with their targets known, items to predict."""

    group: str
    shots: int
    seed: int
    context: tuple[str, ...]
    targets: tuple[str, ...]


def draw_episode(task: TaskData, group_id: str, shots: int, seed: int) -> Episode:
    """K context items drawn from an RNG derived from (task, group, K, seed); the rest are targets.
    K is capped at the group's item count minus one; `len(episode.context)` shows the cap."""
    items = sorted(task.groups[group_id].targets)
    if len(items) < 2:
        raise DataError(f"group {group_id!r} of task {task.name!r} has {len(items)} item(s); needs at least 2")
    used = min(shots, len(items) - 1)
    order = derived_rng(task.name, group_id, shots, seed).permutation(len(items))
    context = tuple(sorted(items[i] for i in order[:used]))
    targets = tuple(sorted(items[i] for i in order[used:]))
    return Episode(group_id, shots, seed, context, targets)
