"""Loaders turn a raw source into the data model (`TaskData`) and nothing else; each registers
itself in `LOADERS` under the name task cards use."""

from ..registry import LOADERS  # noqa: E402  (re-exported, filled by the imports above)
from . import globalopinionqa, opinionqa, preferences, synthetic, synthetic_pairwise  # noqa: F401  (registration)

__all__ = ["LOADERS"]
