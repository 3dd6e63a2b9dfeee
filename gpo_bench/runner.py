"""One run: a (task, method, encoder, split, shots, seeds) spec → `runs/<run-id>/` holding
`predictions.jsonl`, `items.jsonl` (the predicted items' prompts and candidates, for the web report) and
`result.json`, all written atomically under the run folder's lock. A run is finished when its `result.json`
parses, follows `result.schema.json`, and names the predictions.jsonl beside it by line count and sha256;
running the same spec again reuses a finished run on the same data (the same loaded data, read from raw files of
the same sha256) unless forced, without taking the lock or writing anything, and runs anything else again,
saying why."""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .bounds import coverage_block, reference_block
from .cards import TaskCard, apply_overrides, load_method_card, load_task_card
from .data import TaskData
from .discovery import discover
from .encoders import DEFAULT_ENCODER, Encoder, EncoderSpec
from .errors import DataError
from .features import build_features
from .files import file_digest, folder_lock, remove_temp_files, write_atomic
from .loaders import load_task
from .loaders.common import strict_error
from .methods.base import Setup
from .metrics import item_score, majority_distributions, summarize
from .models import resolve_device
from .protocol import Episode, derived_rng, draw_episode, make_split, split_warning, visible_task
from .registry import METHODS
from .stats import CI_METHOD

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CI_SEED = 0
PACKAGE_DIR = Path(__file__).resolve().parent
RESULT_FILE = "result.json"
PREDICTIONS_FILE = "predictions.jsonl"
ERROR_FILE = "error.json"


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
        discover()  # the card may name a plugin's method
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
    """Keep the first `limit` items (by id) and each group's targets on them; a group left with fewer than
    2 of them (a sparse source: a country that answered few questions) is dropped and counted."""
    if limit is None:
        return task
    keep = set(sorted(task.items)[:limit])
    allowed = {g: [i for i in group.targets if i in keep] for g, group in task.groups.items()}
    small = [g for g, items in allowed.items() if len(items) < 2]
    limited = task.view({g: items for g, items in allowed.items() if len(items) >= 2})
    limited.items = {i: task.items[i] for i in keep}
    if small:
        limited.drops = {**task.drops, f"groups with fewer than 2 items among the first {limit}": len(small)}
        limited.notes = [*task.notes, f"--limit-items {limit} left fewer than 2 items to: {', '.join(small)}"]
        log.warning("--limit-items %d leaves fewer than 2 items to %d group(s), dropped: %s", limit, len(small), small)
    if not limited.groups:
        raise DataError(f"task {task.name!r}: --limit-items {limit} leaves no group with 2 or more items; raise it")
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


