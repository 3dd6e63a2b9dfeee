"""CPU: a GPO run's seeds trained one after another in one process (torch's default thread count, as
gpo-bench did before) against one process per seed, all at once (`GPO.fit_seeds`, what `gpo-bench run`
does now on the CPU), at the README main job's shapes: 17 groups x 177 items with 2-5 options,
d = 384 (MiniLM), 40% meta-train groups, the gpo card's settings.

    python benchmarks/gpo_cpu_seeds.py [--steps 100] [--rounds 2] [--seeds 0,1,2]

The two sides alternate (A B, then B A, ...) so that both see the same machine load; the report gives
each round's wall time per side and the ratio of their medians. Both sides train the same seeds for
the same steps (validation once, at the end) and must end with the same validation scores up to
thread-dependent rounding (printed).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gpo_bench.cards import load_method_card
from gpo_bench.methods.base import Setup
from gpo_bench.methods.gpo import GPO
from gpo_bench.protocol import split_groups
from gpo_bench.workers import usable_cores

sys.path.insert(0, str(Path(__file__).parent))
from gpo_train import opinionqa_shaped  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="training steps per seed (default 100)")
    parser.add_argument("--rounds", type=int, default=2, help="times each side runs (default 2)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    task, features = opinionqa_shaped(n_groups=17, n_items=177, dim=384)
    split = split_groups(sorted(task.groups), 0.4, 0.2, 0)
    settings = dict(load_method_card("gpo").settings, max_steps=args.steps, eval_every=args.steps, patience=None)
    work = Path(tempfile.mkdtemp(prefix="gpo-cpu-seeds-"))

    def setups(side: str, n: int) -> list[Setup]:
        return [Setup(task, split, seed, "cpu", work / f"{side}{n}" / f"seed{seed}", features) for seed in seeds]

    def one_after_another(n: int) -> list[float]:
        return [GPO(settings, setup).fit()["best_validation"] for setup in setups("sequential", n)]

    def processes(n: int) -> list[float]:
        return [fit["best_validation"] for _, fit in GPO.fit_seeds(settings, setups("processes", n))]

    sides = {"one process, seeds one after another": one_after_another, "one process per seed": processes}
    times: dict[str, list[float]] = {name: [] for name in sides}
    scores: dict[str, list[float]] = {}
    for n in range(args.rounds):
        for name in list(sides) if n % 2 == 0 else list(sides)[::-1]:
            tick = time.perf_counter()
            scores[name] = sides[name](n)
            times[name].append(time.perf_counter() - tick)
            print(f"round {n + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    print(
        f"\n{len(seeds)} seeds x {args.steps} steps, {usable_cores()} usable cores, torch default threads "
        f"{torch.get_num_threads()}"
    )
    for name, values in times.items():
        rounded = ", ".join(f"{s:.4f}" for s in scores[name])
        print(f"  {name}: median {statistics.median(values):.1f} s; validation per seed {rounded}")
    sequential, parallel = (statistics.median(values) for values in times.values())
    print(f"  one process per seed is {sequential / parallel:.2f}x faster")


if __name__ == "__main__":
    main()
