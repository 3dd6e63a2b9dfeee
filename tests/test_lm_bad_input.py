"""Bad input to the language-model baselines, through the CLI with tiny random Llamas: a model too large
for the machine, a chat template missing, a prompt that does not fit even without context items, an
adapter whose loss diverges. Each is one line naming the model (and the group where there is one) and
the setting to change, exit code 2, and nothing written in the run folder but its lock."""

import re
from pathlib import Path

import pytest
import torch

from gpo_bench import models
from gpo_bench.cli import main
from gpo_bench.lm import CausalLM
from gpo_bench.models import parameter_count
from gpo_bench.tiny_model import build_tiny_model

SETTINGS = {"dtype": "auto", "load_8bit": False, "max_length": None, "batch_tokens": 512, "chat_template": True}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


def fails(tmp_path: Path, capsys, method: str, model: str, *extra: str) -> str:
    """Run `method` on the synthetic task; check it fails with exit 2 leaving nothing but locks; its message."""
    out = tmp_path / "out"
    argv = ["run", "--task", "synthetic", "--method", method, "--limit-items", "12", "--shots", "0,3"]
    argv += ["--seeds", "0", "--set", f"model={model}", *extra, "--output-dir", str(out)]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    errors = re.findall(r"gpo-bench: error: (.*)", capsys.readouterr().err)  # (after a progress bar's \r)
    assert len(errors) == 1
    written = [p.name for p in out.rglob("*") if p.is_file()]
    assert set(written) <= {".lock"}, written
    return errors[0]


def test_the_parameter_estimate_from_the_config_is_the_loaded_models_count(tiny_model):
    loaded = CausalLM({"model": tiny_model, **SETTINGS}, "cpu").model
    assert parameter_count(Path(tiny_model)) == sum(p.numel() for p in loaded.parameters())


def test_a_model_too_large_for_the_machine_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    model = str(build_tiny_model(tmp_path / "model"))  # a folder no test has loaded yet
    need = parameter_count(Path(model)) * 4  # float32 on the CPU
    monkeypatch.setattr(models, "available_memory", lambda device: need - 1)
    loads = []
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: loads.append(a))
    err = fails(tmp_path, capsys, "lm-base", model)
    assert not loads
    assert model in err and "does not fit" in err and "float32" in err and "--set dtype=bfloat16" in err
    assert f"its {need // 4:,} parameters need at least {need / 2**30:.2f} GiB in float32" in err


def test_a_missing_chat_template_is_an_error_when_the_chat_format_is_asked_for(tmp_path, capsys):
    model = str(build_tiny_model(tmp_path / "model", chat=False))
    err = fails(tmp_path, capsys, "lm-steered", model)
    assert model in err and "no chat template" in err and "--set chat_template=false" in err
    argv = ["run", "--task", "synthetic", "--method", "lm-steered", "--limit-items", "12", "--shots", "0"]
    argv += ["--set", f"model={model}", "--set", "chat_template=false", "--output-dir", str(tmp_path / "plain")]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0


def test_a_prompt_over_the_max_length_setting_names_the_group_and_the_setting(tiny_model, tmp_path, capsys):
    err = fails(tmp_path, capsys, "lm-steered", tiny_model, "--set", "max_length=20")
    assert tiny_model in err and "group 'group-" in err and "item '" in err
    assert "max_length=20" in err and "--set max_length=N, up to the model's context of 4096" in err


def test_a_prompt_over_the_models_context_says_to_use_a_longer_one(tmp_path, capsys):
    model = str(build_tiny_model(tmp_path / "model", max_positions=32))
    err = fails(tmp_path, capsys, "lm-base", model)
    assert model in err and "group 'group-" in err and "model's context of 32" in err and "longer context" in err


@pytest.mark.parametrize("method", ["sft", "reward-model"])
def test_a_diverging_adapter_stops_naming_group_seed_and_step(method, tiny_model, tmp_path, capsys):
    # a learning rate this large overflows the tiny model's activations within a few steps (a real NaN loss)
    err = fails(tmp_path, capsys, method, tiny_model, "--set", "lr=1e10", "--set", "steps=6")
    pattern = r"group '(group-\d+)' \(K=3, seed 0\): the adapter's training diverged, its loss is (\S+) at step (\d)"
    match = re.search(pattern, err)
    assert match, err
    assert match[2] in ("nan", "inf", "-inf") and 1 <= int(match[3]) <= 6
    assert tiny_model in err and "lower the learning rate, e.g. --set lr=1e+09" in err


def test_a_diverging_meta_training_names_the_seed(tiny_model, tmp_path, capsys):
    err = fails(tmp_path, capsys, "in-context-finetune", tiny_model, "--set", "lr=1e10", "--set", "steps=6")
    assert tiny_model in err and "meta-training (seed 0)" in err and "training diverged" in err
    assert "--set lr=1e+09" in err


def test_training_goes_on_while_the_loss_is_finite_and_stops_at_the_first_step_it_is_not():
    from gpo_bench.methods.lm_finetune import train

    weight = torch.nn.Parameter(torch.zeros(1))
    settings = {"steps": 3, "max_grad_norm": 1.0, "lr": 0.1}
    params = [{"params": [weight], "lr": 0.1}]
    losses = train(params, lambda step: (weight - 1).pow(2).sum(), settings, "a test")
    assert len(losses) == 3 and losses[-1] < losses[0]

    def loss_at(step: int) -> torch.Tensor:
        return (weight - 1).pow(2).sum() * (float("nan") if step == 1 else 1.0)

    with pytest.raises(RuntimeError, match=r"a test: .* loss is nan at step 2 of 3 \(lr=0.1\).*--set lr=0.01"):
        train(params, loss_at, settings, "a test")
