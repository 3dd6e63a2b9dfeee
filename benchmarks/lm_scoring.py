"""Prompt-scoring throughput of the LM baselines: `gpo_bench.lm.CausalLM`'s scoring path against a plain
transformers loop over the same prompts, side by side in one process, and against the matrix-product floor.

    python benchmarks/lm_scoring.py --data-dir ../shared/data [--model smollm2] [--quick]

The prompts are the ones `lm-steered` (portray style) and `few-shot` build on OpinionQA: the method objects
themselves are asked to predict a few test groups' episodes, and the prompts they hand to the model are recorded
(one batch per episode, as the runner would score them). Each side then scores every recorded prompt:

- gpo-bench: `CausalLM.next_token_logits` on each episode's prompts (the path under `option_probs`' memo, so
  no prediction is ever looked up instead of computed), then the letters' log-probabilities;
- plain: what a user would write, one prompt at a time, no prefix reuse: `model(input_ids).logits[:, -1]`,
  then a softmax over the answer letters (each letter's spellings merged by logsumexp, as the methods read them).

`reward-model` reads a hidden state, not letters: its prompts are each target item's option prompts (the
question, then `B. option` as the answer; `RewardModel.option_prompts`), one batch per item as the method scores
them. gpo-bench: `CausalLM.final_states` on an item's options (their shared question runs once); plain: the
decoder on one option prompt at a time, `last_hidden_state[:, -1]`. Both sides' states go through the same
seeded random scalar head and a softmax over the item's options, the probabilities compared as above. The base
model stands in for a group's adapter (the adapter adds the same LoRA products to both sides).

The two sides alternate episode by episode, each going first in turn, so that both see the same machine load.
The report gives each side's tokens/s (prompt tokens: what the prompts hold, not what was run), the median of
the per-round ratios, and the largest difference between the two sides' option probabilities (they must agree
within --tolerance, else the script fails). The floor is 2 × the decoder's matrix-product parameters × the
prompt tokens, plus the output head once per prompt, at the float32 GEMM rate this machine reaches with
torch.matmul on the model's own weight shapes (measured each round); "against the floor" is the floor's time
over the measured time (above 100% is possible: shared prompt beginnings run once).
"""

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gpo_bench.cards import load_method_card, load_task_card
from gpo_bench.lm import (
    MIN_SHARED_PREFIX,
    CausalLM,
    common_prefix_length,
    length_batches,
    letter_log_probs,
    letter_variants,
)
from gpo_bench.loaders import load_task
from gpo_bench.methods.base import Setup
from gpo_bench.protocol import draw_episode, make_split
from gpo_bench.registry import METHODS

Batch = tuple[list[list[int]], list[int]]  # one episode's (or item's) prompts and their option counts
SHOTS = {"lm-steered": 0, "few-shot": None, "reward-model": 0}  # K per method; None: --shots
READS_STATES = {"reward-model"}  # methods that read the final hidden state, not the answer letters
LABELS = {"reward-model": "option prompts"}


def recorded_prompts(
    method_name: str, model: str, data_dir: Path, groups: int, items: int, shots: int, seed: int
) -> tuple[CausalLM, list[Batch]]:
    """The prompts the method scores for the first `groups` test groups of OpinionQA's 40% split (`items`
    targets each), one batch per episode, recorded from the method's own calls to `option_probs`."""
    card = load_task_card("opinionqa")
    task = load_task(card, data_dir)
    split = make_split(task, card.protocol, card.protocol_settings, card.train_frac, card.val_frac, seed)
    settings = {**load_method_card(method_name).settings, "model": model}
    implementation = METHODS.get(load_method_card(method_name).implementation)
    method = implementation(settings, Setup(task, split, seed, "cpu", Path(tempfile.gettempdir())))
    batches: list[Batch] = []

    def record(prompts: list[list[int]], sizes: list[int]) -> list[np.ndarray]:
        batches.append((prompts, sizes))
        return [np.full(n, 1 / n) for n in sizes]

    method.lm.option_probs = record
    for group in split.test[:groups]:
        episode = draw_episode(task, group, shots, seed)
        if method_name in READS_STATES:  # one batch per item: its option prompts, as `RewardModel` scores them
            for item in episode.targets[:items]:
                options = method.option_prompts(item, f"item {item!r}")
                batches.append((options, [len(options)] * len(options)))
        else:
            method.predict_episode(dataclasses.replace(episode, targets=episode.targets[:items]))
    del method.lm.option_probs
    return method.lm, batches


