"""The Python API against the command line on real data: `gb.run` returns the record of what `gpo-bench run`
prints, `gb.load_runs` reads the same records back, `gb.leaderboard(...).to_markdown()` is the file
`gpo-bench leaderboard` writes; `gb.run_sweep` returns the records `gpo-bench sweep` writes and names the runs that
failed; a folder of one `run` then a `sweep` with other K and seeds aggregates in every command; and the Python
blocks of docs/python-api.md run."""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import gpo_bench as gb
from gpo_bench.cli import main
from gpo_bench.errors import CardError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def printed_means(text: str) -> dict[int, str]:
    """K → the headline mean as `gpo-bench run` prints it (4 decimals)."""
    return {int(m[1]): m[2] for m in re.finditer(r"^\s+(\d+)\s+(\d\.\d{4})\s+\[", text, re.MULTILINE)}


def test_run_load_runs_and_leaderboard_match_the_command_line(data_dir, tmp_path, capsys):
    api_dir, cli_dir = tmp_path / "api", tmp_path / "cli"
    record = gb.run("opinionqa", "population", data_dir=data_dir, shots=[0, 5], seeds=[0], output_dir=api_dir)
    common = ["--task", "opinionqa", "--method", "population", "--shots", "0,5", "--seeds", "0"]
    assert main(["run", *common, "--data-dir", str(data_dir), "--output-dir", str(cli_dir)]) == 0
    means = printed_means(capsys.readouterr().out)
    assert sorted(means) == sorted(record.cells) == [0, 5]
    assert f"{record.cells[5].mean:.4f}" == means[5] and f"{record.cells[0].mean:.4f}" == means[0]
    result = json.loads((record.folder / "result.json").read_text())
    assert record.cells[5].per_group == result["metrics"]["5"]["alignment"]["per_group"]
    assert record.cells[5].ceiling == result["metrics"]["5"]["reference"]["ceiling"]
    assert record.folder.parent == api_dir / "runs" and record.seeds == (0,)

    loaded = gb.load_runs(api_dir)
    assert loaded == [record] and loaded.skipped == []
    assert main(["leaderboard", "--output-dir", str(api_dir)]) == 0
    assert gb.leaderboard(loaded).to_markdown() == (api_dir / "leaderboard.md").read_text()
    assert gb.leaderboard(loaded).to_csv() == (api_dir / "leaderboard.csv").read_text()

    frame = loaded.to_frame()
    assert len(frame) == sum(len(c.per_group) for c in record.cells.values())
    assert set(frame.subset) == {"overall"}  # opinionqa's test groups have no seen / unseen subsets
    at_five = frame[frame.shots == 5].set_index("group")["value"].to_dict()
    assert at_five == result["metrics"]["5"]["alignment"]["per_group"]
    predictions = record.predictions()
    assert set(predictions.shots) == {0, 5} and len(predictions) == result["predictions"]["lines"]
    assert set(gb.list_tasks()) >= {"opinionqa", "globalopinionqa"} and "population" in gb.list_methods()


def test_run_sweep_returns_the_records_the_command_line_writes_and_names_what_failed(tmp_path, capsys):
    empty = tmp_path / "data"  # synthetic needs no data; opinionqa's is not here, so its runs fail
    empty.mkdir()
    grid = {"tasks": ["synthetic", "opinionqa"], "methods": "uniform,population", "shots": [0, 5], "seeds": [0, 1]}
    result = gb.run_sweep(**grid, data_dir=empty, output_dir=tmp_path / "api")
    flags = ["--tasks", "synthetic,opinionqa", "--methods", "uniform,population", "--shots", "0,5", "--seeds", "0,1"]
    assert main(["sweep", *flags, "--data-dir", str(empty), "--output-dir", str(tmp_path / "cli")]) == 1
    printed = capsys.readouterr().out

    # 2 tasks x 2 methods x 2 seeds (neither method trains seeds together): 8 runs, opinionqa's 4 failed
    assert len(result.folders) == 8 and len(result.runs) == 4 and {r.task for r in result.runs} == {"synthetic"}
    written = gb.load_runs(tmp_path / "cli")
    moved = [replace(r, folder=tmp_path / "cli" / "runs" / r.folder.name) for r in result.runs]
    assert sorted(moved, key=lambda r: r.folder) == written  # the same runs, spec and numbers as the CLI's
    assert sorted(result.runs, key=lambda r: r.folder) == gb.load_runs(tmp_path / "api")
    assert set(result.failed) == {f for f in result.folders if f.name.startswith("opinionqa--")}
    for folder, error in result.failed.items():
        assert "cannot load task 'opinionqa'" in error and (folder / "error.json").exists()
        assert f"FAILED {tmp_path / 'cli' / 'runs' / folder.name}: {error}" in printed
    assert "8 runs: 0 already finished, 4 ran now, 4 failed" in str(result) and result.stopped is None

    again = gb.run_sweep(**grid, data_dir=empty, output_dir=tmp_path / "api")  # the finished runs are reused
    assert "8 runs: 4 already finished, 0 ran now, 4 failed" in str(again) and again.runs == result.runs
    plan = gb.run_sweep(**grid, data_dir=empty, output_dir=tmp_path / "api", dry_run=True)
    states = [line.split()[0] for line in str(plan).splitlines()]
    assert sorted(states) == ["failed"] * 4 + ["finished"] * 4 and plan.report is None
    with pytest.raises(CardError, match=r"run_sweep\(shots=...\) must be an integer ≥ 0, got int -1"):
        gb.run_sweep("synthetic", "uniform", shots="0,-1", output_dir=tmp_path / "api")


