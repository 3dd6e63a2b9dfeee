"""GPO training and evaluation speed and memory, side by side with the authors' own code
(jamqd/Group-Preference-Optimization) in one process, at OpinionQA shapes: 22 groups that all answer
the same 500 items with 2-5 options each, d = 4096 random features, 40% meta-train groups.

    git clone https://github.com/jamqd/Group-Preference-Optimization /tmp/gpo-authors
    pip install attrdict3        # their models import attrdict (pandas, scipy, yaml are here already)
    python benchmarks/gpo_train.py --authors-repo /tmp/gpo-authors [--steps 20] [--threads 1]

Their code is imported from --authors-repo at run time, never copied here. What runs is theirs:
`models/gpo.py` (their GPO on their TNP encoder), their `OqaGroupDataset_gpo` built from a DataFrame
in the layout their embedding script writes (one row per group x question x option, the embedding as a
Python list), their `DataLoader` with `CollateFunction` (batch 32, 10-100 context and target
questions), their step (`model(batch).loss.backward()`, Adam, cosine schedule) and their evaluation
`calculate_WD` (K = 20 context questions, one model call per target option). The only changes, made
while importing: the hard-coded device string 'cuda' becomes the benchmark's device, and modules
they import but these paths never use (wandb, uncertainty_toolbox, datasets) are stubbed when absent.

Training steps are interleaved (ours, theirs, ours, …) on the same data so that both see the same
machine load; the report gives medians, the median of the paired per-step ratios, the points per
step and the time per target point. Their evaluation is timed on --authors-eval-groups test groups and
scaled to all of them (said so in the output). Peak memory: one fresh process per implementation. On the
CPU it also reports the matrix products of our step (the torch profiler's FLOP counts and each op's rate)
and the time they would take all at the fastest of those rates: a floor for a float32 step on this core.
"""

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import io
import multiprocessing
import resource
import statistics
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from gpo_bench.cards import load_method_card
from gpo_bench.data import Group, Item, TaskData
from gpo_bench.features import Features
from gpo_bench.methods.base import Setup
from gpo_bench.methods.gpo import GPO, train_step
from gpo_bench.protocol import draw_episode, split_groups

UNUSED_IMPORTS = {"wandb": {}, "uncertainty_toolbox": {}, "datasets": {"load_dataset": None, "Dataset": object}}


def opinionqa_shaped(n_groups=22, n_items=500, dim=4096, seed=0) -> tuple[TaskData, Features]:
    rng = np.random.default_rng(seed)
    items, rows, n = {}, {}, 0
    for i in range(n_items):
        k = int(rng.integers(2, 6))
        items[f"q{i:03d}"] = Item(f"q{i:03d}", "?", tuple(f"o{j}" for j in range(k)), tuple(range(1, k + 1)))
        rows[f"q{i:03d}"] = np.arange(n, n + k)
        n += k
    groups = {
        f"g{g:02d}": Group(f"g{g:02d}", {i: rng.dirichlet(np.ones(len(it.candidates))) for i, it in items.items()})
        for g in range(n_groups)
    }
    return TaskData("shaped", "alignment", items, groups), Features(
        rng.standard_normal((n, dim)).astype(np.float32), rows
    )


class DevicePatchingLoader(importlib.machinery.SourceFileLoader):
    """Loads a module of the authors' repository with its 'cuda' device strings replaced."""

    device = "cpu"

    def source_to_code(self, data, path, *, _optimize=-1):
        source = data.decode().replace("'cuda'", repr(self.device)).replace('"cuda"', repr(self.device))
        return compile(source, path, "exec", dont_inherit=True)


