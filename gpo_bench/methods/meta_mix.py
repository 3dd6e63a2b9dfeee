"""meta-mix: a differentiable, meta-trained group-mix. A test group's answer to an item is predicted as the
seen groups' population answer plus a signed combination of each seen group's deviation from it; the
combination is a ridge regression of the group's K context answers on the seen groups' deviations, solved in
closed form. Signed weights can express what a convex mixture cannot (a group as the population minus its
complement). A text kernel then carries the group's context residuals to target candidates with similar
embeddings. The ridge path (its strength as a function of K), the kernel's temperature and the residual's
gain are meta-trained by gradient descent through the closed-form fit, on episodes of the meta-train groups
with each group left out of its own sources; the step kept is the one best on the validation groups. Items no
seen group answered (sparse sources) are predicted by a softmax head on the candidate vectors: fitted on the
seen groups' answers to the items they did answer, then on the group's own K answers, pulled toward it. On accuracy
tasks the majority guard (`Method.above_floor`) keeps `majority` at any K where the model, sourced from the
meta-train groups alone, does not beat it on the validation groups."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..cards import Limit
from ..data import TaskData
from ..protocol import Episode, draw_episode
from ..registry import METHODS
from .base import Method
from .baselines import fit_softmax_head, score_targets, stacked


class AnswerTable:
    """The answers of a set of groups stacked once per item (which of them answered it, and what), so that the
    sources of any subset of them, over any items, are read without touching every group's answers again."""

    def __init__(self, task: TaskData, groups: tuple[str, ...]) -> None:
        self.groups = groups
        self.index = {g: j for j, g in enumerate(groups)}
        rows: dict[str, list[tuple[int, np.ndarray]]] = {}
        for j, g in enumerate(groups):
            for item, target in task.groups[g].targets.items():
                rows.setdefault(item, []).append((j, target))
        self.items = [i for i in task.items if i in rows]  # the task's order
        self.answered = {i: np.array([j for j, _ in rows[i]]) for i in self.items}  # item → groups, ascending
        self.answers = {i: np.stack([t for _, t in rows[i]]) for i in self.items}  # item → (groups, candidates)


class Sources:
    """The answers of one set of source groups (all in `table`), per item: the population (their mean over those
    that answered) and each source's deviation from it (zero where a source did not answer); over every item
    they answered, or over `items` only. Built for a set that never holds the group being predicted: in
    meta-training, the group is left out of its own sources."""

    def __init__(self, table: AnswerTable, sources: tuple[str, ...], items: Iterable[str] | None = None) -> None:
        self.groups = sources
        column = np.full(len(table.groups), -1)
        column[[table.index[g] for g in sources]] = np.arange(len(sources))
        self.population: dict[str, np.ndarray] = {}
        self.deviation: dict[str, np.ndarray] = {}  # item → (candidates, sources)
        for item in table.items if items is None else items:
            if item not in table.answered:
                continue
            columns = column[table.answered[item]]
            keep = np.flatnonzero(columns >= 0)
            if not len(keep):
                continue
            # rows in the order of `sources`, so that the population's float sum does not depend on the table's
            rows = keep[np.argsort(columns[keep], kind="stable")]
            answers, answered = table.answers[item][rows], columns[rows]
            self.population[item] = answers.mean(axis=0)
            deviation = np.zeros((answers.shape[1], len(sources)))
            deviation[:, answered] = (answers - self.population[item]).T
            self.deviation[item] = deviation


@dataclass
class EpisodeTensors:
    """One episode's context and targets as the model reads them; targets are padded to the widest item."""

    shots: int
    deviation: torch.Tensor  # (context candidates, sources)
    gap: torch.Tensor  # (context candidates,) the group's answer minus the population
    context_x: torch.Tensor  # (context candidates, d) unit candidate vectors
    target_deviation: torch.Tensor  # (target candidates, sources)
    target_population: torch.Tensor  # (target candidates,)
    target_x: torch.Tensor  # (target candidates, d)
    segment: torch.Tensor  # (target candidates,) which target item
    slot: torch.Tensor  # (target candidates,) position within the padded row
    n_targets: int
    width: int


