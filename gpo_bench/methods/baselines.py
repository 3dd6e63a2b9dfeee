"""Cheap baselines on the shared data model: uniform, majority (the seen groups' most common answer position, the
floor of accuracy tasks), population, group-knn (the seen groups that agree best with the test group on its
context items), group-mix (a convex mixture of the seen groups fitted on the context items), head (a per-group
softmax head on candidate embeddings, fitted on the K shots) and knn (kernel regression on the context
candidates). On accuracy tasks head and knn answer `majority` (counted as a fallback) at every K where they do not
beat it on the validation groups (`Method.above_floor`; at K = 0 they would tie on every item)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from ..cards import Limit
from ..features import Features
from ..metrics import item_score, majority_for
from ..protocol import Episode
from ..registry import METHODS
from .base import Method, segment_softmax


@METHODS.register("uniform", "equal probability for every candidate (a seeded coin flip on accuracy tasks)")
class Uniform(Method):
    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        return [np.full(self.n_candidates(item), 1.0 / self.n_candidates(item)) for item in episode.targets]


@METHODS.register("majority", "the seen groups' answer distribution over positions, pooled over every item")
class Majority(Method):
    """One distribution for every item of the same width: `Method.majority`, the seen groups' answers pooled.
    Its top position is the floor of accuracy tasks (`reference.majority` in result.json)."""

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        return [majority_for(self.majority, self.n_candidates(item)) for item in episode.targets]


class SeenGroupsMixture(Method):
    """Predicts a weighted mean of the seen groups' distributions for the same item. Item by item it backs
    off to the best information there is: the weighted groups that answered the item, else every seen group
    that answered it (population), else uniform; each back-off is counted."""

    def answers(self, group: str) -> dict[str, np.ndarray]:
        return self.setup.task.groups[group].targets

    def mixture(self, item: str, weights: dict[str, float], episode: Episode) -> np.ndarray:
        """The weighted mean over the weighted groups that answered `item`; back-offs are counted against the
        episode (with equal weights, as at K = 0, only the back-off to uniform can happen)."""
        for fallback, pool in ((None, weights), ("population", dict.fromkeys(self.setup.split.seen, 1.0))):
            answered = [(self.answers(g)[item], w) for g, w in pool.items() if w > 0 and item in self.answers(g)]
            if answered:
                if fallback:
                    self.count_fallback(episode, fallback)
                mass = sum(w for _, w in answered)
                return sum(w * target for target, w in answered) / mass
        self.count_fallback(episode, "uniform")
        return np.full(self.n_candidates(item), 1.0 / self.n_candidates(item))


@METHODS.register("population", "mean distribution of the seen groups for the same item")
class Population(SeenGroupsMixture):
    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        equal = dict.fromkeys(self.setup.split.seen, 1.0)
        return [self.mixture(item, equal, episode) for item in episode.targets]


@METHODS.register("group-knn", "seen groups weighted by their agreement with the group on its context items")
class GroupKnn(SeenGroupsMixture):
    SETTINGS = {"min_shared": Limit(int, 1), "neighbors": Limit(int, 1), "temperature": Limit(float, 0, open_low=True)}

    def agreement(self, group: str, episode: Episode) -> float | None:
        """Mean score of the group's answers against the test group's on the context items both have; None
        where they share fewer than `min_shared` of them (fewer where K is smaller)."""
        task = self.setup.task
        answers = self.answers(group)
        scores = [
            item_score(task.metric, answers[i], known, task.items[i].ordinal)
            for i, known in zip(episode.context, episode.context_targets, strict=True)
            if i in answers
        ]
        enough = min(self.settings["min_shared"], len(episode.context))
        return float(np.mean(scores)) if scores and len(scores) >= enough else None

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        seen = self.setup.split.seen
        if not episode.context:  # K = 0: population
            return [self.mixture(item, dict.fromkeys(seen, 1.0), episode) for item in episode.targets]
        agreements = {g: a for g in seen if (a := self.agreement(g, episode)) is not None}
        ranked = sorted(agreements, key=lambda g: (-agreements[g], g))
        out = []
        for item in episode.targets:  # the best-agreeing groups among those that answered this item
            nearest = [g for g in ranked if item in self.answers(g)][: self.settings["neighbors"]]
            best = agreements[nearest[0]] if nearest else 0.0
            weights = {g: float(np.exp((agreements[g] - best) / self.settings["temperature"])) for g in nearest}
            out.append(self.mixture(item, weights, episode))
        return out


@METHODS.register("group-mix", "convex mixture of the seen groups, weights fitted on the group's K context items")
class GroupMix(SeenGroupsMixture):
    """Simplex weights w = softmax(θ) over the seen groups minimizing, over the context items, the squared error
    between the test group's distribution and the mixture of the seen groups that answered the item
    (renormalized over them), plus `prior` · KL(w ‖ equal), which pulls toward population. Given a list of
    priors, each episode takes the one whose cross-validated error over its own context items is lowest (ties:
    the strongest prior), so the pull adapts to how much the K shots can tell."""

    SETTINGS = {"folds": Limit(int, 2), "prior": Limit(list, item=float, low=0)}

    def context_arrays(self, episode: Episode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`stack_answers` over the context items some seen group answered."""
        seen = [self.answers(g) for g in self.setup.split.seen]
        rows = [
            (item, known)
            for item, known in zip(episode.context, episode.context_targets, strict=True)
            if any(item in answers for answers in seen)
        ]
        return self.stack_answers(rows, seen)

    @staticmethod
    def stack_answers(
        rows: list[tuple[str, np.ndarray]], seen: list[dict[str, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For (item, the test group's answer) rows and the seen groups' answers: answers[item, group, candidate],
        answered[item, group] and wanted[item, candidate] (candidates zero-padded to the widest item)."""
        width = max((len(known) for _, known in rows), default=0)
        answers = np.zeros((len(rows), len(seen), width))
        answered = np.zeros((len(rows), len(seen)))
        wanted = np.zeros((len(rows), width))
        for i, (item, known) in enumerate(rows):
            wanted[i, : len(known)] = known
            for j, group in enumerate(seen):
                if item in group:
                    answers[i, j, : len(known)] = group[item]
                    answered[i, j] = 1.0
        return answers, answered, wanted

    @staticmethod
    def item_weights(w: np.ndarray, answered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per item, the weights of the groups that answered it, normalized to sum to 1, and whether they
        move with w: an item whose answering groups all have weight 0 (underflow) gives them equal
        weights, as `mixture` backs off to population."""
        weights = answered * w
        mass = weights.sum(1)
        live = mass > 0
        equal = answered / answered.sum(1, keepdims=True)
        return np.where(live[:, None], weights / np.where(live, mass, 1.0)[:, None], equal), live

    @classmethod
    def mix(cls, w: np.ndarray, answers: np.ndarray, answered: np.ndarray) -> np.ndarray:
        return np.einsum("ig,igc->ic", cls.item_weights(w, answered)[0], answers)

    @classmethod
    def fit_weights(cls, answers: np.ndarray, answered: np.ndarray, wanted: np.ndarray, prior: float) -> np.ndarray:
        """The simplex weights of the seen groups (equal where there is nothing to fit)."""
        n_groups = answered.shape[1]
        if not len(answered):
            return np.full(n_groups, 1.0 / n_groups)

        def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w = np.exp(theta - theta.max())
            w /= w.sum()
            shares, live = cls.item_weights(w, answered)
            mixed = np.einsum("ig,igc->ic", shares, answers)
            gap = mixed - wanted
            # w = softmax(θ) and mix[i] = Σ_g shares[i, g] answers[i, g], so d mix[i, c] / d θ[h] =
            # shares[i, h] (answers[i, h, c] - mix[i, c]): bounded, where the chain rule through w divided
            # by an item's (possibly subnormal) weight mass and overflowed. Backed-off items do not move.
            spread = answers - mixed[:, None, :]
            grad = 2 * np.einsum("ic,ih,ihc->h", gap[live], shares[live], spread[live])
            # KL(w || equal) = log G - entropy(w): bounded, so a group's weight may still go to zero;
            # its gradient in θ is w (log w - Σ w log w)
            log_w = np.log(np.maximum(w, 1e-300))
            kl = float(w @ log_w) + np.log(n_groups)
            return float(np.sum(gap**2)) + prior * kl, grad + prior * w * (log_w - w @ log_w)

        theta = minimize(loss_and_grad, np.zeros(n_groups), jac=True, method="L-BFGS-B").x
        w = np.exp(theta - theta.max())
        return w / w.sum()

    def choose_prior(self, answers: np.ndarray, answered: np.ndarray, wanted: np.ndarray) -> float:
        """The prior with the lowest cross-validated squared error over the context items (`folds` folds, item i
        in fold i mod folds; leave-one-out below that many items); ties: the largest prior. With one item there
        is nothing to cross-validate: the smallest prior (on the validation groups it beat the largest at K = 1)."""
        priors = sorted(np.atleast_1d(self.settings["prior"]).astype(float), reverse=True)
        if len(priors) == 1 or len(answered) < 2:
            return priors[-1]
        fold = np.arange(len(answered)) % self.settings["folds"]
        errors = []
        for prior in priors:
            error = 0.0
            for f in np.unique(fold):
                w = self.fit_weights(answers[fold != f], answered[fold != f], wanted[fold != f], prior)
                held = fold == f
                error += float(np.sum((self.mix(w, answers[held], answered[held]) - wanted[held]) ** 2))
            errors.append(error)
        return priors[int(np.argmin(np.round(errors, 12)))]

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        arrays = self.context_arrays(episode)
        w = self.fit_weights(*arrays, self.choose_prior(*arrays))
        weights = dict(zip(self.setup.split.seen, w, strict=True))
        return [self.mixture(item, weights, episode) for item in episode.targets]


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
    SETTINGS = {"l2": Limit(float, 0)}
    needs_features = True
    needs_context = True

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        if not self.above_floor(episode.shots, self.fitted):
            return self.majority_answer(episode)
        return self.fitted(episode)

    def fitted(self, episode: Episode) -> list[np.ndarray]:
        """The head fitted on the episode's K shots (uses nothing but them)."""
        features = self.setup.features
        w = np.zeros(features.dim)
        if episode.context:
            x, sizes = stacked(features, list(episode.context))
            w = fit_softmax_head(x, np.concatenate(episode.context_targets), sizes, self.settings["l2"])
        return score_targets(features, episode.targets, w)


@METHODS.register("knn", "kernel regression of the group's answers on the most similar context candidates")
class Knn(Method):
    SETTINGS = {"neighbors": Limit(int, 1), "temperature": Limit(float, 0, open_low=True)}
    needs_features = True
    needs_context = True

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        if not self.above_floor(episode.shots, self.regressed):
            return self.majority_answer(episode)
        return self.regressed(episode)

    def regressed(self, episode: Episode) -> list[np.ndarray]:
        """Kernel regression on the episode's K shots (uses nothing but them)."""
        features = self.setup.features
        if not episode.context:
            return Uniform.predict_episode(self, episode)  # alignment: nothing to regress on, chance by definition
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
