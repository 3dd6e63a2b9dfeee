"""Generated opinion tasks with planted group structure, for tests and demos. `synthetic`: groups come in
types with opposed tastes over topic words, and each candidate's text names two topics (the card's
`topics_per_candidate`; with 1 an item's candidates name distinct single topics), so a method that reads the
candidates and the group's few shots can recover the group's type.
`synthetic_mixture`: each group mixes latent archetypes (visible only through other groups' answers) and tilts
the mixture by its own taste over the topic words (visible only through the text)."""

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
    source.update({"topics_per_candidate": 2, **card.source})
    per_candidate = source["topics_per_candidate"]
    rng = np.random.default_rng(source["seed"])
    type_tastes = rng.normal(size=(source["types"], len(TOPICS)))
    tastes = {
        f"group-{g:02d}": type_tastes[g % source["types"]] + source["noise"] * rng.normal(size=len(TOPICS))
        for g in range(source["groups"])
    }
    items, groups = {}, {name: Group(name) for name in tastes}
    for i in range(source["items"]):
        if per_candidate == 1:  # distinct topics within an item
            pairs = [[t] for t in rng.choice(len(TOPICS), size=source["candidates"], replace=False)]
        else:
            pairs = [rng.choice(len(TOPICS), size=per_candidate, replace=False) for _ in range(source["candidates"])]
        item = Item(
            f"syn-{i:04d}",
            "Which should come first?",
            tuple(" and ".join(TOPICS[t] for t in topics) for topics in pairs),
        )
        items[item.id] = item
        for name, taste in tastes.items():
            logits = source["sharpness"] * np.array([taste[topics].sum() for topics in pairs])
            weights = np.exp(logits - logits.max())
            groups[name].targets[item.id] = weights / weights.sum()
    task = TaskData(card.name, card.metric, items, groups, notes=[f"generated with {source}"])
    task.validate()
    return task


@LOADERS.register(
    "synthetic_mixture", "generated survey: each group a mixture of latent archetypes plus its own topic taste"
)
def load_synthetic_mixture(card: TaskCard, data_dir: Path | None) -> TaskData:
    """Both sources of information matter here. Archetypes answer each item at random (no relation to its text),
    so only other groups' answers to the same item reveal them; each group mixes the archetypes with its own
    Dirichlet weights, then tilts the mixture by its own taste over the topic words in the candidates' text, which
    no other group shares."""
    source = {"seed": 0, "groups": 16, "archetypes": 3, "items": 80, "candidates": 4, "taste": 1.5}
    source.update(card.source)
    rng = np.random.default_rng(source["seed"])
    n_items, n_candidates = source["items"], source["candidates"]
    archetypes = rng.dirichlet(np.ones(n_candidates), size=(source["archetypes"], n_items))
    shares = rng.dirichlet(np.ones(source["archetypes"]), size=source["groups"])
    tastes = rng.normal(size=(source["groups"], len(TOPICS)))
    items, groups = {}, {f"group-{g:02d}": Group(f"group-{g:02d}") for g in range(source["groups"])}
    for i in range(n_items):
        pairs = [rng.choice(len(TOPICS), size=2, replace=False) for _ in range(n_candidates)]
        item = Item(f"mix-{i:04d}", "Which should come first?", tuple(f"{TOPICS[a]} and {TOPICS[b]}" for a, b in pairs))
        items[item.id] = item
        for g, group in enumerate(groups.values()):
            tilt = np.exp(source["taste"] * np.array([tastes[g, a] + tastes[g, b] for a, b in pairs]))
            mixed = (shares[g] @ archetypes[:, i]) * tilt
            group.targets[item.id] = mixed / mixed.sum()
    task = TaskData(card.name, card.metric, items, groups, notes=[f"generated with {source}"])
    task.validate()
    return task
