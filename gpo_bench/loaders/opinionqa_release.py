"""The OpinionQA release as every format reads it: its layout (`human_resp/American_Trends_Panel_W*`), each
wave's questions (`info.csv`: the non-refusal options and their ordinal values), the 500 disagreement questions,
and the groups: their ids (`ATTRIBUTE_value`), the ids any OpinionQA task card knows, and filing a group's
distribution for a question (`add_target`)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from ..cards import load_task_card
from ..data import Drops, Group, Item, normalize
from ..discovery import task_names
from ..errors import CardError, DataError
from .common import parse_literal, read_csv, row_errors

log = logging.getLogger(__name__)

RELEASE = "opinionqa/human_resp"
DISAGREEMENT = "Pew_American_Trends_Panel_disagreement_500"


def read_wave_questions(wave: Path, drops: Drops, options: dict[str, tuple[str, ...]]) -> dict[str, Item]:
    """A wave's `info.csv` → items: the non-refusal options (those with an ordinal value). `options`
    receives every question's option texts, refusals included. A key on several rows that differ (the
    release has a few: one key, one question text per race) cannot be tied to its answers: dropped, counted."""
    path = wave / "info.csv"
    frame = read_csv(path, ["key", "question", "references", "option_ordinal"])
    items, first_row, ambiguous = {}, {}, set()
    for row_number, row in enumerate(frame.itertuples(index=False), start=2):
        where = f"{path} row {row_number} ({row.key})"
        content = (row.question, row.references, row.option_ordinal)
        if row.key in first_row:
            drops.add("info.csv rows repeating a question key", file=f"{path} row {row_number}", question=row.key)
            if first_row[row.key] != content and row.key not in ambiguous:
                ambiguous.add(row.key)
                log.warning("%s: key %s names several different questions; dropped", path, row.key)
            continue
        first_row[row.key] = content
        references = parse_literal(row.references, f"{where} column 'references'")
        if not isinstance(references, list | tuple) or not all(isinstance(r, str) for r in references):
            raise DataError(f"{where} column 'references': expected a list of option texts, got {references!r:.80}")
        with row_errors(f"{where} column 'option_ordinal'"):
            ordinal = [float(v) for v in parse_literal(row.option_ordinal, f"{where} column 'option_ordinal'")]
        options[row.key] = tuple(references)
        if len(ordinal) > len(references):
            raise DataError(f"{where}: {len(ordinal)} ordinal values for {len(references)} options")
        # OpinionQA gives ordinal values to the substantive options only; the rest are refusals.
        candidates = tuple(references[: len(ordinal)])
        if len(candidates) < 2 or max(ordinal) == min(ordinal):
            drops.add(
                "questions with fewer than 2 ordered non-refusal options",
                file=f"{path} row {row_number}",
                question=row.key,
                value=candidates,
            )
            continue
        items[row.key] = Item(row.key, row.question, candidates, tuple(ordinal))
    for key in sorted(ambiguous):
        drops.add("questions whose key names several different info.csv rows", file=path, question=key)
    return {key: item for key, item in items.items() if key not in ambiguous}


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


def add_target(
    groups: dict[str, Group],
    group_id: str,
    item: Item,
    weights: np.ndarray,
    drops: Drops,
    respondents: float | None = None,
    where: str | None = None,
) -> None:
    """File the group's distribution for `item` (and how many people stand behind it, where known)."""
    target = normalize(weights)
    if target is None:
        drops.add("(group, question) pairs with no non-refusal answers", file=where, question=item.id, group=group_id)
        return
    group = groups.setdefault(group_id, Group(group_id))
    group.targets[item.id] = target
    if respondents is not None:
        group.respondents[item.id] = float(respondents)


def known_group_ids(wanted: list[str]) -> set[str]:
    """The groups of this card and of every OpinionQA task card (a broken card is reported where it is used)."""
    known = set(wanted)
    for name in task_names():
        with contextlib.suppress(CardError):
            other = load_task_card(name)
            if other.loader == "opinionqa":
                known.update(str(g) for g in other.groups or [] if "_" in str(g))
    return known
