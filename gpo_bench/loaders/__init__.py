"""Loaders turn a raw source into the data model (`TaskData`) and nothing else; each registers
itself in `LOADERS` under the name task cards use. `survey` and `user_pairs` read your own data in
two documented formats."""

from ..registry import LOADERS  # noqa: E402  (re-exported, filled by the imports above)
from . import (  # noqa: F401  (registration)
    globalopinionqa,
    opinionqa,
    preferences,
    survey,
    synthetic,
    synthetic_pairwise,
    user_pairs,
)

__all__ = ["LOADERS"]
