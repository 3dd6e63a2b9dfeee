"""The seen-group methods with many groups (one per person, as in `opinionqa_individual`): fit time, time per
test episode and peak memory of each method on `synthetic_mixture` with N groups (80 items, 4 candidates),
each (method, N) in a fresh process so that its peak memory is its own.

    python benchmarks/many_groups.py [--groups 16,200,1000] [--methods meta-mix,group-mix,group-knn]
                                     [--episodes 10] [--shots 5]

The runs of one size follow each other in method order; the figures are one run each on whatever machine
load there is, so compare sizes and methods, not single seconds.
"""

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from gpo_bench.cards import load_method_card, load_task_card
from gpo_bench.encoders import Encoder, EncoderSpec
from gpo_bench.features import build_features
from gpo_bench.loaders import load_task
from gpo_bench.methods.base import Setup
from gpo_bench.protocol import draw_episode, make_split, visible_task
from gpo_bench.registry import METHODS


def measure(method: str, n_groups: int, episodes: int, shots: int) -> dict:
    """In a worker process: fit `method` on synthetic_mixture with `n_groups` groups, predict `episodes` test
    episodes at K = `shots` → seconds and this process's peak memory."""
    card = load_task_card("synthetic_mixture")
    card = dataclasses.replace(card, source={**card.source, "groups": n_groups})
    task = load_task(card, None)
    features = build_features(task, Encoder(EncoderSpec.parse("bow"), "cpu", Path(tempfile.mkdtemp())), card)
    split = make_split(task, card.protocol, card.protocol_settings, card.train_frac, card.val_frac, 0)
    method_card = load_method_card(method)
    setup = Setup(visible_task(task, split), split, 0, "cpu", Path(tempfile.mkdtemp()), features)
    model = METHODS.get(method_card.implementation)(dict(method_card.settings), setup)
    tick = time.perf_counter()
    model.fit()
    fit_s = time.perf_counter() - tick
    tested = split.test[:episodes]
    tick = time.perf_counter()
    for group in tested:
        model.predict_episode(draw_episode(task, group, shots, 0, split))
    per_episode = (time.perf_counter() - tick) / len(tested)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"meta-train": len(split.train), "fit_s": fit_s, "episode_s": per_episode, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", default="16,200,1000", help="comma-separated group counts (default 16,200,1000)")
    parser.add_argument("--methods", default="meta-mix,group-mix,group-knn", help="comma-separated method cards")
    parser.add_argument("--episodes", type=int, default=10, help="test episodes timed per run (default 10)")
    parser.add_argument("--shots", type=int, default=5, help="K of the timed test episodes (default 5)")
    args = parser.parse_args()
    print(f"{'method':10s} {'groups':>7s} {'meta-train':>10s} {'fit s':>8s} {'s/episode':>10s} {'peak MiB':>9s}")
    for n_groups in (int(g) for g in args.groups.split(",")):
        for method in args.methods.split(","):
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                r = pool.submit(measure, method, n_groups, args.episodes, args.shots).result()
            print(
                f"{method:10s} {n_groups:7d} {r['meta-train']:10d} {r['fit_s']:8.1f} {r['episode_s']:10.3f} "
                f"{r['peak_mib']:9.0f}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
