"""Protocols: which groups train and which are tested, which items a group shows as its K context
and which it is scored on. Every random choice comes from an explicit, recorded seed.

- `opinion` (GPO paper): the meta-train groups are the paper's `np.random.choice` draw; each test
  group's K context items are drawn at random and all its other items are targets.
- personalized (`mrm`, `lore`, `personal_reward_bench`, `pairwise`): users are split into seen and
  unseen; each user's items are partitioned by the source/loader into a training pool and a test
  set; pools are capped (seen / unseen caps); a user's K context items come from its pool and its
  targets are its test items. Seen users' pools are what methods may train on."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import numpy as np

from .data import TaskData
from .errors import DataError


def derived_rng(*parts: object) -> np.random.Generator:
    """An RNG seeded from a stable hash of `parts` (e.g. task, group, K, seed)."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


PERSONALIZED_DEFAULTS = {
    # MRM: users sorted, random.Random(42).shuffle, halves; per-user pool shuffled with
    # Random(seed + md5(user) % 2**32) and capped.
    "mrm": {
        "user_shuffle": "python",
        "user_seed": 42,
        "seen_frac": 0.5,
        "seen_cap": 150,
        "unseen_cap": 50,
        "pool_shuffle": "md5",
        "drop_fewest": 0,
        "min_pool": 1,
    },
    # LoRe: random.seed(0) shuffle (TLDR; PRISM uses numpy seed 123 and 80% seen), the workers with the
    # fewest comparisons dropped; seen users min(n, 150) training pairs, unseen min(n, 50).
    "lore": {
        "user_shuffle": "python",
        "user_seed": 0,
        "seen_frac": 0.5,
        "seen_cap": 150,
        "unseen_cap": 50,
        "pool_shuffle": "derived",
        "drop_fewest": 2,
        "min_pool": 1,
    },
    # SynthesizeMe / PersonalRewardBench: every user is seen; the per-user `split` column partitions.
    "personal_reward_bench": {
        "user_shuffle": "python",
        "user_seed": 0,
        "seen_frac": 1.0,
        "seen_cap": None,
        "unseen_cap": None,
        "pool_shuffle": "derived",
        "drop_fewest": 0,
        "min_pool": 1,
    },
    # generic seen/unseen halves (synthetic_pairwise)
    "pairwise": {
        "user_shuffle": "python",
        "user_seed": 0,
        "seen_frac": 0.5,
        "seen_cap": None,
        "unseen_cap": None,
        "pool_shuffle": "derived",
        "drop_fewest": 0,
        "min_pool": 1,
    },
}
PROTOCOLS = ("opinion", *PERSONALIZED_DEFAULTS)


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    unseen: tuple[str, ...] = ()
    pools: dict[str, tuple[str, ...]] | None = field(default=None, compare=False)  # personalized only

    @property
    def seen(self) -> tuple[str, ...]:
        """Meta-train and validation groups: what a method without model selection may fit on."""
        return self.train + self.validation

    @property
    def personalized(self) -> bool:
        """Users with a training pool and test comparisons (the preference protocols), not survey groups."""
        return self.pools is not None

    def role(self, group: str) -> str:
        """How predictions of a test group are labelled: `test` (opinion), `seen` or `unseen` users."""
        if not self.personalized:
            return "test"
        return "unseen" if group in self.unseen else "seen"

    def as_dict(self) -> dict:
        out = {"train": list(self.train), "validation": list(self.validation), "test": list(self.test)}
        if self.personalized:
            out["unseen"] = list(self.unseen)
            out["pool_sizes"] = {g: len(p) for g, p in self.pools.items()}
        return out


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


def split_warning(split: Split, train_frac: float) -> str | None:
    """A split that leaves a single test group gives a confidence interval of width zero (the interval is over
    test groups): say so, naming the flag."""
    if len(split.test) != 1:
        return None
    return (
        f"the train fraction {train_frac} leaves 1 test group ({split.test[0]}): its score has no spread over groups, "
        "so its 95% CI has width zero; lower --train-frac (or the card's train_frac) to test 2 or more"
    )


def md5_seed(user: str, seed: int) -> int:
    return seed + int(hashlib.md5(user.encode()).hexdigest(), 16) % 2**32


