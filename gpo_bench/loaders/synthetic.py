"""A generated opinion task with planted group structure, for tests and demos: groups come in
types with opposed tastes over topic words, and each candidate's text names two topics, so a
method that reads the candidates and the group's few shots can recover the group's type."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cards import TaskCard
from ..data import Group, Item, TaskData
from ..registry import LOADERS

TOPICS = (
    "taxes",
    "defense",
    "faith",
    "science",
    "family",
    "cities",
    "farming",
    "markets",
    "unions",
    "borders",
    "climate",
    "schools",
)


@LOADERS.register("synthetic", "generated survey with planted group types (no data needed)")
def load_synthetic(card: TaskCard, data_dir: Path | None) -> TaskData:
    source = {"seed": 0, "groups": 12, "types": 3, "items": 150, "candidates": 4, "sharpness": 2.0, "noise": 0.2}
    source.update(card.source)
    rng = np.random.default_rng(source["seed"])
    type_tastes = rng.normal(size=(source["types"], len(TOPICS)))
    tastes = {
        f"group-{g:02d}": type_tastes[g % source["types"]] + source["noise"] * rng.normal(size=len(TOPICS))
        for g in range(source["groups"])
    }
    items, groups = {}, {name: Group(name) for name in tastes}
    for i in range(source["items"]):
        pairs = [rng.choice(len(TOPICS), size=2, replace=False) for _ in range(source["candidates"])]
        item = Item(
            f"syn-{i:04d}",
            "Which should come first?",
            tuple(f"{TOPICS[a]} and {TOPICS[b]}" for a, b in pairs),
        )
        items[item.id] = item
        for name, taste in tastes.items():
            logits = source["sharpness"] * np.array([taste[a] + taste[b] for a, b in pairs])
            weights = np.exp(logits - logits.max())
            groups[name].targets[item.id] = weights / weights.sum()
    task = TaskData(card.name, card.metric, items, groups, notes=[f"generated with {source}"])
    task.validate()
    return task
