"""A sweep's grid: the runs a `gpo-bench sweep` asks for, from flags and a YAML sweep file (`make_grid`, checking
the file's fields), expanded into one `RunSpec` per (task, method, encoder, train-frac, seed set) and resolved into
planned runs, one per run folder (`plan`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .cards import SPEC_LIMITS, load_method_card, parse_overrides
from .discovery import discover
from .encoders import DEFAULT_ENCODER, split_encoders
from .errors import CardError
from .registry import METHODS
from .run_folder import RunSpec, run_id, with_model

# sweep-file field → (accepted item type, is a list)
FILE_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "tasks": (str, True),
    "methods": (str, True),
    "encoders": (str, True),
    "model": (str, False),
    "train_fracs": ((int, float), True),
    "shots": (int, True),
    "seeds": (int, True),
    "split_seed": (int, False),
    "seeds_together": (bool, False),
    "limit_items": (int, False),
    "set": (dict, False),
}
# sweep-file field → its range in cards.SPEC_LIMITS (the flags' declaration)
FILE_LIMITS = {"train_fracs": "train_frac", "shots": "shots", "seeds": "seeds", "split_seed": "split_seed"}
FILE_LIMITS["limit_items"] = "limit_items"


@dataclass(frozen=True)
class Grid:
    """The sweep: every combination of its lists; `overrides` keys are `setting` (every method whose card
    has it) or `method.setting` (that method only); `model` is the language model of every method whose card
    has a `model` setting and of the encoder named `model`."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    encoders: tuple[str, ...] = (DEFAULT_ENCODER,)
    train_fracs: tuple[float | None, ...] = (None,)
    shots: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    split_seed: int = 0
    seeds_together: bool = True  # one run for all seeds where the method trains them at once
    limit_items: int | None = None
    overrides: dict = field(default_factory=dict)
    model: str | None = None

    def method_overrides(self, method: str) -> dict:
        """The overrides that apply to `method` (checked against its card when the spec is resolved)."""
        settings = load_method_card(method).settings
        out = {}
        for key, value in self.overrides.items():
            scope, dot, name = key.rpartition(".")
            if (dot and scope == method) or (not dot and key in settings):
                out[name] = value
        return out

    def check_overrides(self) -> None:
        for key in self.overrides:
            scope, dot, _ = key.rpartition(".")
            if dot and scope not in self.methods:
                raise CardError(f"--set {key}: method {scope!r} is not in this sweep ({', '.join(self.methods)})")
            if not dot and not any(key in load_method_card(m).settings for m in self.methods):
                raise CardError(f"--set {key}: no method of this sweep ({', '.join(self.methods)}) has setting {key!r}")

    def seed_sets(self, method: str) -> list[tuple[int, ...]]:
        """The seeds of each of `method`'s runs: all of them in one run where the method trains several seeds
        at once (and `seeds_together` is on), else one run per seed."""
        discover()  # the card may name a plugin's method
        if self.seeds_together and hasattr(METHODS.get(load_method_card(method).implementation), "fit_seeds"):
            return [self.seeds]
        return [(seed,) for seed in self.seeds]

    def specs(self) -> list[RunSpec]:
        """One RunSpec per (task, method, encoder, train-frac, seed set), in that nesting order."""
        self.check_overrides()
        specs = [
            RunSpec(
                task=task,
                method=method,
                encoder=encoder,
                shots=self.shots,
                seeds=seeds,
                train_frac=train_frac,
                split_seed=self.split_seed,
                limit_items=self.limit_items,
                overrides=self.method_overrides(method),
            )
            for task in self.tasks
            for method in self.methods
            for encoder in self.encoders
            for train_frac in self.train_fracs
            for seeds in self.seed_sets(method)
        ]
        with_models = [with_model(spec, self.model) for spec in specs]
        if self.model is not None and with_models == specs:
            raise CardError(
                f"--model {self.model}: no method of this sweep ({', '.join(self.methods)}) has a model setting and "
                "no encoder is 'model'"
            )
        return with_models


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    resolved: dict
    run_id: str

    def folder(self, output_dir: Path) -> Path:
        return output_dir / "runs" / self.run_id


def plan(grid: Grid) -> list[PlannedRun]:
    """Resolve every spec (a bad task, method or setting fails here, before anything runs) and drop
    duplicates: methods without features ignore the encoder, so several grid points can be one run."""
    planned: dict[str, PlannedRun] = {}
    for spec in grid.specs():
        resolved = spec.resolved()
        rid = run_id(resolved)
        planned.setdefault(rid, PlannedRun(spec, resolved, rid))
    return list(planned.values())


def load_sweep_file(path: Path) -> dict:
    """A YAML sweep file → Grid fields; an unknown key or a wrong type names the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CardError(f"{path}: cannot read the sweep file ({' '.join(str(error).split())})") from None
    if not isinstance(raw, dict):
        raise CardError(f"{path}: a sweep file must be a YAML mapping of {', '.join(FILE_FIELDS)}")
    out = {}
    for key, value in raw.items():
        if key not in FILE_FIELDS:
            raise CardError(f"{path}: unknown field {key!r} (known: {', '.join(FILE_FIELDS)})")
        types, is_list = FILE_FIELDS[key]
        if is_list:
            if isinstance(value, str) and types is str:
                parts = split_encoders(value) if key == "encoders" else (v.strip() for v in value.split(","))
                value = [part for part in parts if part]
            if not isinstance(value, list) or not value:
                raise CardError(f"{path}: field {key!r} must be a non-empty list, got {value!r}")
            bad = [v for v in value if not isinstance(v, types) or isinstance(v, bool)]
            if bad:
                raise CardError(f"{path}: field {key!r} holds {bad[0]!r}, which is not a {_type_names(types)}")
            out[key] = tuple(value)
        elif value is not None and (not isinstance(value, types) or isinstance(value, bool) != (types is bool)):
            raise CardError(f"{path}: field {key!r} must be a {_type_names(types)}, got {value!r}")
        else:
            out[key] = value
        if key in FILE_LIMITS and value is not None:
            limit = SPEC_LIMITS[FILE_LIMITS[key]]
            checked = [limit.check(v, f"{path}: field {key!r}") for v in (out[key] if is_list else [value])]
            out[key] = tuple(checked) if is_list else checked[0]
    if "set" in out:
        out["overrides"] = {str(k): v for k, v in (out.pop("set") or {}).items()}
    return out


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def make_grid(file: Path | None, flags: dict) -> Grid:
    """The sweep file's fields, then the flags that were given (not None) on top; `set` pairs add to the
    file's overrides. Tasks and methods must come from one or the other. Where `--methods` narrows a file's
    methods, the file's overrides of the methods left out are dropped (a flag's are still checked)."""
    fields = load_sweep_file(file) if file else {}
    if flags.get("methods") and "overrides" in fields:
        kept = set(flags["methods"])
        fields["overrides"] = {
            key: value
            for key, value in fields["overrides"].items()
            if not key.rpartition(".")[1] or key.rpartition(".")[0] in kept
        }
    pairs = flags.get("set") or []
    fields.update({k: v for k, v in flags.items() if v is not None and k != "set"})
    fields["overrides"] = {**fields.get("overrides", {}), **parse_overrides(pairs)}
    missing = [name for name in ("tasks", "methods") if not fields.get(name)]
    if missing:
        where = f"{file} or the flags" if file else "the flags (or a --file)"
        raise CardError(f"a sweep needs {' and '.join(missing)}: give them in {where}")
    return Grid(**fields)
