"""Any per-user pairwise preference set as a task: a JSON-lines or parquet file, one comparison per row:

- `user` (required): who judged (the group of the seen/unseen protocols);
- `prompt` (required): what both responses answer;
- `chosen`, `rejected` (required): the response the user preferred, and the other one;
- `context` (optional): what came before the prompt: a text, or a list of `{role, content}` turns;
- `split` (optional): `train`, `val` (both: the user's pool, where its K context comparisons come from) or `test`
  (scored); without it, each user's comparisons are split 50/50 by a per-user seeded shuffle (`source.seed`,
  default 0).

`split` is given on every row or on none. Bad rows are errors naming the file and line (row for parquet);
a comparison whose two responses are the same text is dropped and counted. The task card names the file
(`loader: user_pairs`, `source: {file: PATH}`) and a personalized protocol (`pairwise`, `mrm`, `lore`,
`personal_reward_bench`)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..cards import TaskCard
from ..data import TaskData
from ..errors import DataError
from ..protocol import md5_seed
from ..registry import LOADERS
from .common import is_blank, read_rows, reads_sources, source_file
from .preferences import PairBuilder, chat_text

FIELDS = ["user", "prompt", "chosen", "rejected"]
POOLS = {"train": "train", "val": "train", "test": "test"}


def _text(row: dict, name: str, where: str) -> str:
    value = row[name]
    if not isinstance(value, str) or is_blank(value):
        raise DataError(f"{where}: field {name!r} must be a non-empty text, got {value!r}")
    return value


def _prompt(row: dict, where: str) -> str:
    prompt = _text(row, "prompt", where)
    context = row.get("context")
    if is_blank(context) if not isinstance(context, list | np.ndarray) else len(context) == 0:
        return prompt
    if isinstance(context, str):
        return f"{context}\n\n{prompt}"
    turns = list(context)
    if not all(isinstance(t, dict) and isinstance(t.get("content"), str) for t in turns):
        raise DataError(f"{where}: field 'context' must be a text or a list of {{role, content}} turns")
    return chat_text([*turns, {"role": "user", "content": prompt}])


@LOADERS.register("user_pairs", "your per-user pairwise preferences: user, prompt, chosen, rejected [, context, split]")
@reads_sources
def load_user_pairs(card: TaskCard, data_dir: Path | None) -> TaskData:
    path = source_file(card, data_dir)
    builder = PairBuilder(card)
    rows, with_split = [], None
    for where, row in read_rows(path, FIELDS):
        user = row["user"] if isinstance(row["user"], str) else None
        if user is None or is_blank(user):
            raise DataError(f"{where}: field 'user' must be a non-empty text, got {row['user']!r}")
        chosen, rejected = _text(row, "chosen", where), _text(row, "rejected", where)
        has_split = not is_blank(row.get("split"))
        if with_split is None:
            with_split = (has_split, where)
        elif has_split != with_split[0]:
            raise DataError(
                f"{where}: 'split' is {'given' if has_split else 'missing'} here but "
                f"{'given' if with_split[0] else 'missing'} at {with_split[1]}; give it on every row or on none"
            )
        part = None
        if has_split:
            if row["split"] not in POOLS:
                raise DataError(f"{where}: field 'split' must be train, val or test, got {row['split']!r}")
            part = POOLS[row["split"]]
        if chosen.strip() == rejected.strip():
            builder.drops.add(
                "comparisons whose chosen and rejected responses are the same", file=where, group=user, value=chosen
            )
            continue
        pair_id = f"{path.stem}-{where.rsplit(' ', 1)[-1]}"
        rows.append((user.strip(), pair_id, _prompt(row, where), chosen, rejected, part))
    if not rows:
        raise DataError(f"{path}: no comparisons")
    seed = card.source.get("seed", 0)
    by_user: dict[str, list] = {}
    for entry in rows:
        by_user.setdefault(entry[0], []).append(entry)
    for user, pairs in sorted(by_user.items()):
        if not with_split[0]:  # a per-user seeded 50/50 split, as for Chatbot Arena's judges
            order = sorted(pairs, key=lambda p: p[1])
            random.Random(md5_seed(user, seed)).shuffle(order)
            pairs = [(*p[:5], "train" if k < len(order) // 2 else "test") for k, p in enumerate(order)]
        for user_id, pair_id, prompt, chosen, rejected, part in pairs:
            builder.add(user_id, pair_id, prompt, chosen, rejected, part)
    split_note = "the file's split column" if with_split[0] else f"each user's comparisons split 50/50 (seed {seed})"
    return builder.task([f"read {path}", split_note])
