"""The two generic loaders on the example files (against an independent reading with the csv and json
modules), in parquet too, and bad rows: each an error naming the file and the row."""

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpo_bench.cards import TaskCard
from gpo_bench.errors import DataError
from gpo_bench.loaders.survey import load_survey
from gpo_bench.loaders.user_pairs import load_user_pairs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SURVEY = EXAMPLES / "data" / "survey.csv"
PAIRS = EXAMPLES / "data" / "pairs.jsonl"


def card(kind: str, file: Path | str, tmp_path: Path | None = None) -> TaskCard:
    """The example card, pointed at `file` (a copy in tmp_path when given)."""
    base = TaskCard.from_file(EXAMPLES / "tasks" / f"example_{kind}.yaml")
    fields = {k: getattr(base, k) for k in base.__dataclass_fields__}
    return TaskCard(**{**fields, "source": {"file": str(file)}})


def test_survey_example_matches_an_independent_reading():
    task = load_survey(card("survey", SURVEY), None)
    counts, respondents = defaultdict(dict), {}
    with SURVEY.open() as handle:
        for row in csv.DictReader(handle):
            counts[(row["group"], row["item"])][row["option"]] = float(row["weight"])
            respondents[(row["group"], row["item"])] = int(row["respondents"])
    assert len(task.groups) == 8 and len(task.items) == 12
    assert sum(len(g.targets) for g in task.groups.values()) == len(counts)
    for (group, item), cell in counts.items():
        expected = np.array(list(cell.values())) / sum(cell.values())
        np.testing.assert_allclose(task.groups[group].targets[item], expected)
        assert task.groups[group].respondents[item] == respondents[(group, item)]
    assert task.items["q01"].candidates == ("Never", "Rarely", "Sometimes", "Often", "Every day")
    assert task.items["q01"].ordinal == (1.0, 2.0, 3.0, 4.0, 5.0)


def test_survey_from_parquet_is_the_same_task(tmp_path):
    path = tmp_path / "survey.parquet"
    pd.read_csv(SURVEY).to_parquet(path)
    assert (
        load_survey(card("survey", path), None).fingerprint() == load_survey(card("survey", SURVEY), None).fingerprint()
    )


def bad_survey(tmp_path: Path, line: int, column: str, value: str) -> Path:
    """The example survey with one cell of one line (1 = the header) changed."""
    with SURVEY.open() as handle:
        rows = list(csv.DictReader(handle))
    rows[line - 2][column] = value
    path = tmp_path / "bad.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("line", "column", "value", "message"),
    [
        (7, "weight", "-3", "row 7: column 'weight' must not be negative"),
        (8, "weight", "lots", "row 8: column 'weight' must be a number, got 'lots'"),
        (9, "prompt", "Another text?", "row 9: item 'q02' has prompt 'Another text?', but"),
        (10, "group", "", "row 10: column 'group' is empty"),
        (11, "option", "Rarely", "row 11: group 'Urban 18-29' item 'q02' option 'Rarely' repeats"),
        (12, "ordinal", "9", "item 'q03' option 'Never' has ordinal 1.0, but"),
        (13, "respondents", "2.5", "row 13: column 'respondents' must be a positive whole number"),
    ],
)
def test_survey_bad_rows_name_file_and_row(tmp_path, line, column, value, message):
    path = bad_survey(tmp_path, line, column, value)
    with pytest.raises(DataError) as error:
        load_survey(card("survey", path), None)
    assert str(error.value).startswith(f"{path} ") and message in str(error.value)
    assert f"row {line}" in str(error.value)


def test_survey_group_lacking_an_option_names_its_row(tmp_path):
    lines = SURVEY.read_text().splitlines()
    path = tmp_path / "lacking.csv"
    path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # drop Urban 18-29 / q01 / Rarely
    with pytest.raises(
        DataError, match=r"lacking\.csv row 2: group 'Urban 18-29' item 'q01' lacks option\(s\) \['Rarely'\]"
    ):
        load_survey(card("survey", path), None)


def test_pairs_example_matches_an_independent_reading():
    task = load_user_pairs(card("pairs", PAIRS), None)
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()]
    assert len(task.groups) == 12 and len(task.items) == len(rows)
    for number, row in enumerate(rows, start=1):
        item = task.items[f"pairs-{number}"]
        target = task.groups[row["user"]].targets[item.id]
        assert item.candidates[int(np.argmax(target))] == row["chosen"]
        assert set(item.candidates) == {row["chosen"], row["rejected"]}
        assert task.groups[row["user"]].partition[item.id] == row["split"]
        assert item.prompt.endswith(row["prompt"]) and (("context" in row) == item.prompt.startswith("user: Hi"))


def test_pairs_without_split_are_halved_per_user_and_parquet_reads_the_same(tmp_path):
    frame = pd.read_json(PAIRS, lines=True).drop(columns=["split", "context"])
    path = tmp_path / "pairs.parquet"
    frame.to_parquet(path)
    task = load_user_pairs(card("pairs", path), None)
    for group in task.groups.values():
        parts = list(group.partition.values())
        assert parts.count("train") == parts.count("test") == 8
    again = tmp_path / "pairs.jsonl"
    again.write_text(frame.to_json(orient="records", lines=True))
    assert load_user_pairs(card("pairs", again), None).fingerprint() == task.fingerprint()


@pytest.mark.parametrize(
    ("line", "change", "message"),
    [
        (3, {"chosen": ""}, "line 3: field 'chosen' must be a non-empty text"),
        (4, {"user": 7}, "line 4: field 'user' must be a non-empty text, got 7"),
        (5, {"split": "dev"}, "line 5: field 'split' must be train, val or test, got 'dev'"),
        (6, {"split": None}, "line 6: 'split' is missing here but given at"),
        (7, {"context": [{"role": "user"}]}, "line 7: field 'context' must be a text or a list of {role, content}"),
    ],
)
def test_pairs_bad_rows_name_file_and_line(tmp_path, line, change, message):
    rows = [json.loads(text) for text in PAIRS.read_text().splitlines()]
    rows[line - 1].update(change)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as error:
        load_user_pairs(card("pairs", path), None)
    assert str(error.value).startswith(f"{path} ") and message in str(error.value)
    path.write_text(PAIRS.read_text().replace('"user": "reader-01"', '"person": "reader-01"', 1))
    with pytest.raises(DataError, match=r"bad\.jsonl line 1: missing field\(s\) \['user'\]"):
        load_user_pairs(card("pairs", path), None)


def test_card_file_is_found_in_the_data_dir_before_beside_the_card(tmp_path):
    (tmp_path / "survey.csv").write_text(SURVEY.read_text())
    task_card = card("survey", "survey.csv")
    assert load_survey(task_card, tmp_path).notes[0] == f"read {tmp_path / 'survey.csv'}"
    with pytest.raises(DataError, match="source file 'survey.csv' not found"):
        load_survey(task_card, tmp_path / "elsewhere")
