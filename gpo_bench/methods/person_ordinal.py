"""person-ordinal: per-person answers on an ordinal scale as an item location plus the person's offset, each shrunk
by empirical Bayes, read out through cumulative-logit thresholds; used only at the K where it beats the `majority`
answer on the validation people.

Each answer gets a place on a latent logistic scale (`logistic_scores`: the seen people's answer shares cut a
standard logistic into bands, an answer sits at its band's mean) and is modelled as z = mu + beta_item +
alpha_person + noise. The three variances come from the meta-train people by the method of moments (pairs of answers
to one item by two people share only the item's effect; pairs of one person's answers to two items share only the
person's), which sets both shrinkage strengths (noise variance / effect variance): an item answered by three people,
or a person seen on five items, is pulled toward the overall mean by the amount the data support. A test person's
offset is their K context answers' mean residual, shrunk the same way. The two estimates are mapped to a
distribution over the item's candidates by a cumulative logit, P(answer <= k) = sigmoid(theta_k - g_item beta -
g_person alpha) (thresholds per number of candidates), fitted on episodes of the meta-train people with leave-one-out
item estimates, starting from the overall answer distribution (the majority answer). For each K the method predicts
with the model only where the majority guard (`Method.above_floor`) finds it beats `majority` on the validation
people (their item estimates from the meta-train people alone), so it does not fall below the floor where the data
carry no person-level signal. Items no seen person answered get beta = 0 (the item's text is not used)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..cards import Limit
from ..data import TaskData
from ..metrics import majority_for
from ..protocol import Episode, draw_episode
from ..registry import METHODS
from .base import Method

SWEEPS = 10  # alternating ridge sweeps (item effects, then person offsets); the fit moves < 1e-4 after about 5


def scale_order(item) -> np.ndarray:
    """An item's candidates in scale order: by their ordinal values, else as listed."""
    return np.argsort(item.ordinal, kind="stable") if item.ordinal else np.arange(len(item.candidates))


def logistic_scores(shares: np.ndarray) -> np.ndarray:
    """Each answer's place on a latent logistic scale: the mean of a standard logistic variable between the
    thresholds that cut it into `shares` (in scale order). A rare extreme answer sits far out, a common middle one
    spans a wide stretch: a person's offset then reads each answer for what it says on the latent scale."""
    cut = np.clip(np.cumsum(shares)[:-1], 1e-6, 1 - 1e-6)
    edges = np.log(cut / (1 - cut))
    # the integral of x f(x) for the logistic density f: x F(x) - log(1 + e^x), which is 0 at both infinities
    antiderivative = np.concatenate([[0.0], edges / (1 + np.exp(-edges)) - np.logaddexp(0, edges), [0.0]])
    mass = np.diff(np.concatenate([[0.0], cut, [1.0]]))
    return np.diff(antiderivative) / mass


@dataclass
class Components:
    """The overall mean and the variances of the item effect, the person effect and the noise (method of moments)."""

    mean: float
    item: float
    person: float
    noise: float

    def strengths(self) -> tuple[float, float]:
        """Shrinkage strengths (noise variance / effect variance) of the item and the person estimates."""
        return self.noise / max(self.item, 1e-9), self.noise / max(self.person, 1e-9)


def pair_covariance(groups: dict[str, list[float]]) -> float:
    """The mean product of two different deviations within a group (over all such pairs): the covariance that
    answers sharing only the group's effect have."""
    total, pairs = 0.0, 0
    for values in groups.values():
        d = np.asarray(values)
        if len(d) > 1:
            total += float(d.sum() ** 2 - (d**2).sum())
            pairs += len(d) * (len(d) - 1)
    return total / pairs if pairs else 0.0


