import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gpo_bench.cards import load_task_card
from gpo_bench.errors import DataError
from gpo_bench.loaders import load_task
from gpo_bench.loaders.globalopinionqa import load_globalopinionqa, parse_selections
from gpo_bench.loaders.opinionqa import CONFLICTING_DUPLICATE, load_opinionqa

FIXTURES = Path(__file__).parent / "fixtures"


def card_with(name, **changes):
    from dataclasses import replace

    return replace(load_task_card(name), **changes)


def test_opinionqa_counts_on_real_data(data_dir):
    task = load_opinionqa(load_task_card("opinionqa"), data_dir)
    assert len(task.groups) == 17  # RELIG is not among the shared count files
    assert "groups not found in the source: RELIG_Atheist" in " ".join(task.notes)
    assert len(task.items) == 177  # the usable disagreement questions of the count files
    for item in task.items.values():
        assert "Refused" not in item.candidates and len(item.ordinal) == len(item.candidates)
    # one real cell recomputed from the raw count file: counts of the non-refusal options, renormalized
    key = sorted(k for k in task.items if k.endswith("_W26"))[0]
    counts = json.loads((data_dir / "opinionqa/human_resp/American_Trends_Panel_W26/SEX_data.json").read_text())
    raw = [counts[key]["Female"].get(option, 0.0) for option in task.items[key].candidates]
    np.testing.assert_allclose(task.groups["SEX_Female"].targets[key], np.array(raw) / sum(raw))


