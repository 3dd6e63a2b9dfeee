"""One run: a (task, method, encoder, split, shots, seeds) spec → `runs/<run-id>/` holding
`predictions.jsonl`, `items.jsonl` (the predicted items' prompts and candidates, for the web report) and
`result.json`, all written atomically under the run folder's lock. A run is finished when its `result.json`
parses, follows `result.schema.json`, and names the predictions.jsonl beside it by line count and sha256;
running the same spec again reuses a finished run on the same data (the same loaded data, read from raw files of
the same sha256) unless forced, without taking the lock or writing anything, and runs anything else again,
saying why (`run_folder`: the spec, the run id and the run state).

`execute` loads the task and decides between reusing and running; `run_steps` runs the steps in order: split,
encode, fit and predict (interleaved per seed), score, write (the record around the metrics: `run_result`)."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .bounds import coverage_block, reference_block
from .cards import TaskCard, load_method_card, load_task_card
from .data import TaskData
from .encoders import Encoder, EncoderSpec
from .errors import DataError
from .features import Features, build_features
from .files import file_digest, folder_lock, remove_temp_files, write_atomic
from .loaders import load_task
from .loaders.common import strict_error
from .methods.base import Method, Setup
from .metrics import item_score, majority_distributions
from .models import resolve_device
from .protocol import Episode, Split, derived_rng, draw_episode, make_split, split_warning, visible_task
from .records import ERROR_FILE, PREDICTIONS_FILE, RESULT_FILE
from .registry import METHODS
from .run_folder import RunSpec, data_identity, run_id, run_state
from .run_result import cell_metrics, headline, result_record

log = logging.getLogger(__name__)


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
        return run_steps(resolved, task, task_card, data_dir, run_dir, device, resume, cache_dir, timings, started)


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


def run_steps(
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
    """Run a resolved spec on its loaded task into `run_dir` (its lock held) and return result.json's content."""
    device = resolve_device(device)
    split, warnings = split_task(task, task_card, resolved)
    visible = visible_task(task, split)
    features, encoder_stats = encode(task, task_card, resolved, device, cache_dir, timings)
    setups = [
        Setup(visible, split, seed, device, run_dir / f"seed{seed}", features, resume, cache_dir)
        for seed in resolved["seeds"]
    ]
    predicted = fit_and_predict(task, split, resolved, setups, timings, run_dir.name)
    metrics = score(task, task_card, visible, resolved["shots"], predicted)
    timings["total_s"] = time.perf_counter() - started
    result = result_record(
        run_id=run_dir.name,
        spec=resolved,
        cards={"task": task_card.path, "method": load_method_card(resolved["method"]).path},
        task_card=task_card,
        metrics=metrics,
        split=split,
        task=task,
        data_dir=data_dir,
        warnings=warnings,
        fits=predicted.fits,
        reports=predicted.reports,
        encoder_stats=encoder_stats,
        timings=timings,
        device=device,
    )
    return write(run_dir, task, predicted.rows, result)


def split_task(task: TaskData, task_card: TaskCard, resolved: dict) -> tuple[Split, list[str]]:
    """Split: the task's groups and items as the card's protocol divides them; with the loader's warnings and a
    warning about the split itself (where it has one)."""
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
    return split, warnings


def encode(
    task: TaskData, task_card: TaskCard, resolved: dict, device: str, cache_dir: Path | None, timings: dict
) -> tuple[Features | None, dict | None]:
    """Encode: the candidates' features and the encoder's counts, where the method needs features (else None)."""
    if not METHODS.get(resolved["implementation"]).needs_features:
        return None, None
    tick = time.perf_counter()
    encoder = Encoder(EncoderSpec.parse(resolved["encoder"]), device=device, cache_dir=cache_dir)
    features = build_features(task, encoder, task_card)
    timings["encode_s"] = time.perf_counter() - tick
    return features, dict(encoder.stats, dim=features.dim)


@dataclass
class Predicted:
    """What fitting and predicting gave, over every seed and K in the order made."""

    rows: list[dict] = field(default_factory=list)  # predictions.jsonl, one row per (seed, K, group, item)
    fits: dict[str, dict] = field(default_factory=dict)  # seed → the method's fit report
    reports: dict[str, dict] = field(default_factory=dict)  # seed → the method's predict report
    context_sizes: dict[int, dict[str, int]] = field(default_factory=dict)  # K → group → shots drawn
    fallbacks: Counter = field(default_factory=Counter)  # (K, kind) → predictions that fell back
    ties: Counter = field(default_factory=Counter)  # K → ties broken at the top

    def cell(self, shots: int) -> list[dict]:
        return [r for r in self.rows if r["shots"] == shots]


