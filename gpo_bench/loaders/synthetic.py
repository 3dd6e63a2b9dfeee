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


AGREEMENT = ("Strongly disagree", "Disagree", "Neither agree nor disagree", "Agree", "Strongly agree")


@LOADERS.register("synthetic_individual", "generated per-person ratings on a 5-point scale (no data needed)")
def load_synthetic_individual(card: TaskCard, data_dir: Path | None) -> TaskData:
    """Per-person ordinal ratings with `opinionqa_individual`'s layout: each person is a group, one-hot on the
    rating picked. Each person rates `per_person` items drawn from the pool, so an item gets ~people·per_person/items
    ratings. A rating is the latent item location (its topic's effect plus its own) + the person's offset + logistic
    noise, cut at the thresholds; each person stretches the thresholds by their own factor (some use the
    extremes, some the middle). The thresholds are uneven, so one rating is the most common, as on real scales."""
    source = {
        "seed": 0,
        "people": 250,
        "items": 1000,
        "per_person": 50,
        "topic_effect": 0.6,  # scale of the topic words' effect on an item's location (what its text says)
        "item_effect": 0.8,  # scale of an item's own effect
        "person_offset": 1.2,  # scale of a person's offset on the latent scale
        "person_stretch": 0.3,  # log-scale spread of a person's threshold stretch
        "noise": 0.5,  # scale of the logistic noise of one rating
        "thresholds": [-2.8, -1.7, -0.8, 1.9],
    }
    source.update(card.source)
    rng = np.random.default_rng(source["seed"])
    topic_effects = rng.normal(size=len(TOPICS))
    topics = rng.integers(len(TOPICS), size=source["items"])
    locations = source["topic_effect"] * topic_effects[topics] + source["item_effect"] * rng.normal(
        size=source["items"]
    )
    items = {}
    for i, topic in enumerate(topics):
        prompt = f"Statement {i}: more public attention should go to {TOPICS[topic]}. How far do you agree?"
        items[f"rate-{i:04d}"] = Item(f"rate-{i:04d}", prompt, AGREEMENT, tuple(float(v) for v in range(1, 6)))
    ids = list(items)
    thresholds = np.asarray(source["thresholds"], float)
    groups = {}
    for p in range(source["people"]):
        offset = source["person_offset"] * rng.normal()
        stretch = np.exp(source["person_stretch"] * rng.normal())
        rated = np.sort(rng.choice(source["items"], size=source["per_person"], replace=False))
        latent = locations[rated] + offset + source["noise"] * rng.logistic(size=len(rated))
        ratings = np.searchsorted(stretch * thresholds, latent)
        name = f"person-{p:03d}"
        groups[name] = Group(name, {ids[i]: np.eye(len(AGREEMENT))[r] for i, r in zip(rated, ratings, strict=True)})
    task = TaskData(card.name, card.metric, items, groups, notes=[f"generated with {source}"])
    task.validate()
    return task
