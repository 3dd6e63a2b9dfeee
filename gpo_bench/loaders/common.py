"""What every loader shares: where data is read from, safe parsing of Python-literal strings,
and reading tables with errors that name the file and row."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import pandas as pd

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
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV ({error})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {list(frame.columns)[:12]}")
    return frame
