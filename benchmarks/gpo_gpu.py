"""GPO's fast path: training steps per second with 1, 3 and 8 seeds trained together (one stacked
ensemble), at OpinionQA shapes (22 groups x 500 items with 2-5 options, d = 4096 random features,
40% meta-train), the device's peak memory, and the projected wall time of the paper's budget
(`gpo-paper`: 200,000 steps; validation passes not included). `--attention` also times one
forward + backward with loops over seeds and groups against the batched layout (batched matmuls,
one attention call per layer). `--compile` times the compiled step (`compile: true`: batches padded to one
static shape; on CUDA, CUDA graphs), its compilation excluded (reported apart).

    python benchmarks/gpo_gpu.py                        # CUDA; on a machine without it: says so, exit 2
    python benchmarks/gpo_gpu.py --device cpu --steps 5 --seeds 1,3   # the same code on the CPU
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpo_train import opinionqa_shaped

from gpo_bench.cards import load_method_card
from gpo_bench.methods.base import Setup
from gpo_bench.methods.gpo import GPO, GPOEnsemble, gaussian_nll, make_batch, step_function
from gpo_bench.protocol import split_groups

PAPER_STEPS = 200_000


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ensemble(n_seeds: int, settings: dict, device: str, scratch: Path) -> tuple[list[GPO], GPOEnsemble]:
    task, features = opinionqa_shaped()
    split = split_groups(sorted(task.groups), 0.4, 0.2, 0)
    members = [
        GPO(settings, Setup(task, split, seed, device, scratch / f"seed{seed}", features)) for seed in range(n_seeds)
    ]
    model = GPOEnsemble([m.model.network(0) for m in members]).to(members[0].device)
    model.batched = members[0].model.batched
    return members, model


def steps_per_second(
    n_seeds: int, settings: dict, device: str, steps: int, scratch: Path
) -> tuple[float, float, float]:
    """Training steps per second of `n_seeds` seeds together, the peak device memory (MiB; CUDA only) and
    the seconds of warm-up (compilation, with `compile`)."""
    members, model = ensemble(n_seeds, settings, device, scratch)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=PAPER_STEPS)
    generators = [torch.Generator().manual_seed(seed) for seed in range(n_seeds)]
    target = members[0].device
    step = step_function(members, model, optimizer, scheduler)  # as `train` runs it (compiled with --compile)
    tick = time.perf_counter()
    for _ in range(3):  # warm-up
        step(generators)
    synchronize(target)
    warm_up = time.perf_counter() - tick
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tick = time.perf_counter()
    for _ in range(steps):
        step(generators)
    synchronize(target)
    rate = steps / (time.perf_counter() - tick)
    memory = torch.cuda.max_memory_allocated() / 2**20 if target.type == "cuda" else float("nan")
    return rate, memory, warm_up


def attention_paths(settings: dict, device: str, repeats: int, scratch: Path) -> dict[str, float]:
    """ms per forward + backward on one 3-seed batch: loops over seeds and groups vs the batched layout."""
    members, model = ensemble(3, settings, device, scratch)
    generators = [torch.Generator().manual_seed(seed) for seed in range(3)]
    batch = make_batch([m.sample_parts(g) for m, g in zip(members, generators, strict=True)], members[0].device)
    out = {}
    for _ in range(2):  # the second round is the one reported (the first warms up)
        for name, packed in (("loops", False), ("batched, one attention call per layer", True)):
            model.batched = packed
            synchronize(members[0].device)
            tick = time.perf_counter()
            for _ in range(repeats):
                p, log_std = members[0].run_model(model, batch)
                gaussian_nll(p, log_std, batch.tgt_y).mean().backward()
            synchronize(members[0].device)
            out[name] = 1000 * (time.perf_counter() - tick) / repeats
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--seeds", default="1,3,8", help="ensemble sizes to time (default 1,3,8)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per ensemble size")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA; CPUs with AVX-512 BF16)")
    parser.add_argument("--attention", action="store_true", help="also time the two attention paths")
    parser.add_argument("--compile", action="store_true", help="time the compiled step (static shapes; CUDA graphs)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpo_gpu: torch sees no CUDA device; nothing was run (--device cpu runs the same code)", file=sys.stderr)
        return 2
    settings = dict(load_method_card("gpo-paper").settings, bf16=args.bf16, tf32=False, compile=args.compile)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"GPO at OpinionQA shapes on {name}, bf16={args.bf16}, compile={args.compile}")
    columns = f"{'seeds':>5} {'steps/s':>9} {'seed-steps/s':>13} {'peak MiB':>9} {'200k steps, all seeds':>22}"
    print(f"{columns} {'warm-up s':>10}")
    with tempfile.TemporaryDirectory(prefix="gpo-gpu-") as scratch:
        for n_seeds in (int(n) for n in args.seeds.split(",")):
            rate, memory, warm_up = steps_per_second(n_seeds, settings, args.device, args.steps, Path(scratch))
            minutes = PAPER_STEPS / rate / 60
            print(f"{n_seeds:>5} {rate:9.2f} {rate * n_seeds:13.2f} {memory:9.0f} {minutes:18.1f} min {warm_up:10.1f}")
        if args.attention:
            for path, ms in attention_paths(settings, args.device, 5, Path(scratch)).items():
                print(f"attention, {path}: {ms:.1f} ms per forward + backward (3 seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