class AuthorsFinder(importlib.abc.MetaPathFinder):
    """Finds `models.*`, `data.*`, `utils.*` and `train_gpo` in the authors' checkout."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo.resolve()

    def find_spec(self, name, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, [str(self.repo)] if path is None else path)
        where = [spec.origin or "", *(spec.submodule_search_locations or [])] if spec else []
        if not any(place.startswith(str(self.repo)) for place in where):
            return None
        if (spec.origin or "").endswith(".py"):
            spec.loader = DevicePatchingLoader(name, spec.origin)
        return spec


def import_authors(repo: Path, device: str) -> tuple[types.ModuleType, list[str]]:
    """Their train_gpo module (which imports their data and model modules); → it, the stubbed imports."""
    if not (repo / "train_gpo.py").is_file() or not (repo / "models" / "gpo.py").is_file():
        raise SystemExit(
            f"--authors-repo {repo}: no train_gpo.py and models/gpo.py (a Group-Preference-Optimization checkout?)"
        )
    try:
        import attrdict  # noqa: F401
    except ImportError as error:
        raise SystemExit("the authors' models import attrdict: pip install attrdict3") from error
    stubbed = []
    for name, attributes in UNUSED_IMPORTS.items():
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.SimpleNamespace(**attributes)
            stubbed.append(name)
    DevicePatchingLoader.device = device
    sys.meta_path.insert(0, AuthorsFinder(repo))
    for name in ("models", "data", "utils"):  # their folders are namespace packages; ours must not shadow them
        sys.modules.pop(name, None)
    import train_gpo  # noqa: PLC0415  (their module, from the finder above)

    return train_gpo, stubbed


def authors_frame(task: TaskData, features: Features, groups: list[str]):
    """The DataFrame their embedding script pickles: a row per group x question x option."""
    import pandas as pd

    records = []
    for name in groups:
        for item_id, target in task.groups[name].targets.items():
            item = task.items[item_id]
            for row, y in zip(features.rows[item_id], target, strict=True):
                records.append(
                    {
                        "group": name,
                        "qkey": item_id,
                        "embedding": features.matrix[row].tolist(),
                        "prob_y": float(y),
                        "D_H": str([float(v) for v in target]),
                        "ordinal": str(list(item.ordinal)),
                    }
                )
    return pd.DataFrame(records)


class Ours:
    """gpo-bench's GPO on the OpinionQA-shaped data, with its optimizer and sampling stream."""

    def __init__(self, task: TaskData, features: Features, split, device: str, bf16: bool = False) -> None:
        self.task, self.split = task, split
        settings = dict(load_method_card("gpo").settings, bf16=bf16)
        self.gpo = GPO(settings, Setup(task, split, 0, device, Path("/tmp/gpo-bench-benchmark"), features))
        self.optimizer = torch.optim.Adam(self.gpo.model.parameters(), lr=settings["lr"])
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=200_000)
        self.generator = torch.Generator().manual_seed(0)

    def step(self) -> tuple[float, float, int, int]:
        """One training step (sampling included) → seconds, 0 (no separate batch timing), points, targets."""
        before = self.generator.get_state()
        tick = time.perf_counter()
        train_step([self.gpo], self.gpo.model, [self.generator], self.optimizer, self.scheduler)
        seconds = time.perf_counter() - tick
        parts = self.gpo.sample_parts(torch.Generator().set_state(before))  # the same draw, to count it
        targets = sum(len(p.tgt_rows) for p in parts)
        return seconds, 0.0, sum(len(p.ctx_rows) for p in parts) + targets, targets

    def evaluation(self, n_groups: int) -> float:
        """Seconds to predict `n_groups` test groups' targets at K = 20 (one batched call)."""
        episodes = [draw_episode(self.task, g, 20, 0) for g in self.split.test[:n_groups]]
        tick = time.perf_counter()
        self.gpo.predict(episodes)
        return time.perf_counter() - tick