def test_to_frame_gives_the_seen_and_unseen_groups_as_the_predictions_score_them(tmp_path):
    record = gb.run("synthetic_pairwise", "population", shots=[0, 2], seeds=[0, 1], output_dir=tmp_path)
    frame = gb.load_runs(tmp_path).to_frame()
    # recomputed from predictions.jsonl: a group's value is its accuracy averaged over seeds; a subset's mean
    # (user_accuracy) averages its groups' accuracies within each seed, then over the seeds
    scores = record.predictions().groupby(["shots", "split", "seed", "group"])["score"].mean()
    by_group = scores.groupby(["shots", "split", "group"]).mean()
    by_subset = scores.groupby(["shots", "split", "seed"]).mean().groupby(["shots", "split"]).mean()
    assert set(by_subset.index.get_level_values("split")) == {"seen", "unseen"}
    assert len(frame) == 2 * len(by_group)  # each (K, test group) overall and once more in its subset
    for (shots, subset), rows in frame.groupby(["shots", "subset"]):
        if subset == "overall":
            expected = by_group.loc[shots].droplevel("split")
            assert rows.uniform.notna().all() and rows["mean"].iloc[0] == record.cells[shots].mean
        else:
            expected = by_group.loc[shots, subset]
            assert rows.uniform.isna().all() and rows.ceiling.isna().all()
            assert rows["mean"].unique() == pytest.approx([by_subset[shots, subset]])
        assert rows.set_index("group")["value"].sort_index().to_numpy() == pytest.approx(expected.sort_index())
        assert sorted(rows.group) == sorted(expected.index)
    unseen = set(frame[frame.subset == "unseen"].group)
    assert unseen == set(json.loads((record.folder / "result.json").read_text())["split"]["unseen"])


def test_a_run_then_a_sweep_with_other_k_and_seeds_aggregates_everywhere(data_dir, tmp_path, capsys):
    out = ["--data-dir", str(data_dir), "--output-dir", str(tmp_path)]
    assert main(["run", "--task", "opinionqa", "--method", "population", "--shots", "0,5,20", *out]) == 0
    sweep = ["sweep", "--tasks", "opinionqa", "--methods", "uniform,population", "--shots", "0,5", "--seeds", "0,1"]
    assert main([*sweep, *out]) == 0
    capsys.readouterr()
    runs = gb.load_runs(tmp_path)
    (first,) = [r for r in runs if r.method == "population" and 20 in r.cells]

    assert main(["leaderboard", "--output-dir", str(tmp_path)]) == 0
    markdown = (tmp_path / "leaderboard.md").read_text()
    board = markdown.split("\n## ")[0]  # the main table (later sections have rows of the same names)
    row = {line.split(" | ")[0].strip("| "): line for line in board.splitlines() if line.startswith("| ")}
    assert "K=20 (alignment)" in markdown and "uniform" not in row  # uniform never ran K = 20: left out
    table = np.array([[v for _, v in sorted(g.items())] for _, g in sorted(first.per_seed[(20, "overall")].items())])
    assert f"{table.mean():.3f} [" in row["population"]  # K = 20: the first run's three seeds alone
    assert "no run of uniform has K=20; left out of the column" in markdown
    assert "seed 0 is in" not in markdown  # only the first run has K = 20
    assert main(["leaderboard", "--output-dir", str(tmp_path), "--shots", "5"]) == 0
    assert "population / opinionqa · train 40%: seed 0 is in 2 runs" in (tmp_path / "leaderboard.md").read_text()

    assert main(["plot", "shots", "--output-dir", str(tmp_path)]) == 0
    assert "uniform has no run at K=[20]; those points left out" in capsys.readouterr().out
    assert main(["plot", "groups", "--task", "opinionqa", "--output-dir", str(tmp_path)]) == 0
    assert "uniform has no run at K=20; left out" in capsys.readouterr().out
    assert main(["report", "--output-dir", str(tmp_path)]) == 0
    data = (tmp_path / "report" / "data" / "tasks" / "opinionqa.js").read_text()
    board = json.loads(data[data.index(",") + 1 : data.rindex(")")])["board"]
    assert {(e["method"], e["shots"]) for e in board} == {
        ("population", 0),
        ("population", 5),
        ("population", 20),
        ("uniform", 0),
        ("uniform", 5),
    }

    args = ["compare", "--task", "opinionqa", "--methods", "population,uniform", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "note: paired on the common seeds [0, 1] at K=5 (A ran seeds [0, 1, 2], B ran [0, 1])" in printed
    assert re.search(r"^\s+5\s+overall", printed, re.MULTILINE) and not re.search(r"^\s+20\s", printed, re.MULTILINE)
    assert main([*args, "--shots", "20"]) == 2
    assert "K=[20] not run by both sides (A ran K=[0, 5, 20], B ran K=[0, 5])" in capsys.readouterr().err


def python_blocks(text: str) -> list[str]:
    """The ```python blocks (not those marked gpu, network or long) of a Markdown page."""
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_the_python_api_page_runs(data_dir, monkeypatch):
    blocks = python_blocks(DOCS.read_text())
    assert len(blocks) >= 5
    monkeypatch.chdir(DOCS.parent.parent)  # the page's paths are from the repository root, as the docs say
    if Path("../shared/data/opinionqa").resolve() != (data_dir / "opinionqa").resolve():
        pytest.skip("the page reads ../shared/data; the data is elsewhere here")
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)  # noqa: S102  (our own documentation)
