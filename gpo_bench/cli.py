"""The `gpo-bench` command line: `list`, `run`, `sweep`, `fetch`, `leaderboard`, `compare`, `plot` and
`report`.

Heavy modules (torch, the models, the loaders and their data) are imported inside the commands, after
the checks that need none of them, so that a mistyped name or flag is reported at once."""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cards import SPEC_LIMITS, Limit, apply_overrides, load_method_card, load_task_card, parse_overrides
from .discovery import INCLUDE_ENV, add_include_paths, card_origin, discover, method_names, task_names
from .encoders import ALIASES, DEFAULT_ENCODER, EncoderSpec
from .errors import CardError, DataError, PluginError, UnknownNameError
from .workers import LOG_DATE_FORMAT, LOG_FORMAT

log = logging.getLogger("gpo_bench")


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


def default_threads() -> None:
    """OpenMP threads wait passively unless the user chose otherwise: spinning threads make torch's small
    matrix products many times slower on a machine whose cores are busy (set before torch loads)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cmd_list(args: argparse.Namespace) -> int:
    discover()  # so a broken plugin module is reported here too
    tasks = [load_task_card(name) for name in task_names()]
    methods = [load_method_card(name) for name in method_names()]
    sections = {
        "tasks": [(c.name, f"{c.description} [{card_origin(c.path)}]") for c in tasks],
        "methods": [(c.name, f"{c.description} [{card_origin(c.path)}]") for c in methods],
        "encoders": [
            *ALIASES.items(),
            (
                "<hub id or path>",
                "any Hugging Face model; add ,pooling=mean|last,template=alpaca|llama2|chat|raw,"
                "dtype=float32|bfloat16|float16,max_length=N",
            ),
        ],
    }
    width = max(len(name) for rows in sections.values() for name, _ in rows)
    for section, rows in sections.items():
        print(f"{section}:")
        for name, description in rows:
            print(f"  {name:<{width}}  {description}")
    return 0


FALLBACK_NOTICE = 0.05  # print a cell's fallback share when more of its predictions than this fell back


def print_table(result: dict) -> None:
    """The headline per K with its CI and item-pooled mean, where it stands between the floor (uniform) and the
    sampling ceiling, and how many predictions fell back to a less informed guess."""
    metric = result["metric"]
    spec = result["spec"]
    print(
        f"\n{spec['task']} / {spec['method']}  encoder={spec['encoder']}  train_frac={spec['train_frac']}  "
        f"seeds={spec['seeds']}  test groups={len(result['split']['test'])}"
    )
    subsets = [name for name in ("seen", "unseen") if any(name in c for c in result["metrics"].values())]
    print(
        f"{'K':>4}  {metric:>13}  {'95% CI':>17}  {'pooled':>7}"
        + "".join(f"  {name:>7}" for name in subsets)
        + f"  {'uniform':>7}  {'ceiling':>7}  {'headroom':>8}  {'items':>7}"
    )
    notes = []
    for shots, cell in sorted(result["metrics"].items(), key=lambda kv: int(kv[0])):
        s = cell[metric]
        pooled = cell[metric].get("pooled", s["mean"])
        extra = "".join(f"  {cell[name][metric]['mean']:7.4f}" if name in cell else f"  {'-':>7}" for name in subsets)
        items = cell.get("user_accuracy", s)["n_items"]
        reference = cell.get("reference", {})
        ceiling, headroom = reference.get("ceiling"), reference.get("headroom")
        print(
            f"{shots:>4}  {s['mean']:13.4f}  [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]  {pooled:7.4f}{extra}"
            f"  {reference.get('uniform', float('nan')):7.4f}  {'n/a' if ceiling is None else f'{ceiling:.4f}':>7}"
            f"  {'n/a' if headroom is None else f'{headroom:.0%}':>8}  {items:7d}"
        )
        fallbacks = cell.get("fallbacks", {})
        if fallbacks.get("share", 0) > FALLBACK_NOTICE or fallbacks.get("ties_broken", 0) > FALLBACK_NOTICE * items:
            kinds = {k: v for k, v in fallbacks.items() if k not in ("predictions", "share", "ties_share")}
            notes.append(f"K={shots}: {fallbacks['share']:.0%} of predictions fell back ({kinds})")
    if reference.get("ceiling") is None and reference.get("ceiling_note"):
        print(f"ceiling: {reference['ceiling_note']}")
    if reference.get("floor") == "majority":
        print(
            f"uniform: chance on the same targets; the floor is majority (the seen groups' most common answer "
            f"position): {reference['majority']:.4f} at K={shots}; headroom: (score − majority) / (1 − majority)"
        )
    else:
        print(
            "uniform: the floor on the same targets; ceiling: the groups' own distributions scored against a survey "
            "of their size; headroom: (score − uniform) / (ceiling − uniform)"
        )
    for note in notes:
        print(f"fallbacks: {note}")
    print(f"run folder: {result['run_folder']}")


def check_names(tasks: tuple[str, ...], methods: tuple[str, ...], encoders: tuple[str, ...]) -> None:
    """Unknown task, method or encoder names fail here, before torch or any data loads."""
    for name in tasks:
        load_task_card(name)
    for name in methods:
        load_method_card(name)
    for encoder in encoders:
        EncoderSpec.parse(encoder)


def check_run(args: argparse.Namespace) -> None:
    """What `run` can check without data or models: names, card settings and flag ranges."""
    check_names((args.task,), (args.method,), (args.encoder,))
    method_card = load_method_card(args.method)
    apply_overrides(method_card.settings, parse_overrides(args.set), method_card)  # ranges: the flags' types


def cmd_run(args: argparse.Namespace) -> int:
    check_run(args)
    from .loaders import load_task
    from .loaders.common import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    load_task(load_task_card(args.task), data_dir)  # a missing source is reported before torch loads
    from . import api

    record = api.run(
        args.task,
        args.method,
        data_dir=data_dir,
        shots=args.shots,
        seeds=args.seeds,
        train_frac=args.train_frac,
        settings=parse_overrides(args.set),
        output_dir=args.output_dir,
        encoder=args.encoder,
        split_seed=args.split_seed,
        limit_items=args.limit_items,
        device=args.device,
        force=args.force,
        resume=args.resume,
        cache_dir=args.cache_dir,
        strict=args.strict,
    )
    result = {**record.result(), "run_folder": str(record.folder)}
    if record.reused:
        print(f"reused the finished run {result['run_folder']} (pass --force to run it again)")
    print_table(result)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    check_names(args.tasks or (), args.methods or (), args.encoders or ())  # --file names: when it is read
    from .loaders.common import resolve_data_dir
    from .sweep import Options, absolute, describe, make_grid, plan, sweep

    flags = {
        "tasks": args.tasks,
        "methods": args.methods,
        "encoders": args.encoders,
        "train_fracs": args.train_fracs,
        "shots": args.shots,
        "seeds": args.seeds,
        "split_seed": args.split_seed,
        "seeds_together": args.seeds_together,
        "limit_items": args.limit_items,
        "set": args.set,
    }
    runs = plan(make_grid(args.file, flags))
    options = absolute(
        Options(resolve_data_dir(args.data_dir), args.output_dir, args.device, args.force, args.cache_dir, args.strict)
    )
    if args.dry_run:
        print(describe(runs, options))
        return 0
    report = sweep(runs, options, args.jobs, args.backend, args.ray_address, args.cpus_per_run, args.gpus_per_run)
    print(report.summary(args.output_dir))
    return 1 if report.failed or report.stopped else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    cards = [load_task_card(name) for name in args.task]
    from .loaders.common import fetch

    for card in cards:
        for path in fetch(card, args.data_dir):
            print(f"wrote {path}")
    print(f"now pass --data-dir {args.data_dir} (or set GPO_BENCH_DATA={args.data_dir})")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from . import api

    runs = api.load_runs(args.output_dir, task=args.task, encoder=args.encoder)
    if not runs:
        print(f"gpo-bench: no finished runs under {args.output_dir / 'runs'} match", file=sys.stderr)
        return 1
    board = api.leaderboard(runs, args.shots, args.versus)
    for path in board.write(args.output_dir):
        print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from . import api

    shots = list(args.shots) if args.shots else None
    if args.runs:
        print(api.compare([], api.read_run(args.runs[0]), api.read_run(args.runs[1]), shots=shots))
        return 0
    if not args.task or args.methods is None:
        raise DataError("give --task and --methods A,B, or --runs FOLDER_A FOLDER_B")
    if len(args.methods) != 2:
        raise DataError(f"--methods takes exactly two names (A,B), got {len(args.methods)}: {','.join(args.methods)}")
    runs = api.load_runs(args.output_dir, task=args.task, encoder=args.encoder)
    a, b = args.methods
    print(api.compare(runs, a, b, task=args.task, train_frac=args.train_frac, shots=shots))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from . import api, plots

    tasks = list(args.task) if args.kind == "shots" and args.task else [args.task] if args.kind == "groups" else None
    runs = api.load_runs(args.output_dir, task=tasks, method=args.methods, encoder=args.encoder)
    plots.check_runs(runs, args.output_dir, tasks)
    if args.kind == "shots":
        paths, notes = plots.plot_shots(runs, args.output_dir, tasks, args.train_frac)
    else:
        paths, notes = plots.plot_groups(runs, args.output_dir, args.task, args.shots, args.train_frac)
    for note in notes:
        print(f"note: {note}")
    for path in paths:
        print(f"wrote {path}")
    return 0


class CommonFlags:
    """Subparsers whose every parser (and nested subparser) also takes the common flags (`--include-path`)."""

    def __init__(self, subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
        self.subparsers, self.parent = subparsers, parent

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self.subparsers.add_parser(name, parents=[self.parent], **kwargs)


def cmd_report(args: argparse.Namespace) -> int:
    from . import api, report

    runs = api.load_runs(args.output_dir)
    index = report.write_report(runs, args.output_dir, args.report_dir, runs.skipped)
    print(f"wrote {index} (open it in a browser; no network needed)", flush=True)
    if args.serve is not None:
        report.serve(index.parent, args.serve)
    return 0


def add_run_location_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `run` and `sweep` share: where data, results and caches live, and the device."""
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


