"""The language-model baselines end to end through the CLI on the synthetic task and on a PRISM fixture
with a tiny random Llama (fast), the judge's two orders, their group descriptions, and the same methods
with SmolLM2 on a few OpinionQA items (`-m slow`)."""

import json
from pathlib import Path

import numpy as np
import pytest
from personalized_fixtures import write_prism

from gpo_bench import models
from gpo_bench.cards import load_task_card
from gpo_bench.cli import main
from gpo_bench.data import Group, Item, TaskData
from gpo_bench.lm import CausalLM
from gpo_bench.methods.base import Setup
from gpo_bench.methods.lm import ANSWER, ATTRIBUTES, GROUP, JUDGE_HEADER, LMBase, group_attribute, steering_text
from gpo_bench.protocol import Episode, Split
from gpo_bench.tiny_model import build_tiny_model

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
    fitted, predicted = result["fit"]["0"], result["predict"]["0"]
    if method in ("sft", "reward-model"):  # trained per test group with K = 3, not with K = 0
        assert set(predicted["train_loss"]) == {"3"}
        assert set(predicted["train_loss"]["3"]) == set(result["split"]["test"])
    if method == "in-context-finetune":
        assert len(fitted["train_loss"]) == 2 and fitted["truncated_train_prompts"] == 0
    if method in ("few-shot", "in-context-finetune"):
        assert predicted["context_fitted"]["3"] == dict.fromkeys(result["split"]["test"], 3)
        assert predicted["truncated_prompts"] == 0


def test_sft_at_k0_is_lm_base_and_learns_the_group_at_k(tiny_model, tmp_path, capsys):
    _, base = run(synthetic("lm-base", tiny_model, tmp_path), capsys)
    _, sft = run(synthetic("sft", tiny_model, tmp_path, "--set", "steps=3", "--set", "lr=0.01"), capsys)
    for a, b in zip(base, sft, strict=True):
        assert (a["item"], a["shots"]) == (b["item"], b["shots"])
        assert np.allclose(a["pred"], b["pred"]) == (a["shots"] == 0)


def test_few_shot_records_context_items_dropped_to_fit(tiny_model, tmp_path, capsys):
    # The byte-level tiny tokenizer spends ~100 tokens on a synthetic question and ~150 on a context item.
    result, rows = run(synthetic("few-shot", tiny_model, tmp_path, "--set", "max_length=400"), capsys)
    fitted = result["predict"]["0"]["context_fitted"]["3"]
    assert set(fitted) == set(result["split"]["test"]) and max(fitted.values()) < 3
    assert result["predict"]["0"]["truncated_prompts"] == sum(r["shots"] == 3 for r in rows)


def prism_run(method: str, model: str, tmp_path: Path, capsys) -> tuple[dict, list[dict]]:
    extra = ["--set", "steps=2", "--set", "batch_size=2"] if method in FINETUNED else []
    args = ["--task", "prism", "--method", method, "--data-dir", str(tmp_path / "data"), "--shots", "0,2"]
    args += ["--seeds", "0", "--output-dir", str(tmp_path / "out"), "--set", f"model={model}", *extra]
    return run(args, capsys)


@pytest.mark.parametrize("method", LM_METHODS + FINETUNED)
def test_every_lm_method_judges_preference_pairs(method, tiny_model, tmp_path, capsys):
    write_prism(tmp_path / "data")
    result, rows = prism_run(method, tiny_model, tmp_path, capsys)
    assert result["metric"] == "user_accuracy" and {"seen", "unseen"} <= set(result["metrics"]["2"])
    assert rows and all(len(r["pred"]) == 2 and abs(sum(r["pred"]) - 1) < 1e-6 for r in rows)
    if method in ("lm-steered", "lm-steered-bio", "lm-steered-qa", "few-shot", "in-context-finetune"):
        # the user's K = 2 earlier comparisons reach every prompt (its history, or few-shot examples)
        assert result["predict"]["0"]["context_fitted"]["2"] == dict.fromkeys(result["split"]["test"], 2)


def test_steering_a_user_is_their_history(tiny_model, tmp_path, capsys):
    write_prism(tmp_path / "data")
    _, base = prism_run("lm-base", tiny_model, tmp_path, capsys)
    _, steered = prism_run("lm-steered", tiny_model, tmp_path, capsys)
    for a, b in zip(base, steered, strict=True):
        assert (a["group"], a["item"], a["shots"]) == (b["group"], b["item"], b["shots"])
        # no history at K = 0; the tiny random model's readings differ by ~1e-6 only, hence the tolerance
        assert np.allclose(a["pred"], b["pred"], rtol=0, atol=1e-12) == (a["shots"] == 0)


def judge_lm_base(model: str, candidates: tuple[str, str]) -> tuple[LMBase, Episode]:
    task = TaskData("pair", "accuracy", {"p": Item("p", "Hello?", candidates)}, {"u": Group("u", {"p": np.eye(2)[0]})})
    setup = Setup(task, Split((), (), ("u",), pools={"u": ()}), 0, "cpu", Path("unused"))
    method = LMBase({"model": model, "dtype": "auto", "load_8bit": False, "max_length": None, "batch_tokens": 512,
                     "chat_template": True}, setup)  # fmt: skip
    return method, Episode("u", 0, 0, (), ("p",), ())


def test_a_judged_pair_is_asked_in_both_orders_and_averaged(tiny_model):
    method, episode = judge_lm_base(tiny_model, ("Hi there.", "Go away."))
    predicted = method.predict_episode(episode)[0]
    model = CausalLM(method.settings, "cpu")

    def reading(first: str, second: str) -> np.ndarray:
        text = f"{JUDGE_HEADER}Conversation: Hello?\nResponse A: {first}\nResponse B: {second}\n{ANSWER}"
        return model.option_probs([model.encode(text)], [2])[0]

    forward, backward = reading("Hi there.", "Go away."), reading("Go away.", "Hi there.")
    assert not np.allclose(forward, backward[::-1])  # the tiny model has a position bias to average out
    np.testing.assert_allclose(predicted, (forward + backward[::-1]) / 2, atol=1e-6)
    swapped, _ = judge_lm_base(tiny_model, ("Go away.", "Hi there."))
    np.testing.assert_allclose(swapped.predict_episode(episode)[0], predicted[::-1], atol=1e-6)


def test_cache_dir_reaches_the_default_language_model(tiny_model, tmp_path, capsys, monkeypatch):
    asked = []
    monkeypatch.setattr(models, "smollm2_folder", lambda cache_dir: asked.append(cache_dir) or Path(tiny_model))
    args = synthetic("lm-base", "smollm2", tmp_path / "out", "--cache-dir", str(tmp_path / "cache"))
    run(args, capsys)
    assert asked == [tmp_path / "cache"]


def test_an_unknown_steering_style_is_a_clear_error(tiny_model, tmp_path, capsys):
    assert main(["run", *synthetic("lm-steered", tiny_model, tmp_path, "--set", "style=poem")]) == 2
    err = capsys.readouterr().err
    assert "setting 'style' must be a string (one of portray, bio, qa), got str 'poem'" in err


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
