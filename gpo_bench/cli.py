"""The `gpo-bench` command line: `list`, `run`, `sweep`, `fetch`, `leaderboard` and `plot`.

Heavy modules (torch, the models, the loaders and their data) are imported inside the commands, after
the checks that need none of them, so that a mistyped name or flag is reported at once."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .cards import (
    CardError,
    apply_overrides,
    load_method_card,
    load_task_card,
    method_names,
    parse_overrides,
    task_names,
)
from .data import DataError
from .encoders import ALIASES, DEFAULT_ENCODER, EncoderSpec
from .registry import UnknownNameError

log = logging.getLogger("gpo_bench")


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def str_list(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def default_threads() -> None:
    """OpenMP threads wait passively unless the user chose otherwise: spinning threads make torch's small
    matrix products many times slower on a machine whose cores are busy (set before torch loads)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cmd_list(args: argparse.Namespace) -> int:
    sections = {
        "tasks": [(name, load_task_card(name).description) for name in task_names()],
        "methods": [(name, load_method_card(name).description) for name in method_names()],
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


def print_table(result: dict) -> None:
    metric = result["metric"]
    spec = result["spec"]
    print(
        f"\n{spec['task']} / {spec['method']}  encoder={spec['encoder']}  train_frac={spec['train_frac']}  "
        f"seeds={spec['seeds']}  test groups={len(result['split']['test'])}"
    )
    subsets = [name for name in ("seen", "unseen") if any(name in c for c in result["metrics"].values())]
    print(f"{'K':>4}  {metric:>13}  {'95% CI':>17}" + "".join(f"  {name:>7}" for name in subsets) + f"  {'items':>7}")
    for shots, cell in sorted(result["metrics"].items(), key=lambda kv: int(kv[0])):
        s = cell[metric]
        extra = "".join(f"  {cell[name][metric]['mean']:7.4f}" if name in cell else f"  {'-':>7}" for name in subsets)
        items = cell.get("user_accuracy", s)["n_items"]
        print(f"{shots:>4}  {s['mean']:13.4f}  [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]{extra}  {items:7d}")
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
    apply_overrides(method_card.settings, parse_overrides(args.set), method_card)
    if args.train_frac is not None and not 0 < args.train_frac < 1:
        raise CardError(f"--train-frac {args.train_frac} must lie strictly between 0 and 1")


def cmd_run(args: argparse.Namespace) -> int:
    check_run(args)
    from .loaders import load_task
    from .loaders.common import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    load_task(load_task_card(args.task), data_dir)  # a missing source is reported before torch loads
    from .runner import RunSpec, execute, run_id

    spec = RunSpec(
        task=args.task,
        method=args.method,
        encoder=args.encoder,
        shots=args.shots,
        seeds=args.seeds,
        train_frac=args.train_frac,
        split_seed=args.split_seed,
        limit_items=args.limit_items,
        overrides=parse_overrides(args.set),
    )
    result = execute(spec, data_dir, args.output_dir, args.device, args.force, args.resume, args.cache_dir)
    result["run_folder"] = str(args.output_dir / "runs" / run_id(result["spec"]))
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
        "limit_items": args.limit_items,
        "set": args.set,
    }
    runs = plan(make_grid(args.file, flags))
    options = absolute(
        Options(resolve_data_dir(args.data_dir), args.output_dir, args.device, args.force, args.cache_dir)
    )
    if args.dry_run:
        print(describe(runs, args.output_dir))
        return 0
    report = sweep(runs, options, args.jobs, args.backend, args.ray_address, args.cpus_per_run, args.gpus_per_run)
    print(report.summary(args.output_dir))
    return 1 if report.failed else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    cards = [load_task_card(name) for name in args.task]
    from .loaders.common import fetch

    for card in cards:
        for path in fetch(card, args.data_dir):
            print(f"wrote {path}")
    print(f"now pass --data-dir {args.data_dir} (or set GPO_BENCH_DATA={args.data_dir})")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from . import leaderboard

    board = leaderboard.build(args.output_dir, args.task, args.encoder, args.shots)
    if not board.rows:
        print(f"gpo-bench: no finished runs under {args.output_dir / 'runs'} match", file=sys.stderr)
        return 1
    for path in leaderboard.write(board, args.output_dir):
        print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from . import plots

    if args.kind == "shots":
        paths = plots.plot_shots(args.output_dir, args.task, args.train_frac, args.encoder, args.methods)
    else:
        paths = plots.plot_groups(args.output_dir, args.task, args.shots, args.train_frac, args.encoder, args.methods)
    for path in paths:
        print(f"wrote {path}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpo-bench",
        description="Few-shot group and personalized preference alignment: GPO side by side with baselines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

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
        type=int_list,
        default=None,
        help="comma-separated K values: context items per test group (default: the task card's grid)",
    )
    run.add_argument(
        "--seeds",
        type=int_list,
        default=(0, 1, 2),
        help="comma-separated seeds; each draws its own context items and model init (default 0,1,2)",
    )
    run.add_argument(
        "--train-frac",
        type=float,
        default=None,
        help="fraction of groups for meta-training (validation carved out of it); default: the card's",
    )
    run.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the GPO paper's group split (np.random.seed; the paper uses 0)",
    )
    add_run_location_arguments(run)
    run.add_argument("--limit-items", type=int, default=None, help="keep only the first N items (quick runs)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a method card setting, e.g. --set max_steps=2000 (repeatable)",
    )
    run.add_argument("--force", action="store_true", help="run again even if this spec already finished")
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
        help="YAML sweep file with tasks, methods, encoders, train_fracs, shots, seeds, split_seed, limit_items, "
        "set (a mapping of overrides); flags given on the command line replace its fields",
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
        type=float_list,
        default=None,
        help="comma-separated meta-train fractions, e.g. 0.4,0.6,0.8 (default: each task card's)",
    )
    sweep.add_argument(
        "--shots",
        type=int_list,
        default=None,
        help="comma-separated K values, all evaluated inside each run (default: each task card's grid)",
    )
    sweep.add_argument(
        "--seeds", type=int_list, default=None, help="comma-separated seeds, one run each (default 0,1,2)"
    )
    sweep.add_argument("--split-seed", type=int, default=None, help="seed of the group split (default 0)")
    sweep.add_argument("--limit-items", type=int, default=None, help="keep only the first N items (quick sweeps)")
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[METHOD.]KEY=VALUE",
        help="override a card setting for every method that has it (max_steps=1000) or for one method "
        "(gpo.max_steps=1000); repeatable",
    )
    add_run_location_arguments(sweep)
    sweep.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process each (default 1)")
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
    sweep.add_argument("--cpus-per-run", type=float, default=1, help="CPUs each Ray task asks for (default 1)")
    sweep.add_argument(
        "--gpus-per-run",
        type=float,
        default=0,
        help="GPUs each Ray task asks for, e.g. 1, or 0.25 to share a GPU between four runs (default 0)",
    )
    sweep.add_argument("--force", action="store_true", help="run every run again, even finished ones")
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
        type=int,
        default=None,
        help="K shown in every column (default: 20 where a column has it, else its largest K)",
    )
    board.set_defaults(func=cmd_leaderboard)

    plot = sub.add_parser("plot", help="plots from the run folders, PNG and SVG under OUTPUT/plots/")
    kinds = plot.add_subparsers(dest="kind", required=True)
    shots = kinds.add_parser("shots", help="headline metric against K per method, CI bands, one panel per task")
    shots.add_argument(
        "--task", type=str_list, default=None, help="tasks, one panel each (comma-separated; default: all run)"
    )
    groups = kinds.add_parser("groups", help="per-group values of every method on one task, with CI bars")
    groups.add_argument("--task", required=True, help="the task")
    groups.add_argument("--shots", type=int, default=None, help="K shown (default: 20 where run, else the largest K)")
    for kind in (shots, groups):
        kind.add_argument(
            "--output-dir", type=Path, default=Path("results"), help="folder holding runs/ (default results)"
        )
        kind.add_argument(
            "--train-frac",
            type=float,
            default=None,
            help="meta-train fraction shown (default: the task card's where run, else the smallest run)",
        )
        kind.add_argument(
            "--encoder", default=None, help="only runs with this encoder (and methods that use none), e.g. minilm"
        )
        kind.add_argument("--methods", type=str_list, default=None, help="only these methods (comma-separated)")
        kind.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    default_threads()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except (DataError, CardError, UnknownNameError, RuntimeError) as error:
        print(f"gpo-bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