def test_opinionqa_weighted_responses_fixture():
    card = card_with(
        "opinionqa",
        groups=["CREGION_Northeast", "CREGION_South", "RELIG_Atheist", "RACE_White"],
        source={"format": "auto", "questions": "all"},
    )
    task = load_opinionqa(card, FIXTURES / "opinionqa_responses")
    assert task.notes[0] == "source format: responses"
    assert "RACE_White" in task.notes[1]
    ne = task.groups["CREGION_Northeast"].targets
    # Very safe 2.0, Somewhat safe 1.0, Not safe 0; the refusal (0.5) is dropped
    np.testing.assert_allclose(ne["GUNSAFE_W99"], [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(ne["TAXFAIR_W99"], [2 / 3.5, 1.5 / 3.5])
    south = task.groups["CREGION_South"].targets
    np.testing.assert_allclose(south["GUNSAFE_W99"], [1.25 / 2.75, 0, 1.5 / 2.75])
    np.testing.assert_allclose(south["TAXFAIR_W99"], [1.0, 0.0])  # blank and Refused answers do not count
    np.testing.assert_allclose(task.groups["RELIG_Atheist"].targets["TAXFAIR_W99"], [2 / 2.5, 0.5 / 2.5])


def test_opinionqa_bad_weight_names_file_and_row(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "opinionqa_responses", tmp_path / "d")
    path = tmp_path / "d/opinionqa/human_resp/American_Trends_Panel_W99/responses.csv"
    path.write_text(path.read_text().replace(",1.5\n", ",heavy\n"))
    card = card_with("opinionqa", groups=["CREGION_South"], source={"format": "responses", "questions": "all"})
    with pytest.raises(DataError, match=r"responses.csv row 5: column WEIGHT_W99 is not a number"):
        load_opinionqa(card, tmp_path / "d")


def test_opinionqa_22group_rows_on_real_data(data_dir):
    task = load_opinionqa(load_task_card("opinionqa_22groups"), data_dir)
    assert len(task.groups) == 22
    unmatched = task.drops["rows with no wave question of the same text and options"]
    repeated = task.drops.get("duplicate (group, question) rows", 0) + task.drops.get(CONFLICTING_DUPLICATE, 0)
    matched = sum(len(g.targets) for g in task.groups.values()) + repeated
    assert matched + unmatched == 4475  # every row is either used or reported
    assert task.groups["RELIG_Atheist"].targets
    # the release repeats one (group, question) with another distribution: counted apart, traced, warned about
    (example,) = task.drop_examples[CONFLICTING_DUPLICATE]
    assert example["group"] == "RELIG_Jewish" and example["question"] == "HARASS4_W32"
    rows = json.loads((data_dir / "opinionqa-22groups/steerable_opinionqa_22groups.json").read_text())
    prompt = task.items["HARASS4_W32"].prompt
    copies = [
        r["gold_distribution"]
        for r in rows
        if r["attribute"] == "RELIG_Jewish" and r["question"].startswith(f"Question: {prompt}\nOptions: ")
    ]
    assert len(copies) == 2 and copies[0] != copies[1]  # read independently: two rows that disagree
    assert any("row 4316" in w and "another distribution" in w for w in task.warnings)


def test_opinionqa_without_data_says_what_to_pass():
    with pytest.raises(DataError, match="pass --data-dir DIR .*GPO_BENCH_DATA"):
        load_opinionqa(load_task_card("opinionqa"), None)


def test_globalopinionqa_on_real_data(data_dir):
    task = load_globalopinionqa(load_task_card("globalopinionqa"), data_dir)
    assert set(task.groups) == set(load_task_card("globalopinionqa").groups)
    assert all(item.ordinal is None for item in task.items.values())
    assert any("DK/Refused" in item.candidates for item in task.items.values())  # options kept as they are


def test_globalopinionqa_drops_and_errors(tmp_path):
    folder = tmp_path / "globalopinionqa"
    folder.mkdir()
    (folder / "g.csv").write_text(
        "question,selections,options,source\n"
        "Q1?,\"defaultdict(<class 'list'>, {'Japan': [0.5, 0.5], 'Spain': [0.0, 0.0], 'China': [0.2]})\","
        "\"['Yes', 'No']\",GAS\n"
    )
    task = load_globalopinionqa(card_with("globalopinionqa", groups=["Japan", "Spain", "China"]), tmp_path)
    assert list(task.groups) == ["Japan"]
    assert task.drops == {
        "empty, zero-sum or non-finite distributions": 1,
        "distributions whose length differs from the options": 1,
    }
    (folder / "g.csv").write_text("question,selections,options\nQ1?,\"{'Japan': [0.5, 0.5]\",\"['Yes', 'No']\"\n")
    with pytest.raises(DataError, match=r"g.csv row 2 column 'selections'"):
        load_globalopinionqa(load_task_card("globalopinionqa"), tmp_path)
    (folder / "g.csv").write_text("question,options\nQ1?,\"['Yes', 'No']\"\n")
    with pytest.raises(DataError, match=r"g.csv: missing column\(s\) \['selections'\]"):
        load_globalopinionqa(load_task_card("globalopinionqa"), tmp_path)


def test_parse_selections_never_evaluates_code():
    assert parse_selections("defaultdict(<class 'list'>, {'A': [1.0]})", "x") == {"A": [1.0]}
    with pytest.raises(DataError):
        parse_selections("__import__('os').system('true')", "x")


def test_opinionqa_individual_respondents_fixture(tmp_path):
    from gpo_bench.cli import main

    task = load_opinionqa(load_task_card("opinionqa_individual"), FIXTURES / "opinionqa_responses")
    assert sorted(task.groups) == ["W99-1", "W99-2", "W99-4"]  # 3 refused one, 5 left one blank, 6 refused one
    np.testing.assert_array_equal(task.groups["W99-4"].targets["GUNSAFE_W99"], [0, 0, 1])
    np.testing.assert_array_equal(task.groups["W99-2"].targets["TAXFAIR_W99"], [0, 1])
    assert task.drops["respondent answers that are blank or a refusal"] == 3
    assert task.drops["respondents with fewer than 2 answers"] == 3
    args = [
        "run",
        "--task",
        "opinionqa_individual",
        "--method",
        "population",
        "--data-dir",
        str(FIXTURES / "opinionqa_responses"),
        "--output-dir",
        str(tmp_path),
        "--shots",
        "1",
        "--seeds",
        "0",
        "--train-frac",
        "0.67",
    ]
    assert main(args) == 0


def test_a_task_is_loaded_once_per_card_content_not_per_card_file():
    card = load_task_card("synthetic_mixture")
    first = load_task(card, None)
    assert load_task(card, None) is first
    smaller = load_task(replace(card, source={**card.source, "groups": 5}), None)
    assert len(smaller.groups) == 5 and len(first.groups) == card.source["groups"] != 5
