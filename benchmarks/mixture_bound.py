"""How far can a mixture of the seen groups go? A diagnostic bound, not a method.

For each test group of the harness's split, mixtures of the seen groups' answers are fitted on 4/5 of the items
the group shares with them (OpinionQA: about 141 of 177, where a run gives a method K <= 50) and scored on the
other 1/5, over 5 folds: `population` (their mean), the convex mixture of `group-mix` (its fit, prior 0.001) and
the signed ridge mixture of `meta-mix` (the seen groups' deviations from their mean, ridge 0.01), beside the
group's sampling ceiling on the same items (as the leaderboard's; where the source counts respondents). What
the best mixture scores is about the most a method built on the seen groups' answers can reach at any K; the
rest of the way to the ceiling is not in those answers. It reads the test groups' answers, so nothing may be
chosen with it. `--topic-local T` adds a mixture refitted for each scored item with the fitted items weighted
by the similarity of their questions (MiniLM), `--context K` fits on K items as a run does.

    python benchmarks/mixture_bound.py --task opinionqa --data-dir ../shared/data [--topic-local 10] [--context 20]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from gpo_bench.cards import load_task_card
from gpo_bench.data import TaskData
from gpo_bench.encoders import DEFAULT_ENCODER, Encoder, EncoderSpec
from gpo_bench.errors import DataError, UnknownNameError
from gpo_bench.features import build_features
from gpo_bench.loaders import load_task
from gpo_bench.methods.baselines import GroupMix
from gpo_bench.methods.meta_mix import AnswerTable, Sources
from gpo_bench.metrics import ceiling_seed, item_score, sampling_ceiling
from gpo_bench.protocol import make_split

FOLDS = 5
DRAWS = 3
RIDGE = 0.01
PRIOR = 0.001


def item_splits(n_items: int, seed: int, context: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit, scored) item indices: 5 folds (fit on 4/5 of the items), or, with `context`, 3 draws of that
    many items to fit on, the others scored (as a run's K context items)."""
    rng = np.random.default_rng(seed)
    if context is None:
        fold = rng.permutation(n_items) % FOLDS
        return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(FOLDS)]
    return [(order[:context], order[context:]) for order in (rng.permutation(n_items) for _ in range(DRAWS))]


def fold_scores(
    task: TaskData,
    group: str,
    seen: tuple[str, ...],
    seed: int,
    context: int | None = None,
    topic: tuple[float, dict[str, np.ndarray]] | None = None,
) -> dict[str, float]:
    """Mean score over the group's items that some seen group answered, each predicted from a fit on other
    items (`item_splits`): population, convex (group-mix) and signed (meta-mix) mixtures; with `topic` =
    (temperature, unit question vector per item), also the signed mixture refitted for each scored item with
    the fitted items weighted by exp(temperature * cosine) of their questions (a topic-local mixture); and the
    sampling ceiling (NaN where the source has no respondent counts)."""
    sources = Sources(AnswerTable(task, seen), seen)
    items = [i for i in sorted(task.groups[group].targets) if i in sources.population]
    answers = {i: task.groups[group].targets[i] for i in items}
    stacked, answered, wanted = GroupMix.stack_answers(
        [(i, answers[i]) for i in items], [task.groups[source].targets for source in seen]
    )
    local = f"signed, topic-local (temperature {topic[0]:g})" if topic else None
    scores: dict[str, list[float]] = {"population": [], "convex (group-mix)": [], "signed (meta-mix)": []}
    if local:
        scores[local] = []
        temperature, questions = topic[0], np.stack([topic[1][i] for i in items])
    for train, test in item_splits(len(items), seed, context):
        weights = GroupMix.fit_weights(stacked[train], answered[train], wanted[train], PRIOR)
        deviation = np.concatenate([sources.deviation[items[n]] for n in train])
        gap = np.concatenate([answers[items[n]] - sources.population[items[n]] for n in train])
        signed = np.linalg.solve(deviation.T @ deviation + RIDGE * np.eye(len(seen)), deviation.T @ gap)
        convex = GroupMix.mix(weights, stacked[test], answered[test])
        for row, n in enumerate(test):
            item = task.items[items[n]]
            mixed = np.maximum(sources.population[items[n]] + sources.deviation[items[n]] @ signed, 1e-4)
            predictions = {
                "population": sources.population[items[n]],
                "convex (group-mix)": convex[row, : len(item.candidates)],
                "signed (meta-mix)": mixed / mixed.sum(),
            }
            if local:
                similarity = questions[train] @ questions[n]
                closeness = np.exp(temperature * (similarity - similarity.max()))
                rows = np.repeat(closeness / closeness.mean(), [len(answers[items[m]]) for m in train])
                weighted = deviation.T * rows
                fitted = np.linalg.solve(weighted @ deviation + RIDGE * np.eye(len(seen)), weighted @ gap)
                mixed = np.maximum(sources.population[items[n]] + sources.deviation[items[n]] @ fitted, 1e-4)
                predictions[local] = mixed / mixed.sum()
            for name, pred in predictions.items():
                scores[name].append(item_score(task.metric, pred, answers[items[n]], item.ordinal))
    respondents = task.groups[group].respondents
    scores["sampling ceiling"] = [
        sampling_ceiling(task.metric, answers[i], respondents[i], task.items[i].ordinal, ceiling_seed(group, i))
        if i in respondents
        else np.nan
        for i in items
    ]
    return {name: float(np.mean(values)) for name, values in scores.items()}


