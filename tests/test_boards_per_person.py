"""The boards' majority floor and coverage split, against figures computed here from the run folders' own
predictions.jsonl and the task's seen groups: the floor row and the ▼ mark of the leaderboard (md, csv, html), the
report and `compare`, the coverage parts and their paired differences, on per-person ratings (synthetic_individual),
on a sparse fixture with items no seen group answered (accuracy and alignment), and the majority guard's choice on
a pairwise protocol."""

import csv
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from test_leaderboard import write_run

import gpo_bench as gb
from gpo_bench import runner
from gpo_bench.cards import load_task_card
from gpo_bench.data import Group, Item, TaskData
from gpo_bench.loaders import load_task
from gpo_bench.plots import FLOOR_LABEL, shots_figure
from gpo_bench.protocol import make_split
from gpo_bench.render_coverage import FLOOR_ROW
from gpo_bench.report import task_board
from gpo_bench.runner import RunSpec, execute
from gpo_bench.stats import paired_difference


def predictions(output: Path, result: dict) -> list[dict]:
    path = output / "runs" / result["run_id"] / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def headline(rows: list[dict], value) -> float:
    """Mean over seeds of the mean over groups of the mean over a group's items of `value(row)`."""
    by_seed: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_seed[row["seed"]][row["group"]].append(value(row))
    return float(np.mean([np.mean([np.mean(v) for v in groups.values()]) for groups in by_seed.values()]))


def tie_accuracy(pred, target) -> float:
    pred, target = np.asarray(pred), np.asarray(target)
    top = np.flatnonzero(pred == pred.max())
    return float(np.mean(target[top] == target.max()))


def seen_majority(task: TaskData, seen: list[str]) -> dict[int, int]:
    """Per item width, the answer position the seen groups gave most often (counted by hand)."""
    counts: dict[int, Counter] = defaultdict(Counter)
    for group in seen:
        for target in task.groups[group].targets.values():
            counts[len(target)][int(np.argmax(target))] += 1
    return {width: counted.most_common(1)[0][0] for width, counted in counts.items()}


def board_rows(board_csv: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(board_csv)))


@pytest.fixture(scope="module")
def individual(tmp_path_factory):
    """majority, population and person-ordinal on synthetic_individual (K = 0, 5; seeds 0, 1)."""
    output = tmp_path_factory.mktemp("individual")
    results = {}
    for method in ("majority", "population", "person-ordinal"):
        spec = RunSpec("synthetic_individual", method, shots=(0, 5), seeds=(0, 1), train_frac=0.4)
        results[method] = execute(spec, None, output, cache_dir=output / "cache")
    return output, results


def test_the_floor_row_and_the_below_floor_mark_match_a_hand_count(individual):
    output, results = individual
    task = load_task(load_task_card("synthetic_individual"), None)
    split = results["population"]["split"]
    top = seen_majority(task, split["train"] + split["validation"])
    board = gb.leaderboard(gb.load_runs(output), shots=5)
    (column, _, _), *_ = board.columns
    rows = {r["row"]: r for r in board_rows(board.to_csv())}
    floor = rows[FLOOR_ROW]
    # the floor: the hand-counted majority position scored on the targets the population run was scored on
    expected = headline(
        [r for r in predictions(output, results["population"]) if r["shots"] == 5],
        lambda r: float(np.argmax(r["target"]) == top[len(r["target"])]),
    )
    assert float(floor["mean"]) == pytest.approx(expected, abs=1e-12)
    assert board.bounds[column].majority == pytest.approx(expected, abs=1e-12)
    markdown = board.to_markdown()
    assert (
        f"| *majority floor (always the seen groups' most common answer, same targets)* | {expected:.3f} |" in markdown
    )
    html = board.to_html()
    for method, result in results.items():
        mean = headline(
            [r for r in predictions(output, result) if r["shots"] == 5], lambda r: tie_accuracy(r["pred"], r["target"])
        )
        below = mean < expected - 1e-9
        assert float(rows[method]["mean"]) == pytest.approx(mean, abs=1e-9)
        assert rows[method]["below_floor"] == str(below).lower(), (method, mean, expected)
        assert float(rows[method]["headroom"]) == pytest.approx((mean - expected) / (1 - expected), abs=1e-9)
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {method} |"))
        assert line.endswith("▼ |") == below
        cell = html.split(f'data-row="{method}"', 1)[1].split("</td>", 1)[0]
        assert ('data-below-floor="true"' in cell) == below
    # what the data say: copying ~5 seen ratings per item is below the floor, person-ordinal is not
    assert rows["population"]["below_floor"] == "true" and rows["person-ordinal"]["below_floor"] == "false"


