"""Task cards (`tasks/*.yaml`) and method cards (`baselines/*.yaml`): their schema, loading and validating
them, so that a wrong key or type names the card and the field. Finding them (built in, then in the include
folders and plugin packages) is `gpo_bench.discovery`'s; the type and range of each method setting is declared
by the method itself (`Method.SETTINGS`), which a method card's `implementation` names."""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .discovery import card_origin, card_paths, discover
from .errors import CardError, UnknownNameError, unknown_name
from .protocol import PERSONALIZED_DEFAULTS, PROTOCOLS
from .registry import METHODS

# field → (accepted types, required, default)
TASK_FIELDS: dict[str, tuple[tuple[type, ...], bool, Any]] = {
    "name": ((str,), True, None),
    "description": ((str,), True, None),
    "version": ((int,), True, None),
    "loader": ((str,), True, None),
    "source": ((dict,), False, {}),
    "hub_id": ((str, type(None)), False, None),
    "groups": ((list, type(None)), False, None),
    "protocol": ((str,), True, None),
    "protocol_settings": ((dict,), False, {}),
    "metric": ((str,), True, None),
    "shots": ((list,), True, None),
    "train_frac": ((float, int), False, 0.4),
    "val_frac": ((float, int), False, 0.2),
    "instruction": ((str,), False, "Answer the following question by picking ONE of the given options"),
    "candidate_format": ((str,), False, "lettered_options"),
    "reference": ((str, type(None)), False, None),
    "strict": ((bool,), False, False),  # the loader's warnings (unknown names, empty files) become errors
}
METHOD_FIELDS: dict[str, tuple[tuple[type, ...], bool, Any]] = {
    "name": ((str,), True, None),
    "description": ((str,), True, None),
    "version": ((int,), True, None),
    "implementation": ((str,), True, None),
    "settings": ((dict,), False, {}),
    "reference": ((str, type(None)), False, None),
}
METRICS = ("alignment", "accuracy")
# lettered_options: the prompt lists the lettered options and the response is "A. option" (GPO's embedding text);
# response: the prompt alone, the candidate as the response (pairwise responses, the synthetic task)
CANDIDATE_FORMATS = ("lettered_options", "response")


@dataclass(frozen=True)
class Limit:
    """The type and range of a method card setting or a numeric flag: `kind` (int, float, bool, str or list of
    `item`), bounds (`open_*`: the bound itself excluded), `nullable` (None allowed), `choices`, and `length`
    (a list of that many values in ascending order, e.g. [10, 100])."""

    kind: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False
    choices: tuple | None = None
    item: type | None = None
    length: int | None = None

    def describe(self) -> str:
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        if self.kind is list:
            text = f"a list of {self.length or 'any number of'} {self.item.__name__} values"
            text += " in ascending order" if self.length else ""
        else:
            text = kind[self.kind]
        if self.low is not None and self.high is not None:
            text += f" in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        elif self.low is not None:
            text += f" {'>' if self.open_low else '≥'} {self.low:g}"
        if self.choices:
            text += f" (one of {', '.join(map(str, self.choices))})"
        return text + (", or null" if self.nullable else "")

    def _fits(self, value: Any, kind: type) -> bool:
        if kind is float:
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                return False
        elif not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            return False
        if kind in (int, float):
            if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
                return False
            if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
                return False
        return self.choices is None or value in self.choices

    def check(self, value: Any, what: str) -> Any:
        """`value` if it fits (an int where a float is expected becomes a float), else a CardError naming `what`."""
        if value is None and self.nullable:
            return None
        if self.kind is list:
            ok = isinstance(value, list) and all(self._fits(v, self.item) for v in value)
            ok = ok and (self.length is None or (len(value) == self.length and value == sorted(value)))
        else:
            ok = self._fits(value, self.kind)
        if not ok:
            raise CardError(f"{what} must be {self.describe()}, got {type(value).__name__} {value!r}")
        return float(value) if self.kind is float else value


SEED_LIMIT = Limit(int, 0, 2**32 - 1)  # numpy's legacy seeding (the paper's split) takes 0 ≤ seed < 2**32
# The run spec's numbers, shared by the flags of `run` and `sweep` and the fields of a sweep file.
SPEC_LIMITS: dict[str, Limit] = {
    "shots": Limit(int, 0),
    "seeds": SEED_LIMIT,
    "split_seed": SEED_LIMIT,
    "train_frac": Limit(float, 0, 1, open_low=True, open_high=True),
    "limit_items": Limit(int, 2, nullable=True),
}


def declared_settings(card: MethodCard) -> dict[str, Limit]:
    """The settings that the card's method implementation declares (`SETTINGS`: name → Limit). This imports
    the implementation (and so torch): the plugins are discovered first, and an unknown implementation is a
    CardError naming the card."""
    discover()
    try:
        return getattr(METHODS.get(card.implementation), "SETTINGS", {})
    except UnknownNameError as error:
        raise CardError(f"{card.path}: field 'implementation': {error}") from None


