"""One run: a (task, method, encoder, split, shots, seeds) spec → `runs/<run-id>/` holding
`predictions.jsonl` and `result.json`, both written atomically; a run is complete when its
`result.json` exists, and running the same spec again reuses it unless forced."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import methods  # noqa: F401  (registers the methods)
from .cards import TaskCard, apply_overrides, load_method_card, load_task_card
from .data import DataError, TaskData
from .encoders import DEFAULT_ENCODER, Encoder, EncoderSpec, resolve_device
from .features import build_features
from .loaders import load_task
from .methods.base import Setup
from .metrics import CI_METHOD, item_score, summarize
from .protocol import Episode, draw_episode, make_split, visible_task
from .registry import METHODS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CI_SEED = 0
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class RunSpec:
    """Everything that changes a run's numbers; its hash names the run folder."""

    task: str
    method: str
    encoder: str | None = DEFAULT_ENCODER
    shots: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    train_frac: float | None = None
    split_seed: int = 0
    limit_items: int | None = None
    overrides: dict = field(default_factory=dict)

    def resolved(self) -> dict:
        """The spec with card defaults filled in and card versions attached."""
        task_card = load_task_card(self.task)
        method_card = load_method_card(self.method)
        implementation = METHODS.get(method_card.implementation)
        encoder = EncoderSpec.parse(self.encoder or DEFAULT_ENCODER).label() if implementation.needs_features else None
        return {
            "task": self.task,
            "task_version": task_card.version,
            "task_card_sha": file_sha(task_card.path),
            "method_card_sha": file_sha(method_card.path),
            "method": self.method,
            "method_version": method_card.version,
            "implementation": method_card.implementation,
            "settings": apply_overrides(method_card.settings, self.overrides, method_card),
            "encoder": encoder,
            "shots": sorted(set(self.shots if self.shots is not None else task_card.shots)),
            "seeds": sorted(set(self.seeds)),
            "train_frac": float(self.train_frac if self.train_frac is not None else task_card.train_frac),
            "val_frac": float(task_card.val_frac),
            "split_seed": self.split_seed,
            "limit_items": self.limit_items,
        }


def file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def run_id(resolved: dict) -> str:
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:12]
    return f"{resolved['task']}--{resolved['method']}--{digest}"


def limit_items(task: TaskData, limit: int | None) -> TaskData:
    """Keep the first `limit` items (by id) and each group's targets on them."""
    if limit is None:
        return task
    keep = set(sorted(task.items)[:limit])
    allowed = {g: [i for i in group.targets if i in keep] for g, group in task.groups.items()}
    limited = task.view({g: items for g, items in allowed.items() if items})
    limited.items = {i: task.items[i] for i in keep}
    limited.validate()
    return limited


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


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def prediction_rows(task: TaskData, method: str, episode: Episode, preds: list, role: str) -> list[dict]:
    """One predictions.jsonl row per target item, with its score (checked to be a distribution)."""
    if len(preds) != len(episode.targets):
        raise RuntimeError(f"{method} returned {len(preds)} predictions for {len(episode.targets)} targets")
    rows = []
    for item_id, pred in zip(episode.targets, preds, strict=True):
        item = task.items[item_id]
        target = task.groups[episode.group].targets[item_id]
        where = (
            f"{method} prediction for group {episode.group!r} item {item_id!r} (K={episode.shots}, seed={episode.seed})"
        )
        rows.append(
            {
                "group": episode.group,
                "item": item_id,
                "shots": episode.shots,
                "seed": episode.seed,
                "split": role,
                "context_size": len(episode.context),
                "pred": [float(p) for p in pred],
                "target": [float(t) for t in target],
                "ordinal": list(item.ordinal) if item.ordinal else None,
                "score": item_score(task.metric, pred, target, item.ordinal, where),
            }
        )
    return rows


def execute(
    spec: RunSpec,
    data_dir: Path | None,
    output_dir: Path,
    device: str = "auto",
    force: bool = False,
    resume: bool = False,
    cache_dir: Path | None = None,
) -> dict:
    """Run a spec (or reuse its finished run) and return its result.json content."""
    resolved = spec.resolved()
    rid = run_id(resolved)
    run_dir = output_dir / "runs" / rid
    result_path = run_dir / "result.json"
    timings: dict[str, float] = {}
    started = time.perf_counter()
    task_card = load_task_card(spec.task)
    task = limit_items(load_task(task_card, data_dir), resolved["limit_items"])
    timings["load_s"] = time.perf_counter() - started
    if result_path.exists() and not force:
        previous = json.loads(result_path.read_text())
        if previous.get("data", {}).get("fingerprint") == task.fingerprint():
            log.info("reusing finished run %s (pass --force to run it again)", run_dir)
            return previous
        log.warning("%s was computed on different data; running it again", run_dir)
    device = resolve_device(device)
    split = make_split(
        task,
        task_card.protocol,
        task_card.protocol_settings,
        resolved["train_frac"],
        resolved["val_frac"],
        resolved["split_seed"],
    )
    visible = visible_task(task, split)
    implementation = METHODS.get(resolved["implementation"])

    features, encoder_stats = None, None
    if implementation.needs_features:
        tick = time.perf_counter()
        encoder = Encoder(EncoderSpec.parse(resolved["encoder"]), device=device, cache_dir=cache_dir)
        features = build_features(task, encoder, task_card)
        encoder_stats = dict(encoder.stats, dim=features.dim)
        timings["encode_s"] = time.perf_counter() - tick

    rows, scores, fits, reports, used_shots = [], {k: [] for k in resolved["shots"]}, {}, {}, {}
    timings["fit_s"] = timings["predict_s"] = 0.0
    progress = tqdm(total=len(resolved["seeds"]) * len(resolved["shots"]), desc=rid, unit="cell")
    for seed in resolved["seeds"]:
        setup = Setup(visible, split, seed, device, run_dir / f"seed{seed}", features, resume, cache_dir)
        method = implementation(resolved["settings"], setup)
        tick = time.perf_counter()
        fits[str(seed)] = method.fit()
        timings["fit_s"] += time.perf_counter() - tick
        for shots in resolved["shots"]:
            episodes = [draw_episode(task, group, shots, seed, split) for group in split.test]
            tick = time.perf_counter()
            predictions = method.predict(episodes)
            timings["predict_s"] += time.perf_counter() - tick
            for episode, preds in zip(episodes, predictions, strict=True):
                used_shots.setdefault(str(shots), {})[episode.group] = len(episode.context)
                for row in prediction_rows(task, resolved["method"], episode, preds, split.role(episode.group)):
                    scores[shots].append((seed, episode.group, row["split"], row.pop("score")))
                    rows.append(row)
            progress.update()
        reports[str(seed)] = method.report()
    progress.close()

    metrics = {}
    for shots, cell in scores.items():
        if not cell:
            raise DataError(f"no test predictions for K={shots}")
        capped = {g: n for g, n in used_shots[str(shots)].items() if n < shots}
        metrics[str(shots)] = {**cell_metrics(task.metric, cell), "capped_shots": capped}
    timings["total_s"] = time.perf_counter() - started
    result = {
        "schema_version": SCHEMA_VERSION,
        "run_id": rid,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "spec": resolved,
        "cards": {"task": task_card.path, "method": load_method_card(spec.method).path},
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
            "notes": task.notes,
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
    write_atomic(run_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_atomic(result_path, json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", run_dir)
    return result
