"""An example method from an include folder: `gpo-bench --include-path examples` imports this file, so the
`@METHODS.register` below adds `sharpened-population`, which the card examples/baselines/ picks by name."""

from __future__ import annotations

import numpy as np

from gpo_bench.methods.baselines import Population
from gpo_bench.protocol import Episode
from gpo_bench.registry import METHODS


@METHODS.register("sharpened-population", "population's distribution raised to 1/temperature (example plugin)")
class SharpenedPopulation(Population):
    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        out = []
        for p in super().predict_episode(episode):
            q = np.power(p, 1.0 / self.settings["temperature"])
            out.append(q / q.sum())
        return out
