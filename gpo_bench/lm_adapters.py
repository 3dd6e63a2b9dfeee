"""LoRA adapters (peft) on the shared `CausalLM` for the duration of a `with` block: added freshly initialized
or from a saved state, removed again on exit, so the shared model is never left modified. While one is
active, the prediction cache keys scores by the adapter's recipe (a digest of what its training depends on),
and the adapter trains lazily: only when a prompt is not in the cache."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch

from .lm import CausalLM


@contextlib.contextmanager
def adapter(
    lm: CausalLM,
    settings: dict,
    seed: int,
    state: dict | None = None,
    recipe: str | None = None,
    train: Callable[[torch.nn.Module], None] | None = None,
) -> Iterator[torch.nn.Module]:
    """LoRA adapters on `lm`'s model for the block (`lora_*` card keys), initialized from `seed` or loaded
    from `state`. `recipe`, a digest of everything the trained adapter depends on besides the model
    (settings, seed, training examples and their order), keys its predictions in the prediction cache;
    without one they are never cached. `train` (given the adapter) runs before the first prompt that is not
    in the cache is scored, so an adapter whose every prediction is cached is never trained."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    if lm.loaded.active_adapter:
        raise RuntimeError("an adapter is already active on this model")
    layers = None
    if settings["lora_layers"] is not None:
        total = lm.model.config.num_hidden_layers
        layers = list(range(max(0, total - settings["lora_layers"]), total))
    config = LoraConfig(
        r=settings["lora_r"],
        lora_alpha=settings["lora_alpha"],
        lora_dropout=settings["lora_dropout"],
        target_modules=list(settings["lora_targets"]),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # peft asks transformers the name it deprecated; nothing for a user to do
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        peft_model = get_peft_model(lm.model, config)
    if state is not None:
        set_peft_model_state_dict(peft_model, state)
    lm.loaded.active_adapter = True
    lm.adapter_recipe = recipe
    lm.before_scoring = None if train is None else lambda: train(peft_model)
    try:
        yield peft_model
    finally:
        peft_model.unload()  # puts the original modules back into lm.model
        lm.model.eval()
        lm.loaded.active_adapter = False
        lm.adapter_recipe = None
        lm.before_scoring = None


def adapter_state(peft_model: torch.nn.Module) -> dict:
    """A detached copy of the adapter weights, to load again with `adapter(state=...)`."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
