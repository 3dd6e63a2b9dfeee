import pytest

from gpo_bench.cli import main


def test_unknown_names_give_a_suggestion_and_exit_2(capsys):
    assert main(["run", "--task", "opinonqa", "--method", "uniform"]) == 2
    assert "unknown task 'opinonqa'. Did you mean opinionqa," in capsys.readouterr().err
    assert main(["run", "--task", "synthetic", "--method", "gpo", "--encoder", "minlm"]) == 2
    assert "Did you mean minilm" in capsys.readouterr().err  # the closest name first


def test_missing_data_folder_says_what_to_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GPO_BENCH_DATA", raising=False)
    assert main(["run", "--task", "opinionqa", "--method", "uniform", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"it reads opinionqa/human_resp/ under the data folder; {tmp_path} does not hold them" in err
    assert "no Hugging Face Hub copy" in err and "tatsu-lab/opinions_qa" in err and "pass --data-dir DIR" in err
    assert main(["run", "--task", "opinionqa", "--method", "uniform", "--data-dir", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_k_larger_than_a_group_is_capped_and_recorded(tmp_path, capsys):
    args = [
        "run",
        "--task",
        "synthetic",
        "--method",
        "uniform",
        "--output-dir",
        str(tmp_path),
        "--shots",
        "5,500",
        "--seeds",
        "0",
        "--limit-items",
        "30",
    ]
    assert main(args) == 0
    import json

    result = json.loads(next((tmp_path / "runs").glob("*/result.json")).read_text())
    capped = result["metrics"]["500"]["capped_shots"]
    assert set(capped) == set(result["split"]["test"]) and set(capped.values()) == {29}
    assert result["metrics"]["5"]["capped_shots"] == {}


def test_empty_group_after_filtering_is_an_error(tmp_path, capsys):
    folder = tmp_path / "globalopinionqa"
    folder.mkdir()
    (folder / "g.csv").write_text("question,selections,options\nQ?,\"{'Japan': [0, 0]}\",\"['Yes', 'No']\"\n")
    assert main(["run", "--task", "globalopinionqa", "--method", "uniform", "--data-dir", str(tmp_path)]) == 2
    assert "no groups left after filtering" in capsys.readouterr().err


def test_bad_set_value_is_an_error(capsys):
    assert main(["run", "--task", "synthetic", "--method", "gpo", "--set", "max_steps=many"]) == 2
    assert "must be an integer" in capsys.readouterr().err


@pytest.mark.parametrize("shots", ["a,b", "-1"])
def test_bad_shots_are_rejected(shots):
    with pytest.raises(SystemExit):
        main(["run", "--task", "synthetic", "--method", "uniform", "--shots", shots])
