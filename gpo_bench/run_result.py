"""The content of a run's `result.json` around its predictions: the headline metric of a task, one K's metric
cell from its (seed, group, role, score) records, and the record itself with where and how it was computed
(spec, cards, split, data, fit and predict reports, timings, device, threads, versions, git state)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from .cards import TaskCard
from .data import TaskData
from .metrics import summarize
from .protocol import Split
from .run_folder import PACKAGE_DIR
from .stats import CI_METHOD

SCHEMA_VERSION = 1
CI_SEED = 0


def headline(task_card: TaskCard) -> str:
    """The metric a task reports first: alignment; for pairwise preferences the mean over users of
    their accuracy, or the pooled accuracy where the protocol (PersonalRewardBench) reports that."""
    if task_card.metric == "alignment":
        return "alignment"
    return "accuracy" if task_card.protocol == "personal_reward_bench" else "user_accuracy"


def cell_metrics(metric: str, records: list[tuple[int, str, str, float]]) -> dict:
    """(seed, group, role, score) records of one K → the metrics cell of result.json."""
    if metric == "alignment":
        return {"alignment": summarize([(s, g, v) for s, g, _, v in records], CI_SEED).as_dict()}

    def accuracy_block(subset: list) -> dict:
        summary = summarize([(s, g, v) for s, g, _, v in subset], CI_SEED).as_dict()
        return {"user_accuracy": summary, "accuracy": {"mean": summary["pooled"], "ci": summary["pooled_ci"]}}

    cell = accuracy_block(records)
    for role in ("seen", "unseen"):
        subset = [r for r in records if r[2] == role]
        if subset:
            cell[role] = accuracy_block(subset)
    return cell


def git_state() -> dict:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if commit is None else bool(dirty)}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("gpo-bench", "numpy", "scipy", "torch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def result_record(
    *,
    run_id: str,
    spec: dict,
    cards: dict,
    task_card: TaskCard,
    metrics: dict,
    split: Split,
    task: TaskData,
    data_dir: Path | None,
    warnings: list[str],
    fits: dict,
    reports: dict,
    encoder_stats: dict | None,
    timings: dict,
    device: str,
) -> dict:
    """result.json but for its `predictions` digest, which the runner adds once predictions.jsonl is written."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "spec": spec,
        "cards": cards,
        "metric": headline(task_card),
        "metrics": metrics,
        "ci": {"method": CI_METHOD, "seed": CI_SEED},
        "split": split.as_dict(),
        "data": {
            "fingerprint": task.fingerprint(),
            "source": str(data_dir) if data_dir else "huggingface-hub",
            "groups": len(task.groups),
            "items": len(task.items),
            "drops": task.drops,
            "drop_examples": task.drop_examples,
            "notes": task.notes,
            "warnings": warnings,
            "sources": task.sources,
        },
        "fit": fits,
        "predict": reports,
        "encoder": encoder_stats,
        "timings": timings,
        "device": device,
        "threads": {"torch": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "versions": versions(),
        "git": git_state(),
    }
