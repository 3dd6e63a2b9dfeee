"""Fine-tuned language-model baselines of the GPO paper, with LoRA adapters (peft):

- `sft`: one adapter per test group, trained on its K context items; the loss is the cross-entropy of
  the model's letter distribution at the answer position against the group's distribution.
- `in-context-finetune`: one adapter per seed, meta-trained on the meta-train groups with few-shot
  prompts (a group's context items with its answer shares, then a question of the same group, whose
  letter distribution is fitted to the group's); evaluated as `few-shot` on the test groups.
- `reward-model`: one adapter and a scalar head per test group; the head reads the final hidden state
  of `question + "Answer: B. option"`, the softmax of an item's option scores is fitted to the
  group's distribution on its K context items and predicts its other items.

Adapters live only inside `lm_adapters.adapter()`, so the shared model is unchanged between groups.
Each group's training draws (adapter init, batches) come from an RNG derived from (method, group, K,
seed). With K = 0 there is nothing to train on: `sft` is `lm-base`, `reward-model` (an untrained head
scores every option alike) is uniform. Losses (first and last step) are recorded per K and group; a loss
that stops being finite ends the run with an error naming the group, seed and step. The predictions of every
adapter (`sft`'s and `in-context-finetune`'s letters, `reward-model`'s head scores) are stored in the prediction
cache under the adapter's recipe (`recipe`: settings, seed, training examples), so another split or a rerun reads
them, and a per-group adapter whose every prediction is cached is not trained (its loss reads `cached`). A
reward model scores an item's options together, running their shared question once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..cache import option_set_text
from ..cards import Limit
from ..errors import LanguageModelError
from ..lm import LETTERS, softmax
from ..lm_adapters import adapter, adapter_state
from ..protocol import Episode, derived_rng
from ..registry import METHODS
from .base import Setup
from .lm import ANSWER, FewShot, LMMethod


def soft_cross_entropy(rows: Sequence[torch.Tensor], targets: list[np.ndarray]) -> torch.Tensor:
    """Mean over items of −Σ target · log softmax(scores), each item's scores cut to its own options
    (a row of letter log-probabilities may cover the longest item's letters)."""
    losses = []
    for row, target in zip(rows, targets, strict=True):
        own = torch.log_softmax(row[: len(target)].float(), dim=-1)
        losses.append(-(torch.as_tensor(target, dtype=own.dtype, device=own.device) * own).sum())
    return torch.stack(losses).mean()


def train(params: list[dict], loss_at: Callable[[int], torch.Tensor], settings: dict, what: str) -> list[float]:
    """`steps` AdamW steps on `loss_at(step)`, gradients clipped to `max_grad_norm`; the losses. A loss that
    is not finite stops training with an error naming `what` (method, model, group, K, seed) and the step."""
    optimizer = torch.optim.AdamW(params, weight_decay=0.0)
    tensors = [p for group in params for p in group["params"]]
    losses = []
    for step in range(settings["steps"]):
        optimizer.zero_grad()
        loss = loss_at(step)
        if not torch.isfinite(loss):
            raise LanguageModelError(
                f"{what}: the adapter's training diverged, its loss is {loss.item()} at step {step + 1} of "
                f"{settings['steps']} (lr={settings['lr']:g}); lower the learning rate, "
                f"e.g. --set lr={settings['lr'] / 10:g}"
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tensors, settings["max_grad_norm"])
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def batch_indices(n: int, settings: dict, rng: np.random.Generator) -> list[list[int]]:
    """`steps` batches of `batch_size` indices into n examples, passing through a fresh shuffle each epoch."""
    order: list[int] = []
    batches = []
    for _ in range(settings["steps"]):
        batch = []
        while len(batch) < min(settings["batch_size"], n):
            if not order:
                order = rng.permutation(n).tolist()
            batch.append(order.pop())
        batches.append(batch)
    return batches


# the keys of LoRA training shared by the fine-tuned methods (`CausalLM.adapter` and `train` read them)
TRAINING_SETTINGS = {
    "batch_size": Limit(int, 1),
    "lora_alpha": Limit(float, 0, open_low=True),
    "lora_dropout": Limit(float, 0, 1, open_high=True),
    "lora_layers": Limit(int, 1, nullable=True),
    "lora_r": Limit(int, 1),
    "lora_targets": Limit(list, item=str),
    "lr": Limit(float, 0, open_low=True),
    "max_grad_norm": Limit(float, 0, open_low=True, nullable=True),
    "steps": Limit(int, 1),
}


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class PerGroupFineTuned(LMMethod):
    """Trains afresh for every test group (and K and seed) inside `predict_episode`."""

    SETTINGS = {**LMMethod.SETTINGS, **TRAINING_SETTINGS}

    def group_rng(self, episode: Episode) -> tuple[int, np.random.Generator]:
        """The adapter's init seed and the batch RNG of this group, K and seed."""
        rng = derived_rng(type(self).__name__, episode.group, episode.shots, self.setup.seed)
        return int(rng.integers(2**31)), rng

    def training(self, episode: Episode) -> str:
        """This group's training as errors name it."""
        return (
            f"{type(self).__name__} with language model {self.settings['model']!r}, group {episode.group!r} "
            f"(K={episode.shots}, seed {self.setup.seed})"
        )

    def record_losses(self, episode: Episode, losses: list[float] | None) -> None:
        """The first and last loss of this group's training, or `cached` where it did not train."""
        cell = self.prediction_facts.setdefault("train_loss", {}).setdefault(str(episode.shots), {})
        if losses is None:
            cell.setdefault(episode.group, "cached")
        else:
            cell[episode.group] = [round(losses[0], 5), round(losses[-1], 5)] if losses else None


def recipe(method: LMMethod, seed: int, examples: list[tuple[list, np.ndarray]], batches: list) -> str:
    """A digest of everything an adapter's training depends on besides the model: the method and its settings,
    the adapter's init seed, the training examples (prompt tokens and targets) and the batches they are drawn
    in. Its predictions are cached under it (`CausalLM.adapter`)."""
    digest = hashlib.sha256(json.dumps([type(method).__name__, method.settings, seed, batches]).encode())
    for ids, target in examples:  # ids: one prompt's tokens, or a list of prompts (a reward model's options)
        prompts = ids if ids and isinstance(ids[0], list) else [ids]
        if prompts is ids:
            digest.update(np.asarray([len(p) for p in prompts], dtype=np.int64).tobytes())
        for prompt in prompts:
            digest.update(np.asarray(prompt, dtype=np.int64).tobytes())
        digest.update(np.asarray(target, dtype=np.float64).tobytes())
    return digest.hexdigest()[:32]


@METHODS.register("sft", "LoRA fine-tuning per test group on its K context items (letter distribution loss)")
class SFT(PerGroupFineTuned):
    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        def build(item_id: str, order: tuple[int, ...]):
            return self.prompt("", item_id, order, self.where(episode, item_id))

        if not episode.context:
            return self.score(episode, build)
        examples = [  # a judged pair trains in both orders, its target in the order shown
            (build(i, order).ids, t[list(order)])
            for i, t in zip(episode.context, episode.context_targets, strict=True)
            for order in self.orders(i)
        ]
        seed, rng = self.group_rng(episode)
        batches = batch_indices(len(examples), self.settings, rng)
        n = max(len(t) for _, t in examples)

        def fit_adapter(model: torch.nn.Module) -> None:
            def loss_at(step: int) -> torch.Tensor:
                chosen = [examples[i] for i in batches[step]]
                return soft_cross_entropy(self.lm.letter_log_probs([p for p, _ in chosen], n), [t for _, t in chosen])

            model.train()
            params = [{"params": trainable(model), "lr": self.settings["lr"]}]
            losses = train(params, loss_at, self.settings, self.training(episode))
            model.eval()
            self.record_losses(episode, losses)

        # the same group, K and seed train the same adapter at every split: its predictions are cached, and an
        # adapter whose every prediction is cached is not trained again
        with adapter(self.lm, self.settings, seed, recipe=recipe(self, seed, examples, batches), train=fit_adapter):
            predictions = self.score(episode, build)
        self.record_losses(episode, None)
        return predictions


@METHODS.register("in-context-finetune", "LoRA meta-trained on the meta-train groups' few-shot prompts, then few-shot")
class InContextFinetune(FewShot):
    SETTINGS = {
        **FewShot.SETTINGS,
        **TRAINING_SETTINGS,
        "context_items": Limit(list, item=int, length=2, low=0),
    }

    def __init__(self, settings: dict, setup: Setup) -> None:
        super().__init__(settings, setup)
        self.state: dict | None = None
        self.recipe: str | None = None

    def training_examples(self, rng: np.random.Generator) -> tuple[list[tuple[list[int], np.ndarray]], int]:
        """Every step's few-shot prompts, drawn up front: a meta-train group, n ~ U{low..high} of its
        items as context and one more as the question. Also how many prompts lost context items."""
        task, groups = self.setup.task, self.setup.split.train
        low, high = self.settings["context_items"]
        examples, truncated = [], 0
        for _ in range(self.settings["steps"] * self.settings["batch_size"]):
            group = groups[int(rng.integers(len(groups)))]
            items = sorted(task.groups[group].targets)
            n_context = min(int(rng.integers(low, high + 1)), len(items) - 1)
            chosen = [items[i] for i in rng.choice(len(items), size=n_context + 1, replace=False)]
            *context, question = chosen
            orders = self.orders(question)
            order = orders[int(rng.integers(len(orders)))] if len(orders) > 1 else orders[0]
            answers = task.groups[group].targets
            blocks = [self.answered(i, answers[i]) for i in context]
            fitted = self.few_shot_prompt(group, blocks, question, order)
            truncated += fitted.context_used < n_context
            examples.append((fitted.ids, answers[question][list(order)]))
        return examples, truncated

    def fit(self) -> dict:
        rng = derived_rng("in-context-finetune", self.setup.seed)
        examples, truncated = self.training_examples(rng)
        size = self.settings["batch_size"]
        n = max(len(t) for _, t in examples)
        seed = int(rng.integers(2**31))
        self.recipe = recipe(self, seed, examples, [size])  # the batches are the examples in order
        with adapter(self.lm, self.settings, seed) as model:

            def loss_at(step: int) -> torch.Tensor:
                chosen = examples[step * size : (step + 1) * size]
                return soft_cross_entropy(self.lm.letter_log_probs([p for p, _ in chosen], n), [t for _, t in chosen])

            model.train()
            what = (
                f"InContextFinetune with language model {self.settings['model']!r}, meta-training "
                f"(seed {self.setup.seed})"
            )
            losses = train([{"params": trainable(model), "lr": self.settings["lr"]}], loss_at, self.settings, what)
            model.eval()
            self.state = adapter_state(model)
        self.facts.update(
            train_loss=[round(losses[0], 5), round(losses[-1], 5)] if losses else None,
            truncated_train_prompts=truncated,
        )
        return self.facts

    def predict(self, episodes: list[Episode]) -> list[list[np.ndarray]]:
        if self.state is None:
            raise RuntimeError("in-context-finetune: predict() called before fit()")
        with adapter(self.lm, self.settings, 0, self.state, recipe=self.recipe):
            return super().predict(episodes)


@METHODS.register("reward-model", "LM with a LoRA adapter and a scalar head per test group, scoring each option")
class RewardModel(PerGroupFineTuned):
    SETTINGS = {**PerGroupFineTuned.SETTINGS, "head_lr": Limit(float, 0, open_low=True)}

    def option_prompts(self, item_id: str, what: str) -> list[list[int]]:
        """One prompt per option: the question, then `B. option` as the answer; for a preference pair the
        reward model's own input, the conversation with the response as the assistant's turn. `what` names
        the item in errors."""
        item = self.item(item_id)
        if self.judge:
            return [self.lm.fit_prompt(lambda _: item.prompt, 0, what, response=c).ids for c in item.candidates]
        text = self.block(item_id) + ANSWER
        return [
            self.lm.fit_prompt(lambda _: text, 0, what, response=f"{LETTERS[j]}. {candidate}").ids
            for j, candidate in enumerate(item.candidates)
        ]

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        if not episode.context:
            return [np.full(self.n_candidates(i), 1.0 / self.n_candidates(i)) for i in episode.targets]
        seed, rng = self.group_rng(episode)
        examples = [
            (self.option_prompts(i, self.where(episode, i)), t)
            for i, t in zip(episode.context, episode.context_targets, strict=True)
        ]
        batches = batch_indices(len(examples), self.settings, rng)
        head = torch.nn.Linear(self.lm.model.config.hidden_size, 1).to(self.lm.device)
        torch.nn.init.zeros_(head.weight)  # every option scores alike until trained
        torch.nn.init.zeros_(head.bias)

        def fit(model: torch.nn.Module) -> None:
            def loss_at(step: int) -> torch.Tensor:
                chosen = [examples[i] for i in batches[step]]
                values = head(self.lm.last_hidden([p for options, _ in chosen for p in options]).float()).squeeze(-1)
                per_item = values.split([len(options) for options, _ in chosen])
                return soft_cross_entropy(per_item, [t for _, t in chosen])

            model.train()
            params = [
                {"params": trainable(model), "lr": self.settings["lr"]},
                {"params": list(head.parameters()), "lr": self.settings["head_lr"]},
            ]
            losses = train(params, loss_at, self.settings, self.training(episode))
            model.eval()
            self.record_losses(episode, losses)

        targets = [self.option_prompts(item, self.where(episode, item)) for item in episode.targets]

        def score(positions: list[int]) -> list[np.ndarray]:
            with torch.inference_mode():
                return [
                    head(self.lm.final_states(targets[i]).float()).squeeze(-1).double().cpu().numpy() for i in positions
                ]

        # the same group, K and seed train the same adapter and head at every split: their scores are cached
        with adapter(self.lm, self.settings, seed, recipe=recipe(self, seed, examples, batches), train=fit):
            values = self.lm.cached([option_set_text(options) for options in targets], score)
        self.record_losses(episode, None)
        return [softmax(v) for v in values]
