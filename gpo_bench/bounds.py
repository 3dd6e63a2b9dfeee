"""A K cell's bounds and where its score comes from, on the very targets it was scored on: its floors (`uniform`;
on accuracy tasks the `majority` answer), its sampling-noise ceiling and headroom (`reference_block`), and its score
split by whether some seen group answered the target item (`coverage_block`). The runner writes both into each
K's metrics in result.json."""

from __future__ import annotations

import numpy as np

from .data import TaskData
from .metrics import (
    CEILING_METHOD,
    MAJORITY_NOTE,
    ceiling_seed,
    expected_accuracy,
    group_table,
    item_score,
    majority_for,
    sampling_ceiling,
)
from .stats import grand_mean


def per_group_means(table: np.ndarray, groups: list[str]) -> dict[str, float]:
    return {g: float(v) for g, v in zip(groups, np.nanmean(table, axis=0), strict=True)}


def pooled_mean(records: list[tuple[int, str, float]]) -> float:
    """Mean over (seed, group, item) records' items per seed, then over seeds: what a pooled headline averages."""
    seeds = sorted({s for s, _, _ in records})
    return float(np.mean([np.mean([v for s, _, v in records if s == seed]) for seed in seeds]))


def reference_block(
    task: TaskData,
    rows: list[dict],
    score: float,
    known_ceilings: dict | None = None,
    majority: dict[int, np.ndarray] | None = None,
) -> dict:
    """Where a K cell stands between its floor and its ceiling, on the very targets it was scored on. Alignment
    tasks: the floor is `uniform`, the ceiling the sampling-noise ceiling (where the source says how many people
    answered); headroom = (score - uniform) / (ceiling - uniform). Accuracy tasks: `uniform` is chance and the floor
    is `majority` (the seen groups' most common answer position, `majority` = `majority_distributions` of what
    methods see; aggregated like the headline, and `majority_pooled` over items like a pooled headline);
    headroom = (score - majority) / (1 - majority), 1 being a perfect score."""
    floors, majorities, ceilings, missing = [], [], [], 0
    known_ceilings = {} if known_ceilings is None else known_ceilings
    for row in rows:
        item = task.items[row["item"]]
        size = len(item.candidates)
        target = np.asarray(row["target"])
        if task.metric == "accuracy":
            floors.append((row["seed"], row["group"], 1.0 / size))
            if majority is not None:
                majorities.append((row["seed"], row["group"], expected_accuracy(majority_for(majority, size), target)))
            continue
        floors.append(
            (row["seed"], row["group"], item_score(task.metric, np.full(size, 1 / size), target, item.ordinal))
        )
        n = task.groups[row["group"]].respondents.get(row["item"])
        if n is None:
            missing += 1
            continue
        key = (row["group"], row["item"])
        if key not in known_ceilings:  # the same (group, item) recurs across K and seeds: estimate it once
            known_ceilings[key] = sampling_ceiling(task.metric, target, n, item.ordinal, ceiling_seed(*key))
        ceilings.append((row["seed"], row["group"], known_ceilings[key]))
    floor_table, _, groups = group_table(floors)
    block = {"uniform": grand_mean(floor_table), "uniform_per_group": per_group_means(floor_table, groups)}
    if task.metric == "accuracy":
        block = {
            **block,
            "floor": "uniform",
            "ceiling": None,
            "ceiling_note": "not available: defined for alignment tasks",
        }
        if not majorities:
            return {**block, "headroom": None}
        majority_table, _, groups = group_table(majorities)
        floor = grand_mean(majority_table)
        return {
            **block,
            "floor": "majority",
            "majority": floor,
            "majority_pooled": pooled_mean(majorities),
            "majority_per_group": per_group_means(majority_table, groups),
            "majority_note": MAJORITY_NOTE,
            "headroom": (score - floor) / (1.0 - floor) if floor < 1.0 else None,
        }
    block["floor"] = "uniform"
    if missing:
        note = "not available: the source has no respondent counts"
        if ceilings:
            note += f" for {missing} of {len(rows)} target items"
        return {**block, "ceiling": None, "ceiling_note": note, "headroom": None}
    ceiling_table, _, groups = group_table(ceilings)
    ceiling = grand_mean(ceiling_table)
    return {
        **block,
        "ceiling": ceiling,
        "ceiling_per_group": per_group_means(ceiling_table, groups),
        "ceiling_note": CEILING_METHOD,
        "headroom": (score - block["uniform"]) / (ceiling - block["uniform"]) if ceiling > block["uniform"] else None,
    }


def coverage_block(records: list[tuple[int, str, float]], answered: list[bool]) -> dict:
    """A cell's score split by whether some seen group answered the target item (`answered`, one flag per
    (seed, group, score) record): per part its share of the cell's predictions, its score aggregated like the
    headline (`mean`: over a group's items, then groups, then seeds), pooled over its items (per seed, then
    over seeds), and per seed each group's mean (`per_seed`, for paired differences by part). Where a win comes
    from on sparse sources: items no seen group answered have no seen answers to copy."""
    out = {}
    for part, flag in (("answered", True), ("unanswered", False)):
        subset = [r for r, a in zip(records, answered, strict=True) if a == flag]
        entry: dict = {"share": len(subset) / len(records), "predictions": len(subset)}
        if subset:
            table, seeds, groups = group_table(subset)
            entry["mean"] = grand_mean(table)
            entry["pooled"] = pooled_mean(subset)
            entry["n_groups"] = int(np.sum(np.any(~np.isnan(table), axis=0)))
            entry["per_seed"] = {
                str(seed): {g: float(v) for g, v in zip(groups, values, strict=True) if not np.isnan(v)}
                for seed, values in zip(seeds, table, strict=True)
            }
        else:
            entry.update(mean=None, pooled=None, n_groups=0, per_seed={})
        out[part] = entry
    return out
