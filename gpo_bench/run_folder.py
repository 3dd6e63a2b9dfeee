"""What names a run folder and when it is finished: `RunSpec` (everything that changes a run's numbers) resolved
against its cards, `run_id` (the resolved spec's hash, the folder's name), `data_identity` (the loaded data's
fingerprint and the digests of the raw files read) and `run_state` (new, finished, computed on other data, or
broken, and why). Reads only; the runner writes."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from .cards import apply_overrides, load_method_card, load_task_card
from .data import TaskData
from .discovery import discover
from .encoders import DEFAULT_ENCODER, MODEL_ENCODER, EncoderSpec
from .errors import CardError
from .files import file_digest
from .records import RESULT_FILE
from .registry import METHODS

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


def with_model(spec: RunSpec, model: str | None) -> RunSpec:
    """`spec` with the run's one language model (`--model`, a sweep file's `model`) put wherever the run reads a
    model: the method card's `model` setting and an encoder named `model` (its `,key=value` settings kept), so a
    7B model is named once for the LM baselines and for GPO's embeddings. An encoder `model` without a model, or
    a model also given as `--set model=`, is an error before anything runs."""
    encoder_name, comma, encoder_settings = (spec.encoder or "").partition(",")
    if model is None:
        if encoder_name == MODEL_ENCODER:
            raise CardError(
                f"encoder {MODEL_ENCODER!r} stands for the run's language model, and none was named: "
                "pass --model HUB_ID_OR_FOLDER (model= in the API, `model:` in a sweep file)"
            )
        return spec
    overrides = dict(spec.overrides)
    if "model" in load_method_card(spec.method).settings:
        if overrides.get("model", model) != model:
            raise CardError(
                f"the model is named twice: --model {model} and --set model={overrides['model']}; keep --model"
            )
        overrides["model"] = model
    encoder = model + comma + encoder_settings if encoder_name == MODEL_ENCODER else spec.encoder
    return replace(spec, encoder=encoder, overrides=overrides)


def file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def run_id(resolved: dict) -> str:
    """The run folder's name: task, method and the hash of the resolved spec."""
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:12]
    return f"{resolved['task']}--{resolved['method']}--{digest}"


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


@functools.cache
def result_validator():
    import jsonschema

    schema = json.loads((PACKAGE_DIR / "result.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


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
