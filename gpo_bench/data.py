"""The one data model every task is turned into: items (a prompt with candidates) and groups
holding their target distribution over the candidates of the items they answered."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError

SUM_TOLERANCE = 1e-4
EXAMPLES_PER_REASON = 3


@dataclass(frozen=True)
class Item:
    """A prompt with its candidates (answer options or responses), shared by every group."""

    id: str
    prompt: str
    candidates: tuple[str, ...]
    ordinal: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.candidates) < 2:
            raise DataError(f"item {self.id!r}: needs at least 2 candidates, got {len(self.candidates)}")
        if self.ordinal is not None and len(self.ordinal) != len(self.candidates):
            raise DataError(
                f"item {self.id!r}: {len(self.ordinal)} ordinal values for {len(self.candidates)} candidates"
            )


@dataclass
class Group:
    """A demographic group, a country or a user: its target distribution per answered item, and for
    personalized tasks which of its items the source puts in its training pool or its test set."""

    id: str
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    partition: dict[str, str] = field(default_factory=dict)  # item id → "train" | "test"
    respondents: dict[str, float] = field(default_factory=dict)  # item id → people behind the target, where known


class Drops(Counter):
    """What a loader dropped: a count per reason, and for each reason the first few concrete examples
    (`file`, `question`, `group`, `value`: whichever apply) so that a drop can be traced in result.json."""

    def __init__(self) -> None:
        super().__init__()
        self.examples: dict[str, list[dict[str, str]]] = {}

    def add(self, reason: str, n: int = 1, **example: object) -> None:
        """Count `n` drops for `reason`; keep `example` (its values as text) among the first few."""
        self[reason] += n
        if example and len(kept := self.examples.setdefault(reason, [])) < EXAMPLES_PER_REASON:
            kept.append({key: str(value)[:200] for key, value in example.items() if value is not None})


@dataclass
class TaskData:
    """A loaded task: items, groups, the headline metric, what the loader dropped (counts and a few examples per
    reason), what it warned about, and the digest of every raw file it read (`sources`, path → sha256)."""

    name: str
    metric: str
    items: dict[str, Item]
    groups: dict[str, Group]
    drops: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    drop_examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Every target is a finite distribution over its item's candidates; no group is empty."""
        if not self.groups:
            raise DataError(f"task {self.name!r}: no groups left after filtering")
        for group in self.groups.values():
            if not group.targets:
                raise DataError(f"task {self.name!r}: group {group.id!r} has no items after filtering")
            for item_id, target in group.targets.items():
                item = self.items.get(item_id)
                if item is None:
                    raise DataError(f"task {self.name!r}: group {group.id!r} answers unknown item {item_id!r}")
                check_distribution(target, len(item.candidates), f"group {group.id!r} item {item_id!r} target")

    def view(self, allowed: dict[str, Iterable[str]]) -> TaskData:
        """The same task holding only the given groups, each with only the given items' targets."""
        groups = {}
        for group_id, items in allowed.items():
            source = self.groups[group_id]
            keep = [i for i in items if i in source.targets]
            groups[group_id] = Group(
                group_id,
                {i: source.targets[i] for i in keep},
                {i: source.partition[i] for i in keep if i in source.partition},
                {i: source.respondents[i] for i in keep if i in source.respondents},
            )
        return TaskData(
            self.name,
            self.metric,
            self.items,
            groups,
            self.drops,
            self.notes,
            self.drop_examples,
            self.warnings,
            self.sources,
        )

    def fingerprint(self) -> str:
        """A hash of everything a method or metric can see, so results can be tied to their data."""
        digest = hashlib.sha256()
        for item_id in sorted(self.items):
            item = self.items[item_id]
            digest.update(json.dumps([item.id, item.prompt, item.candidates, item.ordinal]).encode())
        for group_id in sorted(self.groups):
            group = self.groups[group_id]
            for item_id, target in sorted(group.targets.items()):
                digest.update(f"{group_id}\0{item_id}\0{group.partition.get(item_id, '')}\0".encode())
                digest.update(np.round(target, 10).astype(np.float64).tobytes())
                if item_id in group.respondents:
                    digest.update(f"n={group.respondents[item_id]:.6g}".encode())
        return digest.hexdigest()[:16]


def check_distribution(values: np.ndarray, size: int, what: str) -> None:
    """Raise a DataError naming `what` unless `values` is a finite probability vector of `size`."""
    values = np.asarray(values, dtype=float)
    if values.shape != (size,):
        raise DataError(f"{what}: expected {size} probabilities, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise DataError(f"{what}: contains NaN or infinity: {values.tolist()}")
    if np.any(values < -1e-9):
        raise DataError(f"{what}: negative probability: {values.tolist()}")
    if abs(values.sum() - 1.0) > SUM_TOLERANCE:
        raise DataError(f"{what}: sums to {values.sum():.6f}, not 1")


def normalize(counts: np.ndarray) -> np.ndarray | None:
    """Counts or weights → a distribution; None when they sum to zero."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    return counts / total if total > 0 else None
