"""One language model named once (`--model`, `model=` in the API, `model:` in a sweep file): it becomes every LM
method's `model` setting and the encoder named `model`; a sweep that needs it and lacks it, or names it twice,
stops before anything runs. And `--encoders` lists whose encoders carry their own `,key=value` settings."""

import pytest

from gpo_bench import api
from gpo_bench.cli import main
from gpo_bench.encoders import split_encoders
from gpo_bench.errors import CardError
from gpo_bench.sweep import Grid, load_sweep_file, plan


def resolved(grid: Grid) -> dict[str, dict]:
    return {run.resolved["method"]: run.resolved for run in plan(grid)}


def test_the_model_reaches_every_lm_method_and_the_model_encoder():
    grid = Grid(
        tasks=("opinionqa",),
        methods=("lm-base", "few-shot", "gpo", "uniform"),
        encoders=("model,pooling=last",),
        seeds=(0,),
        model="smollm2",
    )
    runs = resolved(grid)
    assert runs["lm-base"]["settings"]["model"] == runs["few-shot"]["settings"]["model"] == "smollm2"
    assert runs["gpo"]["encoder"].startswith("smollm2,pooling=last,")  # its own settings are kept
    assert "model" not in runs["uniform"]["settings"] and runs["uniform"]["encoder"] is None
    # the same runs as naming the model the long way: the run folders do not depend on how it was named
    long_way = Grid(
        tasks=("opinionqa",),
        methods=("lm-base", "few-shot", "gpo", "uniform"),
        encoders=("smollm2,pooling=last",),
        seeds=(0,),
        overrides={"model": "smollm2"},
    )
    assert [run.run_id for run in plan(grid)] == [run.run_id for run in plan(long_way)]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (Grid(tasks=("opinionqa",), methods=("gpo",), encoders=("model",)), "pass --model HUB_ID_OR_FOLDER"),
        (
            Grid(tasks=("opinionqa",), methods=("lm-base",), model="a/b", overrides={"model": "c/d"}),
            "the model is named twice: --model a/b and --set model=c/d",
        ),
        (Grid(tasks=("opinionqa",), methods=("gpo", "uniform"), model="a/b"), "no method of this sweep"),
    ],
)
def test_a_sweep_that_lacks_its_model_or_names_it_twice_stops_before_it_runs(grid, message):
    with pytest.raises(CardError, match=message):
        plan(grid)


def test_run_refuses_a_model_its_method_would_ignore(tmp_path):
    with pytest.raises(CardError, match="method 'gpo' has no model setting; .* add --encoder model"):
        api.run("opinionqa", "gpo", model="a/b", output_dir=tmp_path)
    assert not (tmp_path / "runs").exists()


def test_the_sweep_file_names_its_model(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("tasks: [opinionqa]\nmethods: [lm-base, gpo]\nencoders: model,pooling=last\nmodel: smollm2\n")
    fields = load_sweep_file(path)
    assert fields["model"] == "smollm2" and fields["encoders"] == ("model,pooling=last",)
    assert resolved(Grid(**fields))["gpo"]["encoder"].startswith("smollm2,pooling=last,")


@pytest.mark.parametrize(
    ("text", "encoders"),
    [
        ("minilm", ("minilm",)),
        ("minilm,bow", ("minilm", "bow")),
        ("minilm,org/llm,pooling=last,template=raw,bow", ("minilm", "org/llm,pooling=last,template=raw", "bow")),
        (" model , max_length=64 ,", ("model,max_length=64",)),
    ],
)
def test_an_encoder_list_keeps_each_encoders_settings(text, encoders):
    assert split_encoders(text) == encoders


def test_the_cli_sweep_takes_the_model_and_encoder_settings(data_dir, tmp_path, capsys):
    args = ["sweep", "--tasks", "opinionqa", "--methods", "gpo,lm-base", "--seeds", "0", "--dry-run"]
    args += ["--data-dir", str(data_dir), "--output-dir", str(tmp_path), "--model", "smollm2"]
    assert main([*args, "--encoders", "minilm,model,pooling=last"]) == 0
    listing = capsys.readouterr().out
    assert "method=gpo encoder=minilm" in listing and "method=gpo encoder=smollm2,pooling=last," in listing
    assert listing.count("method=lm-base") == 1  # LM methods read no encoder: one run
