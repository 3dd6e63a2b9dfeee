"""A hostile user's corpus: bad flags and settings, corrupted data files, corrupted caches, run folders
and checkpoints, unwritable outputs and interruptions. Every case is judged into one outcome class:

- `clear`: the expected exit code, no traceback, and a message naming the flag, file or field at fault
  (or, for stale and broken runs, the run was done again and said why; for data values that cannot be
  mapped, the value was dropped and counted under an accurate reason);
- `traceback`: a Python traceback (or an exception escaping `main`);
- `silent`: exit 0 (or a loaded task) with a wrong, stale or unchecked result;
- `vague`: it failed, but the message does not name what is wrong or where.

Each test asserts `clear`; the class is in the assertion message (`OUTCOME=…`), so that running this file
on an older checkout counts the outcome classes per family. Most cases call `main([...])` in-process or a
loader directly on a small fixture written in the sources' own layout."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import sqlite3
import threading
import time
import traceback
from pathlib import Path

import pytest

from gpo_bench import cards, discovery, loaders, runner
from gpo_bench.cli import main
from gpo_bench.errors import DataError, UnknownNameError
from gpo_bench.loaders.globalopinionqa import load_globalopinionqa
from gpo_bench.loaders.opinionqa import load_opinionqa
from gpo_bench.registry import LOADERS
from tests import personalized_fixtures as pf

REPO = Path(__file__).resolve().parent.parent
QUICK = ["--seeds", "0", "--shots", "0,5", "--limit-items", "30"]
UNIFORM = ["run", "--task", "synthetic", "--method", "uniform", *QUICK]
KNN = ["run", "--task", "synthetic", "--method", "knn", "--encoder", "bow", *QUICK]
SWEEP = ["sweep", "--tasks", "synthetic", "--methods", "uniform", *QUICK]


def call(capsys, caplog, argv: list[str]) -> tuple[object, str]:
    """main(argv) → (exit code, or 'raised' when an exception escaped; everything printed and logged)."""
    tb = ""
    try:
        code = main(argv)
    except SystemExit as error:  # argparse
        code = error.code
    except BaseException:  # noqa: BLE001  (an escaped exception is an outcome to classify)
        code, tb = "raised", traceback.format_exc()
    captured = capsys.readouterr()
    return code, captured.out + captured.err + caplog.text + tb


def judge(code: object, text: str, culprits: list[str], expected: int = 2) -> str:
    if code == "raised" or "Traceback (most recent call last)" in text:
        return "traceback"
    if code == 0 and expected != 0:
        return "silent"
    if code != expected or not all(c in text for c in culprits):
        return "vague"
    return "clear"


def check(outcome: str, text: str) -> None:
    assert outcome == "clear", f"OUTCOME={outcome}: {text[-1500:]}"


# ---- family: ranges and types of flags, settings and sweep-file fields --------------------------------

RUN = ["run", "--task", "synthetic", "--encoder", "bow", *QUICK]
RANGE_CASES = [
    ("limit-items-negative", ["--method", "uniform", "--limit-items", "-1"], ["--limit-items"]),
    ("limit-items-zero", ["--method", "uniform", "--limit-items", "0"], ["--limit-items"]),
    ("limit-items-one", ["--method", "uniform", "--limit-items", "1"], ["--limit-items"]),
    ("limit-items-text", ["--method", "uniform", "--limit-items", "ten"], ["--limit-items"]),
    ("shots-negative", ["--method", "uniform", "--shots", "0,-5"], ["--shots"]),
    ("seeds-negative", ["--method", "uniform", "--seeds", "-1"], ["--seeds"]),
    ("split-seed-negative", ["--method", "uniform", "--split-seed", "-1"], ["--split-seed"]),
    ("split-seed-too-large", ["--method", "uniform", "--split-seed", str(2**32)], ["--split-seed"]),
    ("train-frac-zero", ["--method", "uniform", "--train-frac", "0"], ["--train-frac"]),
    ("train-frac-above-one", ["--method", "uniform", "--train-frac", "1.5"], ["--train-frac"]),
    ("train-frac-nan", ["--method", "uniform", "--train-frac", "nan"], ["--train-frac"]),
    ("max-steps-negative", ["--method", "gpo", "--set", "max_steps=-5"], ["max_steps", "gpo.yaml"]),
    ("max-steps-zero", ["--method", "gpo", "--set", "max_steps=0"], ["max_steps"]),
    ("max-steps-float", ["--method", "gpo", "--set", "max_steps=1.5"], ["max_steps"]),
    ("eval-every-zero", ["--method", "gpo", "--set", "max_steps=3", "--set", "eval_every=0"], ["eval_every"]),
    ("lr-zero", ["--method", "gpo", "--set", "lr=0"], ["lr"]),
    ("patience-zero", ["--method", "gpo", "--set", "patience=0"], ["patience"]),
    ("context-items-reversed", ["--method", "gpo", "--set", "context_items=[20,10]"], ["context_items"]),
    ("bf16-not-bool", ["--method", "gpo", "--set", "bf16=maybe"], ["bf16"]),
    ("neighbors-negative", ["--method", "group-knn", "--set", "neighbors=-2"], ["neighbors"]),
    ("temperature-zero", ["--method", "group-knn", "--set", "temperature=0"], ["temperature"]),
    ("l2-negative", ["--method", "head", "--set", "l2=-1"], ["l2"]),
    ("l2-string", ["--method", "head", "--set", "l2=small"], ["l2"]),
    ("knn-temperature-negative", ["--method", "knn", "--set", "temperature=-0.1"], ["temperature"]),
    ("lora-dropout-one", ["--method", "sft", "--set", "lora_dropout=1.0"], ["lora_dropout"]),
    ("steps-negative", ["--method", "sft", "--set", "steps=-1"], ["steps"]),
    ("style-unknown", ["--method", "lm-steered", "--set", "style=shouty"], ["style"]),
    ("dtype-unknown", ["--method", "lm-base", "--set", "dtype=fp8"], ["dtype"]),
    ("lore-rank-zero", ["--method", "lore", "--set", "rank=0"], ["rank"]),
]


@pytest.mark.parametrize("extra, culprits", [c[1:] for c in RANGE_CASES], ids=[c[0] for c in RANGE_CASES])
def test_ranges_of_run_flags_and_settings(extra, culprits, tmp_path, capsys, caplog):
    code, text = call(capsys, caplog, [*RUN, "--output-dir", str(tmp_path), *extra])
    check(judge(code, text, culprits), text)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/result.json"))


SWEEP_BASE = {"tasks": ["synthetic"], "methods": ["uniform"], "shots": [0], "seeds": [0], "limit_items": 30}
# (id, flags, sweep-file fields over SWEEP_BASE (or raw text; None: no file), culprits)
SWEEP_CASES = [
    ("jobs-zero", ["--jobs", "0"], None, ["--jobs"]),
    ("cpus-per-run-zero", ["--cpus-per-run", "0"], None, ["--cpus-per-run"]),
    ("gpus-per-run-negative", ["--gpus-per-run", "-1"], None, ["--gpus-per-run"]),
    ("file-shots-negative", [], {"shots": [0, -1]}, ["sweep.yaml", "shots"]),
    ("file-seeds-negative", [], {"seeds": [-3]}, ["sweep.yaml", "seeds"]),
    ("file-train-frac-above-one", [], {"train_fracs": [1.2]}, ["sweep.yaml", "train_fracs"]),
    ("file-split-seed-negative", [], {"split_seed": -1}, ["sweep.yaml", "split_seed"]),
    ("file-limit-items-zero", [], {"limit_items": 0}, ["sweep.yaml", "limit_items"]),
    ("file-set-max-steps-negative", [], {"methods": ["gpo"], "set": {"max_steps": -5}}, ["max_steps"]),
    ("file-not-yaml", [], "tasks: [synthetic\n", ["sweep.yaml"]),
    ("file-not-utf8", [], "tasks: [synth\udcffetic]\n", ["sweep.yaml"]),
]


@pytest.mark.parametrize("extra, body, culprits", [c[1:] for c in SWEEP_CASES], ids=[c[0] for c in SWEEP_CASES])
def test_ranges_of_sweep_flags_and_file_fields(extra, body, culprits, tmp_path, capsys, caplog):
    args = ["sweep", "--output-dir", str(tmp_path / "out"), "--encoders", "bow"]
    if body is None:
        args += ["--tasks", "synthetic", "--methods", "uniform,population", *QUICK]
    else:
        path = tmp_path / "sweep.yaml"
        text = body if isinstance(body, str) else json.dumps({**SWEEP_BASE, **body})  # JSON is YAML
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        args += ["--file", str(path)]
    code, text = call(capsys, caplog, [*args, *extra])
    check(judge(code, text, culprits), text)
    assert not list((tmp_path / "out").glob("runs/*/result.json"))


def test_a_card_value_of_the_wrong_type_names_the_card(tmp_path, monkeypatch, capsys, caplog):
    for kind in ("tasks", "baselines"):
        shutil.copytree(REPO / kind, tmp_path / kind)
    head = tmp_path / "baselines" / "head.yaml"
    head.write_text(head.read_text().replace("l2: 0.01", 'l2: "0.01"'))
    monkeypatch.setattr(discovery, "cards_dir", lambda kind: tmp_path / kind)
    code, text = call(capsys, caplog, [*RUN, "--method", "head", "--output-dir", str(tmp_path / "out")])
    check(judge(code, text, ["head.yaml", "l2"]), text)


@pytest.mark.parametrize("limit", ["40", "200"])
def test_limit_items_makes_a_quick_globalopinionqa_run(limit, data_dir, tmp_path, capsys, caplog):
    """A sparse source: a country with under 2 of the first N items is dropped and counted, not fatal."""
    args = ["run", "--task", "globalopinionqa", "--method", "population", "--data-dir", str(data_dir)]
    args += ["--limit-items", limit, "--seeds", "0", "--shots", "0,5", "--output-dir", str(tmp_path)]
    code, text = call(capsys, caplog, args)
    outcome = judge(code, text, ["fewer than 2 items"], expected=0)
    check("wrongly-refused" if code == 2 else outcome, text)
    drops = json.loads(next(tmp_path.glob("runs/*/result.json")).read_text())["data"]["drops"]
    assert drops[f"groups with fewer than 2 items among the first {limit}"] >= 1


# ---- family: loaders that would change targets silently -----------------------------------------------

INFO = (
    ",key,question,references,option_ordinal\n"
    "0,Q1_W1,Is it safe?,\"['Yes', 'No', 'Refused']\",\"[1.0, 2.0]\"\n"
    "1,Q2_W1,Is it fair?,\"['Very', 'Somewhat', 'Not at all', 'Refused']\",\"[1.0, 2.0, 3.0]\"\n"
    "2,Q3_W1,Is it new?,\"['Yes', 'No', 'Refused']\",\"[1.0, 2.0]\"\n"
)


def opinion_counts() -> dict:
    counts = {}
    for key, options in (
        ("Q1_W1", ["Yes", "No"]),
        ("Q2_W1", ["Very", "Somewhat", "Not at all"]),
        ("Q3_W1", ["Yes", "No"]),
    ):
        counts[key] = {"MC_options": [*options, "Refused"], "question_text": key}
        for n, value in enumerate(("Female", "Male")):
            counts[key][value] = {option: 10.0 + k + n for k, option in enumerate(options)} | {"Refused": 1.0}
    return counts


def write_opinionqa(root: Path, counts: dict | None = None, info: str = INFO) -> Path:
    wave = root / "opinionqa/human_resp/American_Trends_Panel_W1"
    wave.mkdir(parents=True, exist_ok=True)
    (wave / "info.csv").write_text(info)
    (wave / "SEX_data.json").write_text(json.dumps(opinion_counts() if counts is None else counts))
    return wave


def counts_with(change) -> dict:
    counts = opinion_counts()
    change(counts)
    return counts


OPINION_CARD = {"groups": ["SEX_Female", "SEX_Male"], "source": {"format": "counts", "questions": "all"}}


def text_file(name: str, content: str | bytes):
    def write(wave: Path) -> None:
        path = wave / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return write


def set_counts(change):
    return lambda wave: (wave / "SEX_data.json").write_text(json.dumps(counts_with(change)))


def raw_counts(text: str):
    return lambda wave: (wave / "SEX_data.json").write_text(text)


def _female(counts, option, value):
    counts["Q1_W1"]["Female"][option] = value


# (id, change to the fixture wave, card changes, ("error", culprits) or ("drop", reason substring))
OPINION_CASES = [
    ("unknown-option-text", set_counts(lambda c: _female(c, "Yess", 4.0)), {}, ("drop", "not in info.csv")),
    (
        "nan-count",
        raw_counts(json.dumps(opinion_counts()).replace('"Yes": 10.0', '"Yes": NaN', 1)),
        {},
        ("error", ["SEX_data.json", "Q1_W1", "nan"]),
    ),
    ("negative-count", set_counts(lambda c: _female(c, "No", -3.0)), {}, ("error", ["SEX_data.json", "Q1_W1", "-3"])),
    ("string-count", set_counts(lambda c: _female(c, "No", "12")), {}, ("error", ["SEX_data.json", "Q1_W1", "'12'"])),
    ("boolean-count", set_counts(lambda c: _female(c, "No", True)), {}, ("error", ["SEX_data.json", "Q1_W1", "True"])),
    ("null-count", set_counts(lambda c: _female(c, "No", None)), {}, ("error", ["SEX_data.json", "Q1_W1", "None"])),
    (
        "group-entry-a-list",
        set_counts(lambda c: c["Q1_W1"].update(Female=[10, 11])),
        {},
        ("error", ["SEX_data.json", "Q1_W1", "Female"]),
    ),
    ("question-entry-a-string", set_counts(lambda c: c.update(Q1_W1="n/a")), {}, ("error", ["SEX_data.json", "Q1_W1"])),
    ("top-level-a-list", raw_counts("[1, 2, 3]"), {}, ("error", ["SEX_data.json"])),
    (
        "duplicate-question-key",
        raw_counts(json.dumps(opinion_counts())[:-1] + ', "Q1_W1": {"Female": {"Yes": 1}}}'),
        {},
        ("error", ["SEX_data.json", "Q1_W1", "twice"]),
    ),
    (
        "duplicate-group-key",
        raw_counts(json.dumps(opinion_counts()).replace('"Female": {', '"Female": {"Yes": 1}, "Female": {', 1)),
        {},
        ("error", ["SEX_data.json", "Female", "twice"]),
    ),
    (
        "info-duplicate-key-other-text",
        text_file("info.csv", INFO + "3,Q1_W1,Is it dangerous?,\"['Yes', 'No']\",\"[1.0, 2.0]\"\n"),
        {},
        ("drop", "several different info.csv rows"),
    ),
    (
        "misspelled-group-value",
        lambda wave: None,
        {"groups": ["SEX_Femal", "SEX_Male"]},
        ("error", ["Femal", "Female", "SEX"]),
    ),
    (
        "group-missing-for-one-question",
        set_counts(lambda c: c["Q2_W1"].pop("Female")),
        {},
        ("drop", "absent from the count file"),
    ),
    ("info-not-utf8", text_file("info.csv", INFO.encode().replace(b"safe", b"s\xe9\xff")), {}, ("error", ["info.csv"])),
    ("info-empty-file", text_file("info.csv", ""), {}, ("error", ["info.csv"])),
    ("counts-not-utf8", text_file("SEX_data.json", b'{"Q1_W1": {"\xff": 1}}'), {}, ("error", ["SEX_data.json"])),
    ("counts-truncated", raw_counts(json.dumps(opinion_counts())[:50]), {}, ("error", ["SEX_data.json"])),
    (
        "references-not-a-list",
        text_file("info.csv", INFO.replace("\"['Yes', 'No', 'Refused']\"", "5", 1)),
        {},
        ("error", ["info.csv", "references"]),
    ),
    (
        "ordinal-garbage",
        text_file("info.csv", INFO.replace('"[1.0, 2.0]"', "\"['a', 'b']\"", 1)),
        {},
        ("error", ["info.csv", "option_ordinal"]),
    ),
]


def outcome_of_loading(load, expect) -> tuple[str, str]:
    try:
        task = load()
    except (DataError, UnknownNameError) as error:
        text = str(error)
        if expect[0] == "error":
            return ("clear" if all(c in text for c in expect[1]) else "vague"), text
        return "vague", text  # a drop was expected; an error that refuses the whole task is not it
    except Exception:  # noqa: BLE001
        return "traceback", traceback.format_exc()
    drops = json.dumps(task.drops)
    if expect[0] == "drop" and expect[1] in drops:
        return "clear", drops
    return "silent", drops


@pytest.mark.parametrize(
    "change, card_changes, expect", [c[1:] for c in OPINION_CASES], ids=[c[0] for c in OPINION_CASES]
)
def test_opinionqa_count_files(change, card_changes, expect, tmp_path):
    wave = write_opinionqa(tmp_path)
    change(wave)
    card = dataclasses.replace(cards.load_task_card("opinionqa"), **{**OPINION_CARD, **card_changes})
    check(*outcome_of_loading(lambda: load_opinionqa(card, tmp_path), expect))


FIXTURES = Path(__file__).parent / "fixtures"


def responses_case(old: str, new: str):
    def change(root: Path) -> None:
        shutil.copytree(FIXTURES / "opinionqa_responses", root, dirs_exist_ok=True)
        path = root / "opinionqa/human_resp/American_Trends_Panel_W99/responses.csv"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))

    return change


def rows_case(row):
    def change(root: Path) -> None:
        write_opinionqa(root)
        good = {
            "question": "Question: Is it safe?\nOptions: A. Yes B. No\nAnswer:",
            "options": ["Yes", "No"],
            "attribute": "SEX_Female",
            "gold_distribution": [0.6, 0.4],
            "id": 1,
        }
        path = root / "opinionqa-22groups/steerable_opinionqa_22groups.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps([good, row(dict(good))]))

    return change


def _set(row, **changes):
    row.update(changes)
    return row


OTHER_OPINION_CASES = [
    (
        "responses-unknown-answer",
        responses_case(",Very safe,", ",Fairly safe,"),
        "opinionqa",
        {"groups": ["CREGION_Northeast", "CREGION_South"], "source": {"format": "responses", "questions": "all"}},
        ("drop", "none of the question's options"),
    ),
    (
        "responses-negative-weight",
        responses_case(",1.5\n", ",-1.5\n"),
        "opinionqa",
        {"groups": ["CREGION_South"], "source": {"format": "responses", "questions": "all"}},
        ("error", ["responses.csv", "WEIGHT_W99"]),
    ),
    (
        "rows-row-a-string",
        rows_case(lambda row: "Question: Is it safe?"),
        "opinionqa_22groups",
        {"groups": ["SEX_Female"], "source": {"format": "rows", "questions": "all"}},
        ("error", ["row 1"]),
    ),
    (
        "rows-gold-a-string",
        rows_case(lambda row: _set(row, gold_distribution=["0.5", "0.5"])),
        "opinionqa_22groups",
        {"groups": ["SEX_Female"], "source": {"format": "rows", "questions": "all"}},
        ("error", ["row 1", "gold_distribution"]),
    ),
    (
        "rows-options-a-string",
        rows_case(lambda row: _set(row, options="Yes, No")),
        "opinionqa_22groups",
        {"groups": ["SEX_Female"], "source": {"format": "rows", "questions": "all"}},
        ("error", ["row 1", "options"]),
    ),
    (
        "rows-missing-field",
        rows_case(lambda row: {k: v for k, v in row.items() if k != "attribute"}),
        "opinionqa_22groups",
        {"groups": ["SEX_Female"], "source": {"format": "rows", "questions": "all"}},
        ("error", ["row 1", "attribute"]),
    ),
]


@pytest.mark.parametrize(
    "change, task, card_changes, expect", [c[1:] for c in OTHER_OPINION_CASES], ids=[c[0] for c in OTHER_OPINION_CASES]
)
def test_opinionqa_responses_and_rows(change, task, card_changes, expect, tmp_path):
    change(tmp_path)
    card = dataclasses.replace(cards.load_task_card(task), **card_changes)
    check(*outcome_of_loading(lambda: load_opinionqa(card, tmp_path), expect))


GOQA_ROW = "Q{n}?,\"defaultdict(<class 'list'>, {{'Japan': {japan}, 'Spain': [0.3, 0.7]}})\",\"{options}\",\n"


def goqa(japan: str = "[0.5, 0.5]", options: str = "['Yes', 'No']") -> str:
    header = "question,selections,options,source\n"
    return (
        header
        + GOQA_ROW.format(n=1, japan=japan, options=options)
        + GOQA_ROW.format(n=2, japan="[0.2, 0.8]", options="['Yes', 'No']")
    )


GOQA_CASES = [
    ("share-a-string", goqa(japan="['0.5', '0.5']"), ("error", ["g.csv row 2", "Japan", "'0.5'"])),
    ("share-negative", goqa(japan="[1.5, -0.5]"), ("error", ["g.csv row 2", "Japan", "-0.5"])),
    ("share-nan", goqa(japan="[nan, 0.5]"), ("error", ["g.csv row 2", "selections", "nan"])),
    ("options-not-a-list", goqa(options="5"), ("error", ["g.csv row 2", "options"])),
    ("empty-file", "", ("error", ["g.csv"])),
    ("not-utf8", goqa().encode("utf-16"), ("error", ["g.csv"])),
]


@pytest.mark.parametrize("content, expect", [c[1:] for c in GOQA_CASES], ids=[c[0] for c in GOQA_CASES])
def test_globalopinionqa_csv(content, expect, tmp_path):
    folder = tmp_path / "globalopinionqa"
    folder.mkdir()
    (folder / "g.csv").write_bytes(content if isinstance(content, bytes) else content.encode())
    card = dataclasses.replace(cards.load_task_card("globalopinionqa"), groups=["Japan", "Spain"])
    check(*outcome_of_loading(lambda: load_globalopinionqa(card, tmp_path), expect))


def edit_jsonl(relative: str, edit):
    def change(root: Path) -> None:
        path = root / relative
        lines = path.read_text().splitlines()
        lines[0] = edit(lines[0])
        path.write_text("\n".join(lines) + "\n")

    return change


def drop_key(path: list, key: str):
    def edit(line: str) -> str:
        row = json.loads(line)
        target = row
        for step in path:
            target = target[step]
        del target[key]
        return json.dumps(row)

    return edit


PREFERENCE_CASES = [
    (
        "tldr-summary-without-text",
        "reddit_tldr",
        pf.write_reddit_tldr,
        edit_jsonl("reddit_tldr/comparisons/train.jsonl", drop_key(["summaries", 0], "text")),
        ["train.jsonl line 1", "'text'"],
    ),
    (
        "tldr-line-a-list",
        "reddit_tldr",
        pf.write_reddit_tldr,
        edit_jsonl("reddit_tldr/comparisons/train.jsonl", lambda line: "[1, 2]"),
        ["train.jsonl line 1"],
    ),
    (
        "tldr-not-utf8",
        "reddit_tldr",
        pf.write_reddit_tldr,
        lambda root: (root / "reddit_tldr/comparisons/train.jsonl").write_bytes(b'{"info": "\xff"}\n'),
        ["train.jsonl"],
    ),
    (
        "prism-message-without-turn",
        "prism",
        pf.write_prism,
        edit_jsonl("prism/conversations.jsonl", drop_key(["conversation_history", 0], "turn")),
        ["conversations.jsonl line 1", "'turn'"],
    ),
    (
        "arena-turn-a-string",
        "chatbot_arena",
        pf.write_chatbot_arena,
        edit_jsonl(
            "chatbot_arena/train.jsonl", lambda line: json.dumps({**json.loads(line), "conversation_a": ["hi"]})
        ),
        ["train.jsonl line 1"],
    ),
    (
        "prb-chosen-without-content",
        "prism_personalized",
        pf.write_personal_reward_bench,
        edit_jsonl("prism_personalized/train.jsonl", drop_key(["chosen"], "content")),
        ["train.jsonl line 1", "'content'"],
    ),
]


@pytest.mark.parametrize(
    "task, write, change, culprits", [c[1:] for c in PREFERENCE_CASES], ids=[c[0] for c in PREFERENCE_CASES]
)
def test_personalized_sources(task, write, change, culprits, tmp_path):
    write(tmp_path)
    change(tmp_path)
    card = cards.load_task_card(task)
    check(*outcome_of_loading(lambda: LOADERS.get(card.loader)(card, tmp_path), ("error", culprits)))


# ---- family: what used to end in a traceback: caches, cards, output folders, interruptions ------------


def a_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    from gpo_bench.encoders import Encoder, EncoderSpec

    Encoder(EncoderSpec.parse("bow"), device="cpu", cache_dir=cache).encode([("a", "b", "c"), ("d", "e", "f")])
    return cache / "embeddings.sqlite"


def garbage_cache(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 100)


def truncated_cache(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 7])


@pytest.mark.parametrize("damage", [garbage_cache, truncated_cache], ids=["garbage", "truncated"])
def test_a_corrupt_cache_is_moved_aside_and_rebuilt(damage, tmp_path, capsys, caplog):
    damage(a_cache(tmp_path))
    args = [*KNN, "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    code, text = call(capsys, caplog, args)
    check(judge(code, text, ["embeddings.sqlite", "moved it to"], expected=0), text)
    assert list((tmp_path / "cache").glob("embeddings.sqlite.corrupt-*"))


def test_a_locked_cache_is_waited_for_with_a_message(tmp_path, capsys, caplog, monkeypatch):
    from gpo_bench import cache

    path = a_cache(tmp_path)
    real = sqlite3.connect
    monkeypatch.setattr(cache.sqlite3, "connect", lambda p, timeout=5: real(p, timeout=0.2))
    holder = real(path, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(1.5, holder.rollback).start()
    args = [*KNN, "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    code, text = call(capsys, caplog, args)
    check(judge(code, text, ["embeddings.sqlite", "locked"], expected=0), text)


def broken_card(content: bytes):
    def setup(tmp_path: Path, monkeypatch) -> None:
        for kind in ("tasks", "baselines"):
            shutil.copytree(REPO / kind, tmp_path / kind)
        (tmp_path / "baselines" / "uniform.yaml").write_bytes(content)
        monkeypatch.setattr(discovery, "cards_dir", lambda kind: tmp_path / kind)

    return setup


def output_blocked_by_a_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "out").write_text("I am a file")


def runs_blocked_by_a_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "runs").write_text("I am a file")


def disk_full(tmp_path: Path, monkeypatch) -> None:
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


def cache_dir_a_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "cache").write_text("I am a file")


def interrupt(where: str):
    def setup(tmp_path: Path, monkeypatch) -> None:
        def stop(*args, **kwargs):
            raise KeyboardInterrupt

        import gpo_bench.runner
        import gpo_bench.sweep_backends

        monkeypatch.setattr(gpo_bench.runner if where == "run" else gpo_bench.sweep_backends, "execute", stop)

    return setup


def internal_bug(tmp_path: Path, monkeypatch) -> None:
    import gpo_bench.runner

    def bug(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(gpo_bench.runner, "execute", bug)


# (id, setup, argv, expected exit code, culprits)
ENVIRONMENT_CASES = [
    ("card-malformed-yaml-list", broken_card(b"name: uniform\nsettings: [\n"), ["list"], 2, ["uniform.yaml"]),
    ("card-malformed-yaml-run", broken_card(b"name: uniform\n  bad: - indent\n"), UNIFORM, 2, ["uniform.yaml"]),
    ("card-not-utf8", broken_card(b"name: unif\xff\xfeorm\n"), UNIFORM, 2, ["uniform.yaml"]),
    ("card-a-list", broken_card(b"- name\n- uniform\n"), ["list"], 2, ["uniform.yaml"]),
    ("output-dir-a-file", output_blocked_by_a_file, UNIFORM, 2, ["out"]),
    ("runs-a-file", runs_blocked_by_a_file, UNIFORM, 2, ["runs"]),
    ("sweep-output-a-file", output_blocked_by_a_file, SWEEP, 2, ["out"]),
    ("disk-full-run", disk_full, UNIFORM, 2, ["No space left", "out/runs/synthetic--uniform--"]),
    ("disk-full-sweep", disk_full, SWEEP, 2, ["No space left", "out/runs"]),
    ("cache-dir-a-file", cache_dir_a_file, KNN, 2, ["cache"]),
    ("ctrl-c-run", interrupt("run"), UNIFORM, 130, ["interrupted; rerun the same command to resume"]),
    ("ctrl-c-sweep", interrupt("sweep"), SWEEP, 130, ["interrupted; rerun the same command to resume"]),
    ("internal-bug", internal_bug, UNIFORM, 1, ["internal error", "TypeError", "--debug"]),
]


@pytest.mark.parametrize(
    "setup, argv, expected, culprits", [c[1:] for c in ENVIRONMENT_CASES], ids=[c[0] for c in ENVIRONMENT_CASES]
)
def test_environment_errors_are_one_line(setup, argv, expected, culprits, tmp_path, monkeypatch, capsys, caplog):
    setup(tmp_path, monkeypatch)
    extra = [] if argv == ["list"] else ["--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    code, text = call(capsys, caplog, [*argv, *extra])
    check(judge(code, text, culprits, expected), text)


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys, caplog):
    internal_bug(tmp_path, monkeypatch)
    code, text = call(capsys, caplog, ["--debug", *UNIFORM, "--output-dir", str(tmp_path)])
    assert code == 1 and "Traceback (most recent call last)" in text and "unsupported operand" in text


# ---- family: stale or broken runs, checkpoints and cache rows trusted -----------------------------------


def run_folder(output: Path) -> Path:
    folders = [p for p in (output / "runs").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def damage_file(name: str, damage):
    def apply(folder: Path) -> None:
        path = folder / name
        path.write_bytes(damage(path.read_bytes()))

    return apply


def from_other_run(folder: Path) -> None:
    result = json.loads((folder / "result.json").read_text())
    result["run_id"] = "synthetic--uniform--000000000000"
    (folder / "result.json").write_text(json.dumps(result))


def edit_prediction(data: bytes) -> bytes:
    lines = data.decode().splitlines(keepends=True)
    row = json.loads(lines[0])
    row["context_size"] += 1
    return ("".join([json.dumps(row) + "\n", *lines[1:]])).encode()


def without_metrics(data: bytes) -> bytes:
    result = json.loads(data)
    del result["metrics"]
    return json.dumps(result).encode()


def minus_infinity(data: bytes) -> bytes:
    result = json.loads(data)
    result["timings"]["total_s"] = float("-inf")
    return json.dumps(result).encode()


BROKEN_RUN_CASES = [
    ("result-truncated", damage_file("result.json", lambda d: d[: len(d) // 2])),
    ("result-empty-object", damage_file("result.json", lambda d: b"{}")),
    ("result-garbage", damage_file("result.json", lambda d: b"\x00\xff garbage")),
    ("result-minus-infinity", damage_file("result.json", minus_infinity)),
    ("result-without-metrics", damage_file("result.json", without_metrics)),
    ("result-of-another-run", from_other_run),
    ("predictions-truncated", damage_file("predictions.jsonl", lambda d: d[: d.rindex(b"\n", 0, len(d) - 1) + 1])),
    ("predictions-edited", damage_file("predictions.jsonl", edit_prediction)),
    ("predictions-empty", damage_file("predictions.jsonl", lambda d: b"")),
    ("predictions-deleted", lambda folder: (folder / "predictions.jsonl").unlink()),
]


def rescore(output: Path) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(REPO.parent / "shared/tools/rescore.py"), str(output)], capture_output=True, text=True
    )
    return done.stdout + done.stderr if done.returncode else ""


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize("damage", [c[1] for c in BROKEN_RUN_CASES], ids=[c[0] for c in BROKEN_RUN_CASES])
def test_a_broken_finished_run_is_run_again(command, damage, tmp_path, capsys, caplog):
    argv = (UNIFORM if command == "run" else SWEEP) + ["--output-dir", str(tmp_path)]
    assert call(capsys, caplog, argv)[0] == 0
    folder = run_folder(tmp_path)
    damage(folder)
    code, text = call(capsys, caplog, argv)
    outcome = judge(code, text, ["running it again", str(folder.name)], expected=0)
    if code == 0 and outcome == "vague":
        outcome = "silent"  # exit 0 without a word: the broken run was trusted
    if outcome == "clear" and (rescore(tmp_path) or "ran now, 0 failed" not in text and command == "sweep"):
        outcome = "silent"
    check(outcome, text)


def test_a_sweep_reruns_a_run_whose_data_changed(tmp_path, capsys, caplog):
    data = tmp_path / "data" / "globalopinionqa"
    data.mkdir(parents=True)
    countries = ["Japan", "Spain", "China", "Brazil", "Canada", "Egypt"]
    rows = []
    for n in range(1, 9):
        selections = ", ".join(f"'{c}': [0.{n}, 0.{10 - n}]" for c in countries)
        rows.append(f"Q{n}?,\"defaultdict(<class 'list'>, {{{selections}}})\",\"['Yes', 'No']\",\n")
    (data / "g.csv").write_text("question,selections,options,source\n" + "".join(rows))
    argv = ["sweep", "--tasks", "globalopinionqa", "--methods", "uniform", "--seeds", "0", "--shots", "0,2"]
    argv += ["--train-fracs", "0.5", "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]
    assert call(capsys, caplog, argv)[0] == 0
    (data / "g.csv").write_text((data / "g.csv").read_text().replace("'Japan': [0.1, 0.9]", "'Japan': [0.9, 0.1]"))
    loaders.clear_loaded_tasks()  # a new command is a new process: nothing of the first load is kept
    code, text = call(capsys, caplog, argv)
    outcome = judge(code, text, ["other data", "1 ran now"], expected=0)
    check("silent" if outcome == "vague" and "0 ran now" in text else outcome, text)


def gpo_run(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--task",
        "synthetic",
        "--method",
        "gpo",
        "--encoder",
        "bow",
        "--seeds",
        "0",
        "--shots",
        "5",
        "--set",
        "eval_every=2",
        "--set",
        "patience=null",
        "--output-dir",
        str(tmp_path),
        *extra,
    ]


@pytest.mark.parametrize(
    "other, culprits",
    [
        (["--limit-items", "30", "--set", "max_steps=4"], ["checkpoint.pt", "data"]),
        (["--limit-items", "40", "--set", "max_steps=6"], ["checkpoint.pt", "max_steps=6 vs 4"]),
    ],
    ids=["other-data", "other-settings"],
)
def test_resume_refuses_a_checkpoint_of_other_data_or_settings(other, culprits, tmp_path, capsys, caplog):
    mine = gpo_run(tmp_path / "mine", "--limit-items", "40", "--set", "max_steps=4")
    theirs = gpo_run(tmp_path / "theirs", *other)
    assert call(capsys, caplog, mine)[0] == 0 and call(capsys, caplog, theirs)[0] == 0
    target = run_folder(tmp_path / "mine") / "seed0/checkpoint.pt"
    shutil.copy(run_folder(tmp_path / "theirs") / "seed0/checkpoint.pt", target)
    (target.parent.parent / "result.json").unlink()
    code, text = call(capsys, caplog, [*mine, "--resume"])
    check(judge(code, text, culprits), text)


@pytest.mark.parametrize(
    "damage", [lambda d: d[: len(d) // 3], lambda d: b"PK\x03\x04 not a checkpoint"], ids=["truncated", "foreign"]
)
def test_resume_from_an_unreadable_checkpoint_names_it(damage, tmp_path, capsys, caplog):
    argv = gpo_run(tmp_path, "--limit-items", "30", "--set", "max_steps=2")
    assert call(capsys, caplog, argv)[0] == 0
    checkpoint = run_folder(tmp_path) / "seed0/checkpoint.pt"
    checkpoint.write_bytes(damage(checkpoint.read_bytes()))
    (checkpoint.parent.parent / "result.json").unlink()
    code, text = call(capsys, caplog, [*argv, "--resume"])
    check(judge(code, text, ["checkpoint.pt"]), text)


def test_a_cache_row_that_belongs_to_another_key_is_recomputed(tmp_path):
    from gpo_bench.encoders import Encoder, EncoderSpec

    triples = [("a", "b", "c"), ("d", "e", "f")]
    encoder = Encoder(EncoderSpec.parse("bow"), device="cpu", cache_dir=tmp_path)
    vectors = encoder.encode(triples)
    db = sqlite3.connect(tmp_path / "embeddings.sqlite")
    table = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'") if n.startswith("vectors")][
        -1
    ]
    (first, second) = db.execute(f"SELECT key, checksum, vector FROM {table} ORDER BY key").fetchall()
    with db:  # the second row gets the first one's vector and checksum
        db.execute(f"UPDATE {table} SET checksum = ?, vector = ? WHERE key = ?", (first[1], first[2], second[0]))
    again = Encoder(EncoderSpec.parse("bow"), device="cpu", cache_dir=tmp_path)
    fresh = again.encode(triples)
    outcome = "clear" if again.stats["misses"] == 1 and (fresh == vectors).all() else "silent"
    check(outcome, str(again.stats))


def test_a_later_success_removes_the_error_and_temp_files(tmp_path, capsys, caplog):
    argv = [*UNIFORM, "--output-dir", str(tmp_path)]
    assert call(capsys, caplog, argv)[0] == 0
    folder = run_folder(tmp_path)
    (folder / "result.json").unlink()
    (folder / "error.json").write_text('{"error": "an old failure"}')
    (folder / ".result.json.12345.abcd.tmp").write_text("{half")
    code, text = call(capsys, caplog, argv)
    left = sorted(
        p.name for p in folder.iterdir() if p.name not in ("result.json", "predictions.jsonl", "items.jsonl", ".lock")
    )
    check("clear" if code == 0 and not left else "silent", f"{code} {left} {text}")


# ---- family: concurrency --------------------------------------------------------------------------------


def test_a_run_held_by_another_process_is_waited_for_and_reused(tmp_path, capsys, caplog):
    import fcntl

    argv = [*UNIFORM, "--output-dir", str(tmp_path)]
    assert call(capsys, caplog, argv)[0] == 0
    folder = run_folder(tmp_path)
    finished = (folder / "result.json").read_bytes()
    (folder / "result.json").unlink()
    lock = (folder / ".lock").open("a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is running this run
    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(argv)))
    worker.start()
    time.sleep(1.5)
    waited = worker.is_alive()
    (folder / "result.json").write_bytes(finished)  # ... and finishes it
    lock.close()
    worker.join(60)
    text = capsys.readouterr().out + caplog.text
    reused = "reused the finished run" in text and "in use by another process" in text
    check("clear" if waited and codes == [0] and reused else "duplicated", text)


def sweep_process(output: Path, *args: str):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "gpo_bench", "sweep", "--tasks", "synthetic", "--encoders", "bow"]
    argv += ["--shots", "0,5", "--limit-items", "40", "--output-dir", str(output), *args]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def all_finished(output: Path, expected: int) -> None:
    """Every run folder finished (a valid result.json whose predictions still match), no temporary file
    left anywhere, and the independent re-scorer agrees with every result."""
    folders = sorted(p for p in (output / "runs").iterdir() if p.is_dir())
    assert len(folders) == expected
    assert all(runner.run_state(folder, None)[0] == "finished" for folder in folders)
    assert not list((output / "runs").rglob("*.tmp"))
    assert rescore(output) == ""


def test_two_concurrent_sweeps_on_one_folder_run_each_run_once(tmp_path):
    args = ["--methods", "uniform,population,group-knn", "--seeds", "0,1"]
    first, second = sweep_process(tmp_path, *args), sweep_process(tmp_path, *args)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    ran = reused = before = 0
    for out, _ in outputs:
        summary = next(line for line in out.splitlines() if line.startswith("sweep: 6 runs:"))
        numbers = summary.replace(",", " ").split()
        before += int(numbers[numbers.index("already") - 1])
        ran += int(numbers[numbers.index("ran") - 1])
        reused += int(numbers[numbers.index("finished", numbers.index("ran")) - 1]) if "another" in summary else 0
    assert ran == 6, outputs  # each run executed by exactly one of the two sweeps
    assert before + reused == 6, outputs  # the other one found it finished, before or after waiting
    all_finished(tmp_path, 6)


def test_a_sweep_killed_at_random_moments_finishes_exactly_when_rerun(tmp_path):
    """SIGKILL at seeded random moments (during training, checkpoint writes, result writes), then a rerun
    to the end: every run finished, the re-scorer agrees, no temporary file is left."""
    import random
    import signal

    rng = random.Random(20261202)  # the kill moments
    # 400 steps: uninterrupted, the sweep takes about 35 s here (GPO's two seeds in parallel processes), so
    # three kills within 4-12 s of each start come before its end (with fewer it once finished before the third)
    args = ["--methods", "gpo,uniform,head", "--seeds", "0,1", "--set", "gpo.max_steps=400"]
    args += ["--set", "gpo.eval_every=2", "--set", "gpo.patience=null"]
    for _ in range(3):
        process = sweep_process(tmp_path, *args)
        time.sleep(rng.uniform(4.0, 12.0))
        process.send_signal(signal.SIGKILL)
        process.communicate()
    folders = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()] if (tmp_path / "runs").exists() else []
    assert sum(runner.run_state(f, None)[0] == "finished" for f in folders) < 5, "no kill came before the end"
    process = sweep_process(tmp_path, *args)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, out + err
    all_finished(tmp_path, 5)  # GPO's two seeds train in one run (in two processes), the others one run each
