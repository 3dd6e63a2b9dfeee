"""What every loader shares: where data is read from (a data folder, the file a card names, else the Hugging
Face Hub, with one clear message naming the files and how to fetch them when none can serve), safe parsing of
Python-literal strings, reading tables (CSV, parquet, JSON lines) and JSON with errors that name the file and
row, the check of count values, and what a load records (`reads_sources`): the sha256 of every file read, and the
warnings raised about the source (`warn`), which a card's `strict: true` turns into an error."""

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
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from ..cards import TaskCard
from ..data import TaskData
from ..errors import DataError

if TYPE_CHECKING:
    import datasets

T = TypeVar("T")
log = logging.getLogger(__name__)

DATA_ENV = "GPO_BENCH_DATA"


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


@dataclass(frozen=True)
class SourceFile:
    """A file a task reads: `local`, its path under the data folder, and where the task card's Hub
    dataset keeps it: split `split` of config `config` (read with `datasets`), or the file `hub_path`."""

    local: str
    config: str | None = None
    split: str = "train"
    hub_path: str | None = None

    def describe(self) -> str:
        return f"{self.local}.jsonl (or .parquet)" if self.hub_path is None else self.local


# loader name → the files it reads, for loaders whose task can come from the Hub
SOURCES: dict[str, Callable[[TaskCard], list[SourceFile]]] = {}


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face Hub cannot be asked, or None. With HF_HUB_OFFLINE set the Hub libraries read
    their local cache only, and fail at once where it lacks the files, so that is left to them; else one
    quick request to the endpoint replaces the libraries' retries (tens of seconds offline)."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return None
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"{endpoint} cannot be reached ({type(reason).__name__}: {reason})"
    return None


def hub_names(card: TaskCard, files: list[SourceFile]) -> str:
    configs = list(dict.fromkeys(f.config for f in files if f.config))
    return f"{card.hub_id} (config{'s' if len(configs) > 1 else ''} {', '.join(configs)})" if configs else card.hub_id


def no_source_error(card: TaskCard, needed: list[str], data_dir: Path | None, problem: str, how: str) -> DataError:
    """The one message for a task whose data neither the data folder nor the Hub can give: what was
    tried, every file the task needs, and how to get them."""
    where = f"{data_dir} does not hold them" if data_dir else "no data folder was given"
    return DataError(
        f"cannot load task {card.name!r}: it reads {', '.join(needed)} under the data folder; {where}, and "
        f"{problem}. {how} Then pass --data-dir DIR (or set {DATA_ENV}=DIR)."
    )


def hub_error(card: TaskCard, files: list[SourceFile], data_dir: Path | None, problem: str) -> DataError:
    return no_source_error(
        card,
        [f.describe() for f in files],
        data_dir,
        f"the Hugging Face Hub could not serve {hub_names(card, files)}: {problem}",
        f"To fetch them into DIR on a machine that reaches the Hub: `gpo-bench fetch --task {card.name} "
        "--data-dir DIR` (a gated dataset needs `hf auth login` first; HF_HUB_OFFLINE=1 reads the Hub cache).",
    )


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def from_hub(card: TaskCard, files: list[SourceFile], data_dir: Path | None, get: Callable[[], T]) -> T:
    """`get()` (a call into `datasets` or `huggingface_hub`) once the Hub is known to answer; any failure
    becomes the one message that names the dataset, the files and how to fetch them."""
    problem = hub_unreachable()
    if problem:
        raise hub_error(card, files, data_dir, problem)
    try:
        return get()
    except Exception as error:  # gated, missing, offline without a cached copy: the Hub cannot serve it
        raise hub_error(card, files, data_dir, first_line(error)) from None


def load_hub_split(card: TaskCard, file: SourceFile) -> datasets.Dataset:
    import datasets

    return datasets.load_dataset(card.hub_id, file.config, split=file.split)


def download_hub_file(card: TaskCard, file: SourceFile) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(card.hub_id, file.hub_path, repo_type="dataset"))


def hub_rows(card: TaskCard, files: list[SourceFile], data_dir: Path | None) -> list[list[dict]]:
    """The rows of each of `files` from the Hub, or one clear error."""
    return from_hub(card, files, data_dir, lambda: [list(load_hub_split(card, f)) for f in files])


def write_jsonl(rows: Iterable[dict], path: Path) -> None:
    with path.open("w") as out:
        for row in rows:
            out.write(json.dumps(row, default=str) + "\n")


def fetch(card: TaskCard, data_dir: Path) -> list[Path]:
    """Download the files a task reads from the Hub into `data_dir`, in the layout its loader reads
    (dataset splits as JSON lines of the rows `datasets` gives); each file is written whole or not at all."""
    if card.loader not in SOURCES or not card.hub_id:
        raise DataError(f"task {card.name!r} has no Hugging Face Hub copy to fetch; `gpo-bench run` says what it reads")
    files = SOURCES[card.loader](card)
    problem = hub_unreachable()
    if problem:
        raise DataError(f"cannot fetch {hub_names(card, files)}: {problem}; fetch where the Hub is reachable")
    written = []
    for file in files:
        target = data_dir / (file.local if file.hub_path else file.local + ".jsonl")
        partial = target.with_name(f".{target.name}.partial")
        try:
            if file.hub_path:
                source = download_hub_file(card, file)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, partial)
            else:
                rows = load_hub_split(card, file)
                target.parent.mkdir(parents=True, exist_ok=True)
                write_jsonl(rows, partial)
            os.replace(partial, target)
        except Exception as error:  # gated, missing, a full disk: say which file
            raise DataError(f"cannot fetch {target.name} of {hub_names(card, files)}: {first_line(error)}") from None
        finally:
            partial.unlink(missing_ok=True)
        written.append(target)
    return written


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
