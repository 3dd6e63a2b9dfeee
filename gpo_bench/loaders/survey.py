"""Any survey as a task: a long-format table (CSV or parquet), one row per (group, item, option):

- `group` (required): who answered: a demographic group, a country, a panel;
- `item` (required): the question's id, the same for every group asked it;
- `prompt` (required): the question's text, the same on every row of the item;
- `option` (required): one answer option; an item's options, in their first-seen order, are its candidates;
- `weight` (required): the group's count, share or survey weight of the option (normalized per group and item);
- `ordinal` (optional): the option's place on an ordered scale, the same for every group; where an item has one
  for every option, `alignment` is the ordinal Wasserstein score, else 1 − Jensen–Shannon distance;
- `respondents` (optional): how many people the group's answers on the item come from (the sampling ceiling).

Every group must list every option of an item it answers (weight 0 where nobody chose it). Bad rows are errors
naming the file and row; a (group, item) whose weights sum to 0 is dropped and counted. The task card names the
file: `loader: survey`, `source: {file: PATH}`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..cards import TaskCard
from ..data import Drops, Group, Item, TaskData, normalize
from ..errors import DataError
from ..registry import LOADERS
from .common import is_blank, missing_groups, read_rows, reads_sources, source_file

COLUMNS = ["group", "item", "prompt", "option", "weight"]


def _number(row: dict, column: str, where: str) -> float:
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        raise DataError(f"{where}: column {column!r} must be a number, got {row[column]!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: column {column!r} must be finite, got {row[column]!r}")
    return value


def _text(row: dict, column: str, where: str) -> str:
    if is_blank(row[column]):
        raise DataError(f"{where}: column {column!r} is empty")
    return str(row[column]).strip()


@LOADERS.register("survey", "your survey, long format: group, item, prompt, option, weight [, ordinal, respondents]")
@reads_sources
def load_survey(card: TaskCard, data_dir: Path | None) -> TaskData:
    path = source_file(card, data_dir)
    prompts: dict[str, tuple[str, str]] = {}  # item → (prompt, where first seen)
    options: dict[str, list[str]] = {}  # item → options in first-seen order
    ordinals: dict[tuple[str, str], tuple[float | None, str]] = {}  # (item, option) → (value, where)
    weights: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}  # (group, item) → option → (weight, where)
    respondents: dict[tuple[str, str], tuple[int, str]] = {}
    for where, row in read_rows(path, COLUMNS):
        group, item, option = (_text(row, c, where) for c in ("group", "item", "option"))
        prompt = _text(row, "prompt", where)
        first = prompts.setdefault(item, (prompt, where))
        if first[0] != prompt:
            raise DataError(
                f"{where}: item {item!r} has prompt {prompt[:60]!r}, but {first[1]} gives {first[0][:60]!r}"
            )
        weight = _number(row, "weight", where)
        if weight < 0:
            raise DataError(f"{where}: column 'weight' must not be negative, got {weight}")
        cell = weights.setdefault((group, item), {})
        if option in cell:
            raise DataError(f"{where}: group {group!r} item {item!r} option {option!r} repeats {cell[option][1]}")
        cell[option] = (weight, where)
        if option not in options.setdefault(item, []):
            options[item].append(option)
        if "ordinal" in row:
            value = None if is_blank(row["ordinal"]) else _number(row, "ordinal", where)
            seen = ordinals.setdefault((item, option), (value, where))
            if seen[0] != value:
                raise DataError(
                    f"{where}: item {item!r} option {option!r} has ordinal {value}, but {seen[1]} gives {seen[0]}"
                )
        if "respondents" in row and not is_blank(row["respondents"]):
            count = _number(row, "respondents", where)
            if count <= 0 or count != int(count):
                raise DataError(
                    f"{where}: column 'respondents' must be a positive whole number, got {row['respondents']!r}"
                )
            seen = respondents.setdefault((group, item), (int(count), where))
            if seen[0] != count:
                raise DataError(
                    f"{where}: group {group!r} item {item!r} has {int(count)} respondents, "
                    f"but {seen[1]} gives {seen[0]}"
                )

    items = {}
    for item, names in options.items():
        where = prompts[item][1]
        if len(names) < 2:
            raise DataError(f"{where}: item {item!r} has only the option {names!r}; an item needs at least 2")
        values = [ordinals.get((item, o), (None, ""))[0] for o in names]
        if any(v is not None for v in values) and any(v is None for v in values):
            missing = next(
                ordinals.get((item, o), (None, where))[1] for o, v in zip(names, values, strict=True) if v is None
            )
            raise DataError(f"{missing}: item {item!r} gives ordinal values for some options but not this one")
        ordinal = tuple(values) if values[0] is not None else None
        if ordinal is not None and len(set(ordinal)) < 2:
            raise DataError(f"{where}: item {item!r} gives every option the same ordinal value")
        items[item] = Item(item, prompts[item][0], tuple(names), ordinal)

    wanted = set(card.groups) if card.groups else None
    groups: dict[str, Group] = {}
    drops = Drops()
    for (group, item), cell in weights.items():
        if wanted is not None and group not in wanted:
            continue
        if set(cell) != set(options[item]):
            where = next(iter(cell.values()))[1]
            lacking = [o for o in options[item] if o not in cell]
            raise DataError(
                f"{where}: group {group!r} item {item!r} lacks option(s) {lacking} that the item has; "
                "list every option, with weight 0 where nobody chose it"
            )
        target = normalize(np.array([cell[o][0] for o in options[item]]))
        if target is None:
            drops.add(
                "(group, item) pairs whose weights sum to 0",
                file=next(iter(cell.values()))[1],
                question=item,
                group=group,
            )
            continue
        entry = groups.setdefault(group, Group(group))
        entry.targets[item] = target
        if (group, item) in respondents:
            entry.respondents[item] = respondents[(group, item)][0]
    order = list(card.groups) if card.groups else sorted(groups)
    notes = [f"read {path}", *missing_groups(card, order, groups)]
    used = {i for g in groups.values() for i in g.targets}
    task = TaskData(
        card.name,
        card.metric,
        {i: items[i] for i in used},
        {g: groups[g] for g in order if g in groups},
        dict(drops),
        notes,
        drops.examples,
    )
    task.validate()
    return task
