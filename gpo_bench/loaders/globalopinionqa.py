"""GlobalOpinionQA (Durmus et al., 2023): `Anthropic/llm_global_opinions` from the Hub or a local
CSV with its columns (`question, selections, options, source`). Groups are countries; options are
kept as they are (no refusal dropping), per the GPO paper."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from ..cards import TaskCard
from ..data import Drops, Group, Item, TaskData, normalize
from ..errors import DataError
from ..registry import LOADERS
from .common import missing_groups, parse_literal, read_csv, reads_sources, warn
from .hub import SOURCES, SourceFile, download_hub_file, from_hub

log = logging.getLogger(__name__)

LOCAL = "globalopinionqa"
HUB_FILE = "data/global_opinions.csv"
DEFAULTDICT_PREFIX = "defaultdict(<class 'list'>, "
CONFLICTING_DUPLICATE = "(country, question) rows repeating an earlier row with another distribution"


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


def without_carriage_returns(path: Path, column: str, values: list[str]) -> list[str]:
    """A file saved with Windows line ends puts CR LF inside quoted multi-line questions, which would give their
    items other ids than the release's: line ends become LF, with a warning naming the file and the first row."""
    changed = [n for n, v in enumerate(values) if "\r" in v]
    if changed:
        warn(
            f"{path}: {len(changed)} value(s) of column {column!r} hold carriage returns (\\r, Windows line ends; "
            f"first: row {changed[0] + 2}); read as \\n line ends"
        )
    return [v.replace("\r\n", "\n").replace("\r", "\n") for v in values]


@LOADERS.register("globalopinionqa", "GlobalOpinionQA: Anthropic/llm_global_opinions or a local CSV")
@reads_sources
def load_globalopinionqa(card: TaskCard, data_dir: Path | None) -> TaskData:
    wanted = set(card.groups) if card.groups else None
    drops = Drops()
    items: dict[str, Item] = {}
    groups: dict[str, Group] = {}
    for path in find_csvs(card, data_dir):
        frame = read_csv(path, ["question", "selections", "options"])
        for column in ("question", "options"):
            frame[column] = without_carriage_returns(path, column, list(frame[column]))
        for row_number, row in enumerate(frame.itertuples(index=False), start=2):
            where = f"{path} row {row_number}"
            options = parse_literal(row.options, f"{where} column 'options'")
            if not isinstance(options, list | tuple):
                raise DataError(f"{where} column 'options': expected a list of option texts, got {options!r:.60}")
            options = [str(o) for o in options]
            selections = parse_selections(row.selections, where)
            if len(options) < 2:
                drops.add("questions with fewer than 2 options", file=where, value=options)
                continue
            item = Item(item_id(row.question, options), row.question, tuple(options))
            for country, values in selections.items():
                if wanted is not None and country not in wanted:
                    continue
                example = {"file": where, "question": item.id, "group": country}
                if not isinstance(values, list | tuple) or len(values) != len(options):
                    drops.add("distributions whose length differs from the options", **example, value=values)
                    continue
                bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int | float) or v < 0]
                if bad:
                    raise DataError(
                        f"{where} column 'selections', {country}: expected shares ≥ 0 (NaN is dropped), got {bad[0]!r}"
                    )
                target = normalize(np.asarray(values, dtype=float))
                if target is None or not np.all(np.isfinite(target)):
                    drops.add("empty, zero-sum or non-finite distributions", **example, value=values)
                    continue
                group = groups.setdefault(country, Group(country))
                if item.id in group.targets:
                    if np.allclose(group.targets[item.id], target):
                        drops.add("duplicate (country, question) rows", **example)
                    else:
                        drops.add(CONFLICTING_DUPLICATE, **example, value=values)
                        warn(
                            f"{where}: repeats {country!r}'s answer to question {row.question[:60]!r} with another "
                            "distribution; the first row is kept"
                        )
                    continue
                group.targets[item.id] = target
                items[item.id] = item
    order = list(card.groups) if card.groups else sorted(groups)
    notes = missing_groups(card, order, groups)
    for reason, count in sorted(drops.items()):
        log.info("%s: dropped %d %s", card.name, count, reason)
    task = TaskData(
        card.name, card.metric, items, {g: groups[g] for g in order if g in groups}, dict(drops), notes, drops.examples
    )
    task.validate()
    return task