def test_the_report_and_compare_show_the_same_floor_and_mark(individual):
    output, results = individual
    runs = gb.load_runs(output)
    board, _ = task_board(list(runs))
    shown = {(e["method"], e["shots"]): e for e in board}
    for shots in (0, 5):
        leaderboard = gb.leaderboard(runs, shots=shots)
        (column, _, _), *_ = leaderboard.columns
        floor = leaderboard.bounds[column].majority
        for method in results:
            entry = shown[(method, shots)]
            assert entry["majority_floor"] == pytest.approx(floor, abs=1e-6)
            assert bool(entry["below_floor"]) == leaderboard.below_floor(method, column)
    fig, _, _ = shots_figure(list(runs), ["synthetic_individual"])
    (line,) = [line for line in fig.axes[0].get_lines() if line.get_label() == FLOOR_LABEL]
    floors = [gb.leaderboard(runs, shots=k).bounds[column].majority for k in (0, 5)]
    assert list(line.get_xdata()) == [0, 5] and list(line.get_ydata()) == pytest.approx(floors, abs=1e-12)
    pairing = gb.compare(runs, "population", "majority", task="synthetic_individual", shots=[5])
    (row,) = pairing.comparisons
    assert row.floor == pytest.approx(leaderboard.bounds[column].majority, abs=1e-12)
    assert row.below_floor() == (True, False)
    assert "K=5: majority floor" in str(pairing) and "A below it ▼" in str(pairing)


def sparse_task(metric: str) -> TaskData:
    """14 groups answering 6 of 60 items each (4 options): with 7 seen groups, about half of the test groups'
    items no seen group answered. Accuracy: one-hot answers; alignment: answer distributions."""
    rng = np.random.default_rng(3)
    items = {f"q{i:02d}": Item(f"q{i:02d}", f"question {i}", tuple(f"option {j}" for j in range(4))) for i in range(60)}
    groups = {}
    for g in range(14):
        chosen = sorted(rng.choice(sorted(items), size=6, replace=False))
        if metric == "accuracy":
            targets = {i: np.eye(4)[int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))] for i in chosen}
        else:
            targets = {i: rng.dirichlet([4.0, 3.0, 2.0, 1.0]) for i in chosen}
        groups[f"g{g:02d}"] = Group(f"g{g:02d}", targets)
    return TaskData("sparse", metric, items, groups)


@pytest.mark.parametrize(("card", "metric"), [("opinionqa_individual", "accuracy"), ("opinionqa", "alignment")])
def test_the_coverage_split_and_its_paired_differences_match_the_predictions(monkeypatch, tmp_path, card, metric):
    task = sparse_task(metric)
    monkeypatch.setattr(runner, "load_task", lambda card, data_dir: task)
    results = {}
    for method in ("population", "head"):
        spec = RunSpec(card, method, encoder="bow", shots=(2,), seeds=(0, 1), train_frac=0.5)
        results[method] = execute(spec, None, tmp_path, cache_dir=tmp_path / "cache")
    split = results["head"]["split"]
    answered = {i for g in split["train"] + split["validation"] for i in task.groups[g].targets}
    board = gb.leaderboard(gb.load_runs(tmp_path), versus="population")
    rows = {r["row"]: r for r in board_rows(board.to_csv())}
    head = "head [encoder=bow]"
    tables = {}
    for method, result in results.items():
        rows_k = predictions(tmp_path, result)
        row = rows[head if method == "head" else method]
        for part, flag in (("answered", True), ("unanswered", False)):
            subset = [r for r in rows_k if (r["item"] in answered) == flag]
            assert float(row[f"{part}_share"]) == pytest.approx(len(subset) / len(rows_k), abs=1e-12)
            assert float(row[f"{part}_mean"]) == pytest.approx(headline(subset, lambda r: r["score"]), abs=1e-9)
            table = defaultdict(list)
            for r in subset:
                table[(r["seed"], r["group"])].append(r["score"])
            tables[(method, part)] = {key: np.mean(v) for key, v in table.items()}
        assert 0.2 < float(row["unanswered_share"]) < 0.8  # both parts carry weight on this fixture
    for part in ("answered", "unanswered"):  # head − population by part, paired over (seed, group) here
        a, b = tables[("head", part)], tables[("population", part)]
        groups = sorted({g for _, g in a})
        matrix = [np.array([[t.get((s, g), np.nan) for g in groups] for s in (0, 1)]) for t in (a, b)]
        expected = paired_difference(*matrix, groups, seed=0)
        assert float(rows[head][f"diff_{part}_mean"]) == pytest.approx(expected.mean, abs=1e-9)
        assert float(rows[head][f"diff_{part}_ci_low"]) == pytest.approx(expected.ci[0], abs=1e-9)
    markdown = board.to_markdown()
    assert "## Where the score comes from" in markdown
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {head} |") and "answered" in line)
    assert f"unanswered {float(rows[head]['unanswered_share']):.1%}: {float(rows[head]['unanswered_mean']):.3f}" in line
    assert 'id="coverage"' in board.to_html()
    # the floor row only where the floor exists: accuracy
    assert ("majority floor" in markdown) == (metric == "accuracy")
    # compare prints the same split
    pairing = gb.compare(gb.load_runs(tmp_path), "head", "population", task=card)
    (comparison,) = pairing.comparisons
    assert comparison.parts["unanswered"].mean == pytest.approx(float(rows[head]["diff_unanswered_mean"]), abs=1e-12)
    assert comparison.shares["unanswered"] == pytest.approx(float(rows[head]["unanswered_share"]), abs=1e-12)
    assert "Where the difference comes from" in str(pairing)
    # the report's board row carries the same figures
    entry = next(e for e in task_board(list(gb.load_runs(tmp_path)))[0] if e["method"] == head)
    assert entry["unanswered"] == pytest.approx(float(rows[head]["unanswered_mean"]), abs=1e-6)


