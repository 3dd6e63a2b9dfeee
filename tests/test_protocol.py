import numpy as np
import pytest

from gpo_bench.data import Group, Item, TaskData
from gpo_bench.errors import DataError
from gpo_bench.protocol import draw_episode, split_groups

COUNTRIES = [
    "Nigeria",
    "Egypt",
    "India (Current national sample)",
    "China",
    "Japan",
    "Germany",
    "France",
    "Spain",
    "United States",
    "Canada",
    "Brazil",
    "Argentina",
    "Australia",
    "New Zealand",
]


def test_split_reproduces_the_papers_draw():
    # The GPO code: np.random.seed(0); np.random.choice(groups, int(n * frac), replace=False) are meta-train.
    # Test groups as its draw gives them for GlobalOpinionQA's 14 countries at 0.4 / 0.8:
    split = split_groups(COUNTRIES, 0.4, 0.2, 0)
    assert split.test == (
        "Nigeria",
        "Egypt",
        "China",
        "Germany",
        "Spain",
        "Canada",
        "Brazil",
        "Australia",
        "New Zealand",
    )
    assert split_groups(COUNTRIES, 0.8, 0.2, 0).test == ("Nigeria", "Germany", "Australia")
    assert len(split.train) + len(split.validation) == 5 and len(split.validation) == 1
    assert not set(split.seen) & set(split.test)


def test_split_needs_groups_on_both_sides():
    with pytest.raises(DataError, match="need at least 2"):
        split_groups(["a", "b", "c"], 0.4, 0.2, 0)


def small_task(n_items=10):
    items = {f"q{i}": Item(f"q{i}", "?", ("a", "b")) for i in range(n_items)}
    groups = {"g": Group("g", {i: np.array([0.5, 0.5]) for i in items})}
    return TaskData("t", "alignment", items, groups)


def test_episodes_are_seeded_disjoint_and_capped():
    task = small_task()
    first = draw_episode(task, "g", 3, seed=0)
    assert first.context == draw_episode(task, "g", 3, seed=0).context
    assert first.context != draw_episode(task, "g", 3, seed=1).context
    assert len(first.context) == 3 and not set(first.context) & set(first.targets)
    assert set(first.context) | set(first.targets) == set(task.groups["g"].targets)
    capped = draw_episode(task, "g", 50, seed=0)
    assert capped.shots == 50 and len(capped.context) == 9 and len(capped.targets) == 1
