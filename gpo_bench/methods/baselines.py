"""Cheap baselines on the shared data model: uniform, population, group-knn (the seen groups that
agree best with the test group on its context items), head (a per-group softmax head on candidate
embeddings, fitted on the K shots) and knn (kernel regression on the context candidates)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from ..features import Features
from ..metrics import item_score
from ..protocol import Episode, derived_rng
from ..registry import METHODS
from .base import Method, segment_softmax


@METHODS.register("uniform", "equal probability for every candidate (a seeded coin flip on accuracy tasks)")
class Uniform(Method):
    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        out = []
        for item in episode.targets:
            p = np.full(self.n_candidates(item), 1.0 / self.n_candidates(item))
            if self.setup.task.metric == "accuracy":  # an exact tie counts wrong: break it at random (chance level)
                p[derived_rng("uniform", episode.group, item, episode.seed).integers(len(p))] += 1e-6
                p /= p.sum()
            out.append(p)
        return out


class SeenGroupsMixture(Method):
    """Predicts a weighted mean of the seen groups' distributions for the same item."""

    def mixture(self, item: str, weights: dict[str, float]) -> np.ndarray:
        total, mass = np.zeros(self.n_candidates(item)), 0.0
        for group, weight in weights.items():
            target = self.setup.task.groups[group].targets.get(item)
            if target is not None and weight > 0:
                total += weight * target
                mass += weight
        if mass == 0:  # no seen group answered this item
            return np.full(len(total), 1.0 / len(total))
        return total / mass


@METHODS.register("population", "mean distribution of the seen groups for the same item")
class Population(SeenGroupsMixture):
    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        equal = dict.fromkeys(self.setup.split.seen, 1.0)
        return [self.mixture(item, equal) for item in episode.targets]


@METHODS.register("group-knn", "seen groups weighted by their agreement with the group on its context items")
class GroupKnn(SeenGroupsMixture):
    def agreement(self, group: str, episode: Episode) -> float | None:
        task = self.setup.task
        answers = task.groups[group].targets
        scores = [
            item_score(task.metric, answers[i], known, task.items[i].ordinal)
            for i, known in zip(episode.context, episode.context_targets, strict=True)
            if i in answers
        ]
        return float(np.mean(scores)) if scores else None

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        agreements = {g: self.agreement(g, episode) for g in self.setup.split.seen}
        known = {g: a for g, a in agreements.items() if a is not None}
        if not known:  # K = 0, or no seen group shares a context item: population
            weights = dict.fromkeys(self.setup.split.seen, 1.0)
        else:
            nearest = sorted(known, key=lambda g: (-known[g], g))[: self.settings["neighbors"]]
            best = known[nearest[0]]
            weights = {g: float(np.exp((known[g] - best) / self.settings["temperature"])) for g in nearest}
        return [self.mixture(item, weights) for item in episode.targets]


def fit_softmax_head(
    x: np.ndarray, y: np.ndarray, sizes: list[int], l2: float, center: np.ndarray | None = None
) -> np.ndarray:
    """Weights w minimizing the cross-entropy of softmax(x w) within each item against the soft
    targets y, plus l2/2 ||w - center||^2 (L-BFGS). For two candidates this is Bradley-Terry."""
    center = np.zeros(x.shape[1]) if center is None else center

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        p = np.concatenate(segment_softmax(x @ w, sizes))
        gap = w - center
        loss = -float(np.sum(y * np.log(np.maximum(p, 1e-12)))) + 0.5 * l2 * float(gap @ gap)
        return loss, x.T @ (p - y) + l2 * gap

    return minimize(loss_and_grad, center.copy(), jac=True, method="L-BFGS-B", options={"maxiter": 500}).x


def stacked(features: Features, items: list[str]) -> tuple[np.ndarray, list[int]]:
    """The candidate vectors of `items`, stacked, with each item's candidate count."""
    rows = [features.rows[i] for i in items]
    if not rows:
        return np.zeros((0, features.dim)), []
    return features.matrix[np.concatenate(rows)].astype(np.float64), [len(r) for r in rows]


def score_targets(features: Features, items: tuple[str, ...], w: np.ndarray) -> list[np.ndarray]:
    return [
        segment_softmax(features.matrix[features.rows[i]].astype(np.float64) @ w, [len(features.rows[i])])[0]
        for i in items
    ]


@METHODS.register("head", "per-group softmax head on candidate embeddings, fitted on the K shots")
class Head(Method):
    needs_features = True

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        features = self.setup.features
        w = np.zeros(features.dim)
        if episode.context:
            x, sizes = stacked(features, list(episode.context))
            w = fit_softmax_head(x, np.concatenate(episode.context_targets), sizes, self.settings["l2"])
        return score_targets(features, episode.targets, w)


@METHODS.register("knn", "kernel regression of the group's answers on the most similar context candidates")
class Knn(Method):
    needs_features = True

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        features = self.setup.features
        if not episode.context:
            return Uniform.predict_episode(self, episode)
        ctx_rows = np.concatenate([features.rows[i] for i in episode.context])
        ctx_y = np.concatenate(episode.context_targets)
        ctx_x = unit(features.matrix[ctx_rows])
        k = min(self.settings["neighbors"], len(ctx_rows))
        out = []
        for item in episode.targets:
            sims = unit(features.matrix[features.rows[item]]) @ ctx_x.T
            nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            near_sims = np.take_along_axis(sims, nearest, axis=1)
            weights = np.exp((near_sims - near_sims.max(axis=1, keepdims=True)) / self.settings["temperature"])
            values = (weights * ctx_y[nearest]).sum(axis=1) / weights.sum(axis=1) + 1e-6
            out.append(values / values.sum())
        return out


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
