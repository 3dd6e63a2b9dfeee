"""Published numbers (`reference_results.yaml`): read them into `Reference` rows, shown beside our results as
rows "reported by the paper" with their citation and never mixed into our means."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import CardError
from .records import OVERALL

REFERENCES_FILE = Path(__file__).resolve().parent / "reference_results.yaml"


@dataclass(frozen=True)
class Column:
    """A board column: a task at one meta-train fraction, overall or on the seen / unseen groups."""

    task: str
    train_frac: float
    subset: str = OVERALL

    def label(self) -> str:
        subset = "" if self.subset == OVERALL else f" · {self.subset}"
        return f"{self.task} · train {self.train_frac:.0%}{subset}"


@dataclass(frozen=True)
class Reference:
    """One published number (already divided by the source's scale)."""

    source: str
    citation: str
    note: str
    metric: str
    task: str
    method: str
    label: str
    model: str
    value: float
    shots: int | None
    train_frac: float | None
    subset: str
    setting: str | None

    @property
    def row(self) -> str:
        setting = f" · {self.setting}" if self.setting else ""
        return f"{self.label} · {self.model}{setting}"

    def matches(self, column: Column, metric: str) -> bool:
        return (
            self.task == column.task
            and self.metric == metric
            and self.subset == column.subset
            and (self.train_frac is None or math.isclose(self.train_frac, column.train_frac))
        )


def load_references(path: Path = REFERENCES_FILE) -> list[Reference]:
    """The published numbers; a malformed entry is a CardError naming the file, source and row."""
    try:
        raw = yaml.safe_load(path.read_text())
        references = []
        for source in raw["sources"]:
            fracs = source.get("train_fracs")
            for index, row in enumerate(source["rows"]):
                where = f"{path}: source {source.get('id')!r}, row {index + 1}"
                if ("value" in row) == ("values" in row):
                    raise CardError(f"{where}: give either 'value' or 'values'")
                if "values" in row and (not fracs or len(row["values"]) != len(fracs)):
                    raise CardError(f"{where}: 'values' needs one number per entry of the source's 'train_fracs'")
                pairs = zip(fracs, row["values"], strict=True) if "values" in row else [(None, row["value"])]
                references += [
                    Reference(
                        source=source["id"],
                        citation=source["citation"],
                        note=source.get("note", ""),
                        metric=source["metric"],
                        task=row["task"],
                        method=row["method"],
                        label=row["label"],
                        model=row["model"],
                        value=float(value) / float(source["scale"]),
                        shots=source.get("shots"),
                        train_frac=None if frac is None else float(frac),
                        subset=row.get("subset", OVERALL),
                        setting=row.get("setting"),
                    )
                    for frac, value in pairs
                ]
    except CardError:
        raise
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise CardError(f"{path}: malformed reference results ({type(error).__name__}: {error})") from None
    return references