class Theirs:
    """The authors' model, dataset, DataLoader, optimizer, training-loop body and evaluation."""

    def __init__(self, task: TaskData, features: Features, split, device: str, repo: Path) -> None:
        import yaml

        self.split, self.device = split, device
        self.authors, self.stubbed = import_authors(repo, device)
        config = yaml.safe_load((repo / "configs" / "gpo.yaml").read_text())
        config["dim_x"] = features.dim
        from models.gpo import GPO as AuthorsGPO  # noqa: PLC0415  (theirs, imported by the finder)

        self.model = AuthorsGPO(**config).to(device)
        # their load_datasets: the whole frame, split by group; their training set is our meta-train
        # groups (ours holds its validation groups out of them)
        frame = authors_frame(task, features, sorted(task.groups))
        dataset = self.authors.OqaGroupDataset_gpo(frame[frame["group"].isin(list(split.train))], config=None)
        collate = self.authors.CollateFunction(100, 10, 100, 10, dataset="oqa")
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=32, collate_fn=collate, num_workers=0)
        self.eval_df = frame[frame["group"].isin(list(split.test))]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3e-4)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=200_000)

    def step(self) -> tuple[float, float, int, int]:
        """The body of their training loop → seconds, of which building the batch, points, target points."""
        tick = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad()
        build, points, targets = 0.0, 0, 0
        batches = iter(self.loader)
        while True:
            built = time.perf_counter()
            batch = next(batches, None)
            build += time.perf_counter() - built
            if batch is None:
                break
            batch = {k: v.to(self.device) for k, v in batch.items()}
            outs = self.model(batch)
            outs.loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            n_groups, n_ctx, n_tgt = batch["xc"].shape[0], batch["xc"].shape[1], batch["xt"].shape[1]
            points, targets = points + n_groups * (n_ctx + n_tgt), targets + n_groups * n_tgt
        return time.perf_counter() - tick, build, points, targets

    def evaluation(self, n_groups: int) -> float:
        """Seconds of their calculate_WD on `n_groups` test groups (K = 20, one call per target option)."""
        frame = self.eval_df[self.eval_df["group"].isin(list(self.split.test)[:n_groups])]
        tick = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            self.authors.calculate_WD(types.SimpleNamespace(eval_num_qs=20), self.model, frame, logging=False)
        return time.perf_counter() - tick


def build(side: str, repo: Path, device: str):
    task, features = opinionqa_shaped()
    split = split_groups(sorted(task.groups), 0.4, 0.2, 0)
    return Ours(task, features, split, device) if side == "gpo-bench" else Theirs(task, features, split, device, repo)


def side_by_side(repo: Path, device: str, steps: int, eval_groups: int, bf16: bool) -> None:
    task, features = opinionqa_shaped()
    split = split_groups(sorted(task.groups), 0.4, 0.2, 0)
    ours, theirs = Ours(task, features, split, device, bf16), Theirs(task, features, split, device, repo)
    timed = {"ours": [], "theirs": []}
    for step in range(steps + 3):
        for name, side in (("ours", ours), ("theirs", theirs)):
            record = side.step()
            if step >= 3:  # warm-up
                timed[name].append(record)
    n_test = len(split.test)
    our_eval = ours.evaluation(n_test)
    their_eval = theirs.evaluation(eval_groups) * n_test / eval_groups
    seconds = {name: [r[0] for r in records] for name, records in timed.items()}
    ms = {name: 1000 * statistics.median(values) for name, values in seconds.items()}
    paired = statistics.median([b / a for a, b in zip(seconds["ours"], seconds["theirs"], strict=True)])
    points = {name: np.mean([r[2] for r in records]) for name, records in timed.items()}
    targets = {name: np.mean([r[3] for r in records]) for name, records in timed.items()}
    per_target = {name: 1e6 * sum(seconds[name]) / sum(r[3] for r in timed[name]) for name in timed}
    build_share = sum(r[1] for r in timed["theirs"]) / sum(seconds["theirs"])
    stubbed = f"; unused imports of theirs stubbed: {', '.join(theirs.stubbed)}" if theirs.stubbed else ""
    print(
        f"\n== OpinionQA shapes on {device}, {torch.get_num_threads()} thread(s): {len(task.groups)} groups "
        f"({len(split.train)} meta-train, {n_test} test), {len(task.items)} items, d = {features.dim}{stubbed}"
        f"; ours in {'bfloat16 autocast' if bf16 else 'float32'}, theirs in float32"
    )
    print(f"{'':34}{'gpo-bench':>12}{'authors':>12}{'ratio':>8}")
    print(f"{'training step, median ms':34}{ms['ours']:12.0f}{ms['theirs']:12.0f}{ms['theirs'] / ms['ours']:7.1f}x")
    print(f"{'  median of paired step ratios':34}{'':24}{paired:7.1f}x")
    print(f"{'  points per step (mean)':34}{points['ours']:12.0f}{points['theirs']:12.0f}")
    print(f"{'  target points per step (mean)':34}{targets['ours']:12.0f}{targets['theirs']:12.0f}")
    ratio = per_target["theirs"] / per_target["ours"]
    print(f"{'  µs per target point':34}{per_target['ours']:12.0f}{per_target['theirs']:12.0f}{ratio:7.1f}x")
    print(f"  (their batch building: {100 * build_share:.0f}% of their step time)")
    print(
        f"{'evaluation of the test groups, s':34}{our_eval:12.2f}{their_eval:12.1f}{their_eval / our_eval:7.0f}x"
        f"   (theirs timed on {eval_groups} of {n_test} groups, scaled)"
    )
    if device == "cpu":
        products_floor(ours, ms["theirs"])


