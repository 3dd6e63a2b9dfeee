"""Loaders turn a raw source into the data model (`TaskData`) and nothing else; each registers
itself in `LOADERS` under the name task cards use."""

from . import globalopinionqa, opinionqa, synthetic  # noqa: F401  (registration)
