"""gpo-bench: few-shot group and personalized preference alignment, GPO side by side with baselines.

The public Python API (`gpo_bench.api`, documented in docs/python-api.md) is importable from here; its names are
loaded on first use, so that `import gpo_bench` (and the command line) stays quick."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "Board",
    "Comparison",
    "Pairing",
    "RunRecord",
    "Runs",
    "SweepResult",
    "compare",
    "leaderboard",
    "list_methods",
    "list_tasks",
    "load_runs",
    "read_run",
    "run",
    "run_sweep",
]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'gpo_bench' has no attribute {name!r}")
