"""Methods register themselves in `METHODS`; method cards in `baselines/` pick one by name."""

from . import baselines, gpo, lm, lm_finetune, meta_mix, person_ordinal, personalized  # noqa: F401  (registration)
