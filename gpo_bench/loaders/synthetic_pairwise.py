"""A generated pairwise-preference task with planted per-user tastes, for tests and demos: users
come in types with opposed tastes over topic words (pooled preference near 50/50 when `types` is
2), each comparison offers two responses naming topics, and the user chooses the one it likes more.
Half of each user's comparisons are its training pool, half its test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cards import TaskCard
from ..data import Group, Item, TaskData
from ..registry import LOADERS
from .synthetic import TOPICS


@LOADERS.register("synthetic_pairwise", "generated pairwise preferences with planted user types (no data needed)")
def load_synthetic_pairwise(card: TaskCard, data_dir: Path | None) -> TaskData:
    source = {"seed": 0, "users": 40, "types": 2, "pairs": 60, "noise": 0.3}
    source.update(card.source)
    rng = np.random.default_rng(source["seed"])
    type_tastes = rng.normal(size=(source["types"], len(TOPICS)))
    if source["types"] == 2:
        type_tastes[1] = -type_tastes[0]  # opposed tastes: the pooled preference is close to 50/50
    items, groups = {}, {}
    for u in range(source["users"]):
        user = f"user-{u:03d}"
        taste = type_tastes[u % source["types"]] + source["noise"] * rng.normal(size=len(TOPICS))
        group = groups.setdefault(user, Group(user))
        for k in range(source["pairs"]):
            topics = [rng.choice(len(TOPICS), size=2, replace=False) for _ in range(2)]
            item = Item(
                f"{user}-pair{k:03d}",
                "Write a short reply about what matters most to you.",
                tuple(f"A reply about {TOPICS[a]} and {TOPICS[b]}." for a, b in topics),
            )
            items[item.id] = item
            utility = [taste[a] + taste[b] for a, b in topics]
            chosen = int(np.argmax(utility))
            group.targets[item.id] = np.eye(2)[chosen]
            group.partition[item.id] = "train" if k < source["pairs"] // 2 else "test"
    task = TaskData(card.name, card.metric, items, groups, notes=[f"generated with {source}"])
    task.validate()
    return task