def option_softmax(states: torch.Tensor, head: torch.Tensor) -> np.ndarray:
    """An item's option probabilities from its options' final states [options, hidden] through a scalar head."""
    return torch.softmax((states.double() @ head.double()), 0).numpy()


def ours(lm: CausalLM, batches: list[Batch], head: torch.Tensor | None) -> list[np.ndarray]:
    """gpo-bench's side: the letters' probabilities, or with `head` (reward-model) the options' through it."""
    with torch.inference_mode():
        if head is not None:
            return [option_softmax(lm.final_states(prompts), head) for prompts, _ in batches]
        out = []
        for prompts, sizes in batches:
            letters = letter_log_probs(lm.next_token_logits(prompts), lm.variants(max(sizes)))
            out += [torch.softmax(row[:n].double(), -1).numpy() for row, n in zip(letters, sizes, strict=True)]
    return out


def plain(
    model: torch.nn.Module, variants: list[list[int]], batches: list[Batch], head: torch.Tensor | None
) -> list[np.ndarray]:
    """The plain loop's side: one prompt at a time, no prefix reuse; read as `ours` reads."""
    with torch.inference_mode():
        if head is not None:
            decoder = model.get_decoder()
            last_states = [[decoder(torch.tensor([ids])).last_hidden_state[:, -1] for ids in p] for p, _ in batches]
            return [option_softmax(torch.cat(states), head) for states in last_states]
        out = []
        for prompts, sizes in batches:
            for ids, n in zip(prompts, sizes, strict=True):
                logits = model(torch.tensor([ids])).logits[:, -1]
                scores = torch.stack([torch.logsumexp(logits[0, v], 0) for v in variants[:n]])
                out.append(torch.softmax(scores.double(), 0).numpy())
    return out


