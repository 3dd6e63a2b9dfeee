"""What every loader shares: the data folder (`--data-dir`, else $GPO_BENCH_DATA; None reads the Hugging Face
Hub, see `hub`), the file a card names, safe parsing of Python-literal strings, reading tables (CSV, parquet, JSON
lines) and JSON with errors that name the file and row, the check of count values, and what a load records
(`reads_sources`): the sha256 of every file read, and the warnings raised about the source (`warn`), which a
card's `strict: true` turns into an error."""

from __future__ import annotations

import ast
import contextlib
import contextvars
import difflib
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..cards import TaskCard
from ..data import TaskData
from ..errors import DataError
from .hub import DATA_ENV

log = logging.getLogger(__name__)


@dataclass
class Reading:
    """What one load read (path → sha256) and warned about, in order."""

    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


_READING: contextvars.ContextVar[Reading | None] = contextvars.ContextVar("gpo_bench_reading", default=None)
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) → sha256, so a file is hashed once per process


def warn(message: str) -> None:
    """A problem with the source that loses or changes data without stopping the load: logged as a warning and
    recorded in the loaded task's `warnings` (hence result.json); `strict` makes it an error."""
    log.warning("%s", message)
    reading = _READING.get()
    if reading is not None and message not in reading.warnings:
        reading.warnings.append(message)


def record_read(path: Path) -> None:
    """Note that the load reads `path`, with the sha256 of its bytes (a run's finished check compares them)."""
    reading = _READING.get()
    if reading is None:
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    reading.files[str(path)] = _DIGESTS[key]


def reads_sources(loader: Callable[[TaskCard, Path | None], TaskData]) -> Callable[[TaskCard, Path | None], TaskData]:
    """Wrap a loader so that its task carries the digest of every file it read (`sources`, keyed by the path under
    the data folder) and the warnings of the load; with the card's `strict: true` a warning is an error."""

    @functools.wraps(loader)
    def load(card: TaskCard, data_dir: Path | None) -> TaskData:
        reading = Reading()
        token = _READING.set(reading)
        try:
            task = loader(card, data_dir)
        finally:
            _READING.reset(token)
        task.sources = {source_name(Path(p), data_dir): d for p, d in sorted(reading.files.items())}
        task.warnings = [*reading.warnings, *(w for w in task.warnings if w not in reading.warnings)]
        if getattr(card, "strict", False) and task.warnings:
            raise strict_error(task.warnings, f"'strict: true' in {card.path}")
        return task

    return load


def missing_groups(card: TaskCard, order: list[str], found: dict) -> list[str]:
    """The note for the card's groups that the source lacks (none: no note), warned about with the closest
    group names the source has."""
    missing = [g for g in order if g not in found]
    if not missing:
        return []
    close = {g: difflib.get_close_matches(g, [str(f) for f in found], n=2, cutoff=0.8) for g in missing}
    hints = [f"{g!r} (closest: {', '.join(map(repr, c))})" if c else repr(g) for g, c in close.items()]
    warn(f"{card.path}: {len(missing)} of {len(order)} groups are not in the source: {', '.join(hints)}")
    return [f"groups not found in the source: {', '.join(missing)}"]


def strict_error(warnings: list[str], why: str) -> DataError:
    shown = "; ".join(warnings[:5]) + (f"; and {len(warnings) - 5} more" if len(warnings) > 5 else "")
    return DataError(f"{len(warnings)} warning(s) while loading, errors under {why}: {shown}")