class Answers:
    """The places on the latent scale of a set of people's answers (item → person → z; a soft target: its expected
    place), their variance components, and the person offsets and item residual sums of an alternating ridge fit."""

    def __init__(self, task: TaskData, people: tuple[str, ...], places: dict[str, np.ndarray]) -> None:
        self.z: dict[str, dict[str, float]] = {}
        for person in people:
            for item, target in task.groups[person].targets.items():
                self.z.setdefault(item, {})[person] = float(target @ places[item])
        values = [v for answers in self.z.values() for v in answers.values()]
        mean = float(np.mean(values)) if values else 0.5
        by_item = {i: [v - mean for v in a.values()] for i, a in self.z.items()}
        by_person: dict[str, list[float]] = {}
        for answers in self.z.values():
            for person, v in answers.items():
                by_person.setdefault(person, []).append(v - mean)
        item_var, person_var = max(pair_covariance(by_item), 0.0), max(pair_covariance(by_person), 0.0)
        total = float(np.var(values)) if values else 0.0
        self.components = Components(mean, item_var, person_var, max(total - item_var - person_var, 1e-6))
        self.item_strength, self.person_strength = self.components.strengths()
        self.offset = dict.fromkeys(by_person, 0.0)
        for _ in range(SWEEPS):
            self.residual = {i: sum(v - mean - self.offset[p] for p, v in a.items()) for i, a in self.z.items()}
            effect = {i: self.item_effect(i) for i in self.z}
            sums: dict[str, list[float]] = {}
            for item, answers in self.z.items():
                for person, v in answers.items():
                    sums.setdefault(person, []).append(v - mean - effect[item])
            self.offset = {p: sum(r) / (len(r) + self.person_strength) for p, r in sums.items()}
        self.residual = {i: sum(v - mean - self.offset[p] for p, v in a.items()) for i, a in self.z.items()}

    def item_effect(self, item: str, without: str | None = None) -> float:
        """The item's shrunk effect; `without`: leaving that person's answer out (as if it were a test person's)."""
        answers = self.z.get(item, {})
        residual, n = self.residual.get(item, 0.0), len(answers)
        if without is not None and without in answers:
            residual -= answers[without] - self.components.mean - self.offset[without]
            n -= 1
        return residual / (n + self.item_strength) if n else 0.0


