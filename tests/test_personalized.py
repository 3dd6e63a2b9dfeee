import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from personalized_fixtures import (
    write_chatbot_arena,
    write_jsonl,
    write_personal_reward_bench,
    write_prism,
    write_reddit_tldr,
)

from gpo_bench.cards import load_task_card
from gpo_bench.errors import DataError
from gpo_bench.loaders import LOADERS
from gpo_bench.protocol import draw_episode, make_split


def load(name, root, **card_changes):
    card = replace(load_task_card(name), **card_changes)
    return card, LOADERS.get(card.loader)(card, root)


def split_of(card, task, seed=0):
    return make_split(task, card.protocol, card.protocol_settings, 0.5, card.val_frac, seed)


def test_reddit_tldr_mrm_split(tmp_path):
    write_reddit_tldr(tmp_path)
    card, task = load("reddit_tldr", tmp_path, protocol_settings={"seen_cap": 12, "unseen_cap": 3})
    assert len(task.items) == sum(10 + 2 * k for k in range(8)) + 5 + 32
    split = split_of(card, task)
    # users present in both splits only; sorted then random.Random(42).shuffle; halves
    import random

    users = sorted(f"w{k}" for k in range(8))
    random.Random(42).shuffle(users)
    assert set(split.seen) == set(users[:4]) and set(split.unseen) == set(users[4:])
    assert "w-train-only" not in split.test
    for user in split.test:
        cap = 3 if user in split.unseen else 12
        assert len(split.pools[user]) == min(cap, len(task.groups[user].targets) - 4)
        assert all(task.groups[user].partition[i] == "train" for i in split.pools[user])
    # a different protocol seed reshuffles pools but not users
    other = split_of(card, task, seed=1)
    assert other.unseen == split.unseen and other.pools != split.pools
    # episodes: context from the pool, targets = the user's validation comparisons
    episode = draw_episode(task, split.unseen[0], 2, 0, split)
    assert set(episode.context) <= set(split.pools[split.unseen[0]]) and len(episode.targets) == 4
    assert all(task.groups[split.unseen[0]].partition[i] == "test" for i in episode.targets)


def test_reddit_tldr_lore_drops_the_fewest(tmp_path):
    write_reddit_tldr(tmp_path)
    card, task = load("reddit_tldr_lore", tmp_path)
    split = split_of(card, task)
    assert "w0" not in split.test and "w1" not in split.test  # the two with the fewest comparisons
    assert len(split.seen) == 3 and len(split.unseen) == 3 and not set(split.seen) & set(split.unseen)


def test_reddit_tldr_bad_rows(tmp_path):
    write_reddit_tldr(tmp_path)
    path = tmp_path / "reddit_tldr/comparisons/train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[3]["summaries"][1]["text"] = ""
    write_jsonl(path, rows)
    _, task = load("reddit_tldr", tmp_path)
    assert task.drops == {"comparisons with an empty response": 1}
    rows[5]["choice"] = None
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"train.jsonl line 6: expected 2 summaries and choice 0 or 1"):
        load("reddit_tldr", tmp_path)


def test_prism_pairs_and_users(tmp_path):
    write_prism(tmp_path)
    card, task = load("prism", tmp_path)
    assert sorted(task.groups) == [f"user{u}" for u in range(6)]  # 4 dialogs dropped, no survey completion skipped
    assert task.drops["users with fewer than 6 dialogs"] == 1
    # per dialog: 3 pairs at turn 0 (chosen vs each rejected) and 1 at turn 1
    assert all(len(g.targets) == 6 * 4 for g in task.groups.values())
    parts = Counter(p for g in task.groups.values() for p in g.partition.values())
    assert parts == {"train": 6 * 3 * 4, "test": 6 * 3 * 4}  # conversations halved per user
    second_turn = next(i for i in task.items.values() if i.id.endswith("-t1-r0"))
    assert second_turn.prompt.startswith("user: Opening prompt") and "model: Reply 0" in second_turn.prompt
    assert "Follow-up" in second_turn.prompt.splitlines()[-1]
    split = split_of(card, task)
    assert len(split.seen) == 3 and len(split.unseen) == 3


