"""What every loader shares: where data is read from (the data folder, or the file a card names), safe
parsing of Python-literal strings, reading tables (CSV, parquet, JSON lines) and JSON with errors that name
the file and row, and the check of count values."""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ..cards import TaskCard
from ..data import DataError

DATA_ENV = "GPO_BENCH_DATA"


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


def no_source_error(task: str, relative: str, data_dir: Path | None, hub_problem: str) -> DataError:
    where = f"{data_dir / relative} does not exist" if data_dir else "no data folder was given"
    return DataError(
        f"cannot load task {task!r}: {where}, and {hub_problem}. "
        f"Pass --data-dir DIR (or set {DATA_ENV}=DIR) with {relative} inside it."
    )


def parse_literal(text: Any, what: str) -> Any:
    """Parse a Python literal string (list/dict) without eval; the error names `what`."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError) as error:
        raise DataError(f"{what}: cannot parse {str(text)[:80]!r} as a Python literal ({error})") from None


def read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a CSV and check its columns; the error names the file and the missing columns."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV ({' '.join(str(error).split())})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {list(frame.columns)[:12]}")
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

    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


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
        for number, line in enumerate(path.read_text().splitlines(), start=1):
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
        try:
            frame, first = pd.read_parquet(path), 1
        except ImportError as error:
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow): {error}") from None
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; has {list(frame.columns)[:12]}")
    else:
        raise DataError(f"{path}: expected a .csv, .parquet or .jsonl file")
    for number, row in enumerate(frame.to_dict("records"), start=first):
        yield f"{path} row {number}", row