def test_boards_of_runs_without_the_blocks_render_as_before(individual, tmp_path):
    """Runs written before the floor and coverage blocks: no floor row, no mark, no coverage section."""
    output, results = individual
    for method, result in results.items():
        raw = json.loads((output / "runs" / result["run_id"] / "result.json").read_text())
        for cell in raw["metrics"].values():
            cell.pop("coverage")
            for key in ("majority", "majority_pooled", "majority_per_group", "majority_note"):
                cell["reference"].pop(key)
        folder = tmp_path / "runs" / method
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(raw))
    board = gb.leaderboard(gb.load_runs(tmp_path), shots=5)
    markdown = board.to_markdown()
    assert "majority floor" not in markdown and "▼" not in markdown and "Where the score comes from" not in markdown
    assert all(r["floor"] == "" and r["answered_share"] == "" for r in board_rows(board.to_csv()))


def test_the_majority_guard_stays_off_at_k_above_0_on_a_pairwise_protocol(tmp_path):
    """On a pairwise protocol `majority` is a position prior (how often the first response wins among the seen
    users' pools), near a coin flip: the guard does not replace a model by it at K > 0 (head answers from its model,
    no guard report, no majority fallback), and at K = 0 head, with nothing to go on, answers it."""
    spec = RunSpec("synthetic_pairwise", "head", encoder="bow", shots=(0, 5), seeds=(0,))
    result = execute(spec, None, tmp_path, cache_dir=tmp_path / "cache")
    assert all("floor" not in report for report in result["predict"].values())
    cells = result["metrics"]
    assert cells["0"]["fallbacks"]["majority"] == cells["0"]["fallbacks"]["predictions"]
    assert "majority" not in cells["5"]["fallbacks"]
    # the floor is the position prior counted by hand from the seen users' pools, scored on the test targets
    task = load_task(load_task_card("synthetic_pairwise"), None)
    split = make_split(task, "pairwise", {}, result["spec"]["train_frac"], 0.2, 0)
    assert list(split.train) == result["split"]["train"]
    first = np.mean([np.argmax(task.groups[u].targets[i]) == 0 for u in split.seen for i in split.pools[u]])
    rows = [r for r in predictions(tmp_path, result) if r["shots"] == 5]
    floor = headline(rows, lambda r: float(np.argmax(r["target"]) == (0 if first > 0.5 else 1)))
    assert cells["5"]["reference"]["majority"] == pytest.approx(floor, abs=1e-12)
    assert abs(first - 0.5) < 0.1 and abs(floor - 0.5) < 0.1  # a coin flip, not a competitor
    assert len({int(np.argmax(r["pred"])) for r in rows}) == 2  # head's own answers at K = 5, both positions


def test_a_pooled_accuracy_column_takes_the_pooled_majority_as_its_floor(tmp_path):
    """PersonalRewardBench's headline pools items: its floor is `majority_pooled` (not the per-user `majority`), and
    a run whose reference block lacks it leaves the column without a floor row, as before."""
    pooled = {"gpo": 0.58, "head": 0.52}  # pooled accuracies; the floor is set between them
    for method, value in pooled.items():
        folder = write_run(tmp_path, method, "personal_reward_bench", method, 0, {}, metric="accuracy")
        result = json.loads((folder / "result.json").read_text())
        users = {"u1": value - 0.1, "u2": value + 0.1}
        reference = {"uniform": 0.5, "ceiling": None, "ceiling_note": "not available: defined for alignment tasks"}
        reference |= {"majority": 0.61, "majority_pooled": 0.55, "headroom": None}
        result["metrics"] = {
            "5": {
                "user_accuracy": {"per_group": users, "n_items": 40},
                "accuracy": {"mean": value, "ci": [0, 1]},
                "reference": reference,
            }
        }
        (folder / "result.json").write_text(json.dumps(result))
    board = gb.leaderboard(gb.load_runs(tmp_path))
    (column, _, _), *_ = board.columns
    assert board.bounds[column].majority == 0.55
    rows = {r["row"]: r for r in board_rows(board.to_csv())}
    for method, value in pooled.items():
        assert float(rows[method]["headroom"]) == pytest.approx((value - 0.55) / 0.45)
        assert rows[method]["below_floor"] == str(value < 0.55).lower()
    for method in pooled:  # runs written before majority_pooled: no floor on the pooled column
        path = tmp_path / "runs" / method / "result.json"
        result = json.loads(path.read_text())
        del result["metrics"]["5"]["reference"]["majority_pooled"]
        path.write_text(json.dumps(result))
    board = gb.leaderboard(gb.load_runs(tmp_path))
    assert not board.bounds and "majority floor" not in board.to_markdown()
