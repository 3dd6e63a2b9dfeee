"""Methods register themselves in `METHODS`; method cards in `baselines/` pick one by name."""

from . import baselines, gpo, personalized  # noqa: F401  (registration)