def products_floor(ours: Ours, their_ms: float, steps: int = 5) -> None:
    """The matrix products of our step (torch profiler FLOP counts, per op) and the time they would take all
    at the fastest rate any of them reaches here: a floor for a float32 step on this core."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as profiled:
        for _ in range(steps):
            ours.step()
    ops = {
        e.key: (e.flops / steps / 1e9, e.flops / e.self_cpu_time_total / 1e3)
        for e in profiled.key_averages()
        if e.flops and e.self_cpu_time_total
    }
    products = {name: value for name, value in ops.items() if name in ("aten::mm", "aten::bmm", "aten::addmm")}
    if not products:
        print("matrix products in our step: the profiler counted none (no FLOP counts in this torch build)")
        return
    total = sum(gflop for gflop, _ in products.values())
    fastest = max(rate for _, rate in products.values())
    rates = ", ".join(f"{name[6:]} {gflop:.1f} at {rate:.0f} GFLOP/s" for name, (gflop, rate) in products.items())
    print(f"matrix products in our step: {total:.1f} GFLOP ({rates}; profiled, {steps} steps)")
    print(
        f"  all at {fastest:.0f} GFLOP/s they alone would take {1000 * total / fastest:.0f} ms; "
        f"a third of their step is {their_ms / 3:.0f} ms"
    )


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM, since ru_maxrss carries over the peak of
    the parent process that forked it (spawn's fork + exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(side: str, repo: Path, device: str, steps: int) -> float:
    """In a fresh process: peak RSS (MiB) after building the data, `steps` training steps and one
    evaluation of one test group, all by `side` alone."""
    torch.set_num_threads(1)
    implementation = build(side, repo, device)
    for _ in range(steps):
        implementation.step()
    implementation.evaluation(1)
    return peak_rss_mib()


def memory_report(repo: Path, device: str, steps: int) -> None:
    peaks = {}
    for side in ("gpo-bench", "authors"):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # a fresh process
            peaks[side] = pool.submit(peak_memory, side, repo, device, steps).result()
    print(
        f"{'peak resident memory, MiB':34}{peaks['gpo-bench']:12.0f}{peaks['authors']:12.0f}"
        f"{peaks['authors'] / peaks['gpo-bench']:7.1f}x   (one fresh process each)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--authors-repo", type=Path, required=True, help="a checkout of jamqd/Group-Preference-Optimization"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per implementation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--authors-eval-groups", type=int, default=1, help="test groups their evaluation is timed on")
    parser.add_argument("--bf16", action="store_true", help="ours with bfloat16 autocast (the gpo card's bf16)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    side_by_side(args.authors_repo, args.device, args.steps, args.authors_eval_groups, args.bf16)
    if not args.no_memory:
        memory_report(args.authors_repo, args.device, args.steps)


if __name__ == "__main__":
    main()
