"""The hostile-input corpus, continued (tests/test_bad_input.py holds the first families and the judging rules):
sources that name what no card or question knows, empty files, duplicates that contradict their first copy, input
files changed under a finished run, read-only finished runs, encoder settings of the wrong type, caches that are
quarantined twice, hold vectors of another size or cannot be created, and splits that leave one test group.

A case that loses or changes data must say so: a warning naming the file and the value, recorded in the loaded
task (hence result.json), and an error under `strict: true` / `--strict`; a case that cannot go on must fail with a
message naming the flag, file or row at fault."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from gpo_bench import cards, loaders
from gpo_bench.discovery import INCLUDE_ENV
from gpo_bench.encoders import EmbeddingCache, Encoder, EncoderSpec, bow_vectors
from gpo_bench.errors import DataError
from gpo_bench.loaders.globalopinionqa import CONFLICTING_DUPLICATE, item_id, load_globalopinionqa
from gpo_bench.loaders.opinionqa import load_opinionqa
from tests import personalized_fixtures as pf
from tests.test_bad_input import (
    FIXTURES,
    INFO,
    OPINION_CARD,
    QUICK,
    call,
    check,
    counts_with,
    judge,
    write_opinionqa,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_SURVEY = REPO / "examples" / "data" / "survey.csv"


def opinion_card(**changes) -> cards.TaskCard:
    return dataclasses.replace(cards.load_task_card("opinionqa"), **{**OPINION_CARD, **changes})


def warned(load, culprits: list[str], strict_load=None, drop: tuple[str, dict] | None = None) -> tuple[str, str]:
    """`clear` when the load succeeds with a warning naming every culprit (and, given `drop`, a drop of that reason
    whose first example holds the given fields), and the strict load fails naming them too."""
    try:
        task = load()
    except Exception as error:  # noqa: BLE001  (an error where a warning was expected is the outcome)
        return "vague", f"{type(error).__name__}: {error}"
    text = json.dumps({"warnings": task.warnings, "drops": task.drops, "examples": task.drop_examples})
    if not any(all(c in w for c in culprits) for w in task.warnings):
        return "silent", text
    if drop is not None:
        reason, fields = drop
        examples = task.drop_examples.get(reason, [])
        if not examples or any(examples[0].get(k) != v for k, v in fields.items()):
            return "silent", text
    if strict_load is not None:
        try:
            strict_load()
        except DataError as error:
            if not all(c in str(error) for c in culprits):
                return "vague", str(error)
        else:
            return "silent", "strict: true loaded the task"
    return "clear", text


# ---- family: names a source uses that no card, wave or question knows -----------------------------------


def test_a_misspelled_group_key_in_one_question_is_named_with_the_closest(tmp_path):
    def rename(counts):
        counts["Q2_W1"]["Femal"] = counts["Q2_W1"].pop("Female")

    write_opinionqa(tmp_path, counts_with(rename))
    outcome = warned(
        lambda: load_opinionqa(opinion_card(), tmp_path),
        ["SEX_data.json", "'Femal'", "'Female'"],
        lambda: load_opinionqa(opinion_card(strict=True), tmp_path),
        ("(group, question) pairs absent from the count file", {"question": "Q2_W1", "group": "Female"}),
    )
    check(*outcome)


def test_a_count_file_option_not_in_info_csv_is_named_with_the_closest(tmp_path):
    write_opinionqa(tmp_path, counts_with(lambda c: c["Q1_W1"]["Female"].update(Yess=4.0)))
    reason = "(group, question) pairs whose counts name an option that is not in info.csv"
    outcome = warned(
        lambda: load_opinionqa(opinion_card(), tmp_path),
        ["SEX_data.json", "Q1_W1", "'Yess'", "'Yes'"],
        lambda: load_opinionqa(opinion_card(strict=True), tmp_path),
        (reason, {"question": "Q1_W1", "group": "Female", "value": "Yess"}),
    )
    check(*outcome)


def test_a_responses_answer_that_is_no_option_is_named_with_its_row(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "opinionqa_responses", tmp_path, dirs_exist_ok=True)
    path = next(tmp_path.glob("opinionqa/human_resp/*/responses.csv"))
    header, first, *rest = path.read_text().splitlines()
    columns = header.split(",")
    question = next(c for c in columns if c.endswith("_W99") and c != "WEIGHT_W99")
    cells = first.split(",")
    cells[columns.index(question)] = "Sometimez"
    path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    card = opinion_card(groups=["CREGION_South"], source={"format": "responses", "questions": "all"})
    outcome = warned(
        lambda: load_opinionqa(card, tmp_path),
        ["responses.csv", question, "row 2", "'Sometimez'"],
        lambda: load_opinionqa(dataclasses.replace(card, strict=True), tmp_path),
        ("respondent answers that are none of the question's options", {"question": question, "value": "Sometimez"}),
    )
    check(*outcome)


def test_a_misspelled_group_value_of_a_respondent_is_named_with_its_row(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "opinionqa_responses", tmp_path, dirs_exist_ok=True)
    path = next(tmp_path.glob("opinionqa/human_resp/*/responses.csv"))
    lines = path.read_text().splitlines()
    assert lines[4].startswith("4,South,")  # row 5 of the file
    lines[4] = lines[4].replace(",South,", ",Suoth,", 1)
    path.write_text("\n".join(lines) + "\n")
    card = opinion_card(groups=["CREGION_South"], source={"format": "responses", "questions": "all"})
    outcome = warned(
        lambda: load_opinionqa(card, tmp_path), ["responses.csv", "CREGION", "'Suoth'", "row 5", "'South'"]
    )
    check(*outcome)


def test_a_card_group_the_source_lacks_is_warned_with_the_closest(tmp_path):
    write_opinionqa(tmp_path)
    card = opinion_card(groups=["SEX_Female", "SEX_Male", "CREGION_South"])
    check(*warned(lambda: load_opinionqa(card, tmp_path), ["CREGION_South", "not in the source"]))


# ---- family: files with a header and no rows -------------------------------------------------------------


def test_a_wave_whose_info_csv_has_no_rows_is_named(tmp_path):
    write_opinionqa(tmp_path)
    empty = tmp_path / "opinionqa/human_resp/American_Trends_Panel_W2"
    empty.mkdir()
    (empty / "info.csv").write_text(INFO.splitlines()[0] + "\n")
    (empty / "SEX_data.json").write_text("{}")
    outcome = warned(
        lambda: load_opinionqa(opinion_card(), tmp_path),
        ["American_Trends_Panel_W2/info.csv", "no data rows"],
        lambda: load_opinionqa(opinion_card(strict=True), tmp_path),
    )
    check(*outcome)


def test_an_empty_pairwise_train_file_is_named_when_the_split_fails(tmp_path, capsys, caplog):
    pf.write_reddit_tldr(tmp_path / "data")
    (tmp_path / "data/reddit_tldr/comparisons/train.jsonl").write_text("")
    argv = ["run", "--task", "reddit_tldr", "--method", "uniform", "--seeds", "0", "--shots", "0"]
    code, text = call(capsys, caplog, [*argv, "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path)])
    check(judge(code, text, ["train.jsonl", "no data rows", "seen users"]), text)


# ---- family: rows that repeat an earlier one with other content, and Windows line ends ------------------


def goqa_csv(rows: list[tuple[str, str]], line_end: str = "\n") -> str:
    """A GlobalOpinionQA CSV: (question, Japan's shares) per row, 6 countries each."""
    countries = ["Japan", "Spain", "China", "Brazil", "Canada", "Egypt"]
    lines = ["question,selections,options,source"]
    for question, japan in rows:
        shares = ", ".join(f"'{c}': {japan if c == 'Japan' else '[0.5, 0.5]'}" for c in countries)
        quoted = '"' + question.replace("\n", line_end) + '"'
        lines.append(f"{quoted},\"defaultdict(<class 'list'>, {{{shares}}})\",\"['Yes', 'No']\",GAS")
    return line_end.join(lines) + line_end


def goqa_card():
    return dataclasses.replace(cards.load_task_card("globalopinionqa"), groups=None)


def test_a_duplicate_row_that_contradicts_its_first_copy_is_counted_apart(tmp_path):
    folder = tmp_path / "globalopinionqa"
    folder.mkdir()
    rows = [(f"Q{n}?", "[0.3, 0.7]") for n in range(4)]
    (folder / "g.csv").write_text(goqa_csv([*rows, ("Q1?", "[0.3, 0.7]"), ("Q2?", "[0.9, 0.1]")]))
    task = load_globalopinionqa(goqa_card(), tmp_path)
    # the exact copy: its 6 countries; the contradicting row: the 5 countries whose shares it repeats
    assert task.drops["duplicate (country, question) rows"] == 11
    outcome = warned(
        lambda: task,
        ["g.csv row 7", "'Japan'", "another distribution"],
        lambda: load_globalopinionqa(dataclasses.replace(goqa_card(), strict=True), tmp_path),
        (CONFLICTING_DUPLICATE, {"group": "Japan", "question": item_id("Q2?", ["Yes", "No"])}),
    )
    check(*outcome)
    assert np.allclose(task.groups["Japan"].targets[item_id("Q2?", ["Yes", "No"])], [0.3, 0.7])  # the first copy


def test_crlf_inside_quoted_questions_keeps_the_items_and_warns(tmp_path):
    rows = [("What do you\nthink of X?", "[0.3, 0.7]"), ("Q2?", "[0.4, 0.6]"), ("Q3?", "[0.2, 0.8]")]
    for name, line_end in (("lf", "\n"), ("crlf", "\r\n")):
        (tmp_path / name / "globalopinionqa").mkdir(parents=True)
        (tmp_path / name / "globalopinionqa" / "g.csv").write_bytes(goqa_csv(rows, line_end).encode())
    unix = load_globalopinionqa(goqa_card(), tmp_path / "lf")
    assert not unix.warnings
    windows = warned(lambda: load_globalopinionqa(goqa_card(), tmp_path / "crlf"), ["g.csv", "carriage returns"])
    check(*windows)
    again = load_globalopinionqa(goqa_card(), tmp_path / "crlf")
    assert again.fingerprint() == unix.fingerprint()  # the same items, ids and targets as the LF file


# ---- family: a finished run whose input changed, or whose folder cannot be written -----------------------


def survey_card(root: Path, data: Path, name: str = "my_survey", **fields) -> None:
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    body = {
        "name": name,
        "description": "the example survey, copied",
        "version": 1,
        "loader": "survey",
        "source": {"file": str(data)},
        "protocol": "opinion",
        "metric": "alignment",
        "shots": [0, 2],
        "train_frac": 0.5,
        **fields,
    }
    (root / "tasks" / f"{name}.yaml").write_text(json.dumps(body))


def test_a_finished_run_is_not_reused_when_its_source_file_changed(tmp_path, capsys, caplog, monkeypatch):
    data = tmp_path / "survey.csv"
    header, *rows = EXAMPLE_SURVEY.read_text().splitlines()
    data.write_text("\n".join([header, *rows]) + "\n")
    survey_card(tmp_path, data)
    monkeypatch.setenv(INCLUDE_ENV, str(tmp_path))
    argv = ["run", "--task", "my_survey", "--method", "uniform", "--seeds", "0", "--output-dir", str(tmp_path / "out")]
    assert call(capsys, caplog, argv)[0] == 0
    first = json.loads(next(tmp_path.glob("out/runs/*/result.json")).read_text())
    assert first["data"]["sources"] == {str(data): hashlib.sha256(data.read_bytes()).hexdigest()}
    # the same rows, other padding: the loaded data (and its fingerprint) are the same, the file is not
    data.write_text("\n".join([header, *(r.replace(",", " ,", 1) for r in rows)]) + "\n")
    loaders.clear_loaded_tasks()  # a new command is a new process
    code, text = call(capsys, caplog, argv)
    second = json.loads(next(tmp_path.glob("out/runs/*/result.json")).read_text())
    assert second["data"]["fingerprint"] == first["data"]["fingerprint"]
    outcome = judge(code, text, ["survey.csv", "changed", "running it again"], expected=0)
    check("silent" if "reused" in text else outcome, text)


def test_a_finished_run_in_a_read_only_folder_is_reused_without_the_lock(tmp_path, capsys, caplog, monkeypatch):
    from gpo_bench import runner, sweep

    argv = ["run", "--task", "synthetic", "--method", "uniform", *QUICK, "--output-dir", str(tmp_path)]
    assert call(capsys, caplog, argv)[0] == 0
    folder = next(tmp_path.glob("runs/*"))
    (folder / ".lock").unlink()

    def refuse(path):  # a read-only folder (tests may run as root, for whom chmod does not refuse)
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(runner, "folder_lock", refuse)
    monkeypatch.setattr(runner, "write_atomic", refuse)
    monkeypatch.setattr(sweep, "write_atomic", refuse)
    code, text = call(capsys, caplog, argv)
    check(judge(code, text, ["reused the finished run"], expected=0), text)
    code, text = call(capsys, caplog, ["sweep", "--tasks", "synthetic", "--methods", "uniform", *argv[5:]])
    check(judge(code, text, ["1 already finished, 0 ran now"], expected=0), text)
    assert not (folder / ".lock").exists()


# ---- family: flags and card fields that make warnings errors ---------------------------------------------


SURVEY_GROUPS = sorted({line.split(",")[0] for line in EXAMPLE_SURVEY.read_text().splitlines()[1:]})


def test_strict_makes_a_runs_warnings_an_error_naming_the_flag(tmp_path, capsys, caplog, monkeypatch):
    survey_card(tmp_path, EXAMPLE_SURVEY, groups=[*SURVEY_GROUPS, "Urbn 30-49"])
    monkeypatch.setenv(INCLUDE_ENV, str(tmp_path))
    argv = ["run", "--task", "my_survey", "--method", "uniform", "--seeds", "0", "--output-dir", str(tmp_path / "o")]
    code, text = call(capsys, caplog, argv)
    check(judge(code, text, ["'Urbn 30-49'", "not in the source"], expected=0), text)
    recorded = json.loads(next(tmp_path.glob("o/runs/*/result.json")).read_text())["data"]["warnings"]
    assert any("Urbn 30-49" in w for w in recorded)
    for command in (argv, ["sweep", "--tasks", "my_survey", "--methods", "uniform", *argv[5:]]):
        code, text = call(capsys, caplog, [*command, "--strict", "--force"])
        culprits = ["--strict", "'Urbn 30-49'"]
        check(judge(code, text, culprits, expected=2 if command[0] == "run" else 1), text)


def test_strict_true_in_a_card_names_the_card(tmp_path, capsys, caplog, monkeypatch):
    survey_card(tmp_path, EXAMPLE_SURVEY, groups=[*SURVEY_GROUPS, "Urbn 30-49"], strict=True)
    monkeypatch.setenv(INCLUDE_ENV, str(tmp_path))
    argv = ["run", "--task", "my_survey", "--method", "uniform", "--output-dir", str(tmp_path / "o")]
    code, text = call(capsys, caplog, argv)
    check(judge(code, text, ["strict: true", "my_survey.yaml", "'Urbn 30-49'"]), text)


def test_a_strict_field_that_is_not_a_boolean_names_the_card(tmp_path, capsys, caplog, monkeypatch):
    survey_card(tmp_path, EXAMPLE_SURVEY, strict="yes please")
    monkeypatch.setenv(INCLUDE_ENV, str(tmp_path))
    code, text = call(capsys, caplog, ["run", "--task", "my_survey", "--method", "uniform"])
    check(judge(code, text, ["my_survey.yaml", "'strict'", "bool"]), text)


# ---- family: encoder settings of the wrong type ----------------------------------------------------------


@pytest.mark.parametrize(
    "encoder, culprits",
    [
        ("bow,max_length=abc", ["--encoder", "max_length", "whole number", "'abc'"]),
        ("bow,max_length=-3", ["--encoder", "max_length", "whole number", "'-3'"]),
        ("bow,max_length=", ["--encoder", "max_length", "whole number"]),
        ("bow,pooling=", ["--encoder", "pooling", "no value"]),
        ("bow,pooling=max", ["pooling", "'max'", "mean", "last"]),
        ("bow,maxlength=5", ["encoder setting", "'maxlength'", "max_length"]),
    ],
    ids=["text", "negative", "empty", "empty-pooling", "unknown-pooling", "misspelled"],
)
def test_an_encoder_setting_of_the_wrong_type_names_the_setting(encoder, culprits, tmp_path, capsys, caplog):
    argv = [
        "run",
        "--task",
        "synthetic",
        "--method",
        "knn",
        "--encoder",
        encoder,
        *QUICK,
        "--output-dir",
        str(tmp_path),
    ]
    code, text = call(capsys, caplog, argv)
    check(judge(code, text, culprits), text)


# ---- family: caches quarantined twice, holding vectors of another size, or in a folder that cannot be written


def test_a_cache_quarantined_twice_in_one_second_keeps_both_originals(tmp_path, monkeypatch):
    import datetime

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr("gpo_bench.cache.datetime.datetime", Frozen)
    originals = [b"not a database, first" * 100, b"not a database, second" * 100]
    for content in originals:
        (tmp_path / "embeddings.sqlite").write_bytes(content)
        EmbeddingCache(tmp_path).get("meta", ["a text"])
    moved = sorted(tmp_path.glob("embeddings.sqlite.corrupt-*"))
    assert sorted(p.read_bytes() for p in moved) == sorted(originals), [p.name for p in moved]


def test_a_cached_vector_of_another_size_is_recomputed(tmp_path, caplog):
    triples = [("a", "b", "c"), ("d", "e", "f"), ("g", "h", "i")]
    encoder = Encoder(EncoderSpec.parse("bow"), device="cpu", cache_dir=tmp_path)
    encoder.encode(triples)
    text = encoder.render(triples[:1])[0]
    short = np.ones(7, dtype=np.float32).tobytes()
    key = EmbeddingCache.key(encoder.meta, text)
    db = sqlite3.connect(tmp_path / "embeddings.sqlite")
    with db:  # a valid row (its checksum matches) of a vector of 7 values
        db.execute(
            f"UPDATE {EmbeddingCache.TABLE} SET dim = 7, vector = ?, checksum = ? WHERE key = ?",
            (short, EmbeddingCache.checksum(key, short), key),
        )
    again = Encoder(EncoderSpec.parse("bow"), device="cpu", cache_dir=tmp_path)
    vectors = again.encode(triples)
    assert np.allclose(vectors, bow_vectors(again.render(triples)))  # computed independently, without the cache
    assert "not of size 512" in caplog.text and "embeddings.sqlite" in caplog.text
    assert again.stats["misses"] == 1


def test_a_cold_cache_that_cannot_be_created_names_the_path_and_the_flag(tmp_path, capsys, caplog):
    (tmp_path / "cache" / "embeddings.sqlite").mkdir(parents=True)  # sqlite cannot open it, even for root
    argv = ["run", "--task", "synthetic", "--method", "knn", "--encoder", "bow", *QUICK]
    code, text = call(capsys, caplog, [*argv, "--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    check(judge(code, text, [str(tmp_path / "cache" / "embeddings.sqlite"), "--cache-dir", "GPO_BENCH_CACHE"]), text)


# ---- family: splits that leave a single test group ------------------------------------------------------


def test_a_train_fraction_that_leaves_one_test_group_is_warned_about(tmp_path, capsys, caplog):
    argv = ["run", "--task", "synthetic", "--method", "uniform", *QUICK, "--train-frac", "0.99"]
    code, text = call(capsys, caplog, [*argv, "--output-dir", str(tmp_path)])
    check(judge(code, text, ["--train-frac", "1 test group", "width zero"], expected=0), text)
    result = json.loads(next(tmp_path.glob("runs/*/result.json")).read_text())
    assert len(result["split"]["test"]) == 1
    assert any("1 test group" in w for w in result["data"]["warnings"])
