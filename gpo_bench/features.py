"""Candidate features: one encoder vector per (item, candidate), stored once however many groups
answer the item. By default the text follows GPO's embedding code: the Alpaca prompt of the question
with its lettered options, followed by the answer `"A. option"`."""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from .cards import TaskCard
from .data import Item, TaskData
from .encoders import Encoder


@dataclass
class Features:
    """`matrix[rows[item_id]]` are the vectors of that item's candidates, in candidate order."""

    matrix: np.ndarray
    rows: dict[str, np.ndarray]

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def candidate_triples(item: Item, card: TaskCard) -> list[tuple[str, str, str]]:
    """(instruction, input, response) per candidate, in the task card's `candidate_format`."""
    instruction = card.instruction
    if card.candidate_format == "response":
        return [(instruction, item.prompt, c) for c in item.candidates]
    letters = string.ascii_uppercase
    options = "".join(f"\n{letters[i]}. {c}" for i, c in enumerate(item.candidates))
    text = f"{item.prompt}\n\nOptions:{options}"
    return [(instruction, text, f"{letters[i]}. {c}") for i, c in enumerate(item.candidates)]


def build_features(task: TaskData, encoder: Encoder, card: TaskCard) -> Features:
    triples: list[tuple[str, str, str]] = []
    rows: dict[str, np.ndarray] = {}
    for item_id in sorted(task.items):
        item_triples = candidate_triples(task.items[item_id], card)
        rows[item_id] = np.arange(len(triples), len(triples) + len(item_triples))
        triples.extend(item_triples)
    return Features(encoder.encode(triples), rows)
