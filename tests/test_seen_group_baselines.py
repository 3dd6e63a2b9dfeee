"""The baselines that mix the seen groups (population, group-knn, group-mix) on tasks built in the test: they back
off item by item on sparse sources and count it, group-mix recovers a planted mixture, and on an accuracy task no
method falls below chance because of tied predictions (head and knn answer the majority at K = 0)."""

from pathlib import Path

import numpy as np
import pytest

from gpo_bench import runner
from gpo_bench.cards import load_method_card
from gpo_bench.data import Group, Item, TaskData
from gpo_bench.methods.base import Setup
from gpo_bench.protocol import draw_episode, make_split, visible_task
from gpo_bench.registry import METHODS
from gpo_bench.runner import RunSpec, execute

N_OPTIONS = 5


def sparse_task(metric: str, n_groups: int = 12, n_items: int = 40, answered: int = 12, seed: int = 0) -> TaskData:
    """Groups that each answer a different random subset of the items: Dirichlet distributions (alignment)
    or one person's one-hot choice (accuracy)."""
    rng = np.random.default_rng(seed)
    items = {
        f"q{i:02d}": Item(f"q{i:02d}", f"question {i} about topic {i % 7}", tuple(f"option {j}" for j in range(5)))
        for i in range(n_items)
    }
    groups = {}
    for g in range(n_groups):
        chosen = sorted(rng.choice(sorted(items), size=answered, replace=False))
        if metric == "accuracy":
            targets = {i: np.eye(N_OPTIONS)[rng.integers(N_OPTIONS)] for i in chosen}
        else:
            targets = {i: rng.dirichlet(np.ones(N_OPTIONS)) for i in chosen}
        groups[f"g{g:02d}"] = Group(f"g{g:02d}", targets)
    return TaskData("sparse", metric, items, groups)


def method_for(name: str, task: TaskData, split, seed: int = 0):
    card = load_method_card(name)
    setup = Setup(visible_task(task, split), split, seed, "cpu", Path("/nonexistent"))
    return METHODS.get(card.implementation)(card.settings, setup)


def test_group_knn_never_predicts_uniform_for_an_item_some_seen_group_answered():
    task = sparse_task("alignment")
    split = make_split(task, "opinion", {}, 0.5, 0.2, 0)
    method = method_for("group-knn", task, split)
    answered_by_seen = {i for g in split.seen for i in task.groups[g].targets}
    checked = 0
    for shots in (1, 2, 5):
        episodes = [draw_episode(task, g, shots, 0, split) for g in split.test]
        for episode, preds in zip(episodes, method.predict(episodes), strict=True):
            for item, pred in zip(episode.targets, preds, strict=True):
                is_uniform = np.allclose(pred, 1 / N_OPTIONS)
                assert is_uniform == (item not in answered_by_seen), (episode.group, item, shots)
                checked += item in answered_by_seen
    assert checked > 50
    # every back-off was counted, and only to what the data allowed
    kinds = {kind for _, kind in method.fallbacks}
    assert kinds <= {"population", "uniform"} and method.fallbacks


def test_group_mix_recovers_a_planted_mixture_of_two_seen_groups():
    rng = np.random.default_rng(3)
    items = {f"q{i}": Item(f"q{i}", f"q{i}", tuple("abcd")) for i in range(60)}
    seen = {f"s{g}": {i: rng.dirichlet(np.ones(4) * 0.5) for i in items} for g in range(5)}
    mixed = {i: 0.7 * seen["s0"][i] + 0.3 * seen["s1"][i] for i in items}
    groups = {g: Group(g, t) for g, t in {**seen, "test": mixed}.items()}
    task = TaskData("planted", "alignment", items, groups)
    split = make_split(task, "opinion", {}, 0.8, 0.2, 0)
    split = type(split)(train=tuple(sorted(seen))[:-1], validation=(sorted(seen)[-1],), test=("test",))
    for name, floor in (("group-mix", 0.99), ("population", None)):
        method = method_for(name, task, split)
        for shots in (5, 20):
            episode = draw_episode(task, "test", shots, 0, split)
            preds = method.predict_episode(episode)
            score = np.mean(
                [runner.item_score("alignment", p, mixed[i], None) for i, p in zip(episode.targets, preds, strict=True)]
            )
            if floor is not None:
                assert score >= floor, (name, shots, score)
            else:
                assert score < 0.95  # the equal mixture of the five is far from 0.7 A + 0.3 B


def test_group_mix_backs_off_to_equal_weights_where_every_answering_group_has_weight_zero():
    """Weights can underflow to exactly 0; an item answered only by such groups then had no mixture
    (0 / 0: NaN in the fit and in the cross-validation errors that choose the prior)."""
    from gpo_bench.methods.baselines import GroupMix

    answers = np.array([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], [[0.0, 0.0], [0.2, 0.8], [0.6, 0.4]]])
    answered = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])  # the second item: groups 1 and 2 only
    mixed = GroupMix.mix(np.array([1.0, 0.0, 0.0]), answers, answered)
    np.testing.assert_allclose(mixed, [[1.0, 0.0], [0.4, 0.6]])  # item 2: the mean of groups 1 and 2
    np.testing.assert_allclose(GroupMix.mix(np.array([0.5, 0.25, 0.25]), answers, answered)[1], [0.4, 0.6])
    with np.errstate(all="raise"):  # no 0 / 0 anywhere in the fit
        w = GroupMix.fit_weights(answers, answered, np.array([[1.0, 0.0], [0.9, 0.1]]), 1e-12)
    assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(1.0)