@METHODS.register(
    "meta-mix",
    "signed mixture of the seen groups ridge-fitted on the K shots plus a text-kernel residual, meta-trained",
)
class MetaMix(Method):
    SETTINGS = {
        "episode_targets": Limit(int, 1),
        "eval_every": Limit(int, 1),
        "floor": Limit(float, 0, 0.1, open_low=True),
        "group_l2": Limit(float, 0),
        "groups_per_step": Limit(int, 1, nullable=True),
        "lr": Limit(float, 0, open_low=True),
        "meta_train": Limit(bool),
        "population_l2": Limit(float, 0),
        "ridge": Limit(float, 0, open_low=True),
        "steps": Limit(int, 1),
        "temperature": Limit(float, 0, open_low=True),
        "text_residual": Limit(bool),
        "train_shots": Limit(list, item=int, low=0),
        "validation_grid": Limit(list, item=int, low=0),
    }
    needs_features = True

    def __init__(self, settings: dict, setup) -> None:
        super().__init__(settings, setup)
        features = setup.features
        norms = np.maximum(np.linalg.norm(features.matrix, axis=1, keepdims=True), 1e-12)
        self.unit = torch.tensor(features.matrix / norms, dtype=torch.float64)
        self.params = initial_parameters(settings)
        self.test_sources = Sources(AnswerTable(setup.task, setup.split.seen), setup.split.seen)
        self.heads: dict[int, np.ndarray] = {}  # id of a Sources → its population head (`population_head`)

    # -- the model -------------------------------------------------------------------------------------------------

    def tensors(self, sources: Sources, episode: Episode, targets: tuple[str, ...]) -> EpisodeTensors:
        rows = self.setup.features.rows
        context = [
            (i, y) for i, y in zip(episode.context, episode.context_targets, strict=True) if i in sources.deviation
        ]
        n_sources = len(sources.groups)
        deviation = [sources.deviation[i] for i, _ in context] or [np.zeros((0, n_sources))]
        gap = [y - sources.population[i] for i, y in context] or [np.zeros(0)]
        context_rows = np.concatenate([rows[i] for i, _ in context] or [np.zeros(0, int)])
        target_rows = np.concatenate([rows[i] for i in targets])
        sizes = [len(rows[i]) for i in targets]
        return EpisodeTensors(
            shots=len(episode.context),
            deviation=torch.tensor(np.concatenate(deviation)),
            gap=torch.tensor(np.concatenate(gap)),
            context_x=self.unit[context_rows],
            target_deviation=torch.tensor(np.concatenate([sources.deviation[i] for i in targets])),
            target_population=torch.tensor(np.concatenate([sources.population[i] for i in targets])),
            target_x=self.unit[target_rows],
            segment=torch.tensor(np.repeat(np.arange(len(targets)), sizes)),
            slot=torch.tensor(np.concatenate([np.arange(s) for s in sizes])),
            n_targets=len(targets),
            width=max(sizes),
        )

    def forward(self, t: EpisodeTensors, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Padded target distributions (n_targets, width); zero beyond each item's candidates."""
        mixed = t.target_population
        if len(t.gap):
            ridge = torch.exp(params["log_ridge"] + params["ridge_slope"] * np.log1p(t.shots))
            weights = ridge_weights(t.deviation, t.gap, ridge)
            mixed = mixed + t.target_deviation @ weights
            if self.settings["text_residual"]:
                residual = t.gap - t.deviation @ weights
                kernel = torch.softmax((t.target_x @ t.context_x.T) / torch.exp(params["log_temperature"]), dim=1)
                mixed = mixed + params["residual_gain"] * (kernel @ residual)
        positive = torch.clamp(mixed, min=self.settings["floor"])
        padded = positive.new_zeros((t.n_targets, t.width)).index_put((t.segment, t.slot), positive)
        return padded / padded.sum(dim=1, keepdim=True)

    # -- meta-training ---------------------------------------------------------------------------------------------

    def fit(self) -> dict:
        if not self.settings["meta_train"]:
            return {"steps": 0, **self.learned()}
        task, split = self.setup.task, self.setup.split
        table = AnswerTable(task, split.train)
        validation_sources = Sources(table, split.train)
        scorer = Scorer(task)
        rng = np.random.default_rng(self.setup.seed)
        params = {k: torch.tensor(float(v), dtype=torch.float64, requires_grad=True) for k, v in self.params.items()}
        optimizer = torch.optim.Adam(params.values(), lr=self.settings["lr"])
        best = (self.validate(validation_sources, scorer), 0, dict(self.params))
        history = [(0, rounded(best[0]))]
        for step in range(1, self.settings["steps"] + 1):
            optimizer.zero_grad()
            losses = []
            for group in self.step_groups(split.train, rng):
                episode = self.training_episode(group, table, rng)
                if episode is None:
                    continue
                t, targets = episode
                if len(t.gap):  # without context items the prediction is the population: nothing to learn
                    losses.append(scorer.loss(self.forward(t, params), group, targets))
            if losses:
                torch.stack(losses).mean().backward()
                optimizer.step()
            if step % self.settings["eval_every"] == 0 or step == self.settings["steps"]:
                current = {k: float(v.detach()) for k, v in params.items()}
                score = self.validate(validation_sources, scorer, current)
                history.append((step, rounded(score)))
                # nothing to validate on (no validation groups, or none shares an item with the sources): the last step
                if score is None or best[0] is None or score > best[0]:
                    best = (score, step, current)
        self.params = best[2]
        return {
            "steps": self.settings["steps"],
            "best_step": best[1],
            "best_validation": best[0],
            "validation": history,
            **self.learned(),
        }

    def step_groups(self, train: tuple[str, ...], rng: np.random.Generator) -> tuple[str, ...]:
        """The meta-train groups of one step: all of them, or `groups_per_step` drawn at random where there are
        more (many groups, such as one per person, would make a step of one episode each far too slow)."""
        cap = self.settings["groups_per_step"]
        if not cap or cap >= len(train):
            return train
        return tuple(train[j] for j in np.sort(rng.choice(len(train), cap, replace=False)))

    def training_episode(self, group: str, table: AnswerTable, rng: np.random.Generator):
        """A left-one-out episode of a meta-train group (`table`: the meta-train groups' answers): K from the
        card's shot grid, context items drawn from the items another meta-train group answered, up to
        `episode_targets` of the rest as targets; its sources are the other meta-train groups, on those items."""
        answers = self.setup.task.groups[group].targets
        usable = [i for i in sorted(answers) if len(table.answered[i]) > 1]
        shots = int(rng.choice(self.settings["train_shots"]))
        if len(usable) <= shots:
            return None
        order = rng.permutation(len(usable))
        context = tuple(usable[j] for j in order[:shots])
        targets = tuple(usable[j] for j in order[shots : shots + self.settings["episode_targets"]])
        episode = Episode(group, shots, self.setup.seed, context, targets, tuple(answers[i] for i in context))
        return self.tensors(left_out(table, group, context + targets), episode, targets), targets

    def validate(self, sources: Sources, scorer: Scorer, params: dict | None = None) -> float | None:
        """Mean score of the validation groups (the meta-train groups their only sources) over the card's
        validation shots, on episodes fixed by the seed; None where no validation group
        has a target item the sources answered (none at all, or users with items of their own)."""
        split = self.setup.split
        as_test = type(split)(train=split.train, validation=(), test=split.validation)
        values = to_tensors(params or self.params)
        scores = []
        with torch.no_grad():
            for group in split.validation:
                for shots in self.settings["validation_grid"]:
                    episode = draw_episode(self.setup.task, group, shots, self.setup.seed, as_test)
                    targets = tuple(i for i in episode.targets if i in sources.deviation)
                    if targets:
                        pred = self.forward(self.tensors(sources, episode, targets), values)
                        scores.append(scorer.mean_score(pred, group, targets))
        return float(np.mean(scores)) if scores else None

    def learned(self) -> dict:
        return {"parameters": {k: round(v, 6) for k, v in self.params.items()}}

    # -- prediction ------------------------------------------------------------------------------------------------

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        if not self.above_floor(episode.shots, lambda e: self.predictions(self.validation_sources, e)):
            return self.majority_answer(episode)
        return self.predictions(self.test_sources, episode)

    @functools.cached_property
    def validation_sources(self) -> Sources:
        """The meta-train groups alone: the sources of a validation group's episodes for the majority guard."""
        return Sources(AnswerTable(self.setup.task, self.setup.split.train), self.setup.split.train)

    def predictions(self, sources: Sources, episode: Episode) -> list[np.ndarray]:
        """The model's predictions from `sources`; items they did not answer through the text head (its prior fitted
        on the same sources)."""
        answered = tuple(i for i in episode.targets if i in sources.deviation)
        by_item = {}
        if answered:
            with torch.no_grad():
                pred = self.forward(self.tensors(sources, episode, answered), to_tensors(self.params)).numpy()
            by_item = {i: row[: self.n_candidates(i)] for i, row in zip(answered, pred, strict=True)}
        unanswered = tuple(i for i in episode.targets if i not in by_item)
        if unanswered:
            preds = score_targets(self.setup.features, unanswered, self.text_head(episode, sources))
            for item, pred in zip(unanswered, preds, strict=True):
                self.count_fallback(episode, "text-head")
                by_item[item] = pred
        return [by_item[item] for item in episode.targets]

    def text_head(self, episode: Episode, sources: Sources) -> np.ndarray:
        """Softmax-head weights for items no source answered: the sources' head, refitted on the group's K answers
        with an L2 pull (`group_l2`) toward it (K = 0: the sources' head itself)."""
        prior = self.population_head(sources)
        if not episode.context:
            return prior
        x, sizes = stacked(self.setup.features, list(episode.context))
        y = np.concatenate(episode.context_targets)
        return fit_softmax_head(x, y, sizes, self.settings["group_l2"], center=prior)

    def population_head(self, sources: Sources) -> np.ndarray:
        """The softmax head fitted on the sources' answers to every item they answered (fitted once per sources)."""
        if id(sources) not in self.heads:
            items = sorted(sources.population)
            x, sizes = stacked(self.setup.features, items)
            y = np.concatenate([sources.population[i] for i in items]) if items else np.zeros(0)
            self.heads[id(sources)] = fit_softmax_head(x, y, sizes, self.settings["population_l2"])
        return self.heads[id(sources)]


def left_out(table: AnswerTable, group: str, items: Iterable[str] | None = None) -> Sources:
    """The table's other groups as `group`'s sources: training matches test, where a group is never among the
    seen groups."""
    return Sources(table, tuple(g for g in table.groups if g != group), items)


def ridge_weights(deviation: torch.Tensor, gap: torch.Tensor, ridge: torch.Tensor) -> torch.Tensor:
    """argmin_v |deviation v - gap|² + ridge |v|²: (DᵀD + λI)⁻¹ Dᵀ gap, or with fewer rows than sources (many
    source groups, few context candidates) the same as Dᵀ (DDᵀ + λI)⁻¹ gap, a solve over the rows."""
    rows, sources = deviation.shape
    if rows >= sources:
        gram = deviation.T @ deviation + ridge * torch.eye(sources, dtype=deviation.dtype)
        return torch.linalg.solve(gram, deviation.T @ gap)
    gram = deviation @ deviation.T + ridge * torch.eye(rows, dtype=deviation.dtype)
    return deviation.T @ torch.linalg.solve(gram, gap)


def initial_parameters(settings: dict) -> dict[str, float]:
    return {
        "log_ridge": float(np.log(settings["ridge"])),
        "ridge_slope": 0.0,
        "log_temperature": float(np.log(settings["temperature"])),
        "residual_gain": 0.0,
    }


def rounded(score: float | None) -> float | None:
    return None if score is None else round(score, 6)


def to_tensors(params: dict[str, float]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}


class Scorer:
    """The task's metric on padded torch rows (what meta-training maximizes): 1 - W1/range on ordinal items,
    1 - Jensen-Shannon distance otherwise, cross-entropy on accuracy tasks."""

    def __init__(self, task: TaskData) -> None:
        self.task = task
        self.width = max(len(item.candidates) for item in task.items.values())
        self.order: dict[str, np.ndarray] = {}  # item → candidates in ordinal order, then the padding
        self.steps: dict[str, np.ndarray] = {}  # item → ordinal gaps / range (zero for non-ordinal items)
        for item_id, item in task.items.items():
            n = len(item.candidates)
            steps = np.zeros(self.width)
            order = np.arange(self.width)
            if item.ordinal:
                order[:n] = np.argsort(item.ordinal, kind="stable")
                values = np.asarray(item.ordinal, float)[order[:n]]
                steps[: n - 1] = np.diff(values) / (values[-1] - values[0])
            self.order[item_id], self.steps[item_id] = order, steps

    def targets(self, group: str, items: tuple[str, ...], width: int) -> torch.Tensor:
        out = np.zeros((len(items), width))
        for row, item in enumerate(items):
            answer = self.task.groups[group].targets[item]
            out[row, : len(answer)] = answer
        return torch.tensor(out)

    def scores(self, pred: torch.Tensor, group: str, items: tuple[str, ...]) -> torch.Tensor:
        width = pred.shape[1]
        q = self.targets(group, items, width)
        order = torch.tensor(np.stack([self.order[i][self.order[i] < width] for i in items]))
        steps = torch.tensor(np.stack([self.steps[i][:width] for i in items]))
        ordinal = torch.tensor([bool(self.task.items[i].ordinal) for i in items])
        cdf_gap = torch.cumsum(torch.gather(pred - q, 1, order), dim=1)
        wasserstein = torch.sum(torch.abs(cdf_gap) * steps, dim=1)
        valid = torch.tensor(np.stack([np.arange(width) < len(self.task.items[i].candidates) for i in items]))
        p = torch.where(valid, pred, 1.0)  # padding: 1 * log(1) = 0, and no 0/0 in the gradient
        m = torch.where(valid, (pred + q) / 2, 1.0)
        divergence = torch.sum(torch.xlogy(p, p) - torch.xlogy(p, m) + torch.xlogy(q, q) - torch.xlogy(q, m), 1)
        js = torch.sqrt(torch.clamp(divergence / 2, min=1e-12))
        return 1.0 - torch.where(ordinal, wasserstein, js)

    def loss(self, pred: torch.Tensor, group: str, items: tuple[str, ...]) -> torch.Tensor:
        if self.task.metric == "accuracy":
            target = self.targets(group, items, pred.shape[1])
            return -torch.sum(target * torch.log(torch.clamp(pred, min=1e-12))) / len(items)
        return 1.0 - self.scores(pred, group, items).mean()

    def mean_score(self, pred: torch.Tensor, group: str, items: tuple[str, ...]) -> float:
        if self.task.metric == "accuracy":
            return -float(self.loss(pred, group, items))
        return float(self.scores(pred, group, items).mean())
