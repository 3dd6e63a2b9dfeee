"""OpinionQA (Santurkar et al., 2023) from the release's `human_resp/` layout (`opinionqa_release` reads its
waves and questions): per-attribute count files, per-respondent `responses.csv` with survey weights, or the
22-group rows file. Groups are `ATTRIBUTE_value` (e.g. `RELIG_Atheist`); refusal options are dropped. The
`individual` format makes each respondent of `responses.csv` a group (`W<wave>-<QKEY>`), one-hot on its answer."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..cards import TaskCard
from ..data import Drops, Group, Item, TaskData, normalize
from ..errors import DataError, unknown_name
from ..registry import LOADERS
from .common import check_count, missing_groups, read_csv, read_json, reads_sources, warn
from .hub import no_source_error
from .opinionqa_release import (
    RELEASE,
    add_target,
    disagreement_keys,
    known_group_ids,
    read_wave_questions,
    split_group,
    wave_folders,
)

ROWS_FILE = "opinionqa-22groups/steerable_opinionqa_22groups.json"
FORMATS = ("auto", "counts", "responses", "rows", "individual")
UNKNOWN_OPTION = "(group, question) pairs whose counts name an option that is not in info.csv"
UNKNOWN_ANSWER = "respondent answers that are none of the question's options"
CONFLICTING_DUPLICATE = "(group, question) rows repeating an earlier row with another distribution"


def load_counts(
    wave: Path,
    items: dict[str, Item],
    options: dict,
    wanted: list[str],
    groups: dict,
    drops: Drops,
    seen: dict,
    vocab: dict[tuple[str, Path], Counter],
) -> None:
    """`<ATTR>_data.json`: {question key: {group value: {option text: count}}}. A count that is not a
    number ≥ 0 is an error; an option text that is not one of info.csv's drops the (group, question) pair
    (counted and warned about), as does a group value missing for a question. `seen` collects, per attribute,
    the file and the group values found, to catch a misspelled group; `vocab[(attribute, path)]` counts, per
    group value, the questions of that file naming it (key None: all its questions), to catch a misspelled key."""
    for attribute in sorted({split_group(g)[0] for g in wanted}):
        path = wave / f"{attribute}_data.json"
        if not path.exists():
            continue
        questions = read_json(path)
        if not isinstance(questions, dict):
            raise DataError(f"{path}: expected {{question key: {{group value: {{option: count}}}}}}")
        for key, per_value in questions.items():
            if not isinstance(per_value, dict):
                raise DataError(
                    f"{path}: question {key}: expected {{group value: {{option: count}}}}, got {per_value!r:.60}"
                )
            seen.setdefault(attribute, (path, set()))[1].update(v for v, c in per_value.items() if isinstance(c, dict))
            per_file = vocab.setdefault((attribute, path), Counter())
            per_file.update(list(per_value))
            per_file[None] += 1  # the file's number of questions
            item = items.get(key)
            if item is None:
                continue
            for group_id in wanted:
                attr, value = split_group(group_id)
                if attr != attribute:
                    continue
                if value not in per_value:
                    drops.add(
                        "(group, question) pairs absent from the count file", file=path, question=key, group=value
                    )
                    continue
                where = f"{path}: question {key} group {value!r}"
                counts = per_value[value]
                if not isinstance(counts, dict):
                    raise DataError(f"{where}: expected {{option: count}}, got {counts!r:.60}")
                for option, count in counts.items():
                    check_count(count, f"{where} option {option!r}")
                unknown = [option for option in counts if option not in options[key]]
                if unknown:
                    drops.add(UNKNOWN_OPTION, file=path, question=key, group=value, value=unknown[0])
                    known = difflib.get_close_matches(unknown[0], options[key], n=3, cutoff=0.4)
                    warn(
                        f"{where}: option {unknown[0]!r} is not an option of {wave / 'info.csv'}"
                        + (f" (closest: {', '.join(map(repr, known))})" if known else "")
                        + "; pair dropped"
                    )
                    continue
                weights = np.array([counts.get(o, 0.0) for o in item.candidates], dtype=float)
                add_target(groups, group_id, item, weights, drops, respondents=weights.sum(), where=str(path))


def load_responses(
    wave: Path, items: dict[str, Item], options: dict, wanted: list[str], groups: dict, drops: Drops, seen: dict
) -> None:
    """`responses.csv`: one row per respondent, answers as option texts, `WEIGHT_W<wave>`. Answers that
    are none of info.csv's options are counted and left out."""
    path = wave / "responses.csv"
    weight_column = "WEIGHT_" + wave.name.rsplit("_", 1)[-1]
    frame = read_csv(path, [weight_column])
    weights = pd.to_numeric(frame[weight_column], errors="coerce")
    if weights.isna().any() or (weights < 0).any():
        row = int((weights.isna() | (weights < 0)).to_numpy().argmax()) + 2
        raise DataError(f"{path} row {row}: column {weight_column} is not a number ≥ 0")
    keys = [k for k in frame.columns if k in items]
    for key in keys:
        answers = frame[key]
        odd = ~answers.isin(options[key]) & answers.str.strip().ne("")
        if odd.any():
            row = int(odd.to_numpy().argmax()) + 2
            drops.add(
                UNKNOWN_ANSWER, int(odd.sum()), file=f"{path} row {row}", question=key, value=answers[odd].iloc[0]
            )
            warn(
                f"{path}: {int(odd.sum())} answer(s) to {key} are none of its options in info.csv "
                f"(first: row {row}, {answers[odd].iloc[0]!r}); left out"
            )
    known: dict[str, set[str]] = {}
    for group_id in known_group_ids(wanted):
        known.setdefault(split_group(group_id)[0], set()).add(split_group(group_id)[1])
    for attribute in sorted({split_group(g)[0] for g in wanted} & set(frame.columns)):
        for value, count in frame[attribute].value_counts().items():
            close = difflib.get_close_matches(value, sorted(known[attribute] - {value}), n=1, cutoff=0.8)
            if value not in known[attribute] and close:
                row = int((frame[attribute] == value).to_numpy().argmax()) + 2
                warn(
                    f"{path}: column {attribute} value {value!r} ({count} respondent(s), first row {row}) is no "
                    f"group any task card knows, but close to {close[0]!r}; those respondents count in no group"
                )
    for group_id in wanted:
        attribute, value = split_group(group_id)
        if attribute not in frame.columns:
            continue
        seen.setdefault(attribute, (path, set()))[1].update(frame[attribute].unique())
        members = frame[attribute] == value
        for key in keys:
            item = items[key]
            answers = frame.loc[members, key]
            member_weights = weights[members]
            totals = np.array([member_weights[answers == option].sum() for option in item.candidates])
            answered = member_weights[answers.isin(item.candidates)]
            # Kish's effective sample size of the weighted answers: the ceiling's survey size
            kish = answered.sum() ** 2 / (answered**2).sum() if (answered**2).sum() > 0 else None
            add_target(groups, group_id, item, totals, drops, respondents=kish, where=str(path))


