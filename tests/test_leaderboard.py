"""The leaderboard from fixture run folders (result.json files written directly): cell values are the means
of the runs, CIs are the documented bootstrap, reference rows are present and marked, broken folders are
reported and skipped, and the HTML holds the same numbers as the CSV."""

import csv
import json
import logging
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import gpo_bench as gb
from gpo_bench.aggregate import CI_SEED
from gpo_bench.cards import load_method_card
from gpo_bench.cli import main
from gpo_bench.encoders import EncoderSpec
from gpo_bench.references import Column, load_references
from gpo_bench.stats import bootstrap_ci, pooled_bootstrap_ci

GROUPS = ["g1", "g2", "g3", "g4"]


def build(root, tasks=None, encoder=None, shots=None, versus=None):
    """The board `gpo-bench leaderboard` writes for `root`, through the Python API."""
    return gb.leaderboard(gb.load_runs(root, task=tasks, encoder=encoder), shots, versus)


def write_run(
    root: Path,
    name: str,
    task: str,
    method: str,
    seed: int,
    per_group: dict[int, dict[str, float]],
    train_frac: float = 0.4,
    settings: dict | None = None,
    encoder: str | None = None,
    metric: str = "alignment",
    extra: dict | None = None,
) -> Path:
    """A minimal result.json in root/runs/<name>/: per K, the headline's per-group values (and `extra`
    blocks merged into each metrics cell)."""
    metrics = {}
    for shots, values in per_group.items():
        summary = {"mean": sum(values.values()) / max(1, len(values)), "ci": [0, 1], "per_group": values, "n_items": 10}
        metrics[str(shots)] = {metric: summary, "capped_shots": {}, **(extra or {})}
    result = {
        "run_id": name,
        "spec": {
            "task": task,
            "method": method,
            "encoder": encoder,
            "settings": settings or {},
            "train_frac": train_frac,
            "seeds": [seed],
            "split_seed": 0,
            "limit_items": None,
        },
        "metric": metric,
        "metrics": metrics,
        "data": {"fingerprint": "same"},
    }
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def opinion_runs(root: Path) -> dict[str, np.ndarray]:
    """Three seeds of uniform and population on opinionqa (K = 0, 5, 20) and one of globalopinionqa;
    returns the seeds × groups tables at K=20."""
    rng = np.random.default_rng(1)
    tables = {}
    for method, level in (("uniform", 0.8), ("population", 0.9)):
        table = level + rng.uniform(-0.05, 0.05, size=(3, len(GROUPS)))
        for seed, row in enumerate(table):
            values = {g: float(v) for g, v in zip(GROUPS, row, strict=True)}
            per_k = {0: {g: v - 0.02 for g, v in values.items()}, 5: {g: v - 0.01 for g, v in values.items()}}
            write_run(root, f"opinionqa--{method}--{seed}", "opinionqa", method, seed, {**per_k, 20: values})
        tables[method] = table
    write_run(root, "globalopinionqa--uniform--0", "globalopinionqa", "uniform", 0, {20: {"Japan": 0.7, "Peru": 0.6}})
    return tables


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_cells_are_the_means_of_the_runs_with_the_documented_ci(tmp_path):
    tables = opinion_runs(tmp_path)
    board = build(tmp_path)
    column = Column("opinionqa", 0.4)
    assert [(c, k) for c, k, _ in board.columns] == [(Column("globalopinionqa", 0.4), 20), (column, 20)]
    for method, table in tables.items():
        cell = board.cells[(method, column)]
        run_means = table.mean(axis=1)  # each run's mean over its groups
        assert cell.mean == pytest.approx(run_means.mean(), abs=1e-12)
        assert cell.ci == bootstrap_ci(table, CI_SEED)  # seeds × groups, resampling both
        assert cell.n == 3 and cell.seeds == (0, 1, 2) and cell.n_groups == 4
    assert board.rows == ["population", "uniform"]  # ranked by mean

    # the same three seeds of population in one run (as a sweep writes GPO's): the same cell, n = 3 seeds
    together = tmp_path / "together"
    folder = write_run(together, "population", "opinionqa", "population", 0, {20: {}})
    result = json.loads((folder / "result.json").read_text())
    result["spec"]["seeds"] = [0, 1, 2]
    block = result["metrics"]["20"]["alignment"]
    block["per_seed"] = {
        str(s): dict(zip(GROUPS, map(float, row), strict=True)) for s, row in enumerate(tables["population"])
    }
    block["per_group"] = dict(zip(GROUPS, map(float, tables["population"].mean(axis=0)), strict=True))
    (folder / "result.json").write_text(json.dumps(result))
    one_run = build(together).cells[("population", column)]
    assert one_run == board.cells[("population", column)] and one_run.n == 3

    at_five = build(tmp_path, shots=5)
    assert at_five.cells[("uniform", column)].mean == pytest.approx(tables["uniform"].mean() - 0.01, abs=1e-12)
    assert [c.task for c, _, _ in at_five.columns] == ["opinionqa"]  # globalopinionqa has no K=5
    assert any("no run has K=5" in note for note in at_five.notes)

    only_global = build(tmp_path, tasks=["globalopinionqa"])
    assert only_global.cells[("uniform", Column("globalopinionqa", 0.4))].mean == pytest.approx(0.65)


