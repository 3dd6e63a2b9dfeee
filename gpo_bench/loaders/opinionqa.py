"""OpinionQA (Santurkar et al., 2023) from the release's `human_resp/` layout: per-attribute count
files, per-respondent `responses.csv` with survey weights, or the 22-group rows file.
Groups are `ATTRIBUTE_value` (e.g. `RELIG_Atheist`); refusal options are dropped. The `individual`
format makes each respondent of `responses.csv` a group (`W<wave>-<QKEY>`), one-hot on its answer."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..cards import TaskCard
from ..data import DataError, Group, Item, TaskData, normalize
from ..registry import LOADERS
from .common import no_source_error, parse_literal, read_csv

log = logging.getLogger(__name__)

RELEASE = "opinionqa/human_resp"
ROWS_FILE = "opinionqa-22groups/steerable_opinionqa_22groups.json"
DISAGREEMENT = "Pew_American_Trends_Panel_disagreement_500"
FORMATS = ("auto", "counts", "responses", "rows", "individual")


def read_wave_questions(wave: Path, drops: Counter) -> dict[str, Item]:
    """A wave's `info.csv` → items: the non-refusal options (those with an ordinal value)."""
    path = wave / "info.csv"
    frame = read_csv(path, ["key", "question", "references", "option_ordinal"])
    items = {}
    for row_number, row in enumerate(frame.itertuples(index=False), start=2):
        where = f"{path} row {row_number} ({row.key})"
        references = parse_literal(row.references, f"{where} column 'references'")
        ordinal = [float(v) for v in parse_literal(row.option_ordinal, f"{where} column 'option_ordinal'")]
        if len(ordinal) > len(references):
            raise DataError(f"{where}: {len(ordinal)} ordinal values for {len(references)} options")
        # OpinionQA gives ordinal values to the substantive options only; the rest are refusals.
        candidates = tuple(references[: len(ordinal)])
        if len(candidates) < 2 or max(ordinal) == min(ordinal):
            drops["questions with fewer than 2 ordered non-refusal options"] += 1
            continue
        items[row.key] = Item(row.key, row.question, candidates, tuple(ordinal))
    return items


def wave_folders(release: Path) -> list[Path]:
    waves = sorted(p for p in release.glob("American_Trends_Panel_W*") if (p / "info.csv").exists())
    if not waves:
        raise DataError(f"{release}: no American_Trends_Panel_W*/info.csv folders")
    return waves


def disagreement_keys(release: Path) -> set[str]:
    path = release / DISAGREEMENT / "info.csv"
    if not path.exists():
        raise DataError(f"{path} is missing; it lists the 500 disagreement questions (source.questions)")
    return set(read_csv(path, ["key"])["key"])


def split_group(group_id: str) -> tuple[str, str]:
    attribute, sep, value = group_id.partition("_")
    if not sep:
        raise DataError(f"group {group_id!r} must be written ATTRIBUTE_value, e.g. SEX_Female")
    return attribute, value


def add_target(groups: dict[str, Group], group_id: str, item: Item, weights: np.ndarray, drops: Counter) -> None:
    target = normalize(weights)
    if target is None:
        drops["(group, question) pairs with no non-refusal answers"] += 1
        return
    groups.setdefault(group_id, Group(group_id)).targets[item.id] = target


def load_counts(wave: Path, items: dict[str, Item], wanted: list[str], groups: dict, drops: Counter) -> None:
    """`<ATTR>_data.json`: {question key: {group value: {option text: count}}}."""
    for attribute in sorted({split_group(g)[0] for g in wanted}):
        path = wave / f"{attribute}_data.json"
        if not path.exists():
            continue
        try:
            questions = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error})") from None
        for key, per_value in questions.items():
            item = items.get(key)
            if item is None:
                continue
            for group_id in wanted:
                attr, value = split_group(group_id)
                if attr != attribute or value not in per_value:
                    continue
                counts = per_value[value]
                if not isinstance(counts, dict):
                    raise DataError(f"{path}: question {key} group {value!r}: expected {{option: count}}")
                weights = np.array([float(counts.get(option, 0.0)) for option in item.candidates])
                add_target(groups, group_id, item, weights, drops)


def load_responses(wave: Path, items: dict[str, Item], wanted: list[str], groups: dict, drops: Counter) -> None:
    """`responses.csv`: one row per respondent, answers as option texts, `WEIGHT_W<wave>`."""
    path = wave / "responses.csv"
    weight_column = "WEIGHT_" + wave.name.rsplit("_", 1)[-1]
    frame = read_csv(path, [weight_column])
    weights = pd.to_numeric(frame[weight_column], errors="coerce")
    if weights.isna().any():
        row = int(weights.isna().to_numpy().argmax()) + 2
        raise DataError(f"{path} row {row}: column {weight_column} is not a number")
    for group_id in wanted:
        attribute, value = split_group(group_id)
        if attribute not in frame.columns:
            continue
        members = frame[attribute] == value
        for key in (k for k in frame.columns if k in items):
            item = items[key]
            answers = frame.loc[members, key]
            member_weights = weights[members]
            totals = np.array([member_weights[answers == option].sum() for option in item.candidates])
            add_target(groups, group_id, item, totals, drops)


