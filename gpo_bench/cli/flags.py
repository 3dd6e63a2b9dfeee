"""The command line's flag declarations that several subcommands share, each declared once: the argparse types
that check numbers against the run spec's limits, the flags of a run's spec and location that `run` and `sweep`
both take, the flags of the commands that read run folders, and `--include-path`, which every command takes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cards import SPEC_LIMITS, Limit
from ..discovery import INCLUDE_ENV
from ..errors import CardError


def flag(limit: Limit, many: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number (or comma-separated numbers with `many`) checked against `limit`, the same
    declaration a sweep file's fields are checked against."""

    expected = limit.describe().removesuffix(", or null")  # a flag left out is the null

    def parse(text: str) -> Any:
        parts = [v.strip() for v in text.split(",") if v.strip()] if many else [text.strip()]
        values = []
        for part in parts:
            try:
                values.append(limit.check(limit.kind(part), "value"))
            except (ValueError, CardError):
                raise argparse.ArgumentTypeError(f"expected {expected}, got {part!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, each {expected}, got {text!r}")
        return tuple(values) if many else values[0]

    parse.__name__ = limit.kind.__name__  # argparse names the type in some messages
    return parse


def str_list(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


STRICT_HELP = (
    "make the loader's warnings errors: a group key, option or answer the source names that no card or question knows, "
    "a file with no data rows, a duplicate row that contradicts its first copy (a task card's 'strict: true' does it "
    "for every run of the task)"
)
# What differs between `run` (one run) and `sweep` (a grid) in the help of the flags they share.
SEEDS_HELP = {
    "run": "GPO trains them at once: one process per seed on the CPU, one stacked ensemble on CUDA",
    "sweep": "one run each, except as --seeds-together says",
}
SET_FLAG = {
    "run": ("KEY=VALUE", "override a method card setting, e.g. --set max_steps=2000 (repeatable)"),
    "sweep": (
        "[METHOD.]KEY=VALUE",
        "override a card setting for every method that has it (max_steps=1000) or for one method "
        "(gpo.max_steps=1000); repeatable",
    ),
}


def add_spec_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags `run` and `sweep` (`command`) share: each run's K values, seeds, split seed, item limit and
    setting overrides, where data, results and caches live, the device, --force and --strict. A flag left out
    is None, so that a sweep file's field is replaced only by a flag given (`run` fills in the spec's defaults)."""
    parser.add_argument(
        "--shots",
        type=flag(SPEC_LIMITS["shots"], many=True),
        default=None,
        help="comma-separated K values: context items per test group, all evaluated inside each run (default: the "
        "task card's grid)",
    )
    parser.add_argument(
        "--seeds",
        type=flag(SPEC_LIMITS["seeds"], many=True),
        default=None,
        help=f"comma-separated seeds; each draws its own context items and model init (default 0,1,2); "
        f"{SEEDS_HELP[command]}",
    )
    parser.add_argument(
        "--split-seed",
        type=flag(SPEC_LIMITS["split_seed"]),
        default=None,
        help="seed of the GPO paper's group split (np.random.seed; default 0, as in the paper)",
    )
    parser.add_argument(
        "--limit-items",
        type=flag(SPEC_LIMITS["limit_items"]),
        default=None,
        help="keep only the first N items (quick runs; groups left with fewer than 2 are dropped and counted)",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="HUB_ID_OR_FOLDER",
        help="the language model, named once: the LM methods' model setting (default smollm2, the offline "
        "SmolLM2-135M-Instruct) and the encoder where the encoder is 'model' (GPO on that model's embeddings)",
    )
    metavar, set_help = SET_FLAG[command]
    parser.add_argument("--set", action="append", default=[], metavar=metavar, help=set_help)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the raw data (e.g. ../shared/data); default $GPO_BENCH_DATA, else the Hugging Face Hub "
        "(`gpo-bench fetch` fills a folder from the Hub)",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("results"), help="where runs/ is written (default results)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache folder of embeddings and of the dequantized default LM "
        "(default $GPO_BENCH_CACHE or ~/.cache/gpo-bench)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where models run (default auto)"
    )
    parser.add_argument(
        "--force", action="store_true", help="run again even where a run of the same spec already finished"
    )
    parser.add_argument("--strict", action="store_true", help=STRICT_HELP)


def add_reader_arguments(parser: argparse.ArgumentParser, encoder: bool = True) -> None:
    """The flags of the commands that read finished run folders: where they are, and (`encoder`) which
    encoder's runs to keep."""
    parser.add_argument(
        "--output-dir", type=Path, default=Path("results"), help="folder holding runs/ (default results)"
    )
    if encoder:
        parser.add_argument(
            "--encoder", default=None, help="only runs with this encoder (and methods that use none), e.g. minilm"
        )


def include_parser() -> argparse.ArgumentParser:
    """The `--include-path` flag every command takes (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--include-path",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="your own task cards (DIR/tasks/*.yaml), method cards (DIR/baselines/*.yaml) and Python modules "
        f"(DIR/*.py, imported to register loaders and methods); repeatable; also ${INCLUDE_ENV}",
    )
    return parent


class CommonFlags:
    """Subparsers whose every parser (and nested subparser) also takes the common flags (`--include-path`)."""

    def __init__(self, subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
        self.subparsers, self.parent = subparsers, parent

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self.subparsers.add_parser(name, parents=[self.parent], **kwargs)