@METHODS.register("person-ordinal", "shrunk item location + the person's shrunk offset, cumulative logit; vs majority")
class PersonOrdinal(Method):
    # its card's settings, declared here too for the per-method settings check (cards.SETTINGS holds them today)
    SETTINGS = {"train_shots": Limit(list, item=int, low=0), "steps": Limit(int, 1)}

    def __init__(self, settings: dict, setup) -> None:
        super().__init__(settings, setup)
        self.order = {i: scale_order(item) for i, item in setup.task.items.items()}
        self.places = {}  # item → each candidate's place on the latent scale, from the seen people's answers
        for i, order in self.order.items():
            self.places[i] = np.empty(len(order))
            self.places[i][order] = logistic_scores(majority_for(self.majority, len(order))[order])
        self.link = {"g_item": 0.0, "g_person": 0.0}
        self.thresholds: dict[int, np.ndarray] = {}

    # -- the model ---------------------------------------------------------------------------------------------

    def person_offset(self, answers: Answers, episode: Episode, without: str | None = None) -> float:
        """The person's shrunk offset from their context answers (item effects leaving `without` out)."""
        mean = answers.components.mean
        residuals = [
            float(y @ self.places[i]) - mean - answers.item_effect(i, without)
            for i, y in zip(episode.context, episode.context_targets, strict=True)
        ]
        return sum(residuals) / (len(residuals) + answers.person_strength)

    def distribution(self, item: str, beta: float, alpha: float) -> np.ndarray:
        """P(candidate) from the cumulative logit, in the item's candidate order."""
        theta = self.thresholds[len(self.order[item])]
        below = 1.0 / (1.0 + np.exp(-(theta - self.link["g_item"] * beta - self.link["g_person"] * alpha)))
        in_order = np.diff(np.concatenate([[0.0], below, [1.0]]))
        out = np.empty(len(in_order))
        out[self.order[item]] = np.maximum(in_order, 1e-12)
        return out / out.sum()

    def model_predictions(self, answers: Answers, episode: Episode, without: str | None = None) -> list[np.ndarray]:
        alpha = self.person_offset(answers, episode, without)
        out = []
        for item in episode.targets:
            if len(self.order[item]) not in self.thresholds:  # a scale no seen person answered
                self.count_fallback(episode, "majority")
                out.append(majority_for(self.majority, len(self.order[item])))
            else:
                out.append(self.distribution(item, answers.item_effect(item, without), alpha))
        return out

    # -- fitting -----------------------------------------------------------------------------------------------

    def fit(self) -> dict:
        task, split = self.setup.task, self.setup.split
        self.train_answers = Answers(task, split.train, self.places)
        self.seen_answers = Answers(task, split.seen, self.places)
        rows = self.training_rows(task, split.train)
        self.fit_link(rows)
        c = self.train_answers.components
        return {
            "components": {k: round(v, 6) for k, v in vars(c).items()},
            "item_strength": round(self.train_answers.item_strength, 4),
            "person_strength": round(self.train_answers.person_strength, 4),
            "link": {k: round(v, 4) for k, v in self.link.items()},
            "link_rows": len(rows[0]),
        }

    def training_rows(self, task: TaskData, people: tuple[str, ...]) -> tuple[list, list, list, list]:
        """(item effect, person offset, target in scale order, width) of the meta-train people's answers, over
        episodes at each of the card's `train_shots` (context drawn from the seed), leaving the person out of the
        item effects as a test person is."""
        betas, alphas, targets, widths = [], [], [], []
        for shots in self.settings["train_shots"]:
            for person in people:
                episode = draw_episode(task, person, shots, self.setup.seed)
                alpha = self.person_offset(self.train_answers, episode, without=person)
                for item in episode.targets:
                    betas.append(self.train_answers.item_effect(item, without=person))
                    alphas.append(alpha)
                    targets.append(task.groups[person].targets[item][self.order[item]])
                    widths.append(len(self.order[item]))
        return betas, alphas, targets, widths

    def fit_link(self, rows: tuple[list, list, list, list]) -> None:
        """Cumulative-logit thresholds per width and the two slopes, by maximum likelihood (soft targets); started
        at the overall answer distribution with zero slopes."""
        betas, alphas, targets, widths = rows
        params: dict[str, torch.Tensor] = {
            "g_item": torch.zeros((), dtype=torch.float64, requires_grad=True),
            "g_person": torch.zeros((), dtype=torch.float64, requires_grad=True),
        }
        data = {}
        for width in sorted(set(widths)):
            rows_w = [n for n, w in enumerate(widths) if w == width]
            y = torch.tensor(np.stack([targets[n] for n in rows_w]))
            cumulative = np.clip(np.cumsum(y.mean(0).numpy())[:-1], 1e-4, 1 - 1e-4)
            start = np.log(cumulative / (1 - cumulative))
            steps = np.log(np.maximum(np.diff(start), 1e-3))
            params[f"theta{width}"] = torch.tensor(np.concatenate([[start[0]], steps]), requires_grad=True)
            data[width] = (torch.tensor([betas[n] for n in rows_w]), torch.tensor([alphas[n] for n in rows_w]), y)
        optimizer = torch.optim.LBFGS(
            list(params.values()), max_iter=self.settings["steps"], line_search_fn="strong_wolfe"
        )

        def thresholds(width: int) -> torch.Tensor:
            raw = params[f"theta{width}"]
            return torch.cumsum(torch.cat([raw[:1], torch.exp(raw[1:])]), 0)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.zeros((), dtype=torch.float64)
            for width, (beta, alpha, y) in data.items():
                below = torch.sigmoid(
                    thresholds(width)[None, :] - (params["g_item"] * beta + params["g_person"] * alpha)[:, None]
                )
                ones = torch.ones(len(y), 1, dtype=torch.float64)
                p = torch.diff(torch.cat([0 * ones, below, ones], 1), dim=1)
                loss = loss - torch.sum(y * torch.log(torch.clamp(p, min=1e-12)))
            loss = loss / len(betas)
            loss.backward()
            return loss

        start = {k: v.detach().clone() for k, v in params.items()}
        if betas:
            optimizer.step(closure)
        if not all(torch.isfinite(v).all() for v in params.values()):  # a diverged fit: the overall distribution
            with torch.no_grad():
                for k, v in params.items():
                    v.copy_(start[k])
        self.link = {k: float(params[k].detach()) for k in ("g_item", "g_person")}
        self.thresholds = {w: thresholds(w).detach().numpy() for w in data}

    # -- prediction --------------------------------------------------------------------------------------------

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        if not self.above_floor(episode.shots, lambda e: self.model_predictions(self.train_answers, e)):
            return self.majority_answer(episode)
        return self.model_predictions(self.seen_answers, episode)