def load_individuals(wave: Path, items: dict[str, Item], options: dict, groups: dict, drops: Drops) -> None:
    """`responses.csv` read per respondent: each person (`QKEY`) is a group, one-hot on its answer."""
    path = wave / "responses.csv"
    frame = read_csv(path, ["QKEY"])
    unknown = 0
    for number, row in enumerate(frame.to_dict("records"), start=2):
        group_id = f"{wave.name.rsplit('_', 1)[-1]}-{row['QKEY']}"
        person: dict[str, Group] = {}
        for key in (k for k in frame.columns if k in items):
            item = items[key]
            if row[key] not in item.candidates:
                known = row[key] in options[key] or not row[key].strip()
                reason = "respondent answers that are blank or a refusal" if known else UNKNOWN_ANSWER
                drops.add(reason, file=f"{path} row {number}", question=key, group=group_id, value=row[key])
                if not known:
                    unknown += 1
                    if unknown == 1:
                        first = f"row {number}, {key}: {row[key]!r}"
                continue
            add_target(person, group_id, item, np.eye(len(item.candidates))[item.candidates.index(row[key])], drops)
        if group_id in person and len(person[group_id].targets) >= 2:
            groups[group_id] = person[group_id]
        else:
            drops.add("respondents with fewer than 2 answers", file=f"{path} row {number}", group=group_id)
    if unknown:
        warn(f"{path}: {unknown} answer(s) are none of their question's options in info.csv (first: {first}); left out")


def check_group_values(card: TaskCard, wanted: list[str], seen: dict) -> None:
    """A group whose attribute is in the source but whose value appears nowhere is a misspelling: an error
    with the closest values, not a group silently missing."""
    for group_id in wanted:
        attribute, value = split_group(group_id)
        if attribute in seen and value not in seen[attribute][1]:
            path, values = seen[attribute]
            raise unknown_name(f"value of {attribute} (group {group_id!r} of {card.path}; in {path})", value, values)


def warn_unknown_group_keys(card: TaskCard, wanted: list[str], vocab: dict[tuple[str, Path], Counter]) -> None:
    """Warn, naming the file and the closest known values, about a group key of a count file that no task card and
    no wave knows: not a value of any card's groups, and not named by every question of two count files of its
    attribute (of its only file, where there is one). The release's values are named by every question."""
    card_values: dict[str, set[str]] = {}
    for group_id in known_group_ids(wanted):
        attribute, value = split_group(group_id)
        card_values.setdefault(attribute, set()).add(value)
    for attribute in sorted({a for a, _ in vocab}):
        files = {path: counts for (a, path), counts in vocab.items() if a == attribute}
        everywhere = Counter(v for counts in files.values() for v, n in counts.items() if v and n == counts[None])
        known = card_values.get(attribute, set()) | {v for v, n in everywhere.items() if n >= min(2, len(files))}
        for path, counts in sorted(files.items()):
            for value in sorted(v for v in counts if v is not None and v not in known):
                close = difflib.get_close_matches(value, sorted(known), n=3, cutoff=0.6)
                warn(
                    f"{path}: group key {value!r} (in {counts[value]} of {counts[None]} questions) is a value of "
                    f"{attribute} that no task card and no other count file knows"
                    + (f"; closest known: {', '.join(map(repr, close))}" if close else "")
                    + "; its counts are not read"
                )


