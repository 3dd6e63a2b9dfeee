"""GPO training and evaluation speed, side by side with an authors'-style implementation of the same
step, in one process.

Shapes: OpinionQA-like (22 groups, 500 items with 2-5 options each, d = 4096 random features,
train-frac 0.4) and, with --data-dir, the real OpinionQA counts with MiniLM features.

The authors'-style step does what their code does per step: builds padded batch tensors from Python
lists, runs nn.TransformerEncoder over [context; targets] with a full (C+T)^2 additive mask, and
takes the per-item softmax in a Python loop over slices. Its evaluation makes one model call per
target option with tensors rebuilt from lists; it is timed on --reference-calls calls and
extrapolated to the full pass (said so in the output).

Peak memory is measured on the OpinionQA shapes in fresh processes, one per implementation: gpo-bench
trains and evaluates with each option vector stored once; the authors'-style process holds the data
as their code does (every group's copy of every option vector as Python floats) and trains on it.

    python benchmarks/gpo_train.py [--data-dir ../shared/data] [--steps 20]
"""

import argparse
import math
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from gpo_bench.cards import load_method_card, load_task_card
from gpo_bench.data import Group, Item, TaskData
from gpo_bench.encoders import Encoder, EncoderSpec
from gpo_bench.features import Features, build_features
from gpo_bench.methods.base import Setup
from gpo_bench.methods.gpo import GPO, gaussian_nll
from gpo_bench.protocol import draw_episode, split_groups
from gpo_bench.runner import load_task


def opinionqa_shaped(n_groups=22, n_items=500, dim=4096, seed=0) -> tuple[TaskData, Features]:
    rng = np.random.default_rng(seed)
    items, rows, n = {}, {}, 0
    for i in range(n_items):
        k = int(rng.integers(2, 6))
        items[f"q{i:03d}"] = Item(f"q{i:03d}", "?", tuple(f"o{j}" for j in range(k)))
        rows[f"q{i:03d}"] = np.arange(n, n + k)
        n += k
    groups = {
        f"g{g:02d}": Group(f"g{g:02d}", {i: rng.dirichlet(np.ones(len(it.candidates))) for i, it in items.items()})
        for g in range(n_groups)
    }
    return TaskData("shaped", "alignment", items, groups), Features(
        rng.standard_normal((n, dim)).astype(np.float32), rows
    )


