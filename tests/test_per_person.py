"""Per-person boards: the majority floor against a hand count, the synthetic per-person task's shape, person-ordinal
against the floor on it (K = 5 above, K = 0 not below), the majority guard keeping head and meta-mix at the floor
there (and silent on alignment tasks), and the coverage split of result.json recombining to the headline."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gpo_bench import runner
from gpo_bench.cards import load_method_card, load_task_card
from gpo_bench.data import Group, Item, TaskData
from gpo_bench.loaders import load_task
from gpo_bench.methods.base import Setup
from gpo_bench.metrics import majority_distributions, majority_for
from gpo_bench.protocol import draw_episode, make_split, visible_task
from gpo_bench.registry import METHODS
from gpo_bench.runner import RunSpec, execute
from gpo_bench.stats import paired_difference


def one_hot(n: int, k: int) -> np.ndarray:
    return np.eye(n)[k]


def mixed_width_task() -> TaskData:
    """People answering 3- and 4-option items; what each answered is planted so the hand count is easy."""
    items = {f"a{i}": Item(f"a{i}", f"a{i}", ("x", "y", "z")) for i in range(6)}
    items |= {f"b{i}": Item(f"b{i}", f"b{i}", ("w", "x", "y", "z")) for i in range(6)}
    rng = np.random.default_rng(1)
    groups = {}
    for p in range(10):
        targets = {i: one_hot(3, int(rng.choice(3, p=[0.2, 0.5, 0.3]))) for i in list(items)[:6] if rng.random() < 0.8}
        targets |= {i: one_hot(4, int(rng.choice(4, p=[0.1, 0.2, 0.3, 0.4]))) for i in list(items)[6:]}
        groups[f"p{p}"] = Group(f"p{p}", targets)
    return TaskData("mixed", "accuracy", items, groups)


def test_majority_floor_matches_a_hand_count_from_the_seen_people_only():
    task = mixed_width_task()
    split = make_split(task, "opinion", {}, 0.5, 0.2, 0)
    visible = visible_task(task, split)
    counts = {3: Counter(), 4: Counter()}
    for person in split.seen:
        for target in task.groups[person].targets.values():
            counts[len(target)][int(np.argmax(target))] += 1
    distributions = majority_distributions(visible)
    for width, counted in counts.items():
        total = sum(counted.values())
        assert distributions[width] == pytest.approx([counted[k] / total for k in range(width)])
    # a width no seen person answered: the pooled positions cut to it (here the 3-option items' and 4-option items'
    # first two positions), renormalized
    pooled = distributions[3][:2] + distributions[4][:2]
    assert majority_for(distributions, 2) == pytest.approx(pooled / pooled.sum())

    # the floor in the reference block: per test person the share of their targets at the majority position
    rows = []
    for seed in (0, 1):
        for person in split.test:
            for item in draw_episode(task, person, 2, seed, split).targets:
                rows.append({"seed": seed, "group": person, "item": item, "target": task.groups[person].targets[item]})
    block = runner.reference_block(task, rows, 0.6, majority=distributions)
    top = {w: max(counts[w], key=counts[w].get) for w in counts}
    by_person = {
        (s, p): [float(r["target"][top[len(r["target"])]] == 1) for r in rows if (r["seed"], r["group"]) == (s, p)]
        for s in (0, 1)
        for p in split.test
    }
    per_seed = [np.mean([np.mean(by_person[(s, p)]) for p in split.test]) for s in (0, 1)]
    assert block["floor"] == "majority"
    assert block["majority"] == pytest.approx(np.mean(per_seed))
    assert block["headroom"] == pytest.approx((0.6 - block["majority"]) / (1 - block["majority"]))
    # test people's answers never reach the floor: changing them leaves the distributions as they were
    changed = {g: Group(g, {i: np.roll(t, 1) for i, t in task.groups[g].targets.items()}) for g in split.test}
    other = TaskData("mixed", "accuracy", task.items, {**task.groups, **changed})
    for width, dist in majority_distributions(visible_task(other, split)).items():
        assert dist == pytest.approx(distributions[width])


@pytest.fixture(scope="module")
def synthetic_individual() -> TaskData:
    return load_task(load_task_card("synthetic_individual"), None)


def test_the_synthetic_per_person_task_has_the_per_person_layout(synthetic_individual):
    task = synthetic_individual
    card = load_task_card("synthetic_individual")
    assert card.metric == "accuracy" and card.protocol == "opinion"
    per_person = [len(g.targets) for g in task.groups.values()]
    assert len(task.groups) == card.source["people"] and set(per_person) == {card.source["per_person"]}
    for group in task.groups.values():
        for target in group.targets.values():
            assert len(target) == 5 and sorted(target) == [0, 0, 0, 0, 1]  # one-hot on the rating picked
    split = make_split(task, "opinion", {}, card.train_frac, card.val_frac, 0)
    seen_per_item = Counter(i for g in split.seen for i in task.groups[g].targets)
    assert 3 <= np.mean([seen_per_item[i] for i in task.items]) <= 10
    # one rating is the most common, but not overwhelmingly
    shares = np.bincount([int(np.argmax(t)) for g in task.groups.values() for t in g.targets.values()]) / sum(
        per_person
    )
    assert 0.35 < shares.max() < 0.7


def paired_accuracy(task: TaskData, method: str, shots: int, seeds=(0, 1)) -> tuple[np.ndarray, list[str]]:
    """`[seed, test person]` accuracy of a method (ties at their expected coin flip), fitted per seed."""
    card = load_task_card("synthetic_individual")
    split = make_split(task, "opinion", {}, card.train_frac, card.val_frac, 0)
    table = np.zeros((len(seeds), len(split.test)))
    for row, seed in enumerate(seeds):
        method_card = load_method_card(method)
        setup = Setup(visible_task(task, split), split, seed, "cpu", Path("/nonexistent"))
        fitted = METHODS.get(method_card.implementation)(method_card.settings, setup)
        fitted.fit()
        for col, person in enumerate(split.test):
            episode = draw_episode(task, person, shots, seed, split)
            scores = []
            for item, pred in zip(episode.targets, fitted.predict_episode(episode), strict=True):
                target = task.groups[person].targets[item]
                top = np.flatnonzero(pred == pred.max())
                scores.append(np.mean(target[top] == 1))
            table[row, col] = np.mean(scores)
    return table, list(split.test)


def test_person_ordinal_beats_majority_at_k5_and_is_not_below_it_at_k0(synthetic_individual):
    task = synthetic_individual
    at5, groups = paired_accuracy(task, "person-ordinal", 5)
    floor5, _ = paired_accuracy(task, "majority", 5)
    gain = paired_difference(at5, floor5, groups, seed=0)
    assert gain.mean > 0.02 and gain.ci[0] > 0, gain
    at0, _ = paired_accuracy(task, "person-ordinal", 0)
    floor0, _ = paired_accuracy(task, "majority", 0)
    assert paired_difference(at0, floor0, groups, seed=0).mean >= -0.005


def sparse_accuracy_task() -> TaskData:
    """People each answering a random third of the items, one-hot, so many target items have no seen answer."""
    rng = np.random.default_rng(4)
    items = {f"q{i:02d}": Item(f"q{i:02d}", f"question {i}", tuple(f"option {j}" for j in range(4))) for i in range(30)}
    groups = {}
    for g in range(14):
        chosen = sorted(rng.choice(sorted(items), size=10, replace=False))
        groups[f"g{g:02d}"] = Group(
            f"g{g:02d}", {i: one_hot(4, int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))) for i in chosen}
        )
    return TaskData("sparse", "accuracy", items, groups)


@pytest.mark.parametrize("method", ["population", "majority", "head"])
def test_coverage_split_shares_sum_to_one_and_recombine_to_the_headline(monkeypatch, tmp_path, method):
    task = sparse_accuracy_task()
    monkeypatch.setattr(runner, "load_task", lambda card, data_dir: task)
    spec = RunSpec("opinionqa_individual", method, encoder="bow", shots=(0, 2), seeds=(0,), train_frac=0.5)
    result = execute(spec, None, tmp_path, cache_dir=tmp_path / "cache")
    split = make_split(task, "opinion", {}, 0.5, 0.2, 0)
    answered = {i for g in split.seen for i in task.groups[g].targets}
    predictions = [
        __import__("json").loads(line) for line in (tmp_path / "runs" / result["run_id"] / "predictions.jsonl").open()
    ]
    for shots, cell in result["metrics"].items():
        coverage = cell["coverage"]
        parts = (coverage["answered"], coverage["unanswered"])
        assert sum(p["share"] for p in parts) == pytest.approx(1.0)
        assert 0 < coverage["unanswered"]["share"] < 1
        rows = [r for r in predictions if r["shots"] == int(shots)]
        for part, flag in zip(parts, (True, False), strict=True):
            subset = [r for r in rows if (r["item"] in answered) == flag]
            assert part["predictions"] == len(subset)
            per_person = {}
            for r in subset:
                per_person.setdefault(r["group"], []).append(r["score"])
            assert part["mean"] == pytest.approx(np.mean([np.mean(v) for v in per_person.values()]))
        # one seed: the pooled parts weighted by their shares are the pooled headline
        pooled = sum(p["share"] * p["pooled"] for p in parts)
        assert pooled == pytest.approx(cell["user_accuracy"]["pooled"])
        assert cell["fallbacks"]["ties_share"] == pytest.approx(cell["fallbacks"]["ties_broken"] / len(rows))


def run_result(tmp_path, task: str, method: str, shots: tuple[int, ...], seeds: tuple[int, ...]) -> dict:
    spec = RunSpec(task, method, encoder="bow", shots=shots, seeds=seeds, train_frac=0.4)
    return execute(spec, None, tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("method", ["head", "meta-mix"])
def test_learned_methods_are_not_below_the_majority_floor_on_synthetic_individual(tmp_path, method):
    """The majority guard: on per-person ratings (where head ties at K = 0 and neither reads a person's scale) each K
    of head and meta-mix is within .005 of the floor or above it, and the guard's choice per K is reported."""
    floor = run_result(tmp_path, "synthetic_individual", "majority", (0, 5), (0, 1))["metrics"]
    result = run_result(tmp_path, "synthetic_individual", method, (0, 5), (0, 1))
    for shots in ("0", "5"):
        ours, majority = result["metrics"][shots]["user_accuracy"]["mean"], floor[shots]["user_accuracy"]["mean"]
        assert ours >= majority - 0.005, (method, shots, ours, majority)
    for report in result["predict"].values():
        assert set(report["floor"]) == {"0", "5"}
        assert all(c["chosen"] in ("model", "majority") for c in report["floor"].values())


def test_the_majority_guard_is_inactive_on_alignment_tasks(tmp_path):
    """On an alignment task no method consults the floor: no guard report, no `majority` fallback."""
    for method in ("head", "meta-mix"):
        result = run_result(tmp_path, "synthetic", method, (0, 5), (0,))
        assert all("floor" not in report for report in result["predict"].values())
        assert all("majority" not in cell["fallbacks"] for cell in result["metrics"].values())