def test_a_cells_ci_does_not_depend_on_the_run_folders_names(tmp_path):
    rng = np.random.default_rng(3)
    table = 0.8 + rng.uniform(-0.05, 0.05, size=(3, len(GROUPS)))
    for seed, name in zip((0, 1, 2), ("c", "a", "b"), strict=True):  # folder names sort as seeds 1, 2, 0
        write_run(tmp_path, name, "opinionqa", "uniform", seed, {20: dict(zip(GROUPS, table[seed], strict=True))})
    cell = build(tmp_path).cells[("uniform", Column("opinionqa", 0.4))]
    assert cell.ci == bootstrap_ci(table, CI_SEED)  # rows in seed order
    assert bootstrap_ci(table[[1, 2, 0]], CI_SEED) != cell.ci  # the order would matter otherwise


def test_runs_with_other_settings_or_encoders_are_their_own_rows(tmp_path):
    values = {20: {"g1": 0.9, "g2": 0.8}}
    minilm, bow = EncoderSpec.parse("minilm").label(), EncoderSpec.parse("bow").label()
    write_run(
        tmp_path, "a", "opinionqa", "knn", 0, values, settings={"neighbors": 10, "temperature": 0.05}, encoder=minilm
    )
    write_run(
        tmp_path, "b", "opinionqa", "knn", 0, values, settings={"neighbors": 3, "temperature": 0.05}, encoder=minilm
    )
    write_run(
        tmp_path, "c", "opinionqa", "knn", 0, values, settings={"neighbors": 10, "temperature": 0.05}, encoder=bow
    )
    write_run(
        tmp_path, "d", "opinionqa", "knn", 1, values, settings={"neighbors": 10, "temperature": 0.05}, encoder=minilm
    )
    old = write_run(tmp_path, "e", "opinionqa", "knn", 1, values, encoder=minilm)  # the card has changed since
    result = json.loads((old / "result.json").read_text())
    result["spec"]["method_version"] = load_method_card("knn").version - 1
    (old / "result.json").write_text(json.dumps(result))
    board = build(tmp_path)
    previous = f"knn [card v{result['spec']['method_version']}]"
    assert sorted(board.rows) == sorted(["knn", "knn [encoder=bow]", "knn [neighbors=3]", previous])
    assert board.cells[("knn", Column("opinionqa", 0.4))].n == 2
    assert [r.row for r in gb.load_runs(tmp_path, encoder=bow)] == ["knn [encoder=bow]"]