def split_users(task: TaskData, protocol: str, settings: dict, val_frac: float, split_seed: int) -> Split:
    """Seen/unseen users and their capped training pools, by the protocol's published rules."""
    rules = {**PERSONALIZED_DEFAULTS[protocol], **settings}
    pools = {u: sorted(i for i, part in g.partition.items() if part == "train") for u, g in sorted(task.groups.items())}
    tests = {u: [i for i, part in task.groups[u].partition.items() if part == "test"] for u in pools}
    users = [u for u in sorted(pools) if len(pools[u]) >= rules["min_pool"] and tests[u]]
    if rules["drop_fewest"]:
        fewest = sorted(users, key=lambda u: (len(task.groups[u].targets), u))[: rules["drop_fewest"]]
        users = [u for u in users if u not in fewest]
    if rules["user_shuffle"] == "numpy":
        order = list(np.random.RandomState(rules["user_seed"]).permutation(users))
    else:
        order = list(users)
        random.Random(rules["user_seed"]).shuffle(order)
    n_seen = round(len(order) * rules["seen_frac"])
    seen, unseen = order[:n_seen], order[n_seen:]
    if len(seen) < 2:
        raise DataError(
            f"protocol {protocol}: {len(seen)} seen users with training pairs and test pairs; need 2 "
            f"({len(users)} of {len(pools)} users have both a training pool and test pairs)"
        )
    capped = {}
    for user in order:
        pool = list(pools[user])
        if rules["pool_shuffle"] == "md5":
            random.Random(md5_seed(user, split_seed)).shuffle(pool)
        else:
            pool = [pool[i] for i in derived_rng("pool", user, split_seed).permutation(len(pool))]
        cap = rules["unseen_cap"] if user in unseen else rules["seen_cap"]
        capped[user] = tuple(pool[:cap] if cap else pool)
    n_val = min(len(seen) - 1, max(1, round(val_frac * len(seen))))
    return Split(
        train=tuple(seen[:-n_val]),
        validation=tuple(seen[-n_val:]),
        test=tuple(sorted(order)),
        unseen=tuple(sorted(unseen)),
        pools=capped,
    )


def make_split(task: TaskData, protocol: str, settings: dict, train_frac: float, val_frac: float, seed: int) -> Split:
    if protocol == "opinion":
        return split_groups(list(task.groups), train_frac, val_frac, seed)
    return split_users(task, protocol, settings, val_frac, seed)


def visible_task(task: TaskData, split: Split) -> TaskData:
    """What methods may fit on: the seen groups, and for personalized tasks only their pools."""
    if not split.personalized:
        return task.view({g: task.groups[g].targets for g in split.seen})
    return task.view({g: split.pools[g] for g in split.seen})


@dataclass(frozen=True, eq=False)
class Episode:
    """One group's few-shot problem: K context items with the group's distributions on them (all a
    method learns of a test group), and the items to predict."""

    group: str
    shots: int
    seed: int
    context: tuple[str, ...]
    targets: tuple[str, ...]
    context_targets: tuple[np.ndarray, ...]


def draw_episode(
    task: TaskData, group_id: str, shots: int, seed: int, split: Split | None = None, validation: bool = False
) -> Episode:
    """K context items drawn from an RNG derived from (task, group, K, seed). Opinion: from all the
    group's items, the rest are targets. Personalized: from the user's pool; targets are its test
    items (or, for validation, the rest of its pool). K is capped at what is available; the cap
    shows as `len(episode.context)`."""
    known = task.groups[group_id].targets
    if split is None or not split.personalized:
        pool, fixed_targets = sorted(known), None
        if len(pool) < 2:
            raise DataError(f"group {group_id!r} of task {task.name!r} has {len(pool)} item(s); needs at least 2")
        limit = len(pool) - 1
    else:
        pool = list(split.pools[group_id])
        fixed_targets = (
            None if validation else sorted(i for i, p in task.groups[group_id].partition.items() if p == "test")
        )
        limit = len(pool) - 1 if validation else len(pool)
    used = min(shots, limit)
    order = derived_rng(task.name, group_id, shots, seed).permutation(len(pool))
    context = tuple(sorted(pool[i] for i in order[:used]))
    targets = tuple(fixed_targets if fixed_targets is not None else sorted(pool[i] for i in order[used:]))
    return Episode(group_id, shots, seed, context, targets, tuple(known[i] for i in context))
