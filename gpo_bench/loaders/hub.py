"""Where a task's files come from when the data folder lacks them: the Hugging Face Hub. `SOURCES` names, per
loader, the files its task reads and where the card's Hub dataset keeps them; `hub_rows` and `from_hub` read them
once the Hub is known to answer, and `fetch` writes them into a data folder in the layout the loaders read. When
neither the data folder nor the Hub can serve a task, `no_source_error` is the one message that says what it reads
and how to get it."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..cards import TaskCard
from ..errors import DataError

if TYPE_CHECKING:
    import datasets

T = TypeVar("T")

DATA_ENV = "GPO_BENCH_DATA"  # names the data folder without --data-dir: read by common.resolve_data_dir, named here


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
