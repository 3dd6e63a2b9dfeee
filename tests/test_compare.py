"""Paired comparisons, the sampling ceiling and headroom end to end on the real shared OpinionQA rows: `gpo-bench
compare` pairs runs over the same episodes (and refuses runs whose episodes differ, saying what differs), and the
leaderboard shows the ceiling row, headroom and paired differences, with published rows only at their own K."""

import json
import re

import numpy as np
import pytest

import gpo_bench as gb
from gpo_bench.cli import main
from gpo_bench.references import Column
from gpo_bench.render import CEILING_ROW
from gpo_bench.stats import paired_difference


def build(root, tasks=None, encoder=None, shots=None, versus=None):
    """The board `gpo-bench leaderboard` writes for `root`, through the Python API."""
    return gb.leaderboard(gb.load_runs(root, task=tasks, encoder=encoder), shots, versus)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    common = ["--task", "opinionqa", "--data-dir", str(data_dir), "--output-dir", str(out), "--limit-items", "60"]
    for method in ("uniform", "population", "group-mix"):
        assert main(["run", "--method", method, "--shots", "0,5", "--seeds", "0,1", *common]) == 0
    assert main(["run", "--method", "group-knn", "--shots", "5", "--seeds", "0", *common]) == 0
    return out


def per_seed(out, method: str, shots: str) -> dict:
    (path,) = [p for p in (out / "runs").glob(f"opinionqa--{method}--*/result.json")]
    return json.loads(path.read_text())["metrics"][shots]


def test_compare_prints_the_paired_difference_of_the_same_episodes(runs, capsys):
    assert main(["compare", "--task", "opinionqa", "--methods", "group-mix,population", "--output-dir", str(runs)]) == 0
    printed = capsys.readouterr().out
    a, b = per_seed(runs, "group-mix", "5"), per_seed(runs, "population", "5")
    groups = sorted(a["alignment"]["per_group"])
    table = {
        name: np.array([[c["alignment"]["per_seed"][s][g] for g in groups] for s in ("0", "1")])
        for name, c in (("a", a), ("b", b))
    }
    expected = paired_difference(table["a"], table["b"], groups, seed=0)
    line = next(ln for ln in printed.splitlines() if re.match(r"\s+5\s+overall", ln))
    assert f"{expected.mean:+.4f}" in line
    assert f"[{expected.ci[0]:+.4f}, {expected.ci[1]:+.4f}]" in line
    assert f"{expected.wins}/{expected.ties}/{expected.losses}" in line
    assert expected.mean == pytest.approx(a["alignment"]["mean"] - b["alignment"]["mean"])
    # K = 0: both are population, so every group ties
    zero = next(ln for ln in printed.splitlines() if re.match(r"\s+0\s+overall", ln))
    assert f"0/{len(groups)}/0" in zero and "+0.0000" in zero


def test_a_method_name_is_its_plain_row_beside_its_variants(data_dir, tmp_path, capsys):
    common = ["--task", "opinionqa", "--data-dir", str(data_dir), "--output-dir", str(tmp_path)]
    for extra in ([], ["--set", "prior=[1.0]"], ["--set", "prior=[10.0]"]):
        assert main(["run", "--method", "group-mix", "--shots", "5", "--seeds", "0", *common, *extra]) == 0
    capsys.readouterr()
    args = ["compare", "--task", "opinionqa", "--output-dir", str(tmp_path), "--methods"]
    assert main([*args, "group-mix,group-mix [prior=[1.0]]"]) == 0
    assert "A = group-mix, B = group-mix [prior=[1.0]]" in capsys.readouterr().out
    for folder in (tmp_path / "runs").iterdir():  # without the plain row, the name alone is ambiguous
        if gb.read_run(folder).row == "group-mix":
            folder.rename(tmp_path / folder.name)
    assert main([*args, "group-mix,group-mix [prior=[1.0]]"]) == 2
    assert "'group-mix' names several rows" in capsys.readouterr().err


