"""The `gpo-bench` argument parser: every subcommand and its flags, each subcommand bound to its function in
`commands.py` (the flags several subcommands share are declared in `flags.py`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cards import SPEC_LIMITS, Limit
from ..encoders import ALIASES, DEFAULT_ENCODER, split_encoders
from .commands import cmd_compare, cmd_fetch, cmd_leaderboard, cmd_list, cmd_plot, cmd_report, cmd_run, cmd_sweep
from .flags import CommonFlags, add_reader_arguments, add_spec_arguments, flag, include_parser, str_list


def add_run(sub: CommonFlags) -> argparse.ArgumentParser:
    run = sub.add_parser("run", help="run one method on one task; writes OUTPUT/runs/<run-id>/")
    run.add_argument("--task", required=True, help="task card name (see `gpo-bench list`)")
    run.add_argument("--method", required=True, help="method card name (see `gpo-bench list`)")
    run.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        help=f"text encoder for methods that use features: {', '.join(ALIASES)} (see `gpo-bench list`; default "
        f"{DEFAULT_ENCODER}), a Hub id or a local path, optionally followed by "
        ",pooling=mean|last,template=alpaca|llama2|chat|raw,dtype=…,max_length=N",
    )
    run.add_argument(
        "--train-frac",
        type=flag(SPEC_LIMITS["train_frac"]),
        default=None,
        help="fraction of groups for meta-training (validation carved out of it); default: the card's",
    )
    add_spec_arguments(run, "run")
    run.add_argument("--resume", action="store_true", help="continue an interrupted training from its checkpoint")
    run.set_defaults(func=cmd_run, split_seed=0)  # one run: the spec's own default (seeds: the API's)
    return run


def add_sweep(sub: CommonFlags) -> argparse.ArgumentParser:
    sweep = sub.add_parser(
        "sweep",
        help="run a grid of tasks × methods × encoders × train-fracs × seeds (all shots in each run); "
        "skips finished runs, records failures in <run>/error.json",
    )
    sweep.add_argument(
        "--file",
        type=Path,
        default=None,
        help="YAML sweep file with tasks, methods, encoders, train_fracs, shots, seeds, split_seed, "
        "seeds_together, limit_items, set (a mapping of overrides); flags given on the command line replace its "
        "fields",
    )
    sweep.add_argument("--tasks", type=str_list, default=None, help="comma-separated task card names")
    sweep.add_argument("--methods", type=str_list, default=None, help="comma-separated method card names")
    sweep.add_argument(
        "--encoders",
        type=split_encoders,
        default=None,
        help=f"comma-separated encoders (default {DEFAULT_ENCODER}); methods without features ignore them",
    )
    sweep.add_argument(
        "--train-fracs",
        type=flag(SPEC_LIMITS["train_frac"], many=True),
        default=None,
        help="comma-separated meta-train fractions, e.g. 0.4,0.6,0.8 (default: each task card's)",
    )
    sweep.add_argument(
        "--seeds-together",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a method that trains several seeds at once (gpo: one batched ensemble on CUDA, one process per "
        "seed on the CPU) gets one run for all --seeds (default); --no-seeds-together: one run per seed",
    )
    add_spec_arguments(sweep, "sweep")
    sweep.add_argument(
        "--jobs", type=flag(Limit(int, 1)), default=1, help="runs in parallel, one process each (default 1)"
    )
    sweep.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: this machine (--jobs processes); ray: one Ray task per run (pip install 'gpo-bench[ray]')",
    )
    sweep.add_argument(
        "--ray-address",
        default=None,
        help="address of an existing Ray cluster (e.g. auto or ray://host:10001); default: start a local one. "
        "--output-dir must then be a folder every node shares",
    )
    sweep.add_argument(
        "--cpus-per-run",
        type=flag(Limit(float, 0, open_low=True)),
        default=1,
        help="CPUs each Ray task asks for (default 1)",
    )
    sweep.add_argument(
        "--gpus-per-run",
        type=flag(Limit(float, 0)),
        default=0,
        help="GPUs each Ray task asks for, e.g. 1, or 0.25 to share a GPU between four runs (default 0)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    sweep.set_defaults(func=cmd_sweep)
    return sweep


def add_fetch(sub: CommonFlags) -> None:
    fetch = sub.add_parser(
        "fetch",
        help="download tasks' data from the Hugging Face Hub into a folder, in the layout --data-dir reads "
        "(for machines without the Hub)",
    )
    fetch.add_argument("--task", type=str_list, required=True, help="comma-separated task card names")
    fetch.add_argument("--data-dir", type=Path, required=True, help="folder to write into (created if needed)")
    fetch.set_defaults(func=cmd_fetch)


def add_leaderboard(sub: CommonFlags) -> argparse.ArgumentParser:
    board = sub.add_parser(
        "leaderboard", help="write OUTPUT/leaderboard.{md,csv,html} from the run folders OUTPUT/runs/*/result.json"
    )
    add_reader_arguments(board)
    board.add_argument(
        "--board-dir",
        type=Path,
        default=None,
        help="where leaderboard.{md,csv,html} are written (default OUTPUT), e.g. a second board at another --shots",
    )
    board.add_argument("--task", type=str_list, default=None, help="only these tasks (comma-separated)")
    board.add_argument(
        "--shots",
        type=flag(SPEC_LIMITS["shots"]),
        default=None,
        help="K shown in every column (default: 20 where a column has it, else its largest K)",
    )
    board.add_argument(
        "--versus",
        default=None,
        help="the row every paired difference is taken against (a method name or row label); default: each "
        "column's strongest simple baseline (group-mix, group-knn, population, head, knn, uniform, majority)",
    )
    board.set_defaults(func=cmd_leaderboard)
    return board


def add_compare(sub: CommonFlags) -> None:
    compare = sub.add_parser(
        "compare",
        help="paired comparison of two methods over the same episodes: mean difference, paired bootstrap CI, "
        "probability of improvement, groups won/tied/lost",
    )
    compare.add_argument("--task", default=None, help="the task both methods ran")
    compare.add_argument(
        "--methods",
        type=str_list,
        default=None,
        help="A,B: two leaderboard rows (a method name, or its full row label such as 'gpo [max_steps=1000]')",
    )
    compare.add_argument(
        "--runs", nargs=2, type=Path, default=None, metavar=("FOLDER_A", "FOLDER_B"), help="or two run folders"
    )
    compare.add_argument(
        "--train-frac",
        type=flag(SPEC_LIMITS["train_frac"]),
        default=None,
        help="meta-train fraction (needed where both ran several)",
    )
    compare.add_argument(
        "--shots",
        type=flag(SPEC_LIMITS["shots"], many=True),
        default=None,
        help="K values (default: every K both have)",
    )
    add_reader_arguments(compare)
    compare.set_defaults(func=cmd_compare)


def add_report(sub: CommonFlags) -> None:
    report = sub.add_parser(
        "report", help="a static web report of the run folders: boards, plots, runs and their predictions"
    )
    add_reader_arguments(report, encoder=False)
    report.add_argument(
        "--report-dir", type=Path, default=None, help="where the site is written (default OUTPUT/report)"
    )
    report.add_argument(
        "--serve", type=int, default=None, metavar="PORT", help="then serve it on http://127.0.0.1:PORT/ (0: any port)"
    )
    report.set_defaults(func=cmd_report)


def add_plot(sub: CommonFlags, common: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    plot = sub.subparsers.add_parser("plot", help="plots from the run folders, PNG and SVG under OUTPUT/plots/")
    kinds = CommonFlags(plot.add_subparsers(dest="kind", required=True), common)
    shots = kinds.add_parser("shots", help="headline metric against K per method, CI bands, one panel per task")
    shots.add_argument(
        "--task", type=str_list, default=None, help="tasks, one panel each (comma-separated; default: all run)"
    )
    groups = kinds.add_parser("groups", help="per-group values of every method on one task, with CI bars")
    groups.add_argument("--task", required=True, help="the task whose groups are plotted (a task card name)")
    groups.add_argument(
        "--shots",
        type=flag(SPEC_LIMITS["shots"]),
        default=None,
        help="K shown (default: 20 where run, else the largest K)",
    )
    for kind in (shots, groups):
        add_reader_arguments(kind)
        kind.add_argument(
            "--train-frac",
            type=flag(SPEC_LIMITS["train_frac"]),
            default=None,
            help="meta-train fraction shown (default: the task card's where run, else the smallest run)",
        )
        kind.add_argument("--methods", type=str_list, default=None, help="only these methods (comma-separated)")
        kind.set_defaults(func=cmd_plot)
    return [shots, groups]


def build_parser() -> argparse.ArgumentParser:
    common = include_parser()
    parser = argparse.ArgumentParser(
        prog="gpo-bench",
        description="Few-shot group and personalized preference alignment: GPO side by side with baselines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = CommonFlags(parser.add_subparsers(dest="command", required=True), common)
    sub.add_parser("list", help="list tasks, methods and encoders").set_defaults(func=cmd_list)
    run, sweep = add_run(sub), add_sweep(sub)
    add_fetch(sub)
    board = add_leaderboard(sub)
    add_compare(sub)
    add_report(sub)
    plots = add_plot(sub, common)
    for command in (run, sweep, board, *plots):  # also accepted after the command; SUPPRESS keeps the first
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser
