"""`sweeps/paper-gpu.yaml`, the paper's table on one GPU: a dry run of the whole file on the CPU with a tiny random
Llama as the 7B model (a few items, one seed, a step or two of training), in which every (task, method, split)
row of the file must finish; the placeholder model must stop a sweep that does not name one; and (`-m gpu`) the
same dry run on CUDA with the file's GPU settings, then its first rows for real."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from gpo_bench.cli import main
from gpo_bench.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
SWEEP = REPO / "sweeps" / "paper-gpu.yaml"
# the fewest OpinionQA/GlobalOpinionQA items (by id) that leave GlobalOpinionQA 5 countries with 2 answered
# items each, so that its 80% split still has a test group
LIMIT_ITEMS = 20
TINY_BUDGET = [
    "gpo-paper.max_steps=2",
    "gpo-paper.eval_every=1",
    "sft-gpu.steps=1",
    "reward-model-gpu.steps=1",
    "in-context-finetune-gpu.steps=1",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


def sweep(data_dir: Path, out: Path, device: str, model: str, *extra: str) -> int:
    sets = [arg for pair in TINY_BUDGET for arg in ("--set", pair)]
    args = ["sweep", "--file", str(SWEEP), "--data-dir", str(data_dir), "--output-dir", str(out)]
    return main([*args, "--device", device, "--model", model, *sets, *extra])


def finished_rows(out: Path) -> dict[tuple[str, str, float], dict]:
    """(task, method, train_frac) → result.json of every run folder, each of which must hold a result."""
    rows = {}
    for run in sorted((out / "runs").iterdir()):
        assert (run / "result.json").is_file(), f"{run.name} has no result.json: {os.listdir(run)}"
        result = json.loads((run / "result.json").read_text())
        spec = result["spec"]
        rows[(spec["task"], spec["method"], spec["train_frac"])] = result
    return rows


def expected_rows() -> set[tuple[str, str, float]]:
    grid = yaml.safe_load(SWEEP.read_text())
    return {(t, m, f) for t in grid["tasks"] for m in grid["methods"] for f in grid["train_fracs"]}


def check_finished(rows: dict, model: str, device: str) -> None:
    for (task, method, _), result in rows.items():
        assert result["device"] == device
        assert set(result["metrics"]) == {"20"}, (task, method)
        score = result["metrics"]["20"]["alignment"]["mean"]
        assert 0 < score <= 1, (task, method, score)
        if method == "gpo-paper":
            assert result["spec"]["encoder"].split(",")[0] == model  # then the encoder's default settings
        else:
            assert result["spec"]["settings"]["model"] == model
            assert result["spec"]["settings"]["dtype"] == "bfloat16"  # the file's GPU setting reached the run


def test_every_row_of_the_paper_sweep_finishes_on_the_cpu(data_dir, tiny_model, tmp_path):
    code = sweep(
        data_dir, tmp_path, "cpu", tiny_model, "--seeds", "0", "--limit-items", str(LIMIT_ITEMS),
        "--set", "gpo-paper.bf16=false",  # bfloat16 autocast is refused on CPUs without AVX-512 BF16 or AMX
    )  # fmt: skip
    assert code == 0
    rows = finished_rows(tmp_path)
    assert set(rows) == expected_rows()
    check_finished(rows, tiny_model, "cpu")


def test_the_sweep_stops_until_the_model_is_named(data_dir, tmp_path, capsys):
    args = ["sweep", "--file", str(SWEEP), "--data-dir", str(data_dir), "--output-dir", str(tmp_path)]
    assert main(args) != 0
    assert "pass --model HUB_ID_OR_FOLDER" in capsys.readouterr().err
    assert main([*args, "--model", "some/model", "--set", "model=other/model"]) != 0
    assert "the model is named twice" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_row_of_the_paper_sweep_finishes_on_a_gpu(data_dir, tiny_model, tmp_path):
    """The file's own settings (GPO in bf16, the LM baselines in bfloat16, GPU batch sizes) on CUDA, 3 seeds."""
    assert sweep(data_dir, tmp_path, "cuda", tiny_model, "--limit-items", str(LIMIT_ITEMS)) == 0
    rows = finished_rows(tmp_path)
    assert set(rows) == expected_rows()
    check_finished(rows, tiny_model, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_first_rows_of_the_paper_sweep_run_for_real_on_a_gpu(data_dir, tmp_path):
    """lm-base and lm-steered on all of OpinionQA at the 40% split with a real model: GPO_BENCH_PAPER_MODEL (a Hub id
    or a folder; default smollm2, offline). Their scores must lie between the worst and the best possible."""
    model = os.environ.get("GPO_BENCH_PAPER_MODEL", "smollm2")
    args = ["sweep", "--file", str(SWEEP), "--data-dir", str(data_dir), "--output-dir", str(tmp_path)]
    args += ["--device", "cuda", "--model", model, "--tasks", "opinionqa"]
    assert main([*args, "--methods", "lm-base,lm-steered", "--train-fracs", "0.4", "--seeds", "0"]) == 0
    rows = finished_rows(tmp_path)
    assert set(rows) == {("opinionqa", "lm-base", 0.4), ("opinionqa", "lm-steered", 0.4)}
    check_finished(rows, model, "cuda")
