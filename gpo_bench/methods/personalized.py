"""Reward-model baselines on embeddings for personalized preferences (they run on any task):
`bt` (one pooled Bradley-Terry model, no personalization) and `lore` (LoRe: a low-rank reward basis
shared by the seen users, each user's weights fitted on its own few shots)."""

from __future__ import annotations

import numpy as np
import torch

from ..cards import Limit
from ..protocol import Episode
from ..registry import METHODS
from .base import Method, item_softmax
from .baselines import fit_softmax_head, score_targets, stacked


@METHODS.register("bt", "one Bradley-Terry reward model on embeddings, pooled over the seen users")
class BradleyTerry(Method):
    SETTINGS = {"l2": Limit(float, 0)}
    needs_features = True

    def fit(self) -> dict:
        task = self.setup.task
        items = [i for g in task.groups.values() for i in sorted(g.targets)]
        x, sizes = stacked(self.setup.features, items)
        y = np.concatenate([g.targets[i] for g in task.groups.values() for i in sorted(g.targets)])
        self.w = fit_softmax_head(x, y, sizes, self.settings["l2"])
        return {"pairs": len(items)}

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        return score_targets(self.setup.features, episode.targets, self.w)


@METHODS.register("lore", "LoRe: low-rank reward basis from the seen users, per-user weights from the shots")
class LoRe(Method):
    SETTINGS = {
        "l2": Limit(float, 0),
        "lr": Limit(float, 0, open_low=True),
        "rank": Limit(int, 1),
        "steps": Limit(int, 1),
        "user_l2": Limit(float, 0),
    }
    needs_features = True

    def fit(self) -> dict:
        s, features, task = self.settings, self.setup.features, self.setup.task
        torch.manual_seed(self.setup.seed)
        users = sorted(task.groups)
        pairs = [(n, i) for n, u in enumerate(users) for i in sorted(task.groups[u].targets)]
        x, sizes = stacked(features, [i for _, i in pairs])
        x = torch.as_tensor(x, dtype=torch.float32)
        y = torch.as_tensor(np.concatenate([task.groups[users[n]].targets[i] for n, i in pairs]), dtype=torch.float32)
        user_of = torch.as_tensor(np.repeat([n for n, _ in pairs], sizes))
        segment = torch.as_tensor(np.repeat(np.arange(len(sizes)), sizes))
        basis = torch.nn.Parameter(torch.randn(features.dim, s["rank"]) / np.sqrt(features.dim))
        weights = torch.nn.Parameter(torch.zeros(len(users), s["rank"]))
        optimizer = torch.optim.Adam([basis, weights], lr=s["lr"])
        for _ in range(s["steps"]):
            logits = ((x @ basis) * weights[user_of]).sum(1)
            p = item_softmax(logits, segment, len(sizes))
            loss = -(y * torch.log(p.clamp_min(1e-12))).sum() / len(sizes)
            loss = loss + s["l2"] * (basis.square().sum() + weights.square().sum())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.basis = basis.detach().double().numpy()
        self.mean_weights = weights.detach().double().mean(0).numpy()
        return {"final_loss": loss.item(), "users": len(users), "pairs": len(sizes)}

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        w = self.mean_weights
        if episode.context:
            x, sizes = stacked(self.setup.features, list(episode.context))
            y = np.concatenate(episode.context_targets)
            w = fit_softmax_head(x @ self.basis, y, sizes, self.settings["user_l2"], center=self.mean_weights)
        return score_targets(self.setup.features, episode.targets, self.basis @ w)