def test_a_language_model_row_names_its_model_even_the_cards_default(tmp_path):
    values = {20: {"g1": 0.9, "g2": 0.8}}
    default = load_method_card("lm-base").settings
    write_run(tmp_path, "a", "opinionqa", "lm-base", 0, values, settings=dict(default))
    write_run(tmp_path, "b", "opinionqa", "lm-base", 0, values, settings={**default, "model": "/models/llama-7b"})
    write_run(tmp_path, "c", "opinionqa", "knn", 0, values, settings=dict(load_method_card("knn").settings))
    assert sorted(build(tmp_path).rows) == sorted(
        ["knn", f"lm-base [model={default['model']}]", "lm-base [model=/models/llama-7b]"]
    )


def test_reference_rows_are_present_marked_and_not_mixed_in(tmp_path):
    tables = opinion_runs(tmp_path)
    board = build(tmp_path)
    board.write(tmp_path)
    markdown = (tmp_path / "leaderboard.md").read_text()
    gpo_line = next(line for line in markdown.splitlines() if line.startswith("| GPO · Alpaca-7b"))
    assert "*reported by the paper* [1]" in gpo_line and "0.920" in gpo_line  # the 40% split
    assert "[1] Zhao, Dang & Grover, Group Preference Optimization" in markdown
    uniform_line = next(line for line in markdown.splitlines() if line.startswith("| uniform |"))
    assert f"{tables['uniform'].mean():.3f}" in uniform_line and "n=3" in uniform_line

    rows = read_csv(tmp_path / "leaderboard.csv")
    reported = [r for r in rows if r["source"] == "reported by the paper"]
    assert {r["citation"] for r in reported} >= {load_references()[0].citation}
    gpo = [r for r in reported if r["task"] == "opinionqa" and r["method"] == "gpo" and r["model"] == "Alpaca-7b"]
    assert [(float(r["train_frac"]), float(r["mean"])) for r in gpo] == [(0.4, 0.92), (0.6, 0.925), (0.8, 0.946)]
    prism = [
        r
        for r in reported
        if r["task"] == "prism_personalized" and r["model"] == "Llama-3.1-8B" and r["method"] == "gpo"
    ]
    assert [float(r["mean"]) for r in prism] == [pytest.approx(0.5729)]  # 57.29% as a fraction
    ours = [r for r in rows if r["source"] == "gpo-bench" and r["row"] == "uniform" and r["task"] == "opinionqa"]
    assert float(ours[0]["mean"]) == pytest.approx(tables["uniform"].mean(), abs=1e-12)  # not 0.824


def test_a_broken_result_is_reported_and_skipped(tmp_path, caplog, capsys):
    opinion_runs(tmp_path)
    broken = tmp_path / "runs" / "opinionqa--gpo--broken"
    broken.mkdir()
    (broken / "result.json").write_text('{"spec": {"task": "opinionqa"')  # cut short
    empty = write_run(tmp_path, "opinionqa--head--empty", "opinionqa", "head", 0, {20: {}})
    with caplog.at_level(logging.WARNING):
        assert main(["leaderboard", "--output-dir", str(tmp_path)]) == 0
    for folder in (broken, empty):
        assert any(str(folder) in record.getMessage() for record in caplog.records)
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert f"skipped run folder {broken}" in markdown and f"skipped run folder {empty}" in markdown
    assert "| gpo" not in markdown and "| head" not in markdown
    assert "wrote" in capsys.readouterr().out


class CellParser(HTMLParser):
    """Collects the data-* attributes and text of every <td> that carries a number."""

    def __init__(self):
        super().__init__()
        self.cells, self.current = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-mean" in attrs:
            self.current = {**attrs, "text": ""}

    def handle_data(self, data):
        if self.current is not None:
            self.current["text"] += data

    def handle_endtag(self, tag):
        if tag == "td" and self.current is not None:
            self.cells.append(self.current)
            self.current = None