def source_name(path: Path, data_dir: Path | None) -> str:
    """A read file's name in result.json: relative to the data folder where it lies inside it."""
    if data_dir is not None:
        with contextlib.suppress(ValueError):
            return str(path.resolve().relative_to(data_dir.resolve()))
    return str(path)


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """`--data-dir`, else $GPO_BENCH_DATA, else None (read from the Hugging Face Hub)."""
    chosen = data_dir or os.environ.get(DATA_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        where = "--data-dir" if data_dir else f"${DATA_ENV}"
        raise DataError(f"{where} points to {path}, which is not a folder")
    return path


def parse_literal(text: Any, what: str) -> Any:
    """Parse a Python literal string (list/dict) without eval; the error names `what`."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError) as error:
        raise DataError(f"{what}: cannot parse {str(text)[:80]!r} as a Python literal ({error})") from None


def read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a CSV and check its columns; the error names the file and the missing columns."""
    record_read(path)
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV ({' '.join(str(error).split())})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {list(frame.columns)[:12]}")
    if frame.empty:
        warn(f"{path}: a header and no data rows; nothing was read from it")
    return frame


def read_json(path: Path) -> Any:
    """A JSON file; invalid JSON, a non-UTF-8 file or a key given twice in one object (where the last one
    would silently win) is a DataError naming the file."""

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise DataError(f"{path}: key {key!r} appears twice in one object")
            seen[key] = value
        return seen

    record_read(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if isinstance(value, list | dict) and not value:
        warn(f"{path}: holds no entries; nothing was read from it")
    return value


def check_count(value: Any, where: str) -> float:
    """A respondent count or share: a finite number ≥ 0 (not a string, not a boolean), else a DataError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise DataError(f"{where}: expected a count (a finite number ≥ 0), got {type(value).__name__} {value!r}")
    return float(value)


@contextlib.contextmanager
def row_errors(where: str) -> Iterator[None]:
    """Turn a row whose content does not have the expected shape (a missing field, a wrong type) into a
    DataError naming the row."""
    try:
        yield
    except DataError:
        raise
    except KeyError as error:
        raise DataError(f"{where}: missing field {error.args[0]!r}") from None
    except (IndexError, TypeError, AttributeError, ValueError) as error:
        raise DataError(f"{where}: unexpected content ({type(error).__name__}: {error})") from None


def source_file(card: TaskCard, data_dir: Path | None) -> Path:
    """The file a card's `source.file` names: absolute, else inside `--data-dir` where it is there, else
    beside the card; the error names the card and every place looked at."""
    name = card.source.get("file")
    if not isinstance(name, str) or not name:
        raise DataError(
            f"{card.path}: the {card.loader!r} loader needs 'source: {{file: PATH}}' (CSV, JSONL or parquet)"
        )
    candidates = [Path(name).expanduser()]
    if not candidates[0].is_absolute():
        candidates = ([data_dir / name] if data_dir else []) + [Path(card.path).parent / name]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"{card.path}: source file {name!r} not found (looked at {', '.join(map(str, candidates))})")


def is_blank(value: Any) -> bool:
    """An empty cell: None, NaN, or text that is only whitespace."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def read_rows(path: Path, required: list[str]) -> Iterator[tuple[str, dict]]:
    """(where, row) of a CSV, parquet or JSON-lines file; `where` names the file and the row (CSV: its line,
    the header being line 1; parquet: its 1-based row; JSON lines: its line). Required columns (fields of every
    JSON line) are checked; the error names what is missing."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        record_read(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text ({error})") from None
        if not text.strip():
            warn(f"{path}: no data rows; nothing was read from it")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            missing = [c for c in required if c not in row]
            if missing:
                raise DataError(f"{where}: missing field(s) {missing}; has {sorted(row)}")
            yield where, row
        return
    if suffix == ".csv":
        frame, first = read_csv(path, required), 2
    elif suffix == ".parquet":
        record_read(path)
        try:
            frame, first = pd.read_parquet(path), 1
        except ImportError as error:
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow): {error}") from None
        except Exception as error:  # noqa: BLE001  (pyarrow raises many kinds)
            raise DataError(f"{path}: not a readable parquet file ({type(error).__name__})") from None
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; has {list(frame.columns)[:12]}")
        if frame.empty:
            warn(f"{path}: no data rows; nothing was read from it")
    else:
        raise DataError(f"{path}: expected a .csv, .parquet or .jsonl file")
    for number, row in enumerate(frame.to_dict("records"), start=first):
        yield f"{path} row {number}", row
