"""Choose a method card's setting on validation groups only, never on test groups.

For each task, meta-train fraction and seed, the split is the harness's own; the validation groups play the
test groups (the meta-train groups alone are seen) and each value of the setting is scored on them at every K.
The table printed is what the card values were chosen from; test groups are never read.

    python benchmarks/select_on_validation.py --method group-mix --setting prior \
        --values "0.001;1.0;[0.001, 0.01, 0.1, 1.0, 10.0]" --tasks opinionqa,globalopinionqa --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

from gpo_bench.cards import load_method_card, load_task_card
from gpo_bench.encoders import DEFAULT_ENCODER, Encoder, EncoderSpec
from gpo_bench.features import build_features
from gpo_bench.loaders import load_task
from gpo_bench.methods.base import Setup
from gpo_bench.metrics import group_table, item_score
from gpo_bench.protocol import Split, draw_episode, make_split, visible_task
from gpo_bench.registry import METHODS
from gpo_bench.stats import grand_mean


def validation_score(
    task, split: Split, method_name: str, settings: dict, seed: int, shots: list[int], features, val_frac: float
):
    """Mean alignment over the validation groups (as test groups, meta-train groups seen) per K. A method that
    chooses its checkpoint on validation groups gets the last `val_frac` share of the meta-train groups for it."""
    held = max(1, round(len(split.train) * val_frac))
    as_test = Split(train=split.train[:-held], validation=split.train[-held:], test=split.validation)
    card = load_method_card(method_name)
    method = METHODS.get(card.implementation)(
        settings, Setup(visible_task(task, as_test), as_test, seed, "cpu", Path("/tmp"), features)
    )
    method.fit()
    out = {}
    for k in shots:
        episodes = [draw_episode(task, g, k, seed, as_test) for g in as_test.test]
        records = []
        for episode, preds in zip(episodes, method.predict(episodes), strict=True):
            for item, pred in zip(episode.targets, preds, strict=True):
                target = task.groups[episode.group].targets[item]
                records.append((seed, episode.group, item_score(task.metric, pred, target, task.items[item].ordinal)))
        out[k] = records
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, help="method card name")
    parser.add_argument("--setting", required=True, help="the card setting to choose")
    parser.add_argument("--values", required=True, help="semicolon-separated values (YAML: 0.1;[0.01, 0.1])")
    parser.add_argument("--tasks", default="opinionqa,globalopinionqa", help="comma-separated task cards")
    parser.add_argument("--train-fracs", default="0.4,0.6,0.8", help="comma-separated meta-train fractions")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--shots", default="1,5,20", help="comma-separated K values")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with the raw data")
    args = parser.parse_args()
    values = [yaml.safe_load(v) for v in args.values.split(";")]
    shots = [int(k) for k in args.shots.split(",")]
    card = load_method_card(args.method)
    needs_features = METHODS.get(card.implementation).needs_features
    print(f"{args.method}: {args.setting} chosen on validation groups (mean alignment per K; test groups unused)")
    for task_name in args.tasks.split(","):
        task_card = load_task_card(task_name)
        task = load_task(task_card, args.data_dir)
        features = (
            build_features(task, Encoder(EncoderSpec.parse(DEFAULT_ENCODER)), task_card) if needs_features else None
        )
        for frac in (float(f) for f in args.train_fracs.split(",")):
            split = make_split(task, task_card.protocol, task_card.protocol_settings, frac, task_card.val_frac, 0)
            line = f"{task_name} {frac:.0%} ({len(split.validation)} validation groups):"
            for value in values:
                settings = {**card.settings, args.setting: value}
                cells = {k: [] for k in shots}
                for seed in (int(s) for s in args.seeds.split(",")):
                    for k, records in validation_score(
                        task, split, args.method, settings, seed, shots, features, task_card.val_frac
                    ).items():
                        cells[k] += records
                means = [grand_mean(group_table(cells[k])[0]) for k in shots]
                per_k = " ".join(f"K{k}={m:.4f}" for k, m in zip(shots, means, strict=True))
                line += f"\n  {args.setting}={value}: {per_k}  mean={np.mean(means):.4f}"
            print(line, flush=True)


if __name__ == "__main__":
    with threadpool_limits(limits={"openblas": 1}):  # as the runner: tiny solves, no BLAS threads
        main()