def shown(value: float) -> str:
    return f"{value:.4f}" if np.isfinite(value) else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="opinionqa", help="a survey task with groups (default: opinionqa)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"), help="where the task's data lies")
    parser.add_argument("--train-fracs", default="0.4,0.6,0.8", help="meta-train fractions (default: 0.4,0.6,0.8)")
    parser.add_argument("--split-seed", type=int, default=0, help="the split's seed, as `gpo-bench run` (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the item folds (default: 0)")
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help=f"fit on K random items ({DRAWS} draws) and score the rest, as a run's K context items (default: "
        f"{FOLDS} folds, fit on 4/5 of the items)",
    )
    parser.add_argument(
        "--topic-local",
        type=float,
        default=0.0,
        metavar="TEMPERATURE",
        help="also a topic-local signed mixture: fitted items weighted by exp(TEMPERATURE * cosine) of their "
        "questions' MiniLM vectors (mean of the options') to the scored item's (default 0: off)",
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the loader's notes on dropped rows
    try:
        card = load_task_card(args.task)
        task = load_task(card, args.data_dir)
    except (DataError, UnknownNameError) as error:
        parser.error(str(error))
    topic = None
    if args.topic_local:
        features = build_features(task, Encoder(EncoderSpec.parse(DEFAULT_ENCODER), device="cpu"), card)
        means = {i: features.matrix[features.rows[i]].mean(axis=0) for i in task.items}
        topic = (args.topic_local, {i: v / np.linalg.norm(v) for i, v in means.items()})
    for train_frac in [float(f) for f in args.train_fracs.split(",")]:
        split = make_split(task, card.protocol, card.protocol_settings, train_frac, 0.2, args.split_seed)
        seen = tuple(split.seen)
        table = {group: fold_scores(task, group, seen, args.seed, args.context, topic) for group in split.test}
        names = list(next(iter(table.values())))
        fits = f"{FOLDS} folds" if args.context is None else f"{DRAWS} draws of {args.context} context items"
        print(f"\n{args.task}, train {train_frac:.0%}: {len(split.seen)} seen, {fits} of each group's items")
        print("| test group | " + " | ".join(names) + " |")
        print("| --- |" + " --- |" * len(names))
        for group, row in table.items():
            print(f"| {group} | " + " | ".join(shown(row[n]) for n in names) + " |")
        print(
            "| **mean** | " + " | ".join(f"**{shown(np.mean([r[n] for r in table.values()]))}**" for n in names) + " |"
        )


if __name__ == "__main__":
    main()
