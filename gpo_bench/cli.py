"""The `gpo-bench` command line: `list` and `run`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .cards import CardError, load_method_card, load_task_card, method_names, parse_overrides, task_names
from .data import DataError
from .encoders import ALIASES, DEFAULT_ENCODER
from .loaders.common import DATA_ENV, resolve_data_dir
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


def cmd_list(args: argparse.Namespace) -> int:
    print("tasks:")
    for name in task_names():
        print(f"  {name:<22} {load_task_card(name).description}")
    print("methods:")
    for name in method_names():
        print(f"  {name:<22} {load_method_card(name).description}")
    print("encoders:")
    for name, description in ALIASES.items():
        print(f"  {name:<22} {description}")
    print(
        f"  {'<hub id or path>':<22} any Hugging Face model; add ,pooling=mean|last,template=alpaca|llama2|chat|raw,"
        "dtype=float32|bfloat16|float16,max_length=N"
    )
    return 0


def print_table(result: dict) -> None:
    metric = result["metric"]
    spec = result["spec"]
    print(
        f"\n{spec['task']} / {spec['method']}  encoder={spec['encoder']}  train_frac={spec['train_frac']}  "
        f"seeds={spec['seeds']}  test groups={len(result['split']['test'])}"
    )
    print(f"{'K':>4}  {metric:>9}  {'95% CI':>17}  {'pooled':>7}  {'items':>7}")
    for shots, cell in sorted(result["metrics"].items(), key=lambda kv: int(kv[0])):
        s = cell[metric]
        print(
            f"{shots:>4}  {s['mean']:9.4f}  [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]  {s['pooled']:7.4f}  {s['n_items']:7d}"
        )
    print(f"run folder: {result['run_folder']}")


def cmd_run(args: argparse.Namespace) -> int:
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
    data_dir = resolve_data_dir(args.data_dir)
    result = execute(spec, data_dir, args.output_dir, args.device, args.force, args.resume, args.cache_dir)
    result["run_folder"] = str(args.output_dir / "runs" / run_id(result["spec"]))
    print_table(result)
    return 0


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
        help="text encoder for methods that use features: minilm (default, offline), bow, a Hub id or a "
        "local path, optionally followed by ,pooling=mean|last,template=alpaca|llama2|chat|raw,dtype=…",
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
    run.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"folder with the raw data (e.g. ../shared/data); default ${DATA_ENV}, else the Hub",
    )
    run.add_argument(
        "--output-dir", type=Path, default=Path("results"), help="where runs/ is written (default results)"
    )
    run.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="embedding cache folder (default $GPO_BENCH_CACHE or ~/.cache/gpo-bench)",
    )
    run.add_argument("--limit-items", type=int, default=None, help="keep only the first N items (quick runs)")
    run.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where models run (default auto)"
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
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
