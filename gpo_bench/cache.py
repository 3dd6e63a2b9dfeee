"""The SQLite machinery shared by the on-disk caches (the embedding cache of `gpo_bench.encoders`, the language-model
prediction cache of `gpo_bench.lm`): one database file per cache in the cache folder, vectors keyed by a digest of
(meta, text) where meta says what computed them and text is their input, every row checksummed; a row that does not
match its key is a miss (recomputed, never trusted), a database SQLite cannot read is quarantined and rebuilt, a
lock held by another process is waited for, and a folder that cannot be written is an error naming the setting.
Also the prediction cache's keys: what identifies a language model (`model_identity`), a prompt (`prompt_text`)
and a reward model's set of option prompts (`option_set_text`)."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import ClassVar

import numpy as np

from .files import path_error
from .models import CACHE_ENV, folder_fingerprint

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class VectorCache:
    """SQLite rows (key, meta, text, dim, checksum, vector), the checksum a digest of the key and the vector
    together; an entry whose meta, text, size or checksum does not match its key is treated as a miss and
    overwritten. A database that SQLite cannot read is moved aside (renamed with a timestamp) and rebuilt,
    with a warning naming both files; a database another process holds locked is waited for, saying so, up
    to LOCK_WAIT_S seconds. A subclass names its FILE, TABLE and what it is (WHAT, in messages)."""

    FILE: ClassVar[str]
    TABLE: ClassVar[str]
    WHAT: ClassVar[str]
    LOCK_WAIT_S = 300

    def __init__(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise path_error(error, folder) from None
        self.path = folder / self.FILE
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
                    raise RuntimeError(f"{self.WHAT} {self.path}: {error}") from None
                if waited:
                    raise RuntimeError(
                        f"{self.WHAT} {self.path} stayed locked by another process for {self.LOCK_WAIT_S} s"
                    ) from None
                log.warning(
                    "%s %s is locked by another process; waiting up to %d s", self.WHAT, self.path, self.LOCK_WAIT_S
                )
                self.db.execute(f"PRAGMA busy_timeout = {self.LOCK_WAIT_S * 1000}")
                waited = True
            except sqlite3.DatabaseError as error:  # not a database, malformed, truncated
                if rebuilt:
                    raise RuntimeError(f"{self.WHAT} {self.path}: {error}, even after a rebuild") from None
                self._move_aside(error)
                rebuilt = True

    def _unwritable(self, error: Exception) -> str:
        return (
            f"{self.WHAT} {self.path} cannot be opened or written ({error}); its folder must be writable: "
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
            "%s %s is unreadable (%s); moved it to %s and started an empty one", self.WHAT, self.path, error, aside
        )
        self._open()

    @staticmethod
    def key(meta: str, text: str) -> str:
        return hashlib.sha256(f"{meta}\0{text}".encode()).hexdigest()

    @staticmethod
    def checksum(key: str, blob: bytes) -> str:
        return hashlib.sha256(key.encode() + blob).hexdigest()

    def get(self, meta: str, texts: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors of those `texts` that have a valid entry under `meta`."""
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
                    log.warning("%s entry for %r does not match its key; recomputing", self.WHAT, keys[key][:60])
        return found

    def put(self, meta: str, vectors: dict[str, np.ndarray]) -> None:
        """Store float32 copies of `vectors` (text → vector) under `meta`, in one transaction."""
        rows = []
        for text, vector in vectors.items():
            blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            key = self.key(meta, text)
            rows.append((key, meta, text, len(vector), self.checksum(key, blob), blob))

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(f"INSERT OR REPLACE INTO {self.TABLE} VALUES (?, ?, ?, ?, ?, ?)", rows)

        self._call(write)


class PredictionCache(VectorCache):
    """Letter log-probabilities of prompts, keyed by the model's identity (meta) and `prompt_text` (text)."""

    FILE = "lm-predictions.sqlite"
    TABLE = "letter_log_probs_v1"
    WHAT = "LM prediction cache"


def prompt_text(ids: list[int], n_options: int) -> str:
    """A prompt's key text in the prediction cache: its option count, then its exact token ids."""
    return f"{n_options}:" + " ".join(map(str, ids))


def option_set_text(prompts: list[list[int]]) -> str:
    """A reward model's key text for one item in the prediction cache: the exact token ids of each option's
    prompt, in order."""
    return "options " + " | ".join(" ".join(map(str, ids)) for ids in prompts)


def model_identity(folder: Path, dtype: str, device: str, load_8bit: bool) -> str:
    """What decides a model's scores, as the prediction cache's meta: the resolved folder, the fingerprint of
    its weights and configs (configs and tokenizer hashed whole, weights by size and first and last MiB), each
    weight file's modification time (a checkpoint rewritten in place is never mistaken for the old one),
    the dtype the weights run in, whether they are 8-bit, and the device kind (CPU and CUDA kernels round
    differently): each a string, as torch writes them."""
    weights = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    identity = {
        "folder": str(folder.resolve()),
        "fingerprint": folder_fingerprint(folder),
        "modified": {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in weights},
        "dtype": dtype,
        "load_8bit": load_8bit,
        "device": device,
    }
    return json.dumps(identity, sort_keys=True)
