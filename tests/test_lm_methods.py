"""The language-model baselines end to end through the CLI on the synthetic task with a tiny random
Llama (fast), their group descriptions, and the same methods with SmolLM2 on a few OpinionQA items
(`-m slow`)."""

import json
from pathlib import Path

import numpy as np
import pytest

from gpo_bench.cards import load_task_card
from gpo_bench.cli import main
from gpo_bench.lm import build_tiny_model
from gpo_bench.methods.lm import ATTRIBUTES, GROUP, group_attribute, steering_text

LM_METHODS = ["lm-base", "lm-steered", "lm-steered-bio", "lm-steered-qa", "few-shot"]
FINETUNED = ["sft", "in-context-finetune", "reward-model"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


def run(args: list[str], capsys) -> tuple[dict, list[dict]]:
    assert main(["run", *args]) == 0
    run_dir = Path(capsys.readouterr().out.split("run folder: ")[1].split()[0])
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "result.json").read_text()), rows


def synthetic(method: str, model: str, out: Path, *extra: str) -> list[str]:
    args = ["--task", "synthetic", "--method", method, "--output-dir", str(out), "--limit-items", "12"]
    return [*args, "--shots", "0,3", "--seeds", "0", "--set", f"model={model}", *extra]


@pytest.mark.parametrize("method", LM_METHODS + FINETUNED)
def test_every_lm_method_runs_end_to_end(method, tiny_model, tmp_path, capsys):
    extra = ["--set", "steps=2", "--set", "batch_size=2"] if method in FINETUNED else []
    result, rows = run(synthetic(method, tiny_model, tmp_path, *extra), capsys)
    assert set(result["metrics"]) == {"0", "3"}
    assert result["fit"]["0"]["model"] == tiny_model
    assert rows and all(abs(sum(r["pred"]) - 1) < 1e-6 and min(r["pred"]) > 0 for r in rows)
    facts = result["fit"]["0"]
    if method in ("sft", "reward-model"):  # trained per test group with K = 3, not with K = 0
        assert set(facts["train_loss"]) == {"3"} and set(facts["train_loss"]["3"]) == set(result["split"]["test"])
    if method == "in-context-finetune":
        assert len(facts["train_loss"]) == 2 and facts["truncated_train_prompts"] == 0
    if method == "few-shot":
        assert facts["context_fitted"]["3"] == dict.fromkeys(result["split"]["test"], 3)
        assert facts["truncated_prompts"] == 0


def test_sft_at_k0_is_lm_base_and_learns_the_group_at_k(tiny_model, tmp_path, capsys):
    _, base = run(synthetic("lm-base", tiny_model, tmp_path), capsys)
    _, sft = run(synthetic("sft", tiny_model, tmp_path, "--set", "steps=3", "--set", "lr=0.01"), capsys)
    for a, b in zip(base, sft, strict=True):
        assert (a["item"], a["shots"]) == (b["item"], b["shots"])
        assert np.allclose(a["pred"], b["pred"]) == (a["shots"] == 0)


def test_few_shot_records_context_items_dropped_to_fit(tiny_model, tmp_path, capsys):
    # The byte-level tiny tokenizer spends ~100 tokens on a synthetic question and ~150 on a context item.
    result, rows = run(synthetic("few-shot", tiny_model, tmp_path, "--set", "max_length=400"), capsys)
    fitted = result["fit"]["0"]["context_fitted"]["3"]
    assert set(fitted) == set(result["split"]["test"]) and max(fitted.values()) < 3
    assert result["fit"]["0"]["truncated_prompts"] == sum(r["shots"] == 3 for r in rows)


def test_an_unknown_steering_style_is_a_clear_error(tiny_model, tmp_path, capsys):
    assert main(["run", *synthetic("lm-steered", tiny_model, tmp_path, "--set", "style=poem")]) == 2
    assert "unknown steering style 'poem'" in capsys.readouterr().err


def test_every_gpo_group_has_its_own_description():
    for group in load_task_card("opinionqa").groups:
        attribute, value = group_attribute("opinionqa", group)
        assert attribute is not GROUP and attribute is ATTRIBUTES[group.split("_")[0]]
        texts = {style: steering_text(style, "opinionqa", group) for style in ("portray", "bio", "qa")}
        assert len(set(texts.values())) == 3
        assert attribute.phrase(value) in texts["portray"] and attribute.phrase(value) in texts["bio"]
    qa = steering_text("qa", "opinionqa", "POLPARTY_Democrat")
    assert qa.startswith("Question: In politics today, do you consider yourself a\nA. Republican\nB. Democrat")
    assert qa.endswith("Answer: B\n\n")
    assert "as if in politics today, you considered yourself a Democrat." in steering_text(
        "portray", "opinionqa", "POLPARTY_Democrat"
    )


def test_countries_and_other_groups_are_described_too():
    assert steering_text("portray", "globalopinionqa", "India (Current national sample)") == (
        "Answer the following question as if you are from India.\n\n"
    )
    assert "Description: I am from Japan." in steering_text("bio", "globalopinionqa", "Japan")
    assert steering_text("qa", "synthetic", "group-03").endswith("Answer: group-03\n\n")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("methods", "extra"),
    [
        (LM_METHODS, []),
        (["sft", "in-context-finetune"], ["--set", "steps=2", "--set", "batch_size=2"]),
        (["reward-model"], ["--set", "steps=2", "--set", "batch_size=2"]),
    ],
    ids=["in-context", "fine-tuned", "reward-model"],
)
def test_smollm2_on_a_few_opinionqa_items(methods, extra, data_dir, tmp_path, capsys):
    for method in methods:
        args = ["--task", "opinionqa", "--method", method, "--data-dir", str(data_dir), "--output-dir", str(tmp_path)]
        result, rows = run([*args, "--limit-items", "6", "--shots", "0,2", "--seeds", "0", *extra], capsys)
        assert result["fit"]["0"]["model"] == "smollm2"
        for k in ("0", "2"):
            assert 0.5 < result["metrics"][k]["alignment"]["mean"] <= 1.0
        assert all(len(r["pred"]) == len(r["target"]) and abs(sum(r["pred"]) - 1) < 1e-6 for r in rows)