def test_the_html_parses_and_holds_the_numbers_of_the_csv(tmp_path):
    opinion_runs(tmp_path)
    build(tmp_path).write(tmp_path)
    parser = CellParser()
    parser.feed((tmp_path / "leaderboard.html").read_text())
    parser.close()
    html_cells = {
        (c["data-row"], c["data-task"], float(c["data-train-frac"]), c["data-subset"], int(c["data-shots"])): c
        for c in parser.cells
        if c["data-source"] == "gpo-bench"
    }
    ours = [r for r in read_csv(tmp_path / "leaderboard.csv") if r["source"] == "gpo-bench"]
    assert len(ours) == len(html_cells) == 3
    for row in ours:
        cell = html_cells[(row["row"], row["task"], float(row["train_frac"]), row["subset"], int(row["shots"]))]
        assert (cell["data-mean"], cell["data-ci-low"], cell["data-ci-high"]) == (
            row["mean"],
            row["ci_low"],
            row["ci_high"],
        )
        assert cell["data-n"] == row["n"]
        mean, low, high = (float(row[k]) for k in ("mean", "ci_low", "ci_high"))
        assert cell["text"] == f"{mean:.3f} [{low:.3f}, {high:.3f}] n={row['n']}"
    references = [c for c in parser.cells if c["data-source"] == "reported by the paper"]
    assert {(c["data-row"], float(c["data-mean"])) for c in references if c["data-task"] == "opinionqa"} >= {
        ("GPO · Alpaca-7b", 0.92),
        ("uniform · Alpaca-7b", 0.824),
    }


def test_pooled_accuracy_with_seen_and_unseen_columns(tmp_path):
    def block(pooled: float, users: dict[str, float]) -> dict:
        return {"user_accuracy": {"per_group": users, "n_items": 40}, "accuracy": {"mean": pooled, "ci": [0, 1]}}

    for seed, (pooled, seen) in enumerate([(0.6, 0.7), (0.65, 0.75)]):
        cell = {
            **block(pooled, {"u1": 0.5, "u2": 0.7}),
            "seen": block(seen, {"u1": 0.5}),
            "unseen": block(0.5, {"u2": 0.7}),
        }
        folder = write_run(tmp_path, f"prism--gpo--{seed}", "prism_personalized", "gpo", seed, {}, metric="accuracy")
        result = json.loads((folder / "result.json").read_text())
        result["metrics"] = {"20": {**cell, "capped_shots": {}}}
        (folder / "result.json").write_text(json.dumps(result))
    board = build(tmp_path)
    assert [c.subset for c, _, _ in board.columns] == ["overall", "seen", "unseen"]
    overall = board.cells[("gpo", Column("prism_personalized", 0.4))]
    assert overall.mean == pytest.approx(0.625)
    items = [np.repeat([1.0, 0.0], [24, 16]), np.repeat([1.0, 0.0], [26, 14])]
    assert overall.ci == pooled_bootstrap_ci(items, CI_SEED)
    assert board.cells[("gpo", Column("prism_personalized", 0.4, "seen"))].mean == pytest.approx(0.725)
    # PersonalRewardBench's pooled GPO accuracy (57.29%) is shown; MRM's user-level numbers are not (other metric)
    labels = {label for label, _, _ in board.reference_rows()}
    assert "GPO · Llama-3.1-8B" in labels and "GPO · Skywork-Reward-Llama-3.1-8B" not in labels


@pytest.mark.parametrize(("metric", "shown"), [("user_accuracy", True), ("accuracy", False)])
def test_references_only_join_columns_of_their_metric(tmp_path, metric, shown):
    """MRM reports user-level accuracy on PRISM's unseen users: a reference row under a user_accuracy
    column, never under a pooled-accuracy one."""
    users = {"user_accuracy": {"per_group": {"u1": 0.6}, "n_items": 10}, "accuracy": {"mean": 0.6, "ci": [0, 1]}}
    folder = write_run(tmp_path, "prism--gpo--0", "prism", "gpo", 0, {}, metric=metric)
    result = json.loads((folder / "result.json").read_text())
    result["metrics"] = {"20": {**users, "seen": users, "unseen": users, "capped_shots": {}}}
    (folder / "result.json").write_text(json.dumps(result))
    board = build(tmp_path)
    rows = {(label, source): values for label, source, values in board.reference_rows()}
    if shown:
        unseen = Column("prism", 0.4, "unseen")
        assert rows == {
            ("GPO · Skywork-Reward-Llama-3.1-8B", "mrm"): {unseen: 0.642},
            ("MRM · Skywork-Reward-Llama-3.1-8B", "mrm"): {unseen: 0.652},
        }
        markdown = board.to_markdown()
        assert "| GPO · Skywork-Reward-Llama-3.1-8B, *reported by the paper* [3] | — | — | 0.642 |" in markdown
    else:
        assert rows == {}


