"""GlobalOpinionQA (Durmus et al., 2023): `Anthropic/llm_global_opinions` from the Hub or a local
CSV with its columns (`question, selections, options, source`). Groups are countries; options are
kept as they are (no refusal dropping), per the GPO paper."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from ..cards import TaskCard
from ..data import Group, Item, TaskData, normalize
from ..errors import DataError
from ..registry import LOADERS
from .common import SOURCES, SourceFile, download_hub_file, from_hub, parse_literal, read_csv

log = logging.getLogger(__name__)

LOCAL = "globalopinionqa"
HUB_FILE = "data/global_opinions.csv"
DEFAULTDICT_PREFIX = "defaultdict(<class 'list'>, "


def parse_selections(text: str, where: str) -> dict[str, list[float]]:
    """`defaultdict(<class 'list'>, {...})` → a plain dict, parsed without eval."""
    text = text.strip()
    if text.startswith(DEFAULTDICT_PREFIX) and text.endswith(")"):
        text = text[len(DEFAULTDICT_PREFIX) : -1]
    value = parse_literal(text, f"{where} column 'selections'")
    if not isinstance(value, dict):
        raise DataError(f"{where} column 'selections': expected a mapping country → list, got {type(value).__name__}")
    return value


def item_id(question: str, options: list[str]) -> str:
    return "goqa-" + hashlib.sha1(repr((question, options)).encode()).hexdigest()[:12]


def find_csvs(card: TaskCard, data_dir: Path | None) -> list[Path]:
    """Every `globalopinionqa/*.csv` of the data folder, else the Hub's CSV (kept in the Hub cache)."""
    folder = data_dir / LOCAL if data_dir else None
    if folder is not None and folder.is_dir():
        paths = sorted(folder.glob("*.csv"))
        if not paths:
            raise DataError(f"{folder}: no *.csv file with the columns of {card.hub_id}/{HUB_FILE}")
        return paths
    files = SOURCES[card.loader](card)
    return [from_hub(card, files, data_dir, lambda: download_hub_file(card, files[0]))]


SOURCES["globalopinionqa"] = lambda card: [SourceFile(f"{LOCAL}/global_opinions.csv", hub_path=HUB_FILE)]


@LOADERS.register("globalopinionqa", "GlobalOpinionQA: Anthropic/llm_global_opinions or a local CSV")
def load_globalopinionqa(card: TaskCard, data_dir: Path | None) -> TaskData:
    wanted = set(card.groups) if card.groups else None
    drops: Counter = Counter()
    items: dict[str, Item] = {}
    groups: dict[str, Group] = {}
    for path in find_csvs(card, data_dir):
        frame = read_csv(path, ["question", "selections", "options"])
        for row_number, row in enumerate(frame.itertuples(index=False), start=2):
            where = f"{path} row {row_number}"
            options = parse_literal(row.options, f"{where} column 'options'")
            if not isinstance(options, list | tuple):
                raise DataError(f"{where} column 'options': expected a list of option texts, got {options!r:.60}")
            options = [str(o) for o in options]
            selections = parse_selections(row.selections, where)
            if len(options) < 2:
                drops["questions with fewer than 2 options"] += 1
                continue
            item = Item(item_id(row.question, options), row.question, tuple(options))
            for country, values in selections.items():
                if wanted is not None and country not in wanted:
                    continue
                if not isinstance(values, list | tuple) or len(values) != len(options):
                    drops["distributions whose length differs from the options"] += 1
                    continue
                bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int | float) or v < 0]
                if bad:
                    raise DataError(
                        f"{where} column 'selections', {country}: expected shares ≥ 0 (NaN is dropped), got {bad[0]!r}"
                    )
                target = normalize(np.asarray(values, dtype=float))
                if target is None or not np.all(np.isfinite(target)):
                    drops["empty, zero-sum or non-finite distributions"] += 1
                    continue
                group = groups.setdefault(country, Group(country))
                if item.id in group.targets:
                    drops["duplicate (country, question) rows"] += 1
                    continue
                group.targets[item.id] = target
                items[item.id] = item
    order = list(card.groups) if card.groups else sorted(groups)
    missing = [g for g in order if g not in groups]
    notes = []
    if missing:
        notes.append(f"groups not found in the source: {', '.join(missing)}")
        log.warning("%s: groups not found in the source: %s", card.name, missing)
    for reason, count in sorted(drops.items()):
        log.info("%s: dropped %d %s", card.name, count, reason)
    task = TaskData(card.name, card.metric, items, {g: groups[g] for g in order if g in groups}, dict(drops), notes)
    task.validate()
    return task