def authors_style_step(gpo: GPO, generator: torch.Generator, optimizer) -> dict:
    """One training step the way the authors' code computes it (same sampling distribution)."""
    model, timings = gpo.model, {}
    tick = time.perf_counter()
    xs, ys, tarq = [], [], []
    features = gpo.setup.features
    for name in gpo.setup.split.train:
        targets = gpo.setup.task.groups[name].targets
        items = sorted(targets)
        n = len(items)
        n_ctx = int(torch.randint(10, min(100, n - 10) + 1, (1,), generator=generator))
        n_tgt = int(torch.randint(10, min(100, n - n_ctx) + 1, (1,), generator=generator))
        order = torch.randperm(n, generator=generator).tolist()
        ctx, tgt = [items[i] for i in order[:n_ctx]], [items[i] for i in order[n_ctx : n_ctx + n_tgt]]
        cx = [
            features.matrix[r].tolist() + [float(y)]
            for i in ctx
            for r, y in zip(features.rows[i], targets[i], strict=True)
        ]
        tx = [features.matrix[r].tolist() + [0.0] for i in tgt for r in features.rows[i]]
        xs.append((cx, tx))
        ys.append([float(y) for i in tgt for y in targets[i]])
        tarq.append([len(targets[i]) for i in tgt])
    c_max, t_max = max(len(c) for c, _ in xs), max(len(t) for _, t in xs)
    d = len(xs[0][0][0])
    batch = torch.zeros(len(xs), c_max + t_max, d)
    pad = torch.ones(len(xs), c_max + t_max, dtype=torch.bool)
    y = torch.zeros(len(xs), t_max)
    for b, (cx, tx) in enumerate(xs):
        batch[b, : len(cx)] = torch.tensor(cx)
        batch[b, c_max : c_max + len(tx)] = torch.tensor(tx)
        pad[b, : len(cx)] = False
        pad[b, c_max : c_max + len(tx)] = False
        y[b, : len(ys[b])] = torch.tensor(ys[b])
    timings["sample_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    tokens = model.embed(batch)
    mask = torch.full((c_max + t_max, c_max + t_max), -math.inf)
    mask[:, :c_max] = 0
    out = model.head(model.encoder(tokens, mask=mask, src_key_padding_mask=pad)[:, c_max:])
    mu, log_std = out[..., 0], out[..., 1]
    p = torch.zeros_like(mu)
    for b, sizes in enumerate(tarq):
        start = 0
        for size in sizes:
            p[b, start : start + size] = torch.softmax(mu[b, start : start + size], 0)
            start += size
    real = ~pad[:, c_max:]
    loss = gaussian_nll(p[real], log_std[real], y[real])
    timings["forward_s"] = time.perf_counter() - tick
    return timed_update(loss, optimizer, timings)


def timed_update(loss: torch.Tensor, optimizer, timings: dict) -> dict:
    """Backward pass and optimizer step, each timed into `timings`."""
    tick = time.perf_counter()
    optimizer.zero_grad()
    loss.backward()
    timings["backward_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    optimizer.step()
    timings["optimizer_s"] = time.perf_counter() - tick
    return timings


def our_step(gpo: GPO, generator: torch.Generator, optimizer) -> dict:
    timings = {}
    tick = time.perf_counter()
    batch = gpo.sample_batch(generator)
    timings["sample_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    loss = gaussian_nll(*gpo.run_model(batch))
    timings["forward_s"] = time.perf_counter() - tick
    return timed_update(loss, optimizer, timings)


def mean_timings(gpo: GPO, steps: int) -> tuple[dict, dict]:
    """Mean phase timings of both implementations, their steps interleaved so that both see the same
    machine load; each has its own optimizer state and the same sampling distribution."""
    steppers = {"ours": our_step, "theirs": authors_style_step}
    generators = {name: torch.Generator().manual_seed(0) for name in steppers}
    optimizers = {name: torch.optim.Adam(gpo.model.parameters(), lr=3e-4) for name in steppers}
    totals: dict[str, dict[str, float]] = {name: {} for name in steppers}
    for step in range(steps + 3):
        for name, stepper in steppers.items():
            timings = stepper(gpo, generators[name], optimizers[name])
            if step >= 3:  # warm-up
                for key, value in timings.items():
                    totals[name][key] = totals[name].get(key, 0.0) + value / steps
    return totals["ours"], totals["theirs"]


@torch.no_grad()
def authors_style_eval(gpo: GPO, shots: int, calls: int) -> tuple[float, int]:
    """Seconds for `calls` one-option model calls, and how many calls the full pass makes."""
    features, task, model = gpo.setup.features, gpo.setup.task, gpo.model.eval()
    jobs = []
    for name in gpo.setup.split.test:
        episode = draw_episode(task, name, shots, 0)
        targets = task.groups[name].targets
        ctx = [
            features.matrix[r].tolist() + [float(y)]
            for i in episode.context
            for r, y in zip(features.rows[i], targets[i], strict=True)
        ]
        jobs += [(ctx, features.matrix[r].tolist()) for i in episode.targets for r in features.rows[i]]
    tick = time.perf_counter()
    for ctx, x in jobs[:calls]:
        tokens = model.embed(torch.tensor([ctx + [x + [0.0]]]))
        n = tokens.shape[1]
        mask = torch.full((n, n), -math.inf)
        mask[:, : n - 1] = 0
        model.head(model.encoder(tokens, mask=mask))
    return time.perf_counter() - tick, len(jobs)


def report(name: str, task: TaskData, features: Features, steps: int, reference_calls: int) -> None:
    split = split_groups(sorted(task.groups), 0.4, 0.2, 0)
    settings = load_method_card("gpo").settings
    gpo = GPO(settings, Setup(task, split, 0, "cpu", Path("/tmp/gpo-bench-benchmark"), features))
    ours, theirs = mean_timings(gpo, steps)
    episodes = [draw_episode(task, g, 20, 0) for g in split.test]
    tick = time.perf_counter()
    gpo.predict(episodes)
    eval_ours = time.perf_counter() - tick
    sample_s, n_calls = authors_style_eval(gpo, 20, reference_calls)
    eval_theirs = sample_s / min(reference_calls, n_calls) * n_calls
    total_ours, total_theirs = sum(ours.values()), sum(theirs.values())
    print(
        f"\n== {name}: {len(task.groups)} groups ({len(split.train)} meta-train, {len(split.test)} test), "
        f"{len(task.items)} items, d = {features.dim}, {torch.get_num_threads()} threads"
    )
    print(f"{'training step (ms)':24}{'sample':>9}{'forward':>9}{'backward':>9}{'optim':>9}{'total':>9}")
    for label, t, total in (("gpo-bench", ours, total_ours), ("authors' style", theirs, total_theirs)):
        row = "".join(f"{1000 * t[k]:9.1f}" for k in ("sample_s", "forward_s", "backward_s", "optimizer_s"))
        print(f"{label:24}{row}{1000 * total:9.1f}")
    print(f"speed-up per step: {total_theirs / total_ours:.2f}x")
    print(
        f"evaluation of the test groups at K=20: gpo-bench {eval_ours:.2f} s (one batched call); authors' style "
        f"{eval_theirs:.0f} s ({n_calls} one-option calls, extrapolated from {min(reference_calls, n_calls)}); "
        f"speed-up {eval_theirs / eval_ours:.0f}x"
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


def peak_memory(implementation: str, steps: int) -> tuple[float, float]:
    """In a fresh process: peak RSS (MiB) after building the OpinionQA-shaped data, and after `steps`
    training steps and one evaluation of the test groups with `implementation`."""
    task, features = opinionqa_shaped()
    split = split_groups(sorted(task.groups), 0.4, 0.2, 0)
    setup = Setup(task, split, 0, "cpu", Path("/tmp/gpo-bench-benchmark"), features)
    gpo = GPO(load_method_card("gpo").settings, setup)
    data = peak_rss_mib()
    optimizer = torch.optim.Adam(gpo.model.parameters(), lr=3e-4)
    generator = torch.Generator().manual_seed(0)
    if implementation == "gpo-bench":
        for _ in range(steps):
            our_step(gpo, generator, optimizer)
        gpo.predict([draw_episode(task, g, 20, 0) for g in split.test])
    else:
        # The authors' dataset: per group, per item, per option, the option vector as a Python list of
        # floats with the group's share appended, for every group (meta-train and test).
        held = {
            name: [
                [features.matrix[r].tolist() + [float(y)] for r, y in zip(features.rows[i], target, strict=True)]
                for i, target in group.targets.items()
            ]
            for name, group in task.groups.items()
        }
        for _ in range(steps):
            authors_style_step(gpo, generator, optimizer)
        authors_style_eval(gpo, 20, 50)
        del held
    return data, peak_rss_mib()


def memory_report(steps: int) -> None:
    print("\n== peak resident memory, OpinionQA shapes (d = 4096), one fresh process per implementation")
    peaks = {}
    for name in ("gpo-bench", "authors' style"):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # a fresh process
            peaks[name] = pool.submit(peak_memory, name, steps).result()
    for name, (data, peak) in peaks.items():
        print(f"{name:16} {peak:8.0f} MiB peak ({data:.0f} MiB once the shared data and model were built)")
    ratio = peaks["authors' style"][1] / peaks["gpo-bench"][1]
    print(f"memory ratio: {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="also run on real OpinionQA with MiniLM")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per implementation")
    parser.add_argument("--reference-calls", type=int, default=300, help="timed one-option calls")
    args = parser.parse_args()
    task, features = opinionqa_shaped()
    report("OpinionQA shapes, random features", task, features, args.steps, args.reference_calls)
    if args.data_dir:
        card = load_task_card("opinionqa")
        real = load_task(card, args.data_dir)
        features = build_features(real, Encoder(EncoderSpec.parse("minilm"), device="cpu"), card)
        report("real OpinionQA, MiniLM features", real, features, args.steps, args.reference_calls)
    memory_report(args.steps)


if __name__ == "__main__":
    main()
