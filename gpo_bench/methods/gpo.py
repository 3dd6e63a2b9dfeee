"""Group Preference Optimization (Zhao, Dang & Grover, ICLR 2024), faithful to the authors' model.

Each candidate is one point: x = its embedding, y = the group's probability for it. Context tokens
are MLP([x; y]), target tokens MLP([x; 0]); a 6-layer post-LN transformer encoder without positional
encoding in which every token attends to the context tokens only; a (mu, s) head; p = softmax of mu
within each target item; loss = Gaussian NLL of y under N(p, exp(s)^2).

Speed without changing the function: since no token attends to a target, the context tokens evolve
on their own, and target tokens only query the context. Each layer therefore runs attention with the
context as keys (cost T x C instead of (C+T)^2), using the very parameters of
`nn.TransformerEncoderLayer`; a test checks equality with the masked `nn.TransformerEncoder`. The
embedding MLP's first layer is applied once per distinct candidate vector of a batch and its output
gathered per point, so a d = 4096 vector shared by many groups is never copied per point.

Deviations from the authors' code, each a fix: validation groups (not the test groups) pick the
checkpoint; the loss is the mean over real target points (theirs counts padding in the mean);
validation context draws are fixed by the seed (theirs change at every evaluation)."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..files import write_atomic
from ..metrics import item_score
from ..protocol import Episode, derived_rng, draw_episode
from ..registry import METHODS
from .base import Method, item_softmax

log = logging.getLogger(__name__)


def build_mlp(d_in: int, d_hidden: int, depth: int) -> nn.Sequential:
    """Linear(d_in, h) and depth-1 more Linear(h, h), ReLU between (the authors' build_mlp)."""
    layers: list[nn.Module] = [nn.Linear(d_in, d_hidden)]
    for _ in range(depth - 1):
        layers += [nn.ReLU(), nn.Linear(d_hidden, d_hidden)]
    return nn.Sequential(*layers)


class GPOModel(nn.Module):
    def __init__(self, d_x: int, d_model: int, layers: int, heads: int, d_ff: int, mlp_depth: int) -> None:
        super().__init__()
        self.embed = build_mlp(d_x + 1, d_model, mlp_depth)
        layer = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 2))

    def forward(self, x: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, layout: Layout):
        """Packed points (no padding), every context point then every target point: their vectors
        x[rows] (x [U, d], rows [ΣC+ΣT]) and y [ΣC+ΣT] (0 for targets) → mu, s [ΣT]."""
        tokens = self.embed_points(x, rows, y)[layout.order]
        for layer in self.encoder.layers:
            tokens = self.layer_step(layer, tokens, layout)
        out = self.head(tokens[layout.target_positions])
        return out[:, 0], out[:, 1]

    def embed_points(self, x: torch.Tensor, rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """MLP([x[rows]; y]). Its first layer is W_x x + w_y y + b, and W_x x is computed once per
        distinct row: a candidate recurs in every group that answered it, and at d = 4096 gathering
        x[rows] would hold one copy of the vector per point."""
        first = self.embed[0]
        distinct, position = torch.unique(rows, return_inverse=True)
        # index_select, not [position]: the backward of advanced indexing with repeated indices adds
        # in a thread-dependent order on the CPU, which made training non-deterministic.
        hidden = torch.index_select(F.linear(x[distinct], first.weight[:, :-1]), 0, position)
        return self.embed[1:](hidden + torch.outer(y, first.weight[:, -1]) + first.bias)

    @staticmethod
    def layer_step(layer: nn.TransformerEncoderLayer, tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
        """One post-LN encoder layer in which each group's tokens attend to that group's context
        tokens only; the same arithmetic as `nn.MultiheadAttention` under the authors' mask."""
        attention = layer.self_attn
        heads, d_model = attention.num_heads, tokens.shape[-1]
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
        q = F.linear(tokens, w_q, b_q)
        scale = (d_model // heads) ** -0.5
        context = tokens[layout.context_positions]
        k, v = F.linear(context, w_k, b_k), F.linear(context, w_v, b_v)
        outputs = []
        for start, end, ctx_start, ctx_end in layout.spans:
            if ctx_end == ctx_start:  # K = 0: attending to nothing contributes zero before the projection
                outputs.append(tokens.new_zeros(end - start, d_model))
                continue
            split = lambda t: t.unflatten(-1, (heads, -1)).transpose(0, 1)  # noqa: E731  [heads, n, d_head]
            scores = split(q[start:end]) @ split(k[ctx_start:ctx_end]).transpose(1, 2) * scale
            out = torch.softmax(scores, dim=-1) @ split(v[ctx_start:ctx_end])
            outputs.append(out.transpose(0, 1).flatten(1))
        tokens = layer.norm1(tokens + attention.out_proj(torch.cat(outputs)))
        return layer.norm2(tokens + layer.linear2(layer.activation(layer.linear1(tokens))))


def gaussian_nll(p: torch.Tensor, log_std: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over points of -log N(y; p, exp(s)^2)."""
    return -torch.distributions.Normal(p, torch.exp(log_std)).log_prob(y).mean()


@dataclass
class GroupPoints:
    """One group's items as flat candidate points on the device."""

    items: list[str]
    rows: torch.Tensor  # feature row of each point
    y: torch.Tensor  # the group's probability of each point
    item_of: torch.Tensor  # index into `items` of each point


@dataclass
class Layout:
    """Where each group's tokens sit in the packed sequence [ctx_1, tgt_1, ctx_2, tgt_2, ...]."""

    order: torch.Tensor  # cat([all context, all targets])[order] = the packed sequence
    context_positions: torch.Tensor
    target_positions: torch.Tensor
    spans: list[tuple[int, int, int, int]]  # per group: token start, end; its context's start, end

    @classmethod
    def build(cls, ctx_sizes: list[int], tgt_sizes: list[int], device: torch.device) -> Layout:
        n_ctx = sum(ctx_sizes)
        order, ctx_pos, tgt_pos, spans = [], [], [], []
        position = ctx_seen = tgt_seen = 0
        for c, t in zip(ctx_sizes, tgt_sizes, strict=True):
            order += list(range(ctx_seen, ctx_seen + c)) + list(range(n_ctx + tgt_seen, n_ctx + tgt_seen + t))
            ctx_pos += range(position, position + c)
            tgt_pos += range(position + c, position + c + t)
            spans.append((position, position + c + t, ctx_seen, ctx_seen + c))
            position, ctx_seen, tgt_seen = position + c + t, ctx_seen + c, tgt_seen + t
        as_index = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
        return cls(as_index(order), as_index(ctx_pos), as_index(tgt_pos), spans)


@dataclass
class Batch:
    """Packed context and target points of several groups."""

    ctx_rows: torch.Tensor  # [ΣC] feature rows
    ctx_y: torch.Tensor
    tgt_rows: torch.Tensor  # [ΣT]
    tgt_y: torch.Tensor
    tgt_segment: torch.Tensor  # [ΣT] item segment of each target point, unique across the batch
    n_segments: int
    layout: Layout


def make_batch(parts: list[tuple[torch.Tensor, ...]], n_items: list[int]) -> Batch:
    """Per group (context rows, context y, target rows, target y, target item index) → one packed batch;
    target item indices are made unique across groups for the per-item softmax."""
    offsets = np.cumsum([0, *n_items[:-1]]).tolist()
    return Batch(
        ctx_rows=torch.cat([p[0] for p in parts]),
        ctx_y=torch.cat([p[1] for p in parts]),
        tgt_rows=torch.cat([p[2] for p in parts]),
        tgt_y=torch.cat([p[3] for p in parts]),
        tgt_segment=torch.cat([p[4] + offset for p, offset in zip(parts, offsets, strict=True)]),
        n_segments=sum(n_items),
        layout=Layout.build([len(p[0]) for p in parts], [len(p[2]) for p in parts], parts[0][0].device),
    )


@METHODS.register("gpo", "Group Preference Optimization: meta-trained in-context transformer (ICLR 2024)")
class GPO(Method):
    needs_features = True

    def __init__(self, settings: dict, setup) -> None:
        super().__init__(settings, setup)
        self.device = torch.device(setup.device)
        features = setup.features
        self.x = torch.as_tensor(features.matrix, dtype=torch.float32, device=self.device)
        self.points = {g: self.group_points(g) for g in setup.task.groups}
        torch.manual_seed(setup.seed)
        s = settings
        self.model = GPOModel(features.dim, s["d_model"], s["layers"], s["heads"], s["d_ff"], s["mlp_depth"])
        self.model.to(self.device)
        if self.device.type == "cuda" and s.get("tf32"):
            torch.backends.cuda.matmul.allow_tf32 = True
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(s.get("bf16")))
        self.checkpoint_path = setup.work_dir / "checkpoint.pt"

    def group_points(self, group_id: str) -> GroupPoints:
        features, targets = self.setup.features, self.setup.task.groups[group_id].targets
        items = sorted(targets)
        rows = np.concatenate([features.rows[i] for i in items])
        y = np.concatenate([targets[i] for i in items])
        item_of = np.concatenate([np.full(len(targets[i]), n) for n, i in enumerate(items)])
        as_tensor = lambda a, dtype: torch.as_tensor(a, dtype=dtype, device=self.device)  # noqa: E731
        return GroupPoints(
            items, as_tensor(rows, torch.long), as_tensor(y, torch.float32), as_tensor(item_of, torch.long)
        )

    def run_model(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ p (per-item softmax), log std and the targets, per target point."""
        rows = torch.cat([batch.ctx_rows, batch.tgt_rows])
        y = torch.cat([batch.ctx_y, batch.ctx_y.new_zeros(len(batch.tgt_rows))])
        with self.autocast:
            mu, log_std = self.model(self.x, rows, y, batch.layout)
        p = item_softmax(mu.float(), batch.tgt_segment, batch.n_segments)
        return p, log_std.float(), batch.tgt_y

    # ---- meta-training ------------------------------------------------------------------------

    def sample_batch(self, generator: torch.Generator) -> Batch:
        """Per group: a random permutation of its items; n_ctx ~ U{10..100} and n_tgt ~
        U{10..min(100, N - n_ctx)} whole items (bounds shrink for groups with under 20 items)."""
        names = list(self.setup.split.train)
        per_step = self.settings.get("groups_per_step") or len(names)
        if per_step < len(names):
            names = [names[i] for i in torch.randperm(len(names), generator=generator)[:per_step].tolist()]
        (ctx_lo, ctx_hi), (tgt_lo, tgt_hi) = self.settings["context_items"], self.settings["target_items"]
        parts, n_items = [], []
        for name in names:
            group = self.points[name]
            n = len(group.items)
            hi = max(1, min(ctx_hi, n - min(tgt_lo, n // 2)))
            lo = min(ctx_lo, hi)
            n_ctx = int(torch.randint(lo, hi + 1, (1,), generator=generator))
            t_hi = max(1, min(tgt_hi, n - n_ctx))
            n_tgt = int(torch.randint(min(tgt_lo, t_hi), t_hi + 1, (1,), generator=generator))
            order = torch.randperm(n, generator=generator).to(self.device)
            role = torch.zeros(n, dtype=torch.long, device=self.device)
            role[order[:n_ctx]] = 1
            role[order[n_ctx : n_ctx + n_tgt]] = 2
            point_role = role[group.item_of]
            ctx, tgt = point_role == 1, point_role == 2
            parts.append((group.rows[ctx], group.y[ctx], group.rows[tgt], group.y[tgt], group.item_of[tgt]))
            n_items.append(n)
        return make_batch(parts, n_items)

    def fit(self) -> dict:
        s = self.settings
        optimizer = torch.optim.Adam(self.model.parameters(), lr=s["lr"])
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s["max_steps"])
        generator = torch.Generator().manual_seed(int(derived_rng("gpo-train", self.setup.seed).integers(2**63)))
        state = {"step": 0, "best_score": -math.inf, "best_step": 0, "best_model": None, "stale": 0, "history": []}
        saved = self.load_checkpoint() if self.setup.resume and self.checkpoint_path.exists() else None
        if saved is not None:
            self.model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            generator.set_state(saved["generator"])
            state = saved["state"]
            log.info("gpo: resumed from %s at step %d", self.checkpoint_path, state["step"])
        timing = {"sample_s": 0.0, "step_s": 0.0, "validate_s": 0.0}
        progress = tqdm(total=s["max_steps"], initial=state["step"], desc=f"gpo seed {self.setup.seed}", unit="step")
        while state["step"] < s["max_steps"]:
            self.model.train()
            tick = time.perf_counter()
            batch = self.sample_batch(generator)
            timing["sample_s"] += time.perf_counter() - tick
            tick = time.perf_counter()
            loss = gaussian_nll(*self.run_model(batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            timing["step_s"] += time.perf_counter() - tick
            state["step"] += 1
            progress.update()
            if state["step"] % s["eval_every"] == 0 or state["step"] == s["max_steps"]:
                tick = time.perf_counter()
                score = self.validate()
                timing["validate_s"] += time.perf_counter() - tick
                state["history"].append((state["step"], loss.item(), score))
                progress.set_postfix(
                    loss=f"{loss.item():.3f}", val=f"{score:.4f}", best=f"{max(score, state['best_score']):.4f}"
                )
                if score > state["best_score"]:
                    state.update(best_score=score, best_step=state["step"], stale=0)
                    state["best_model"] = copy.deepcopy(self.model.state_dict())
                else:
                    state["stale"] += 1
                self.save_checkpoint(optimizer, scheduler, generator, state)
                if s.get("patience") and state["stale"] >= s["patience"]:
                    log.info(
                        "gpo: no validation gain in %d evaluations; stopping at step %d", s["patience"], state["step"]
                    )
                    break
        progress.close()
        if state["best_model"] is not None:
            self.model.load_state_dict(state["best_model"])
        return {
            "steps": state["step"],
            "best_step": state["best_step"],
            "best_validation": state["best_score"],
            "history": state["history"],
            "timing": timing,
        }

    def save_checkpoint(self, optimizer, scheduler, generator: torch.Generator, state: dict) -> None:
        saved = {
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "state": state,
            "trained_on": self.trained_on(),
        }
        write_atomic(self.checkpoint_path, lambda out: torch.save(saved, out))

    def trained_on(self) -> dict:
        """What a checkpoint must share with the run that resumes it: the data the method sees (the split's
        view of the task), its settings and the seed."""
        return {"data": self.setup.task.fingerprint(), "settings": self.settings, "seed": self.setup.seed}

    def load_checkpoint(self) -> dict:
        """The saved training state; a file that cannot be read, or one trained on other data, settings or
        seed, is refused with a message naming the file and both sides."""
        path, mine = self.checkpoint_path, self.trained_on()
        try:
            saved = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as error:  # noqa: BLE001  (truncated, foreign or not a torch file at all)
            raise RuntimeError(
                f"cannot resume from {path}: not a readable checkpoint ({type(error).__name__}: "
                f"{str(error)[:160]}); delete it, or run without --resume (or with --force) to train from scratch"
            ) from None
        theirs = saved.get("trained_on") if isinstance(saved, dict) else None
        if theirs != mine:
            theirs = theirs or {}
            keys = sorted(set(mine["settings"]) | set(theirs.get("settings") or {}))
            settings = [
                f"{k}={(theirs.get('settings') or {}).get(k)!r} vs {mine['settings'].get(k)!r}"
                for k in keys
                if (theirs.get("settings") or {}).get(k) != mine["settings"].get(k)
            ]
            raise RuntimeError(
                f"cannot resume from {path}: it was trained on data {theirs.get('data')} (seed {theirs.get('seed')}), "
                f"this run has data {mine['data']} (seed {mine['seed']})"
                + (f"; settings differ (checkpoint vs this run): {', '.join(settings)}" if settings else "")
                + "; delete it, or run without --resume (or with --force) to train from scratch"
            )
        return saved

    def validate(self) -> float:
        """Mean score over the validation groups, each with `validation_shots` fixed context items
        (personalized tasks: drawn from the user's pool, scored on the rest of the pool)."""
        task = self.setup.task
        shots, seed, split = self.settings["validation_shots"], self.setup.seed, self.setup.split
        episodes = [draw_episode(task, g, shots, seed, split, validation=True) for g in split.validation]
        per_group = []
        for episode, preds in zip(episodes, self.predict(episodes), strict=True):
            targets = task.groups[episode.group].targets
            scores = [
                item_score(task.metric, p, targets[i], task.items[i].ordinal)
                for i, p in zip(episode.targets, preds, strict=True)
            ]
            per_group.append(np.mean(scores))
        return float(np.mean(per_group))

    # ---- evaluation -----------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, episodes: list[Episode]) -> list[list[np.ndarray]]:
        """All episodes in one batch: every target item of every group in one model call."""
        self.model.eval()
        rows = self.setup.features.rows
        as_tensor = lambda a, dtype: torch.as_tensor(a, dtype=dtype, device=self.device)  # noqa: E731
        parts, sizes = [], []
        for episode in episodes:
            ctx_rows = [rows[i] for i in episode.context]
            tgt_sizes = [len(rows[i]) for i in episode.targets]
            parts.append(
                (
                    as_tensor(np.concatenate(ctx_rows) if ctx_rows else np.zeros(0), torch.long),
                    as_tensor(np.concatenate(episode.context_targets) if ctx_rows else np.zeros(0), torch.float32),
                    as_tensor(np.concatenate([rows[i] for i in episode.targets]), torch.long),
                    torch.zeros(sum(tgt_sizes), device=self.device),
                    as_tensor(np.repeat(np.arange(len(tgt_sizes)), tgt_sizes), torch.long),
                )
            )
            sizes.append(tgt_sizes)
        p, _, _ = self.run_model(make_batch(parts, [len(e.targets) for e in episodes]))
        p = p.double().cpu().numpy()
        out, start = [], 0
        for tgt_sizes in sizes:
            preds = []
            for size in tgt_sizes:
                preds.append(p[start : start + size] / p[start : start + size].sum())
                start += size
            out.append(preds)
        return out

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        return self.predict([episode])[0]