def test_a_missing_k_or_versus_is_an_error_naming_what_exists(tmp_path, capsys):
    opinion_runs(tmp_path)
    out = ["--output-dir", str(tmp_path)]
    assert main(["leaderboard", *out, "--shots", "7"]) == 2
    assert "no runs have K=7 (runs have K=[0, 5, 20])" in capsys.readouterr().err
    assert main(["plot", "groups", "--task", "opinionqa", *out, "--shots", "7"]) == 2
    assert "have K=7 (runs have K=[0, 5, 20])" in capsys.readouterr().err
    assert main(["compare", "--task", "opinionqa", "--methods", "population,uniform", *out, "--shots", "7"]) == 2
    assert "K=[7] not run by both sides (A ran K=[0, 5, 20], B ran K=[0, 5, 20])" in capsys.readouterr().err
    assert main(["leaderboard", *out, "--versus", "nosuch"]) == 2
    assert "--versus 'nosuch' names no row; rows: population, uniform" in capsys.readouterr().err
    assert not (tmp_path / "leaderboard.md").exists()
    assert main(["leaderboard", *out, "--versus", "uniform"]) == 0
    paired = (tmp_path / "leaderboard.md").read_text().split("## Paired differences")[1]
    assert "K=20 (alignment) vs uniform" in paired and re.search(r"\| population \|.* \+0\.\d{3} \[", paired)


def test_a_second_board_at_another_k_goes_into_its_own_folder(tmp_path):
    opinion_runs(tmp_path)
    k20 = tmp_path / "leaderboard.md"
    assert main(["leaderboard", "--output-dir", str(tmp_path)]) == 0
    before = k20.read_text()
    out = ["--output-dir", str(tmp_path)]
    assert main(["leaderboard", *out, "--shots", "5", "--board-dir", str(tmp_path / "k5")]) == 0
    assert k20.read_text() == before
    k5 = (tmp_path / "k5" / "leaderboard.md").read_text()
    assert "K=5 (alignment)" in k5 and "K=20" not in k5
    assert {p.name for p in (tmp_path / "k5").iterdir()} == {"leaderboard.md", "leaderboard.csv", "leaderboard.html"}


def test_failed_and_unfinished_run_folders_are_named_where_they_are_skipped(tmp_path, caplog):
    opinion_runs(tmp_path)
    failed = tmp_path / "runs" / "opinionqa--gpo--failed"
    failed.mkdir()
    (failed / "error.json").write_text(json.dumps({"error": "RuntimeError: out of memory"}))
    unfinished = tmp_path / "runs" / "opinionqa--head--running"
    unfinished.mkdir()
    with caplog.at_level(logging.WARNING):
        assert main(["leaderboard", "--output-dir", str(tmp_path)]) == 0
        assert main(["report", "--output-dir", str(tmp_path)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for message in (
        f"skipped run folder {failed}: the run failed (RuntimeError: out of memory)",
        f"skipped run folder {unfinished}: unfinished (no result.json yet)",
    ):
        assert warnings.count(message) == 2  # once by the leaderboard, once by the report
        assert message in (tmp_path / "leaderboard.md").read_text()
        assert json.dumps(message)[1:-1] in (tmp_path / "report" / "data" / "index.js").read_text()