def test_chatbot_arena_ties_and_unknown_winner(tmp_path):
    write_chatbot_arena(tmp_path)
    _, task = load("chatbot_arena", tmp_path)
    assert task.drops == {"ties (task card: ties: drop)": 12}
    assert len(task.groups) == 6 and all(len(g.targets) == 6 for g in task.groups.values())
    item = next(iter(task.items.values()))
    chosen = task.items[item.id].candidates[int(np.argmax(task.groups["arena_user_0"].targets.get(item.id, [1, 0])))]
    assert chosen.startswith("Answer by")
    path = tmp_path / "chatbot_arena/train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["winner"] = "model_c"
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"train.jsonl line 3: unknown winner 'model_c'"):
        load("chatbot_arena", tmp_path)


def test_personal_reward_bench_both_orders(tmp_path):
    write_personal_reward_bench(tmp_path)
    card, task = load("prism_personalized", tmp_path)
    assert len(task.items) == 5 * 7 * 2
    user = task.groups["user0"]
    firsts = [i for i in user.targets if i.endswith("-first")]
    for first in firsts:
        second = first.replace("-first", "-second")
        assert task.items[first].candidates == task.items[second].candidates[::-1]
        np.testing.assert_array_equal(user.targets[first], user.targets[second][::-1])
    assert Counter(user.partition.values()) == {"train": 10, "test": 4}  # train + val pool, test
    split = split_of(card, task)
    assert split.unseen == () and set(split.test) == set(task.groups)


def test_fixture_runs_end_to_end_and_rescore(tmp_path, capsys):
    import subprocess
    import sys
    from pathlib import Path

    from gpo_bench.cli import main

    write_reddit_tldr(tmp_path / "data")
    out = tmp_path / "out"
    for method in ("uniform", "bt", "lore", "head", "gpo"):
        args = [
            "run",
            "--task",
            "reddit_tldr",
            "--method",
            method,
            "--encoder",
            "bow",
            "--data-dir",
            str(tmp_path / "data"),
            "--output-dir",
            str(out),
            "--shots",
            "0,5",
            "--seeds",
            "0,1",
        ]
        if method == "gpo":
            args += ["--set", "max_steps=4", "--set", "eval_every=2", "--set", "validation_shots=2"]
        assert main(args) == 0
    for path in (out / "runs").glob("*/result.json"):
        result = json.loads(path.read_text())
        cell = result["metrics"]["5"]
        assert result["metric"] == "user_accuracy"
        assert {"seen", "unseen"} <= set(cell) and cell["user_accuracy"]["n_groups"] == 8
        rows = [json.loads(line) for line in (path.parent / "predictions.jsonl").read_text().splitlines()]
        assert {r["split"] for r in rows} == {"seen", "unseen"}
        assert {r["group"] for r in rows if r["split"] == "unseen"} == set(result["split"]["unseen"])
    rescore = Path(__file__).resolve().parents[2] / "shared" / "tools" / "rescore.py"
    if rescore.exists():
        done = subprocess.run([sys.executable, str(rescore), str(out), "--quiet"], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def run_metrics(tmp_path, task, method, shots=(5, 10), **overrides):
    from gpo_bench.runner import RunSpec, execute

    spec = RunSpec(task=task, method=method, encoder="bow", shots=shots, seeds=(0,), overrides=overrides)
    return execute(spec, None, tmp_path, device="cpu")["metrics"]


def test_personalized_methods_beat_a_pooled_reward_model_on_opposed_users(tmp_path):
    """Two user types with opposed tastes: one pooled model is near chance for unseen users, and a
    method that adapts to the user's few shots must beat it by 0.15."""
    bt = run_metrics(tmp_path, "synthetic_pairwise", "bt")
    for method, overrides in (
        ("lore", {}),
        ("head", {}),
        ("gpo", {"layers": 2, "lr": 1e-3, "max_steps": 600, "eval_every": 100, "validation_shots": 10}),
    ):
        adapted = run_metrics(tmp_path, "synthetic_pairwise", method, **overrides)
        for k in ("5", "10"):
            ours, pooled = adapted[k]["unseen"]["user_accuracy"]["mean"], bt[k]["unseen"]["user_accuracy"]["mean"]
            assert ours > pooled + 0.15, (method, k, ours, pooled)


def test_pooled_reward_model_learns_a_shared_preference(tmp_path):
    bt = run_metrics(tmp_path, "synthetic_pairwise_shared", "bt", shots=(0,))
    assert bt["0"]["unseen"]["user_accuracy"]["mean"] > 0.75
    uniform = run_metrics(tmp_path, "synthetic_pairwise_shared", "uniform", shots=(0,))
    assert 0.4 < uniform["0"]["user_accuracy"]["mean"] < 0.6  # a coin flip
