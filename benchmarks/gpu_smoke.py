"""CUDA smoke test: every language-model baseline and GPO, through the runner, on the synthetic task
with a small random-initialized Llama (bfloat16 on CUDA, length-batched prompts, shared few-shot
prefixes, LoRA training and reward head); GPO trains two seeds together in bf16 (batched weights, one
attention call per layer). A tensor on the wrong device raises inside torch and stops
the script with its traceback; afterwards every loaded model is checked to sit wholly on the device
in the expected dtype, and each run's recorded device must be the one asked for.

    python benchmarks/gpu_smoke.py                # needs CUDA; on a CPU-only machine it says so, exit 2
    python benchmarks/gpu_smoke.py --device cpu   # the same code path on the CPU (dry run)
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from gpo_bench import lm, tiny_model
from gpo_bench.runner import RunSpec, execute

LM_METHODS = ["lm-base", "lm-steered", "lm-steered-bio", "lm-steered-qa", "few-shot"]
FINETUNED = ["sft", "in-context-finetune", "reward-model"]


def check_models(device: str) -> None:
    """Every parameter and buffer of every loaded LM on `device`, floating parameters in the expected dtype."""
    expected = torch.bfloat16 if device == "cuda" else torch.float32
    for (folder, *_), loaded in lm.LOADED.items():
        parameters = list(loaded.model.named_parameters())
        # Buffers are checked for their device only: transformers keeps rotary `inv_freq` in float32 on purpose.
        tensors = parameters + list(loaded.model.named_buffers())
        wrong = [(n, t.device, t.dtype) for n, t in tensors if t.device.type != device]
        wrong += [(n, t.device, t.dtype) for n, t in parameters if t.is_floating_point() and t.dtype != expected]
        if wrong:
            raise SystemExit(f"gpu smoke FAILED: {folder}: {len(wrong)} tensors misplaced, e.g. {wrong[:3]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu (dry run)")
    parser.add_argument("--shots", default="0,5", help="comma-separated K values (default 0,5)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu smoke: torch sees no CUDA device on this machine; nothing was run. "
            "Run it on a GPU machine, or pass --device cpu to dry-run the same code path.",
            file=sys.stderr,
        )
        return 2
    if args.device == "cuda":
        print(f"gpu smoke on {torch.cuda.get_device_name()}")
    shots = tuple(int(k) for k in args.shots.split(","))
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as scratch:
        model = str(tiny_model.build_tiny_model(Path(scratch) / "model"))
        runs = [(m, {"model": model}) for m in LM_METHODS]
        runs += [(m, {"model": model, "steps": 3, "batch_size": 4, "lora_layers": None}) for m in FINETUNED]
        runs.append(("gpo", {"max_steps": 20, "eval_every": 10, "bf16": args.device == "cuda"}))
        print(f"{'method':<22} {'K':>5} {'alignment':>10} {'wall s':>8}")
        for method, overrides in runs:
            seeds = (0, 1) if method == "gpo" else (0,)  # GPO: two seeds trained together (the batched path)
            spec = RunSpec(
                "synthetic", method, encoder="bow", shots=shots, seeds=seeds, limit_items=30, overrides=overrides
            )
            tick = time.perf_counter()
            result = execute(spec, None, Path(scratch) / "results", device=args.device, force=True)
            if args.device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - tick
            if result["device"] != args.device:
                raise SystemExit(f"gpu smoke FAILED: {method} ran on {result['device']}, not {args.device}")
            for k, cell in sorted(result["metrics"].items(), key=lambda kv: int(kv[0])):
                print(f"{method:<22} {k:>5} {cell['alignment']['mean']:10.4f} {wall:8.2f}")
        check_models(args.device)
    if args.device == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"gpu smoke: {len(runs)} runs passed on {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
