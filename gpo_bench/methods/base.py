"""The one method interface: optionally fit on the seen groups, then predict a distribution over
each target item's candidates for a group, given that group's K context items."""

from __future__ import annotations

import abc
import functools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import TaskData
from ..features import Features
from ..metrics import majority_distributions
from ..protocol import Episode, Split


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

    def __init__(self, settings: dict, setup: Setup) -> None:
        self.settings = settings
        self.setup = setup
        self.fallbacks: Counter[tuple[int, str]] = Counter()  # (K, what it fell back to) → predictions

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
        losses, …); the runner writes them to result.json (`predict`, per seed) after all predictions."""
        return {}

    def predict(self, episodes: list[Episode]) -> list[list[np.ndarray]]:
        """For each episode, one distribution per target item (in `episode.targets` order)."""
        return [self.predict_episode(episode) for episode in episodes]

    @abc.abstractmethod
    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        """Distributions for one episode's targets."""

    def n_candidates(self, item: str) -> int:
        return len(self.setup.task.items[item].candidates)


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