def gemm_rate(model: torch.nn.Module, rows: int, repeats: int = 3) -> float:
    """FLOP/s of float32 torch.matmul over one decoder layer's weight shapes with `rows` tokens (best of
    `repeats`; every layer of these models has the same shapes)."""
    layer = model.get_decoder().layers[0]
    shapes = [m.weight.shape for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    weights = [torch.randn(out_features, in_features) for out_features, in_features in shapes]
    inputs = [torch.randn(rows, in_features) for _, in_features in shapes]
    flops = sum(2 * rows * w.numel() for w in weights)
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        for x, w in zip(inputs, weights, strict=True):
            torch.matmul(x, w.T)
        best = min(best, time.perf_counter() - tick)
    return flops / best


def matmul_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(decoder matrix-product parameters, output-head parameters); embeddings are lookups, not products."""
    decoder = sum(m.weight.numel() for m in model.get_decoder().modules() if isinstance(m, torch.nn.Linear))
    return decoder, model.get_output_embeddings().weight.numel()


def tokens_run(batches: list[Batch], batch_tokens: int) -> tuple[int, int]:
    """(tokens CausalLM runs: each episode's shared beginning once plus every prompt's rest, the same padded)."""
    run = padded = 0
    for prompts, _ in batches:
        shared = common_prefix_length(prompts) if len(prompts) > 1 else 0
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
        rests = [len(p) - shared for p in prompts]
        run += shared + sum(rests)
        groups = length_batches([r + shared for r in rests], batch_tokens)
        padded += shared + sum(max(rests[i] for i in b) * len(b) for b in groups)
    return run, padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", default="smollm2", help="smollm2 (offline), a local folder or a Hub id")
    parser.add_argument(
        "--methods",
        default="lm-steered,few-shot",
        help="whose prompts, comma-separated: lm-steered, few-shot, reward-model",
    )
    parser.add_argument("--groups", type=int, default=3, help="test groups (one episode each) per method")
    parser.add_argument("--items", type=int, default=12, help="target items per episode")
    parser.add_argument("--shots", type=int, default=5, help="few-shot's K")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each side once per round)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed probability difference")
    parser.add_argument("--quick", action="store_true", help="1 group x 4 items, 2 rounds: for development")
    args = parser.parse_args()
    if args.quick:
        args.groups, args.items, args.rounds = 1, 4, 2
    torch.set_num_threads(args.threads)
    for method_name in args.methods.split(","):
        if method_name not in SHOTS:
            raise SystemExit(f"--methods: unknown method {method_name!r} (known: {', '.join(SHOTS)})")
        shots = SHOTS[method_name] if SHOTS[method_name] is not None else args.shots
        compare(method_name, shots, args)


def compare(method_name: str, shots: int, args: argparse.Namespace) -> None:
    """Score one method's recorded prompts on both sides, rounds interleaved, and print the figures."""
    lm, batches = recorded_prompts(method_name, args.model, args.data_dir, args.groups, args.items, shots, seed=0)
    lengths = [len(p) for prompts, _ in batches for p in prompts]
    n_tokens = sum(lengths)
    run, padded = tokens_run(batches, lm.batch_tokens)
    variants = letter_variants(lm.tokenizer, max(n for _, sizes in batches for n in sizes))
    decoder, output_head = matmul_parameters(lm.model)
    reward_head = None
    if method_name in READS_STATES:  # the final state, not the output head's logits
        output_head = 0
        reward_head = torch.randn(lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    flops = 2 * decoder * n_tokens + 2 * output_head * len(lengths)
    ours(lm, batches[:1], reward_head)  # warm up both paths outside the timings
    plain(lm.model, variants, batches[:1], reward_head)
    times: dict[str, list[float]] = {"gpo-bench": [], "plain": []}
    floors: list[float] = []
    mine: list[np.ndarray] = []
    reference: list[np.ndarray] = []
    for round_ in range(args.rounds):
        floors.append(flops / gemm_rate(lm.model, rows=min(lm.batch_tokens, 1024)))
        seconds = {"gpo-bench": 0.0, "plain": 0.0}
        mine, reference = [], []
        for e, batch in enumerate(batches):  # the sides alternate per episode, each going first in turn
            sides = ["gpo-bench", "plain"] if (e + round_) % 2 == 0 else ["plain", "gpo-bench"]
            for side in sides:
                tick = time.perf_counter()
                if side == "gpo-bench":
                    mine += ours(lm, [batch], reward_head)
                else:
                    reference += plain(lm.model, variants, [batch], reward_head)
                seconds[side] += time.perf_counter() - tick
        for side, total in seconds.items():
            times[side].append(total)
    difference = max(float(np.abs(a - b).max()) for a, b in zip(mine, reference, strict=True))
    label = f"{method_name} (K = {shots})" if shots else f"{method_name} ({LABELS.get(method_name, 'portray')})"
    print(
        f"\n{label}: {len(batches)} {'episodes' if reward_head is None else 'items'}, "
        f"{len(lengths)} prompts, {n_tokens} prompt tokens "
        f"(mean {n_tokens / len(lengths):.0f}, {min(lengths)}-{max(lengths)}); gpo-bench runs {run} of them "
        f"({padded} with padding); model {args.model}, {args.threads} threads"
    )
    print(f"{'':12}{'median s':>10}{'tokens/s':>10}   rounds (s)")
    for side, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{side:12}{median:10.2f}{n_tokens / median:10.0f}   {', '.join(f'{s:.2f}' for s in seconds)}")
    ratios = [p / o for o, p in zip(times["gpo-bench"], times["plain"], strict=True)]
    print(f"ratio plain / gpo-bench: median {statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})")
    for side, seconds in times.items():
        fractions = [f / s for f, s in zip(floors, seconds, strict=True)]
        print(
            f"{side} against the floor: median {statistics.median(fractions):.0%} "
            f"({', '.join(f'{f:.0%}' for f in fractions)})"
        )
    print(
        f"floor: 2 x ({decoder / 1e6:.1f}M decoder parameters x prompt tokens + {output_head / 1e6:.1f}M head "
        f"parameters x prompts) = {flops / 1e9:.0f} GFLOP at the rounds' GEMM rates "
        f"({', '.join(f'{flops / f / 1e9:.0f}' for f in floors)} GFLOP/s): {', '.join(f'{f:.2f}' for f in floors)} s"
    )
    print(f"largest probability difference between the two sides: {difference:.1e}")
    if difference > args.tolerance:
        raise SystemExit(f"the two sides disagree by {difference:.1e} > --tolerance {args.tolerance}")


if __name__ == "__main__":
    main()
