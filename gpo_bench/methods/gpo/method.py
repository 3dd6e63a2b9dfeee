"""The GPO method as the runner sees it: `GPO` builds the network for one seed, samples meta-training batches
from the seen groups, validates on the validation groups, and predicts every episode in one model call;
`fit` trains it (`training.train`), `fit_seeds` trains several seeds at once (one ensemble on CUDA, one
worker process per seed on the CPU: `processes`)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ...cards import Limit
from ...metrics import item_score
from ...protocol import Episode, draw_episode
from ...registry import METHODS
from ...workers import usable_cores
from ..base import Method, Setup, item_softmax
from .batching import Batch, GroupPoints, Part, StaticShape, make_batch
from .network import GPOEnsemble, GPONetwork
from .processes import train_in_processes
from .training import train


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@METHODS.register("gpo", "Group Preference Optimization: meta-trained in-context transformer (ICLR 2024)")
class GPO(Method):
    SETTINGS = {
        "bf16": Limit(bool),
        "compile": Limit(bool),
        "context_items": Limit(list, item=int, length=2, low=0),
        "d_ff": Limit(int, 1),
        "d_model": Limit(int, 1),
        "eval_every": Limit(int, 1),
        "groups_per_step": Limit(int, 1, nullable=True),
        "heads": Limit(int, 1),
        "layers": Limit(int, 1),
        "lr": Limit(float, 0, open_low=True),
        "max_steps": Limit(int, 1),
        "mlp_depth": Limit(int, 1),
        "patience": Limit(int, 1, nullable=True),
        "target_items": Limit(list, item=int, length=2, low=1),
        "tf32": Limit(bool),
        "validation_shots": Limit(int, 0),
    }
    needs_features = True
    batched_on_cpu = False  # the CUDA layout (and seeds trained together) on the CPU too: for tests

    def __init__(self, settings: dict, setup: Setup) -> None:
        super().__init__(settings, setup)
        self.device = torch.device(setup.device)
        features = setup.features
        self.x = torch.as_tensor(features.matrix, dtype=torch.float32, device=self.device)
        self.points = {g: self.group_points(g) for g in setup.task.groups}
        torch.manual_seed(setup.seed)
        s = settings
        network = GPONetwork(features.dim, s["d_model"], s["layers"], s["heads"], s["d_ff"], s["mlp_depth"])
        self.model = GPOEnsemble([network]).to(self.device)
        if self.device.type == "cuda" and s.get("tf32"):
            torch.backends.cuda.matmul.allow_tf32 = True
        if s.get("bf16") and self.device.type == "cpu" and not cpu_supports_bf16():
            raise ValueError("gpo: bf16=true on a CPU without AVX-512 BF16 or AMX; drop --set bf16=true")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(s.get("bf16")))
        self.model.batched = self.device.type != "cpu" or self.batched_on_cpu  # loops measured faster on CPU
        self.checkpoint_path = setup.work_dir / "checkpoint.pt"

    def group_points(self, group_id: str) -> GroupPoints:
        features, targets = self.setup.features, self.setup.task.groups[group_id].targets
        items = sorted(targets)
        rows = np.concatenate([features.rows[i] for i in items])
        y = np.concatenate([targets[i] for i in items])
        item_of = np.concatenate([np.full(len(targets[i]), n) for n, i in enumerate(items)])
        as_tensor = lambda a, dtype: torch.as_tensor(a, dtype=dtype)  # noqa: E731
        return GroupPoints(
            items, as_tensor(rows, torch.long), as_tensor(y, torch.float32), as_tensor(item_of, torch.long)
        )

    def run_model(self, model: GPOEnsemble, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """→ p (per-item softmax) and log std, per target point."""
        with self.autocast:
            mu, log_std = model(self.x, batch)
        return item_softmax(mu.float(), batch.tgt_segment, batch.n_segments), log_std.float()

    # ---- meta-training ------------------------------------------------------------------------

    def sample_parts(self, generator: torch.Generator) -> list[Part]:
        """Per group: a random permutation of its items; n_ctx ~ U{10..100} and n_tgt ~
        U{10..min(100, N - n_ctx)} whole items (bounds shrink for groups with under 20 items)."""
        names = list(self.setup.split.train)
        per_step = self.settings.get("groups_per_step") or len(names)
        if per_step < len(names):
            names = [names[i] for i in torch.randperm(len(names), generator=generator)[:per_step].tolist()]
        (ctx_lo, ctx_hi), (tgt_lo, tgt_hi) = self.settings["context_items"], self.settings["target_items"]
        parts = []
        for name in names:
            group = self.points[name]
            n = len(group.items)
            hi = max(1, min(ctx_hi, n - min(tgt_lo, n // 2)))
            lo = min(ctx_lo, hi)
            n_ctx = int(torch.randint(lo, hi + 1, (1,), generator=generator))
            t_hi = max(1, min(tgt_hi, n - n_ctx))
            n_tgt = int(torch.randint(min(tgt_lo, t_hi), t_hi + 1, (1,), generator=generator))
            order = torch.randperm(n, generator=generator)
            role = torch.zeros(n, dtype=torch.long)
            role[order[:n_ctx]] = 1
            role[order[n_ctx : n_ctx + n_tgt]] = 2
            point_role = role[group.item_of]
            ctx, tgt = point_role == 1, point_role == 2
            parts.append(Part(group.rows[ctx], group.y[ctx], group.rows[tgt], group.y[tgt], group.item_of[tgt], n))
        return parts

    def static_shape(self, n_members: int) -> StaticShape:
        """Bounds on every batch `sample_parts` can draw for `n_members` members (as it draws them: whole
        items, the largest-option items first as the worst case), for a compiled step's static shape."""
        (ctx_lo, ctx_hi), (tgt_lo, tgt_hi) = self.settings["context_items"], self.settings["target_items"]
        bounds = []  # per group: context tokens, target tokens, all tokens, items (its segment ids)
        answered = {0}  # feature rows the groups' points use, and row 0 for padding
        for name in self.setup.split.train:
            group = self.points[name]
            answered.update(group.rows.tolist())
            n = len(group.items)
            options = np.sort(np.bincount(group.item_of.numpy(), minlength=n))[::-1]
            hi = max(1, min(ctx_hi, n - min(tgt_lo, n // 2)))
            targets = {
                n_ctx: min(n - n_ctx, max(1, min(tgt_hi, n - n_ctx))) for n_ctx in range(min(ctx_lo, hi), hi + 1)
            }
            most = max(targets.values())
            bounds.append(
                (
                    options[:hi].sum(),
                    options[:most].sum(),
                    max(options[: c + t].sum() for c, t in targets.items()),
                    n,
                )
            )
        per_step = self.settings.get("groups_per_step") or len(bounds)
        total = lambda k: int(sum(sorted((b[k] for b in bounds), reverse=True)[:per_step]))  # noqa: E731
        largest = lambda k: int(max(max(b[k] for b in bounds), 1))  # noqa: E731
        return StaticShape(
            length=max(total(2), 1),
            width=max(total(0), 1),
            n_targets=max(total(1), 1),
            n_keys=largest(0),
            every_rows=largest(2),
            target_rows=largest(1),
            n_flat=n_members * max(total(1), 1),
            n_distinct=len(answered),
            n_segments=n_members * total(3) + 1,
        )

    def fit(self) -> dict:
        return train([self])[0]

    @classmethod
    def fit_seeds(cls, settings: dict, setups: list[Setup]) -> list[tuple[GPO, dict]]:
        """Train one GPO per setup (the same task and split, different seeds); each seed draws its own
        batches and stops on its own validation, as when trained alone. On CUDA the seeds train as one
        ensemble. On the CPU each seed trains in its own process, all at once, with (usable cores) /
        (seeds) torch threads each: one step of these small matrices gained nothing from a second
        thread on this project's 2-core machine (one thread was faster), so parallel seeds are what
        fills the cores."""
        members = [cls(settings, setup) for setup in setups]
        if members[0].model.batched:
            return list(zip(members, train(members), strict=True))
        threads = max(1, usable_cores() // len(members))
        fits = train_in_processes(cls, settings, setups, threads)
        for member, (state, _) in zip(members, fits, strict=True):
            member.model.load_state_dict(state)
        return [(member, fit) for member, (_, fit) in zip(members, fits, strict=True)]

    def trained_on(self) -> dict:
        """What a checkpoint must share with the run that resumes it: the data the method sees (the split's
        view of the task), its settings and the seed."""
        return {"data": self.setup.task.fingerprint(), "settings": self.settings, "seed": self.setup.seed}

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
        as_tensor = lambda a, dtype: torch.as_tensor(a, dtype=dtype)  # noqa: E731
        parts, sizes = [], []
        for episode in episodes:
            ctx_rows = [rows[i] for i in episode.context]
            tgt_sizes = [len(rows[i]) for i in episode.targets]
            parts.append(
                Part(
                    as_tensor(np.concatenate(ctx_rows) if ctx_rows else np.zeros(0), torch.long),
                    as_tensor(np.concatenate(episode.context_targets) if ctx_rows else np.zeros(0), torch.float32),
                    as_tensor(np.concatenate([rows[i] for i in episode.targets]), torch.long),
                    torch.zeros(sum(tgt_sizes)),
                    as_tensor(np.repeat(np.arange(len(tgt_sizes)), tgt_sizes), torch.long),
                    len(tgt_sizes),
                )
            )
            sizes.append(tgt_sizes)
        p, _ = self.run_model(self.model, make_batch([parts], self.device))
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