@functools.cache
def result_validator():
    import jsonschema

    schema = json.loads((PACKAGE_DIR / "result.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def data_identity(task: TaskData) -> dict:
    """What a finished run must have been computed on: the loaded data's fingerprint and the sha256 of every raw
    file the loader read (data that load the same from changed files still run again)."""
    return {"fingerprint": task.fingerprint(), "sources": task.sources}


def changed_sources(recorded: dict | None, now: dict) -> str | None:
    """Why the raw files read now differ from those a run recorded, or None."""
    if recorded is None:
        return "it records no digest of the files it read (made by an older gpo-bench)"
    changed = sorted(name for name in set(recorded) | set(now) if recorded.get(name) != now.get(name))
    if not changed:
        return None
    shown = ", ".join(
        f"{n} ({'not read then' if n not in recorded else 'not read now' if n not in now else 'changed'})"
        for n in changed[:3]
    )
    return f"its source files differ: {shown}" + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")


def run_state(run_dir: Path, identity: dict | None) -> tuple[str, dict | None, str]:
    """(state, result, why) of a run folder. `finished`: result.json parses, follows the schema, belongs to
    this folder and names the predictions.jsonl beside it by line count and sha256, on data of this
    `identity` (`data_identity`; None: not checked). `other-data`: the same but computed on other data or other
    source files. `new`: no result.json. `broken`: anything else; `why` says what. Reads only."""
    path = run_dir / RESULT_FILE
    if not path.exists():
        return "new", None, f"{path} does not exist"
    try:
        result = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return "broken", None, f"{path} cannot be read ({' '.join(str(error).split())})"
    problem = next(iter(result_validator().iter_errors(result)), None)
    if problem is not None:
        where = "/".join(map(str, problem.absolute_path)) or "the top level"
        return "broken", None, f"{path} does not follow result.schema.json at {where}: {problem.message[:200]}"
    if result["run_id"] != run_dir.name:
        return "broken", None, f"{path} belongs to run {result['run_id']}, not {run_dir.name}"
    recorded = result["predictions"]
    predictions = run_dir / recorded["file"]
    if not predictions.exists():
        return "broken", None, f"{predictions} is missing"
    actual = file_digest(predictions)
    if actual != recorded:
        return (
            "broken",
            None,
            (
                f"{predictions} has {actual['lines']} lines (sha256 {actual['sha256'][:12]}…), not the "
                f"{recorded['lines']} lines (sha256 {recorded['sha256'][:12]}…) result.json was computed with"
            ),
        )
    if identity is None:
        return "finished", result, "finished"
    if result["data"]["fingerprint"] != identity["fingerprint"]:
        return (
            "other-data",
            result,
            f"{path} was computed on other data (fingerprint {result['data']['fingerprint']}, "
            f"now {identity['fingerprint']})",
        )
    changed = changed_sources(result["data"].get("sources"), identity["sources"])
    if changed:
        return "other-data", result, f"{path} was computed on other input: {changed}"
    return "finished", result, "finished"


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


def break_tie(pred: np.ndarray, episode: Episode, item_id: str) -> np.ndarray | None:
    """On accuracy tasks an exact tie at the top counts wrong; every method's tie is broken here, in one
    place, by a coin flip seeded from (group, item, K, seed) among the tied candidates (so a tie scores at
    chance, not zero). None where there is no tie."""
    pred = np.asarray(pred, float)
    top = np.flatnonzero(pred == pred.max())
    if len(top) < 2:
        return None
    broken = pred.copy()
    broken[derived_rng("tie-break", episode.group, item_id, episode.shots, episode.seed).choice(top)] += 1e-6
    return broken / broken.sum()


def prediction_rows(
    task: TaskData, method: str, episode: Episode, preds: list, role: str, ties: Counter | None = None
) -> list[dict]:
    """One predictions.jsonl row per target item, with its score (checked to be a distribution); on accuracy
    tasks ties at the top are broken (`break_tie`) and counted in `ties`."""
    if len(preds) != len(episode.targets):
        raise RuntimeError(f"{method} returned {len(preds)} predictions for {len(episode.targets)} targets")
    rows = []
    for item_id, pred in zip(episode.targets, preds, strict=True):
        if task.metric == "accuracy" and (broken := break_tie(pred, episode, item_id)) is not None:
            pred = broken
            if ties is not None:
                ties[episode.shots] += 1
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
    strict: bool = False,
) -> dict:
    """Run a spec (or reuse its finished run) and return its result.json content. A finished run is reused
    without the lock (nothing is written; a read-only folder will do). Otherwise the run folder's lock is held
    throughout, so a second process on the same spec waits and then reuses this one's result. `strict`: the
    loader's warnings are an error."""
    resolved = spec.resolved()
    rid = run_id(resolved)
    run_dir = output_dir / "runs" / rid
    timings: dict[str, float] = {}
    started = time.perf_counter()
    task_card = load_task_card(spec.task)
    task = limit_items(load_task(task_card, data_dir), resolved["limit_items"])
    if strict and task.warnings:
        raise strict_error(task.warnings, "--strict")
    timings["load_s"] = time.perf_counter() - started
    identity = data_identity(task)
    if not force:
        state, previous, _ = run_state(run_dir, identity)
        if state == "finished":
            log.info("reusing finished run %s (pass --force to run it again)", run_dir)
            return {**previous, "reused": True}
    with folder_lock(run_dir):
        state, previous, why = run_state(run_dir, identity)
        if state == "finished" and not force:
            log.info("reusing finished run %s, finished by another process meanwhile", run_dir)
            return {**previous, "reused": True}
        if state == "other-data":
            resume = False  # a checkpoint in the folder was trained on the other data too
        if state != "new" and not force:
            log.warning("%s; running it again", why)
        remove_temp_files(run_dir)
        return _execute(spec, resolved, task, task_card, data_dir, run_dir, device, resume, cache_dir, timings, started)


def _execute(
    spec: RunSpec,
    resolved: dict,
    task: TaskData,
    task_card: TaskCard,
    data_dir: Path | None,
    run_dir: Path,
    device: str,
    resume: bool,
    cache_dir: Path | None,
    timings: dict,
    started: float,
) -> dict:
    rid = run_dir.name
    device = resolve_device(device)
    try:
        split = make_split(
            task,
            task_card.protocol,
            task_card.protocol_settings,
            resolved["train_frac"],
            resolved["val_frac"],
            resolved["split_seed"],
        )
    except DataError as error:
        if not task.warnings:
            raise
        raise DataError(f"{error} (loading warned: {'; '.join(task.warnings[:3])})") from None
    warnings = list(task.warnings)
    if (problem := split_warning(split, resolved["train_frac"])) is not None:
        log.warning("%s", problem)
        warnings.append(problem)
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
    fallbacks: Counter[tuple[int, str]] = Counter()
    known_ceilings: dict[tuple[str, str], float] = {}
    ties: Counter[int] = Counter()
    timings["fit_s"] = timings["predict_s"] = 0.0
    progress = tqdm(total=len(resolved["seeds"]) * len(resolved["shots"]), desc=rid, unit="cell")
    # numpy/scipy work here is many tiny solves (L-BFGS per episode): OpenBLAS threads only add contention,
    # up to 50x slower on a busy machine (torch keeps its own threads)
    with threadpool_limits(limits={"openblas": 1}):
        setups = [
            Setup(visible, split, seed, device, run_dir / f"seed{seed}", features, resume, cache_dir)
            for seed in resolved["seeds"]
        ]
        fitted = None
        if len(setups) > 1 and hasattr(implementation, "fit_seeds"):  # trains all seeds at once
            tick = time.perf_counter()
            fitted = implementation.fit_seeds(resolved["settings"], setups)
            timings["fit_s"] += time.perf_counter() - tick
        for n, (seed, setup) in enumerate(zip(resolved["seeds"], setups, strict=True)):
            if fitted:
                method, fits[str(seed)] = fitted[n]
            else:
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
                    role = split.role(episode.group)
                    for row in prediction_rows(task, resolved["method"], episode, preds, role, ties):
                        scores[shots].append((seed, episode.group, row["split"], row["score"]))
                        rows.append(row)
                progress.update()
            reports[str(seed)] = method.report()
            fallbacks.update(method.fallbacks)
    progress.close()

    metrics = {}
    majority = majority_distributions(visible) if task.metric == "accuracy" else None
    answered = {item for group in visible.groups.values() for item in group.targets}  # by some seen group
    for shots, cell in scores.items():
        if not cell:
            raise DataError(f"no test predictions for K={shots}")
        capped = {g: n for g, n in used_shots[str(shots)].items() if n < shots}
        summary = cell_metrics(task.metric, cell)
        score = summary[headline(task_card)]["mean"]
        fell_back = {kind: n for (k, kind), n in sorted(fallbacks.items()) if k == shots}
        cell_rows = [r for r in rows if r["shots"] == shots]
        metrics[str(shots)] = {
            **summary,
            "capped_shots": capped,
            "reference": reference_block(task, cell_rows, score, known_ceilings, majority),
            "coverage": coverage_block([(s, g, v) for s, g, _, v in cell], [r["item"] in answered for r in cell_rows]),
            "fallbacks": {
                "predictions": len(cell),
                **fell_back,
                "share": sum(fell_back.values()) / len(cell),
                "ties_broken": ties[shots],
                "ties_share": ties[shots] / len(cell),
            },
        }
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
    write_atomic(run_dir / PREDICTIONS_FILE, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
    result["predictions"] = file_digest(run_dir / PREDICTIONS_FILE)
    try:
        text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise RuntimeError(f"{rid}: the result holds NaN or infinity, which JSON cannot hold") from None
    predicted = [task.items[i] for i in sorted({r["item"] for r in rows})]
    write_atomic(
        run_dir / "items.jsonl",
        "".join(
            json.dumps({"item": i.id, "prompt": i.prompt, "candidates": list(i.candidates)}) + "\n" for i in predicted
        ),
    )
    write_atomic(run_dir / RESULT_FILE, text)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # an earlier failure of this run is no longer true
    log.info("wrote %s", run_dir)
    return result