def fit_and_predict(
    task: TaskData, split: Split, resolved: dict, setups: list[Setup], timings: dict, label: str
) -> Predicted:
    """Fit, then predict: each seed's fitted method on every test group's episode at every K."""
    implementation = METHODS.get(resolved["implementation"])
    predicted = Predicted()
    timings["fit_s"] = timings["predict_s"] = 0.0
    progress = tqdm(total=len(resolved["seeds"]) * len(resolved["shots"]), desc=label, unit="cell")
    # numpy/scipy work here is many tiny solves (L-BFGS per episode): OpenBLAS threads only add contention,
    # up to 50x slower on a busy machine (torch keeps its own threads)
    with threadpool_limits(limits={"openblas": 1}):
        fitted = fit(implementation, resolved["settings"], setups, timings)
        for setup, (method, fit_report) in zip(setups, fitted, strict=True):
            predicted.fits[str(setup.seed)] = fit_report
            for shots in resolved["shots"]:
                predict(task, split, resolved["method"], method, setup.seed, shots, predicted, timings)
                progress.update()
            predicted.reports[str(setup.seed)] = method.report()
            predicted.fallbacks.update(method.fallbacks)
    progress.close()
    return predicted


def fit(implementation: type[Method], settings: dict, setups: list[Setup], timings: dict) -> Iterator[tuple]:
    """Fit: (method, fit report) per seed, in seed order. A method that trains several seeds at once
    (`fit_seeds`) trains them all before the first; any other is fitted when its seed is reached, after the
    previous seed's predictions."""
    if len(setups) > 1 and hasattr(implementation, "fit_seeds"):
        tick = time.perf_counter()
        fitted = implementation.fit_seeds(settings, setups)
        timings["fit_s"] += time.perf_counter() - tick
        yield from fitted
        return
    for setup in setups:
        method = implementation(settings, setup)
        tick = time.perf_counter()
        fit_report = method.fit()
        timings["fit_s"] += time.perf_counter() - tick
        yield method, fit_report


def predict(
    task: TaskData,
    split: Split,
    name: str,
    method: Method,
    seed: int,
    shots: int,
    predicted: Predicted,
    timings: dict,
) -> None:
    """Predict: one seed's fitted method on each test group's episode of K = `shots`, a scored row per item."""
    episodes = [draw_episode(task, group, shots, seed, split) for group in split.test]
    tick = time.perf_counter()
    predictions = method.predict(episodes)
    timings["predict_s"] += time.perf_counter() - tick
    for episode, preds in zip(episodes, predictions, strict=True):
        predicted.context_sizes.setdefault(shots, {})[episode.group] = len(episode.context)
        predicted.rows += prediction_rows(task, name, episode, preds, split.role(episode.group), predicted.ties)


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


def score(task: TaskData, task_card: TaskCard, visible: TaskData, shots_grid: list[int], predicted: Predicted) -> dict:
    """Score: result.json's metrics, per K: the headline's summaries (overall, and seen and unseen groups where
    the split has them), the groups given fewer shots than K, the reference bounds, the coverage split and the
    fallback and tie counts."""
    metrics = {}
    majority = majority_distributions(visible) if task.metric == "accuracy" else None
    answered = {item for group in visible.groups.values() for item in group.targets}  # by some seen group
    known_ceilings: dict[tuple[str, str], float] = {}
    for shots in shots_grid:
        cell_rows = predicted.cell(shots)
        if not cell_rows:
            raise DataError(f"no test predictions for K={shots}")
        cell = [(r["seed"], r["group"], r["split"], r["score"]) for r in cell_rows]
        summary = cell_metrics(task.metric, cell)
        mean = summary[headline(task_card)]["mean"]
        fell_back = {kind: n for (k, kind), n in sorted(predicted.fallbacks.items()) if k == shots}
        ties = predicted.ties[shots]
        metrics[str(shots)] = {
            **summary,
            "capped_shots": {g: n for g, n in predicted.context_sizes[shots].items() if n < shots},
            "reference": reference_block(task, cell_rows, mean, known_ceilings, majority),
            "coverage": coverage_block([(s, g, v) for s, g, _, v in cell], [r["item"] in answered for r in cell_rows]),
            "fallbacks": {
                "predictions": len(cell),
                **fell_back,
                "share": sum(fell_back.values()) / len(cell),
                "ties_broken": ties,
                "ties_share": ties / len(cell),
            },
        }
    return metrics


def write(run_dir: Path, task: TaskData, rows: list[dict], result: dict) -> dict:
    """Write: predictions.jsonl, items.jsonl (the predicted items' prompts and candidates) and, last, result.json
    with predictions.jsonl's digest (which makes the run finished); an earlier failure's error.json goes."""
    write_atomic(run_dir / PREDICTIONS_FILE, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
    result["predictions"] = file_digest(run_dir / PREDICTIONS_FILE)
    try:
        text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise RuntimeError(f"{run_dir.name}: the result holds NaN or infinity, which JSON cannot hold") from None
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