PROMPT_PATTERN = re.compile(r"^Question: (?P<question>.*)\nOptions: ", re.S)


def load_rows(path: Path, wave_items: dict[str, Item], wanted: list[str], groups: dict, drops: Drops) -> None:
    """The 22-group rows file: question text + options matched to a wave question exactly."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a list of rows, got {type(rows).__name__}")
    by_text: dict[tuple, list[Item]] = {}
    for item in wave_items.values():
        by_text.setdefault((item.prompt, item.candidates), []).append(item)
    known, unknown = known_group_ids(wanted), Counter()
    for index, row in enumerate(rows):
        where = f"{path} row {index}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with question, options, attribute, gold_distribution")
        for field, types in (("question", str), ("options", list), ("attribute", str), ("gold_distribution", list)):
            if field not in row:
                raise DataError(f"{where}: missing field {field!r}")
            if not isinstance(row[field], types):
                raise DataError(f"{where}: field {field!r} must be a {types.__name__}, got {row[field]!r:.60}")
        if row["attribute"] not in wanted:
            if row["attribute"] not in known:
                unknown[row["attribute"]] += 1
            continue
        match = PROMPT_PATTERN.match(row["question"])
        if match is None:
            raise DataError(f"{where}: 'question' does not start with 'Question: …\\nOptions: '")
        gold = [check_count(v, f"{where} field 'gold_distribution'") for v in row["gold_distribution"]]
        candidates = by_text.get((match["question"], tuple(map(str, row["options"]))), [])
        example = {"file": where, "group": row["attribute"]}
        if not candidates:
            drops.add("rows with no wave question of the same text and options", **example, value=match["question"])
            continue
        if len({c.ordinal for c in candidates}) > 1:
            drops.add(
                "rows matching several wave questions with different ordinals",
                **example,
                question=", ".join(c.id for c in candidates),
            )
            continue
        item = min(candidates, key=lambda c: c.id)
        if len(gold) != len(item.candidates):
            raise DataError(f"{where}: {len(gold)} values in 'gold_distribution' for {len(item.candidates)} options")
        first = groups.get(row["attribute"], Group("")).targets.get(item.id)
        if first is not None:
            conflicting = (target := normalize(np.asarray(gold))) is None or not np.allclose(target, first)
            reason = CONFLICTING_DUPLICATE if conflicting else "duplicate (group, question) rows"
            drops.add(reason, **example, question=item.id, value=gold)
            if conflicting:
                warn(
                    f"{where}: repeats group {row['attribute']!r} question {item.id} with another distribution; "
                    "the first row is kept"
                )
            continue
        add_target(groups, row["attribute"], item, np.asarray(gold), drops, where=where)
    for attribute, count in sorted(unknown.items()):
        close = difflib.get_close_matches(attribute, sorted(known), n=3, cutoff=0.6)
        warn(
            f"{path}: attribute {attribute!r} ({count} rows) is a group no task card knows"
            + (f"; closest known: {', '.join(map(repr, close))}" if close else "")
            + "; its rows are not read"
        )


@LOADERS.register("opinionqa", "OpinionQA release: count files, weighted responses.csv, or the 22-group rows")
@reads_sources
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
    drops = Drops()
    wanted = list(card.groups or [])
    waves = wave_folders(release)
    all_items: dict[str, Item] = {}
    options: dict[str, tuple[str, ...]] = {}
    seen: dict[str, tuple[Path, set]] = {}
    vocab: dict[tuple[str, Path], Counter] = {}
    for wave in waves:
        all_items.update(read_wave_questions(wave, drops, options))
    if card.source.get("questions", "all") == "disagreement":
        keep = disagreement_keys(release)
        drops.add("questions outside the disagreement set", len(set(all_items) - keep))
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
                    load_individuals(wave, wave_items, options, groups, drops)
            elif fmt == "responses":
                if (wave / "responses.csv").exists():
                    load_responses(wave, wave_items, options, wanted, groups, drops, seen)
            else:
                load_counts(wave, wave_items, options, wanted, groups, drops, seen, vocab)
        check_group_values(card, wanted, seen)
        warn_unknown_group_keys(card, wanted, vocab)
    if fmt == "individual":
        wanted = sorted(groups)
    used = {item_id for g in groups.values() for item_id in g.targets}
    notes = [f"source format: {fmt}", *missing_groups(card, wanted, groups)]
    task = TaskData(
        card.name,
        card.metric,
        {k: v for k, v in all_items.items() if k in used},
        {g: groups[g] for g in wanted if g in groups},
        dict(drops),
        notes,
        drops.examples,
    )
    task.validate()
    return task
