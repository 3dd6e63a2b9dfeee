"""One function per `gpo-bench` subcommand: each checks what it can without data or models, calls the public
API (`gpo_bench.api`) and prints what it returns.

Heavy modules (torch, the models, the loaders and their data) are imported inside the commands, after the
checks that need none of them, so that a mistyped name or flag is reported at once."""

from __future__ import annotations

import argparse
import sys

from ..cards import apply_overrides, load_method_card, load_task_card, parse_overrides
from ..discovery import card_origin, discover, method_names, task_names
from ..encoders import ALIASES, MODEL_ENCODER, EncoderSpec
from ..errors import DataError
from .run_table import print_table


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


def check_names(tasks: tuple[str, ...], methods: tuple[str, ...], encoders: tuple[str, ...]) -> None:
    """Unknown task, method or encoder names fail here, before torch or any data loads."""
    for name in tasks:
        load_task_card(name)
    for name in methods:
        load_method_card(name)
    for encoder in encoders:
        if encoder.partition(",")[0] != MODEL_ENCODER:  # the run's --model: checked when the spec is made
            EncoderSpec.parse(encoder)


def cmd_run(args: argparse.Namespace) -> int:
    check_names((args.task,), (args.method,), (args.encoder,))
    method_card = load_method_card(args.method)
    settings = parse_overrides(args.set)
    apply_overrides(method_card.settings, settings, method_card)  # names; the ranges are the flags' types
    from ..loaders import load_task
    from ..loaders.common import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    load_task(load_task_card(args.task), data_dir)  # a missing source is reported before torch loads
    from .. import api

    record = api.run(
        args.task,
        args.method,
        data_dir=data_dir,
        shots=args.shots,
        seeds=args.seeds,
        train_frac=args.train_frac,
        settings=settings,
        output_dir=args.output_dir,
        encoder=args.encoder,
        model=args.model,
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
    settings = parse_overrides(args.set)
    from .. import api

    result = api.run_sweep(
        args.tasks,
        args.methods,
        file=args.file,
        encoders=args.encoders,
        model=args.model,
        train_fracs=args.train_fracs,
        shots=args.shots,
        seeds=args.seeds,
        split_seed=args.split_seed,
        seeds_together=args.seeds_together,
        limit_items=args.limit_items,
        settings=settings,
        data_dir=args.data_dir,
        output_dir=args.output_dir,
        device=args.device,
        force=args.force,
        cache_dir=args.cache_dir,
        strict=args.strict,
        jobs=args.jobs,
        backend=args.backend,
        ray_address=args.ray_address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        dry_run=args.dry_run,
    )
    print(result)
    return 1 if result.failed or result.stopped else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    cards = [load_task_card(name) for name in args.task]
    from ..loaders.hub import fetch

    for card in cards:
        for path in fetch(card, args.data_dir):
            print(f"wrote {path}")
    print(f"now pass --data-dir {args.data_dir} (or set GPO_BENCH_DATA={args.data_dir})")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .. import api

    runs = api.load_runs(args.output_dir, task=args.task, encoder=args.encoder)
    if not runs:
        print(f"gpo-bench: no finished runs under {args.output_dir / 'runs'} match", file=sys.stderr)
        return 1
    board = api.leaderboard(runs, args.shots, args.versus)
    for path in board.write(args.board_dir or args.output_dir):
        print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .. import api

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
    from .. import api, plots

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


def cmd_report(args: argparse.Namespace) -> int:
    from .. import api, report

    runs = api.load_runs(args.output_dir)
    index = report.write_report(runs, args.output_dir, args.report_dir, runs.skipped)
    print(f"wrote {index} (open it in a browser; no network needed)", flush=True)
    if args.serve is not None:
        report.serve(index.parent, args.serve)
    return 0