def test_other_seed_sets_are_paired_on_their_common_seeds_saying_so(runs, capsys):
    assert main(["compare", "--task", "opinionqa", "--methods", "group-knn,population", "--output-dir", str(runs)]) == 0
    printed = capsys.readouterr().out
    assert "note: paired on the common seeds [0] at K=5 (A ran seeds [0], B ran [0, 1])" in printed
    a, b = per_seed(runs, "group-knn", "5"), per_seed(runs, "population", "5")
    groups = sorted(a["alignment"]["per_group"])
    expected = paired_difference(
        *(np.array([[c["alignment"]["per_seed"]["0"][g] for g in groups]]) for c in (a, b)), groups, seed=0
    )
    line = next(ln for ln in printed.splitlines() if re.match(r"\s+5\s+overall", ln))
    assert f"{expected.mean:+.4f}" in line and f"[{expected.ci[0]:+.4f}, {expected.ci[1]:+.4f}]" in line


def test_compare_refuses_runs_whose_episodes_differ(runs, data_dir, capsys):
    # K that one side never ran: named, with the K each side ran
    args = ["compare", "--task", "opinionqa", "--methods", "group-knn,population", "--shots", "0"]
    assert main([*args, "--output-dir", str(runs)]) == 2
    assert "K=[0] not run by both sides (A ran K=[5], B ran K=[0, 5])" in capsys.readouterr().err
    # other data: the same method on fewer items, compared by folder
    other = runs / "other"
    common = ["--task", "opinionqa", "--data-dir", str(data_dir), "--output-dir", str(other), "--shots", "0,5"]
    assert main(["run", "--method", "population", "--seeds", "0,1", "--limit-items", "40", *common]) == 0
    (mine,) = (runs / "runs").glob("opinionqa--uniform--*")
    (theirs,) = (other / "runs").glob("opinionqa--population--*")
    assert main(["compare", "--runs", str(mine), str(theirs)]) == 2
    assert "the data differ (fingerprints" in capsys.readouterr().err


def test_result_json_holds_floor_ceiling_and_headroom(runs):
    cell = per_seed(runs, "group-mix", "5")
    reference = cell["reference"]
    assert reference["uniform"] < cell["alignment"]["mean"] < reference["ceiling"] < 1
    expected = (cell["alignment"]["mean"] - reference["uniform"]) / (reference["ceiling"] - reference["uniform"])
    assert reference["headroom"] == pytest.approx(expected)
    assert per_seed(runs, "uniform", "5")["reference"]["uniform"] == pytest.approx(
        per_seed(runs, "uniform", "5")["alignment"]["mean"]
    )


def test_leaderboard_shows_ceiling_headroom_and_differences_and_published_rows_only_at_their_k(runs):
    board = build(runs, shots=5)
    column = Column("opinionqa", 0.4)
    assert board.bounds[column].ceiling == pytest.approx(per_seed(runs, "uniform", "5")["reference"]["ceiling"])
    mix, population = "group-mix [limit_items=60]", "population [limit_items=60]"
    assert board.cells[(mix, column)].headroom == pytest.approx(
        per_seed(runs, "group-mix", "5")["reference"]["headroom"]
    )
    assert board.versus[column] == mix  # the strongest simple baseline of the column
    assert (population, column) in board.differences
    markdown = board.to_markdown()
    assert CEILING_ROW in markdown and "## Paired differences" in markdown
    board_rows = markdown.split("## Published numbers")[0].split("| --- |")[1]
    assert "reported by the paper" not in board_rows  # the paper's numbers are at K = 20
    html = board.to_html()
    assert 'data-source="sampling ceiling"' in html and 'data-shots="5"' in html
    assert not re.search(r'data-source="reported by the paper"[^>]*data-shots="5"', html)
    at_paper_k = build(runs, shots=5, versus="population")
    assert at_paper_k.versus[column] == population
