"""The one method interface: optionally fit on the seen groups, then predict a distribution over
each target item's candidates for a group, given that group's K context items. Also the majority guard of
accuracy tasks (`Method.above_floor`): a learned method answers `majority` at a K unless it beats it on the
validation groups by more than `FLOOR_MARGIN` standard errors of the per-group gain."""

from __future__ import annotations

import abc
import functools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..cards import Limit
from ..data import TaskData
from ..features import Features
from ..metrics import majority_distributions, majority_for
from ..protocol import Episode, Split, draw_episode

FLOOR_MARGIN = 2.0  # standard errors of the mean per-group gain a method needs over majority to be used at a K


@dataclass
class Setup:
    """Everything a method may use: the task as seen groups show it (test groups' answers reach a method
    only through its episodes' context), the split, one seed, and the candidate features."""

    task: TaskData
    split: Split
    seed: int
    device: str
    work_dir: Path
    features: Features | None = None
    resume: bool = False
    cache_dir: Path | None = None  # models and embeddings cache (default $GPO_BENCH_CACHE)


class Method(abc.ABC):
    """Subclasses register with `@METHODS.register(name, description)`; a card in `baselines/`
    names the implementation and its settings."""

    needs_features: bool = False
    # setting name → its type and range: a method card of this implementation may only set these (checked
    # when the card is loaded and on each --set); a subclass extends its parent's with {**Parent.SETTINGS, ...}
    SETTINGS: ClassVar[dict[str, Limit]] = {}
    needs_context: bool = False  # learns only from the K shots: with none, nothing but a tie (see `above_floor`)
    # predictions on survey groups that depend on no seed, K or split, computed once and cached: a sweep runs
    # one such run ahead of the others of its task and settings, which then read its cache (`sweep_backends.waves`)
    same_for_every_seed: bool = False

    def __init__(self, settings: dict, setup: Setup) -> None:
        self.settings = settings
        self.setup = setup
        self.fallbacks: Counter[tuple[int, str]] = Counter()  # (K, what it fell back to) → predictions
        self.floor_choice: dict[int, dict] = {}  # K → the majority guard's validation figures and choice

    def count_fallback(self, episode: Episode, kind: str) -> None:
        """Record that one prediction of `episode` fell back to a less informed guess (`population`,
        `uniform`, …); the runner writes the counts per K into result.json."""
        self.fallbacks[(episode.shots, kind)] += 1

    @functools.cached_property
    def majority(self) -> dict[int, np.ndarray]:
        """The seen groups' answer distribution per item width (`metrics.majority_distributions`), computed once."""
        return majority_distributions(self.setup.task)

    def fit(self) -> dict:
        """Train on the seen groups; returns facts worth recording (steps, best validation, …)."""
        return {}

    # A method may also define `fit_seeds(cls, settings, setups) -> list[(method, fit facts)]`, a
    # classmethod that trains one model per setup (same task and split, different seeds) at once; the
    # runner uses it for a run with several seeds, and must get the same results as calling `fit` per seed.

    def report(self) -> dict:
        """Facts gathered while predicting (how many context items fitted a prompt, per-group training
        losses, …); the runner writes them to result.json (`predict`, per seed) after all predictions.
        Here: the majority guard's choice per K, where it ran."""
        return {"floor": {str(k): v for k, v in sorted(self.floor_choice.items())}} if self.floor_choice else {}

    def predict(self, episodes: list[Episode]) -> list[list[np.ndarray]]:
        """For each episode, one distribution per target item (in `episode.targets` order)."""
        return [self.predict_episode(episode) for episode in episodes]

    @abc.abstractmethod
    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        """Distributions for one episode's targets."""

    def n_candidates(self, item: str) -> int:
        return len(self.setup.task.items[item].candidates)

    # -- the majority guard of accuracy tasks ----------------------------------------------------------------------

    def majority_answer(self, episode: Episode) -> list[np.ndarray]:
        """`majority` for every target, each prediction counted as a fallback to it."""
        for _ in episode.targets:
            self.count_fallback(episode, "majority")
        return [majority_for(self.majority, self.n_candidates(item)) for item in episode.targets]

    def above_floor(self, shots: int, model: Callable[[Episode], list[np.ndarray]]) -> bool:
        """Whether to predict with the method at this K: always on tasks scored by alignment; on the preference
        protocols (users with pools of their own, where `majority` is only a position prior) unless K = 0 and the
        method `needs_context`; on other accuracy tasks
        only where `model` (the method's predictions for a validation group's episode, from what leaves that group
        out) beats `majority` on the validation groups' episodes (drawn from the seed; never test groups) by a mean
        per-group gain above `FLOOR_MARGIN` standard errors: a gain within noise keeps the floor. Decided once per
        K, recorded in `report()`; validation predictions are not counted as the run's fallbacks."""
        if self.setup.task.metric != "accuracy":
            return True
        if self.setup.split.personalized:  # K = 0 of a method with nothing else to go on would tie on every item
            return shots > 0 or not self.needs_context
        if shots not in self.floor_choice:
            task, split = self.setup.task, self.setup.split
            counted = self.fallbacks.copy()
            scores: dict[str, list[float]] = {"model": [], "majority": []}
            for group in split.validation:
                episode = draw_episode(task, group, shots, self.setup.seed)
                truth = [task.groups[group].targets[i] for i in episode.targets]
                preds = {"model": model(episode), "majority": self.majority_answer(episode)}
                for name, pred in preds.items():
                    scores[name].append(float(np.mean([tie_score(p, t) for p, t in zip(pred, truth, strict=True)])))
            self.fallbacks = counted
            gains = np.subtract(scores["model"], scores["majority"])
            gain = float(gains.mean()) if len(gains) else 0.0
            error = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else None  # None: no estimate
            self.floor_choice[shots] = {
                **{name: float(np.mean(v)) if v else None for name, v in scores.items()},
                "gain": gain,
                "standard_error": error,
                "chosen": "model" if error is not None and gain > FLOOR_MARGIN * error else "majority",
            }
        return self.floor_choice[shots]["chosen"] == "model"


def tie_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Accuracy of one prediction with a tie counted at its expected coin flip (as the runner breaks it)."""
    top = np.flatnonzero(pred == pred.max())
    return float(np.mean(target[top] == target.max()))


def segment_softmax(logits: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Softmax within consecutive segments of the given sizes (one per item)."""
    out, start = [], 0
    for size in sizes:
        z = logits[start : start + size]
        e = np.exp(z - z.max())
        out.append(e / e.sum())
        start += size
    return out


def item_softmax(mu: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Softmax of `mu` within each segment (one segment per target item), vectorized."""
    peak = mu.new_full((n_segments,), -math.inf).scatter_reduce(0, segment, mu, "amax", include_self=True)
    e = torch.exp(mu - peak[segment])
    return e / mu.new_zeros(n_segments).index_add(0, segment, e)[segment]
