"""GPO's meta-training: `train` runs the members (seeds) of one stacked ensemble together with one Adam (each
member's update its own), each with its own sampling stream, validation, best parameters and early stop;
`train_step` is one step, `step_function` its eager or compiled form; checkpoints hold the whole ensemble
and are refused when trained on other data, settings or seeds."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ...files import write_atomic
from ...protocol import derived_rng
from .batching import StaticShape, make_batch
from .network import GPOEnsemble, gaussian_nll

if TYPE_CHECKING:  # the members are GPO methods; method.py imports this module
    from .method import GPO

log = logging.getLogger(__name__)


def train(members: list[GPO], progress=None) -> list[dict]:
    """Meta-train the members' networks together (one stacked ensemble, one Adam: elementwise, so each
    member's update is its own). Per member: its sampling stream, validation, best checkpoint and early
    stop; a member that stopped keeps its best parameters while the others go on. Checkpoints (and
    --resume) hold the whole ensemble. `progress`: a tqdm-like bar to report to (default: a new one)."""
    lead, s = members[0], members[0].settings
    seeds = [m.setup.seed for m in members]
    model = lead.model
    if len(members) > 1:
        model = GPOEnsemble([m.model.network(0) for m in members]).to(lead.device)
        model.batched = lead.model.batched
    optimizer = torch.optim.Adam(model.parameters(), lr=s["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s["max_steps"])
    generators = [torch.Generator().manual_seed(int(derived_rng("gpo-train", seed).integers(2**63))) for seed in seeds]
    fresh = {"step": 0, "best_score": -math.inf, "best_step": 0, "best_model": None, "stale": 0, "history": []}
    states = [dict(fresh, history=[]) for _ in members]
    step, done = 0, [False] * len(members)
    path = lead.checkpoint_path
    if len(members) > 1:
        path = lead.setup.work_dir.parent / ("seeds" + "-".join(map(str, seeds))) / "checkpoint.pt"
    if lead.setup.resume and path.exists():
        saved = load_checkpoint(path, members)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        for generator, state in zip(generators, saved["generators"], strict=True):
            generator.set_state(state)
        step, states, done = saved["step"], saved["states"], saved["done"]
        log.info("gpo: resumed from %s at step %d", path, step)
    timing = {"step_s": 0.0, "validate_s": 0.0}
    step_once = step_function(members, model, optimizer, scheduler)
    label = f"gpo seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
    if progress is None:
        progress = tqdm(total=s["max_steps"], initial=step, desc=label, unit="step")
    else:
        progress.update(step)
    while step < s["max_steps"] and not all(done):
        tick = time.perf_counter()
        losses = step_once(generators)
        timing["step_s"] += time.perf_counter() - tick
        step += 1
        progress.update()
        if step % s["eval_every"] == 0 or step == s["max_steps"]:
            tick = time.perf_counter()
            for i, (member, state) in enumerate(zip(members, states, strict=True)):
                if done[i]:
                    continue
                member.model = model.members([i])
                score = member.validate()
                state["history"].append((step, float(losses[i]), score))
                state["step"] = step
                if score > state["best_score"]:
                    state.update(best_score=score, best_step=step, stale=0, best_model=member.model.state_dict())
                else:
                    state["stale"] += 1
                if s.get("patience") and state["stale"] >= s["patience"]:
                    log.info(
                        "gpo seed %d: no validation gain in %d evaluations; stopping at step %d",
                        seeds[i],
                        s["patience"],
                        step,
                    )
                    done[i] = True
            timing["validate_s"] += time.perf_counter() - tick
            best = max(state["best_score"] for state in states)
            progress.set_postfix(loss=f"{float(losses.mean()):.3f}", best=f"{best:.4f}")
            save_checkpoint(path, members, model, optimizer, scheduler, generators, step, states, done)
    progress.close()
    for i, (member, state) in enumerate(zip(members, states, strict=True)):
        member.model = model.members([i])
        if state["best_model"] is not None:
            member.model.load_state_dict(state["best_model"])
    return [
        {
            "steps": state["step"],
            "best_step": state["best_step"],
            "best_validation": state["best_score"],
            "history": state["history"],
            "timing": timing,
            "trained_with_seeds": seeds,
        }
        for state in states
    ]


def step_function(members: list[GPO], model: GPOEnsemble, optimizer, scheduler) -> Callable:
    """The training step as `train` runs it: generators → per-member losses. Eager; or, with the card's
    `compile`, the model compiled in the batched layout over batches padded to one static shape, so that one
    graph serves every step (on CUDA in `reduce-overhead` mode: CUDA graphs)."""
    if not members[0].settings.get("compile"):
        return lambda generators: train_step(members, model, generators, optimizer, scheduler)
    shape, model.batched = members[0].static_shape(len(members)), True
    graphs = members[0].device.type == "cuda"
    compiled = torch.compile(model, mode="reduce-overhead" if graphs else None, dynamic=False)

    def step(generators: list[torch.Generator]) -> torch.Tensor:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return train_step(members, compiled, generators, optimizer, scheduler, shape)

    return step


def train_step(
    members: list[GPO], model, generators, optimizer, scheduler, shape: StaticShape | None = None
) -> torch.Tensor:
    """One meta-training step of every member: each samples its batch from its own generator; the loss
    is the sum over members of each member's mean NLL over its target points. `model`: the ensemble, or
    its compiled form with the batch padded to `shape`. → per-member losses."""
    model.train()
    parts = [m.sample_parts(g) for m, g in zip(members, generators, strict=True)]
    batch = make_batch(parts, members[0].device, shape)
    p, log_std = members[0].run_model(model, batch)
    nll = gaussian_nll(p, log_std, batch.tgt_y) * batch.target_weight
    losses = torch.zeros(len(members), device=nll.device).index_add(0, batch.target_member, nll) / batch.target_counts
    optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    optimizer.step()
    scheduler.step()
    return losses.detach()


def save_checkpoint(
    path: Path, members: list[GPO], model, optimizer, scheduler, generators, step: int, states: list, done: list
) -> None:
    saved = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generators": [g.get_state() for g in generators],
        "step": step,
        "states": states,
        "done": done,
        "trained_on": [m.trained_on() for m in members],
    }
    write_atomic(path, lambda out: torch.save(saved, out))


def load_checkpoint(path: Path, members: list[GPO]) -> dict:
    """The saved training state; a file that cannot be read, or one trained on other data, settings or
    seeds, is refused with a message naming the file and both sides."""
    mine = [m.trained_on() for m in members]
    try:
        saved = torch.load(path, map_location=members[0].device, weights_only=False)
    except Exception as error:  # noqa: BLE001  (truncated, foreign or not a torch file at all)
        raise RuntimeError(
            f"cannot resume from {path}: not a readable checkpoint ({type(error).__name__}: "
            f"{str(error)[:160]}); delete it, or run without --resume (or with --force) to train from scratch"
        ) from None
    if not isinstance(saved, dict) or "generators" not in saved:
        raise RuntimeError(f"cannot resume from {path}: written by an older gpo-bench; run again without --resume")
    theirs = saved.get("trained_on") or [{}]
    if theirs != mine:
        first, own = theirs[0] or {}, mine[0]
        keys = sorted(set(own["settings"]) | set(first.get("settings") or {}))
        settings = [
            f"{k}={(first.get('settings') or {}).get(k)!r} vs {own['settings'].get(k)!r}"
            for k in keys
            if (first.get("settings") or {}).get(k) != own["settings"].get(k)
        ]
        raise RuntimeError(
            f"cannot resume from {path}: it was trained on data {first.get('data')} (seeds "
            f"{[t.get('seed') for t in theirs]}), this run has data {own['data']} (seeds {[t['seed'] for t in mine]})"
            + (f"; settings differ (checkpoint vs this run): {', '.join(settings)}" if settings else "")
            + "; delete it, or run without --resume (or with --force) to train from scratch"
        )
    return saved
