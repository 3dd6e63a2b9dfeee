"""The `gpo-bench` command line: `list`, `run`, `sweep`, `fetch`, `leaderboard`, `compare`, `plot` and
`report`. `parser.py` declares the subcommands (with the flags they share in `flags.py`), `commands.py` holds
one function per subcommand, which calls the public API and prints what it returns, and `main` here runs the
chosen one and turns its errors into one line and an exit code."""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import traceback

from ..discovery import add_include_paths
from ..errors import CardError, DataError, PluginError, UnknownNameError
from ..workers import LOG_DATE_FORMAT, LOG_FORMAT
from .parser import build_parser

__all__ = ["build_parser", "main"]

# A user's mistake or the machine's state (bad data, a card, a name, a file or folder that cannot be read or
# written, a locked cache): one line and exit code 2. Anything else is a bug: one line, exit 1, --debug for more.
EXPECTED_ERRORS = (DataError, CardError, PluginError, UnknownNameError, OSError, sqlite3.Error, RuntimeError)


def default_threads() -> None:
    """OpenMP threads wait passively unless the user chose otherwise: spinning threads make torch's small
    matrix products many times slower on a machine whose cores are busy (set before torch loads)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    default_threads()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
        datefmt=LOG_DATE_FORMAT,
    )
    try:
        add_include_paths(args.include_path)
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("gpo-bench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, EXPECTED_ERRORS):
            print(f"gpo-bench: error: {message}", file=sys.stderr)
            return 2
        print(
            f"gpo-bench: internal error: {type(error).__name__}: {message} (rerun with --debug for the traceback, "
            "and please report it)",
            file=sys.stderr,
        )
        return 1