def check_setting(key: str, value: Any, where: str, card_value: Any, card: MethodCard, declared: dict) -> Any:
    """A setting's value checked against the Limit its method declares (`declared`); `where` says where it came
    from (card file or --set). A card from an include folder or plugin may bring settings of its own: those are
    typed by the card's own value."""
    if key in declared:
        return declared[key].check(value, f"{where}: setting {key!r}")
    if card_origin(card.path) == "built-in":
        owner = METHODS.get(card.implementation)
        raise CardError(
            f"{where}: setting {key!r} has no declared type and range "
            f"(declare it in {owner.__module__}.{owner.__qualname__}.SETTINGS)"
        )
    kind = object if card_value is None else float if isinstance(card_value, float) else type(card_value)
    return Limit(kind, item=object if kind is list else None).check(value, f"{where}: setting {key!r}")


def _validate(raw: Any, fields: dict, path: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise CardError(f"{path}: a card must be a YAML mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise CardError(f"{path}: unknown field {unknown[0]!r} (known: {', '.join(fields)})")
    card = {}
    for key, (types, required, default) in fields.items():
        if key not in raw:
            if required:
                raise CardError(f"{path}: missing required field {key!r}")
            card[key] = copy.deepcopy(default)
            continue
        value = raw[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise CardError(f"{path}: field {key!r} must be {names}, got {type(value).__name__} {value!r}")
        card[key] = value
    if card["name"] != path.stem:
        raise CardError(f"{path}: field 'name' is {card['name']!r} but the file is named {path.stem!r}")
    return card


@dataclass(frozen=True)
class TaskCard:
    name: str
    description: str
    version: int
    loader: str
    source: dict
    hub_id: str | None
    groups: list | None
    protocol: str
    protocol_settings: dict
    metric: str
    shots: list
    train_frac: float
    val_frac: float
    instruction: str
    candidate_format: str
    reference: str | None
    path: str
    strict: bool = False

    @classmethod
    def from_file(cls, path: Path) -> TaskCard:
        card = _validate(read_yaml(path), TASK_FIELDS, path)
        if card["metric"] not in METRICS:
            raise CardError(f"{path}: field 'metric' must be one of {METRICS}, got {card['metric']!r}")
        if card["protocol"] not in PROTOCOLS:
            raise CardError(f"{path}: field 'protocol' must be one of {PROTOCOLS}, got {card['protocol']!r}")
        if card["protocol"] == "opinion" and card["protocol_settings"]:
            raise CardError(f"{path}: the opinion protocol takes no 'protocol_settings'")
        unknown = set(card["protocol_settings"]) - set(PERSONALIZED_DEFAULTS.get(card["protocol"], {}))
        if unknown:
            raise CardError(f"{path}: unknown protocol_settings {sorted(unknown)} for protocol {card['protocol']!r}")
        if card["candidate_format"] not in CANDIDATE_FORMATS:
            raise CardError(
                f"{path}: field 'candidate_format' must be one of {CANDIDATE_FORMATS}, got {card['candidate_format']!r}"
            )
        if not all(isinstance(k, int) and k >= 0 for k in card["shots"]):
            raise CardError(f"{path}: field 'shots' must be a list of non-negative integers")
        if not 0 < card["train_frac"] < 1 or not 0 < card["val_frac"] < 1:
            raise CardError(f"{path}: 'train_frac' and 'val_frac' must lie strictly between 0 and 1")
        return cls(**card, path=str(path))


@dataclass(frozen=True)
class MethodCard:
    name: str
    description: str
    version: int
    implementation: str
    settings: dict
    reference: str | None
    path: str

    @classmethod
    def from_file(cls, path: Path) -> MethodCard:
        return cls(**_validate(read_yaml(path), METHOD_FIELDS, path), path=str(path))


def read_yaml(path: Path) -> Any:
    """A YAML file's content; unreadable or malformed YAML is a CardError naming the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CardError(f"{path}: cannot read it as YAML ({' '.join(str(error).split())})") from None


def load_task_card(name: str) -> TaskCard:
    paths = card_paths("tasks")
    if name not in paths:
        raise unknown_name("task", name, list(paths))
    return TaskCard.from_file(paths[name])


def load_method_card(name: str) -> MethodCard:
    paths = card_paths("baselines")
    if name not in paths:
        raise unknown_name("method", name, list(paths))
    return MethodCard.from_file(paths[name])


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are parsed as YAML scalars (numbers, booleans, lists)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CardError(f"--set expects key=value, got {pair!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" as a string
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        overrides[key.strip()] = parsed
    return overrides


def apply_overrides(settings: dict, overrides: dict[str, Any], card: MethodCard) -> dict:
    """A copy of the card's settings with overrides applied, each value (the card's and the overrides') checked
    against what its method declares. An unknown key is an error, found before the method is imported."""
    for key in overrides:
        if key not in settings:
            raise unknown_name(f"setting of method card {card.path}", key, list(settings))
    declared = declared_settings(card)
    for key, value in settings.items():  # checked as they stand: a card's values go into the run unchanged
        check_setting(key, value, card.path, value, card, declared)
    merged = copy.deepcopy(settings)
    for key, value in overrides.items():
        where = f"--set {key}={value!r} ({card.path})"
        merged[key] = check_setting(key, value, where, settings[key], card, declared)
    return merged