def load_individuals(wave: Path, items: dict[str, Item], groups: dict, drops: Counter) -> None:
    """`responses.csv` read per respondent: each person (`QKEY`) is a group, one-hot on its answer."""
    path = wave / "responses.csv"
    frame = read_csv(path, ["QKEY"])
    for row in frame.to_dict("records"):
        group_id = f"{wave.name.rsplit('_', 1)[-1]}-{row['QKEY']}"
        person: dict[str, Group] = {}
        for key in (k for k in frame.columns if k in items):
            item = items[key]
            if row[key] not in item.candidates:  # blank or a refusal
                drops["respondent answers that are blank or a refusal"] += 1
                continue
            add_target(person, group_id, item, np.eye(len(item.candidates))[item.candidates.index(row[key])], drops)
        if group_id in person and len(person[group_id].targets) >= 2:
            groups[group_id] = person[group_id]
        else:
            drops["respondents with fewer than 2 answers"] += 1


PROMPT_PATTERN = re.compile(r"^Question: (?P<question>.*)\nOptions: ", re.S)


def load_rows(path: Path, wave_items: dict[str, Item], wanted: list[str], groups: dict, drops: Counter) -> None:
    """The 22-group rows file: question text + options matched to a wave question exactly."""
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    by_text: dict[tuple, list[Item]] = {}
    for item in wave_items.values():
        by_text.setdefault((item.prompt, item.candidates), []).append(item)
    for index, row in enumerate(rows):
        where = f"{path} row {index}"
        for field in ("question", "options", "attribute", "gold_distribution"):
            if field not in row:
                raise DataError(f"{where}: missing field {field!r}")
        if row["attribute"] not in wanted:
            continue
        match = PROMPT_PATTERN.match(row["question"])
        if match is None:
            raise DataError(f"{where}: 'question' does not start with 'Question: …\\nOptions: '")
        candidates = by_text.get((match["question"], tuple(row["options"])), [])
        if not candidates:
            drops["rows with no wave question of the same text and options"] += 1
            continue
        if len({c.ordinal for c in candidates}) > 1:
            drops["rows matching several wave questions with different ordinals"] += 1
            continue
        item = min(candidates, key=lambda c: c.id)
        if item.id in groups.get(row["attribute"], Group("")).targets:
            drops["duplicate (group, question) rows"] += 1
            continue
        add_target(groups, row["attribute"], item, np.asarray(row["gold_distribution"], float), drops)


@LOADERS.register("opinionqa", "OpinionQA release: count files, weighted responses.csv, or the 22-group rows")
def load_opinionqa(card: TaskCard, data_dir: Path | None) -> TaskData:
    release = data_dir / RELEASE if data_dir else None
    if release is None or not release.is_dir():
        rows = [card.source.get("rows_file", ROWS_FILE)] if card.source.get("format") == "rows" else []
        raise no_source_error(
            card,
            [f"{RELEASE}/", *rows],
            data_dir,
            "OpinionQA has no Hugging Face Hub copy",
            f"Put the OpinionQA release's human_resp/ folder in DIR/{RELEASE} (it is data/human_resp of "
            "github.com/tatsu-lab/opinions_qa at commit ed8c4e0)"
            + (f", and the rows file of BunsenFeng/modular_pluralism in DIR/{rows[0]}." if rows else "."),
        )
    fmt = card.source.get("format", "auto")
    if fmt not in FORMATS:
        raise DataError(f"{card.path}: source.format must be one of {FORMATS}, got {fmt!r}")
    drops: Counter = Counter()
    wanted = list(card.groups or [])
    waves = wave_folders(release)
    all_items: dict[str, Item] = {}
    for wave in waves:
        all_items.update(read_wave_questions(wave, drops))
    if card.source.get("questions", "all") == "disagreement":
        keep = disagreement_keys(release)
        drops["questions outside the disagreement set"] += len(set(all_items) - keep)
        all_items = {k: v for k, v in all_items.items() if k in keep}
    if fmt == "auto":
        fmt = "responses" if any((w / "responses.csv").exists() for w in waves) else "counts"
    groups: dict[str, Group] = {}
    if fmt == "rows":
        rows_path = data_dir / card.source.get("rows_file", ROWS_FILE)
        if not rows_path.exists():
            raise DataError(f"{rows_path} does not exist (source.rows_file of {card.path})")
        load_rows(rows_path, all_items, wanted, groups, drops)
    else:
        for wave in waves:
            wave_items = {k: v for k, v in all_items.items() if k.endswith("_" + wave.name.rsplit("_", 1)[-1])}
            if fmt == "individual":
                if (wave / "responses.csv").exists():
                    load_individuals(wave, wave_items, groups, drops)
            elif fmt == "responses":
                if (wave / "responses.csv").exists():
                    load_responses(wave, wave_items, wanted, groups, drops)
            else:
                load_counts(wave, wave_items, wanted, groups, drops)
    if fmt == "individual":
        wanted = sorted(groups)
    used = {item_id for g in groups.values() for item_id in g.targets}
    missing = [g for g in wanted if g not in groups]
    notes = [f"source format: {fmt}"]
    if missing:
        notes.append(f"groups not found in the source: {', '.join(missing)}")
        log.warning("%s: %d of %d groups not found in the source: %s", card.name, len(missing), len(wanted), missing)
    task = TaskData(
        card.name,
        card.metric,
        {k: v for k, v in all_items.items() if k in used},
        {g: groups[g] for g in wanted if g in groups},
        dict(drops),
        notes,
    )
    task.validate()
    return task