STRICT_HELP = (
    "make the loader's warnings errors: a group key, option or answer the source names that no card or question knows, "
    "a file with no data rows, a duplicate row that contradicts its first copy (a task card's 'strict: true' does it "
    "for every run of the task)"
)


def build_parser() -> argparse.ArgumentParser:
    common = include_parser()
    parser = argparse.ArgumentParser(
        prog="gpo-bench",
        description="Few-shot group and personalized preference alignment: GPO side by side with baselines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    sub = CommonFlags(sub, common)

    sub.add_parser("list", help="list tasks, methods and encoders").set_defaults(func=cmd_list)

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
        "--shots",
        type=flag(SPEC_LIMITS["shots"], many=True),
        default=None,
        help="comma-separated K values: context items per test group (default: the task card's grid)",
    )
    run.add_argument(
        "--seeds",
        type=flag(SPEC_LIMITS["seeds"], many=True),
        default=(0, 1, 2),
        help="comma-separated seeds; each draws its own context items and model init (default 0,1,2); "
        "GPO trains them at once: one process per seed on the CPU, one stacked ensemble on CUDA",
    )
    run.add_argument(
        "--train-frac",
        type=flag(SPEC_LIMITS["train_frac"]),
        default=None,
        help="fraction of groups for meta-training (validation carved out of it); default: the card's",
    )
    run.add_argument(
        "--split-seed",
        type=flag(SPEC_LIMITS["split_seed"]),
        default=0,
        help="seed of the GPO paper's group split (np.random.seed; the paper uses 0)",
    )
    add_run_location_arguments(run)
    run.add_argument(
        "--limit-items",
        type=flag(SPEC_LIMITS["limit_items"]),
        default=None,
        help="keep only the first N items (quick runs; groups left with fewer than 2 are dropped and counted)",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a method card setting, e.g. --set max_steps=2000 (repeatable)",
    )
    run.add_argument("--force", action="store_true", help="run again even if this spec already finished")
    run.add_argument("--strict", action="store_true", help=STRICT_HELP)
    run.add_argument("--resume", action="store_true", help="continue an interrupted training from its checkpoint")
    run.set_defaults(func=cmd_run)

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
        type=str_list,
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
        "--shots",
        type=flag(SPEC_LIMITS["shots"], many=True),
        default=None,
        help="comma-separated K values, all evaluated inside each run (default: each task card's grid)",
    )
    sweep.add_argument(
        "--seeds",
        type=flag(SPEC_LIMITS["seeds"], many=True),
        default=None,
        help="comma-separated seeds, one run each, except as --seeds-together says (default 0,1,2)",
    )
    sweep.add_argument(
        "--split-seed", type=flag(SPEC_LIMITS["split_seed"]), default=None, help="seed of the group split (default 0)"
    )
    sweep.add_argument(
        "--seeds-together",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a method that trains several seeds at once (gpo: one batched ensemble on CUDA, one process per "
        "seed on the CPU) gets one run for all --seeds (default); --no-seeds-together: one run per seed",
    )
    sweep.add_argument(
        "--limit-items",
        type=flag(SPEC_LIMITS["limit_items"]),
        default=None,
        help="keep only the first N items (quick sweeps; groups left with fewer than 2 are dropped and counted)",
    )
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[METHOD.]KEY=VALUE",
        help="override a card setting for every method that has it (max_steps=1000) or for one method "
        "(gpo.max_steps=1000); repeatable",
    )
    add_run_location_arguments(sweep)
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
    sweep.add_argument("--force", action="store_true", help="run every run again, even finished ones")
    sweep.add_argument("--strict", action="store_true", help=STRICT_HELP)
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    sweep.set_defaults(func=cmd_sweep)

    fetch = sub.add_parser(
        "fetch",
        help="download tasks' data from the Hugging Face Hub into a folder, in the layout --data-dir reads "
        "(for machines without the Hub)",
    )
    fetch.add_argument("--task", type=str_list, required=True, help="comma-separated task card names")
    fetch.add_argument("--data-dir", type=Path, required=True, help="folder to write into (created if needed)")
    fetch.set_defaults(func=cmd_fetch)

    board = sub.add_parser(
        "leaderboard", help="write OUTPUT/leaderboard.{md,csv,html} from the run folders OUTPUT/runs/*/result.json"
    )
    board.add_argument(
        "--output-dir", type=Path, default=Path("results"), help="folder holding runs/ (default results)"
    )
    board.add_argument("--task", type=str_list, default=None, help="only these tasks (comma-separated)")
    board.add_argument(
        "--encoder", default=None, help="only runs with this encoder (and methods that use none), e.g. minilm"
    )
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
        "column's strongest simple baseline (group-mix, group-knn, population, head, knn, uniform)",
    )
    board.set_defaults(func=cmd_leaderboard)

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
    compare.add_argument("--encoder", default=None, help="only runs with this encoder (and methods that use none)")
    compare.add_argument(
        "--output-dir", type=Path, default=Path("results"), help="folder holding runs/ (default results)"
    )
    compare.set_defaults(func=cmd_compare)

    report = sub.add_parser(
        "report", help="a static web report of the run folders: boards, plots, runs and their predictions"
    )
    report.add_argument(
        "--output-dir", type=Path, default=Path("results"), help="folder holding runs/ (default results)"
    )
    report.add_argument(
        "--report-dir", type=Path, default=None, help="where the site is written (default OUTPUT/report)"
    )
    report.add_argument(
        "--serve", type=int, default=None, metavar="PORT", help="then serve it on http://127.0.0.1:PORT/ (0: any port)"
    )
    report.set_defaults(func=cmd_report)

    plot = sub.subparsers.add_parser("plot", help="plots from the run folders, PNG and SVG under OUTPUT/plots/")
    kinds = CommonFlags(plot.add_subparsers(dest="kind", required=True), common)
    shots = kinds.add_parser("shots", help="headline metric against K per method, CI bands, one panel per task")
    shots.add_argument(
        "--task", type=str_list, default=None, help="tasks, one panel each (comma-separated; default: all run)"
    )
    groups = kinds.add_parser("groups", help="per-group values of every method on one task, with CI bars")
    groups.add_argument("--task", required=True, help="the task")
    groups.add_argument(
        "--shots",
        type=flag(SPEC_LIMITS["shots"]),
        default=None,
        help="K shown (default: 20 where run, else the largest K)",
    )
    for kind in (shots, groups):
        kind.add_argument(
            "--output-dir", type=Path, default=Path("results"), help="folder holding runs/ (default results)"
        )
        kind.add_argument(
            "--train-frac",
            type=flag(SPEC_LIMITS["train_frac"]),
            default=None,
            help="meta-train fraction shown (default: the task card's where run, else the smallest run)",
        )
        kind.add_argument(
            "--encoder", default=None, help="only runs with this encoder (and methods that use none), e.g. minilm"
        )
        kind.add_argument("--methods", type=str_list, default=None, help="only these methods (comma-separated)")
        kind.set_defaults(func=cmd_plot)
    for command in (run, sweep, board, shots, groups):  # also accepted after the command; SUPPRESS keeps the first
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


# A user's mistake or the machine's state (bad data, a card, a name, a file or folder that cannot be read or
# written, a locked cache): one line and exit code 2. Anything else is a bug: one line, exit 1, --debug for more.
EXPECTED_ERRORS = (DataError, CardError, PluginError, UnknownNameError, OSError, sqlite3.Error, RuntimeError)


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


if __name__ == "__main__":
    sys.exit(main())