@pytest.fixture
def sparse_run(monkeypatch, tmp_path):
    """Runs a method through the runner on a sparse task built here (under the opinionqa_individual card, an
    accuracy task of the opinion protocol), with the task's loader replaced."""

    def run(method: str, metric: str, shots=(0, 1, 5)) -> tuple[dict, TaskData]:
        task = sparse_task(metric)
        monkeypatch.setattr(runner, "load_task", lambda card, data_dir: task)
        card = "opinionqa_individual" if metric == "accuracy" else "synthetic"
        spec = RunSpec(card, method, encoder="bow", shots=shots, seeds=(0, 1), train_frac=0.5)
        return execute(spec, None, tmp_path / metric, cache_dir=tmp_path / "cache"), task

    return run


@pytest.mark.parametrize("method", ["population", "group-knn", "group-mix"])
def test_fallback_counts_in_result_json_match_a_hand_count(sparse_run, method):
    """Uniform back-offs are the items no seen group answered, at every K (K = 0 included)."""
    result, task = sparse_run(method, "alignment")
    split = make_split(task, "opinion", {}, 0.5, 0.2, 0)
    answered_by_seen = {i for g in split.seen for i in task.groups[g].targets}
    for shots in (0, 1, 5):
        expected = sum(
            item not in answered_by_seen
            for seed in (0, 1)
            for group in split.test
            for item in draw_episode(task, group, shots, seed, split).targets
        )
        fallbacks = result["metrics"][str(shots)]["fallbacks"]
        assert expected > 0
        assert fallbacks.get("uniform", 0) == expected
        backed_off = expected + fallbacks.get("population", 0)  # group-knn backs off to population, counted too
        assert fallbacks["share"] == pytest.approx(backed_off / fallbacks["predictions"])


@pytest.mark.parametrize("method", ["uniform", "population", "group-knn", "group-mix", "head", "knn"])
def test_no_method_falls_below_chance_on_an_accuracy_task_because_of_ties(sparse_run, method):
    result, _ = sparse_run(method, "accuracy")
    chance = 1 / N_OPTIONS
    for shots, cell in result["metrics"].items():
        accuracy = cell["user_accuracy"]
        n = accuracy["n_items"]
        # a method that ties at the top on most items (head at K = 0, items no seen person rated) would score 0
        # there; with ties broken by the seeded coin flip it is at chance within sampling error
        assert accuracy["pooled"] > chance - 3 * np.sqrt(chance * (1 - chance) / n), (method, shots)
        assert cell["reference"]["uniform"] == pytest.approx(chance)
    at_zero = result["metrics"]["0"]["fallbacks"]
    if method == "uniform":
        assert at_zero["ties_broken"] == at_zero["predictions"] and at_zero["ties_share"] == 1.0
    if method in ("head", "knn"):  # no shot to learn from: the majority answer, each prediction counted, not a tie
        assert at_zero["majority"] == at_zero["predictions"]
        assert at_zero["ties_broken"] == 0 and cell_scores_equal_majority(result)


def cell_scores_equal_majority(result: dict) -> bool:
    """At K = 0 the method scores what the majority floor of result.json says it does (same targets)."""
    cell = result["metrics"]["0"]
    return abs(cell["user_accuracy"]["mean"] - cell["reference"]["majority"]) < 1e-9


def test_the_mixture_bound_recovers_a_planted_mixture_and_has_no_ceiling_without_counts(monkeypatch):
    """benchmarks/mixture_bound.py: fitted on the other folds, both mixtures find 0.7 A + 0.3 B; population cannot;
    its topic-local fit finds a mixture that changes with the question's topic, and is the global fit at
    temperature 0."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from mixture_bound import fold_scores

    rng = np.random.default_rng(5)
    items = {f"q{i}": Item(f"q{i}", f"q{i}", tuple("abcd")) for i in range(60)}
    seen = {f"s{g}": {i: rng.dirichlet(np.ones(4) * 0.5) for i in items} for g in range(5)}
    mixed = {i: 0.7 * seen["s0"][i] + 0.3 * seen["s1"][i] for i in items}
    task = TaskData("planted", "alignment", items, {g: Group(g, t) for g, t in {**seen, "test": mixed}.items()})
    scores = fold_scores(task, "test", tuple(sorted(seen)), seed=0)
    assert scores["convex (group-mix)"] > 0.99 and scores["signed (meta-mix)"] > 0.99, scores
    assert scores["population"] < 0.95 and np.isnan(scores["sampling ceiling"]), scores

    # a topic-dependent mixture: s0 on the first topic's questions, s1 on the second's; the topic-local fit
    # (fitted items weighted by their questions' similarity) finds each, the global one a compromise
    topic_of = {i: n % 2 for n, i in enumerate(items)}
    by_topic = {i: seen["s0"][i] if topic_of[i] == 0 else seen["s1"][i] for i in items}
    task = TaskData("topics", "alignment", items, {g: Group(g, t) for g, t in {**seen, "test": by_topic}.items()})
    vectors = {i: np.eye(2)[topic_of[i]] for i in items}
    local = fold_scores(task, "test", tuple(sorted(seen)), seed=0, topic=(30.0, vectors))
    flat = fold_scores(task, "test", tuple(sorted(seen)), seed=0, context=40, topic=(0.0, vectors))
    name = "signed, topic-local (temperature {:g})"
    assert local[name.format(30)] > 0.99 > local["signed (meta-mix)"] + 0.02, local
    assert flat[name.format(0)] == pytest.approx(flat["signed (meta-mix)"], abs=1e-12), flat  # weights all 1
