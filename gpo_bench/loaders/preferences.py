"""Pairwise personalized preference sources: Reddit TL;DR comparisons, PRISM, Chatbot Arena and the
PersonalRewardBench sets. Each comparison is an item whose two candidates are the responses, the
user is the group, the target is one-hot on the chosen response, and the group's `partition` says
whether the comparison is in the user's training pool or its test set (see `protocol.py`).

Files are read from the data folder in the hub datasets' own field layout (JSON lines or parquet,
one file per split; ../shared/data/SCHEMAS.md), or from the Hub with the `datasets` package."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np

from ..cards import TaskCard
from ..data import Drops, Group, Item, TaskData
from ..errors import DataError
from ..protocol import md5_seed
from ..registry import LOADERS
from .common import read_rows, reads_sources, row_errors
from .hub import SOURCES, SourceFile, hub_rows

EMPTY = {"", "EMPTY STRING"}


def read_file(path: Path) -> list[dict]:
    """The rows of a JSON lines or parquet file, each knowing where it came from (`_where`)."""
    return [{**row, "_where": where} for where, row in read_rows(path, [])]


def read_source(card: TaskCard, data_dir: Path | None) -> list[list[dict]]:
    """The rows of each file the task reads (`SOURCES`): `<data_dir>/<local>.jsonl` or `.parquet` where the
    data folder holds any of them (then it must hold all), else the card's Hub dataset via `datasets`."""
    files = SOURCES[card.loader](card)
    if data_dir is not None:
        found = [next((p for p in paths(data_dir, f) if p.exists()), None) for f in files]
        if any(found):
            missing = [f.describe() for f, path in zip(files, found, strict=True) if path is None]
            if missing:
                raise DataError(
                    f"task {card.name!r} reads {', '.join(f.describe() for f in files)} under {data_dir}; "
                    f"missing: {', '.join(missing)}"
                )
            return [read_file(path) for path in found]
    return hub_rows(card, files, data_dir)


def paths(data_dir: Path, file: SourceFile) -> list[Path]:
    return [data_dir / (file.local + suffix) for suffix in (".jsonl", ".parquet")]


def personal_reward_bench_files(card: TaskCard) -> list[SourceFile]:
    folder = card.source.get("folder", "prism_personalized")
    return [SourceFile(f"{folder}/{split}", split=split) for split in ("train", "validation", "test")]


SOURCES.update(
    {
        "reddit_tldr": lambda card: [
            SourceFile(f"reddit_tldr/comparisons/{split}", card.source.get("hub_config"), split)
            for split in ("train", "validation")
        ],
        "prism": lambda card: [
            SourceFile("prism/survey", "survey"),
            SourceFile("prism/conversations", "conversations"),
        ],
        "chatbot_arena": lambda card: [SourceFile("chatbot_arena/train")],
        "personal_reward_bench": personal_reward_bench_files,
    }
)


def field(row: dict, name: str, types: type | tuple) -> object:
    if name not in row:
        raise DataError(f"{row.get('_where', 'a row')}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, types):
        raise DataError(f"{row.get('_where', 'a row')}: field {name!r} should be {types}, got {type(value).__name__}")
    return value


class PairBuilder:
    """Collects comparisons into items and groups, ordering each pair's responses by a hash so that
    the chosen one is not always first, and counting what is dropped."""

    def __init__(self, card: TaskCard) -> None:
        self.card = card
        self.items: dict[str, Item] = {}
        self.groups: dict[str, Group] = {}
        self.drops = Drops()

    def add(
        self,
        user: str,
        pair_id: str,
        prompt: str,
        chosen: str,
        rejected: str,
        part: str,
        order: tuple[int, int] | None = None,
        where: str | None = None,
    ) -> None:
        if chosen.strip() in EMPTY or rejected.strip() in EMPTY:
            self.drops.add("comparisons with an empty response", file=where, question=pair_id, group=user)
            return
        if order is None:  # a stable pseudo-random order
            order = (0, 1) if int(hashlib.md5(pair_id.encode()).hexdigest(), 16) % 2 == 0 else (1, 0)
        responses = (chosen, rejected)
        item = Item(pair_id, prompt, (responses[order[0]], responses[order[1]]))
        self.items[item.id] = item
        group = self.groups.setdefault(user, Group(user))
        group.targets[item.id] = np.eye(2)[order.index(0)]
        group.partition[item.id] = part

    def task(self, notes: list[str] | None = None) -> TaskData:
        task = TaskData(
            self.card.name,
            self.card.metric,
            self.items,
            self.groups,
            dict(self.drops),
            notes or [],
            self.drops.examples,
        )
        task.validate()
        return task


def chat_text(turns: list[dict]) -> str:
    """A conversation as plain text, one `role: content` line per turn."""
    return "\n".join(f"{t.get('role', 'user')}: {t.get('content', '')}" for t in turns)


@LOADERS.register("reddit_tldr", "openai/summarize_from_feedback comparisons (user = worker)")
@reads_sources
def load_reddit_tldr(card: TaskCard, data_dir: Path | None) -> TaskData:
    builder = PairBuilder(card)
    for (split, part), rows in zip(
        (("train", "train"), ("validation", "test")), read_source(card, data_dir), strict=True
    ):
        for index, row in enumerate(rows):
            where = row.get("_where", f"{split} row {index}")
            with row_errors(where):
                info = field(row, "info", dict)
                summaries = field(row, "summaries", (list, np.ndarray))
                choice = row.get("choice")
                if choice not in (0, 1) or len(summaries) != 2:
                    raise DataError(f"{where}: expected 2 summaries and choice 0 or 1, got choice {choice!r}")
                prompt = info.get("post") or info.get("article") or ""
                chosen, rejected = summaries[choice]["text"], summaries[1 - choice]["text"]
                pair_id = f"tldr-{split}-{index}"
                builder.add(str(field(row, "worker", str)), pair_id, prompt, chosen, rejected, part, where=where)
    return builder.task()


@LOADERS.register("prism", "HannahRoseKirk/prism-alignment conversations (user = user_id), MRM pairing")
@reads_sources
def load_prism(card: TaskCard, data_dir: Path | None) -> TaskData:
    settings = {"min_dialogs": 6, "seed": 0, **card.source}
    survey, conversations = read_source(card, data_dir)
    active = {str(field(r, "user_id", str)) for r in survey if r.get("num_completed_conversations", 0)}
    dialogs: dict[str, list[tuple[str, list]]] = {}
    builder = PairBuilder(card)
    for row in conversations:
        where = row.get("_where", "a prism/conversations row") if isinstance(row, dict) else "a row"
        with row_errors(where):
            user = str(field(row, "user_id", str))
            if user not in active:
                builder.drops.add(
                    "conversations of users with no completed conversation in the survey", file=where, group=user
                )
                continue
            turns: dict[int, dict] = {}
            for message in field(row, "conversation_history", (list, np.ndarray)):
                turn = turns.setdefault(int(message["turn"]), {"user": None, "chosen": None, "rejected": []})
                if message["role"] == "user":
                    turn["user"] = message["content"]
                elif message.get("if_chosen") and turn["chosen"] is None:
                    turn["chosen"] = message["content"]
                elif not message.get("if_chosen"):
                    turn["rejected"].append(message["content"])
            valid = [(n, t) for n, t in sorted(turns.items()) if t["user"] and t["chosen"] and t["rejected"]]
            if not valid:
                builder.drops.add(
                    "conversations without a turn holding a user message, a chosen and a rejected reply",
                    file=where,
                    group=user,
                )
                continue
            dialogs.setdefault(user, []).append((str(field(row, "conversation_id", str)), valid))
    for user in sorted(dialogs):
        if len(dialogs[user]) < settings["min_dialogs"]:
            builder.drops.add(
                f"users with fewer than {settings['min_dialogs']} dialogs", group=user, value=len(dialogs[user])
            )
            continue
        order = sorted(dialogs[user])
        random.Random(md5_seed(user, settings["seed"])).shuffle(order)
        for position, (conversation, turns) in enumerate(order):
            part = "train" if position < len(order) // 2 else "test"
            history: list[dict] = []
            for number, turn in turns:
                prompt = chat_text([*history, {"role": "user", "content": turn["user"]}])
                for k, rejected in enumerate(turn["rejected"]):
                    builder.add(user, f"{conversation}-t{number}-r{k}", prompt, turn["chosen"], rejected, part)
                history += [{"role": "user", "content": turn["user"]}, {"role": "model", "content": turn["chosen"]}]
    return builder.task([f"conversations split per user with seed {settings['seed']} (md5 rule)"])


@LOADERS.register("chatbot_arena", "lmsys/chatbot_arena_conversations (user = judge)")
@reads_sources
def load_chatbot_arena(card: TaskCard, data_dir: Path | None) -> TaskData:
    settings = {"ties": "drop", "seed": 0, **card.source}
    builder = PairBuilder(card)
    by_user: dict[str, list] = {}
    (rows,) = read_source(card, data_dir)
    for index, row in enumerate(rows):
        where = row.get("_where", f"train row {index}")
        with row_errors(where):
            winner = field(row, "winner", str)
            if winner not in ("model_a", "model_b", "tie", "tie (bothbad)"):
                raise DataError(f"{where}: unknown winner {winner!r} (model_a, model_b, tie or tie (bothbad))")
            if winner.startswith("tie"):
                builder.drops.add("ties (task card: ties: drop)", file=where, value=winner)
                continue
            a, b = (
                list(field(row, "conversation_a", (list, np.ndarray))),
                list(field(row, "conversation_b", (list, np.ndarray))),
            )
            if not a or not b or a[-1]["role"] != "assistant" or b[-1]["role"] != "assistant":
                raise DataError(f"{where}: both conversations must end with an assistant turn")
            chosen, rejected = (
                (a[-1]["content"], b[-1]["content"]) if winner == "model_a" else (b[-1]["content"], a[-1]["content"])
            )
            by_user.setdefault(str(field(row, "judge", str)), []).append(
                (f"arena-{row.get('question_id', index)}-{index}", chat_text(a[:-1]), chosen, rejected)
            )
    for user, pairs in sorted(by_user.items()):
        order = sorted(pairs)
        random.Random(md5_seed(user, settings["seed"])).shuffle(order)
        for position, (pair_id, prompt, chosen, rejected) in enumerate(order):
            builder.add(user, pair_id, prompt, chosen, rejected, "train" if position < len(order) // 2 else "test")
    return builder.task(["each judge's comparisons split 50/50 (md5 rule)"])


@LOADERS.register("personal_reward_bench", "PersonalRewardBench sets: per-user split column, both orders judged")
@reads_sources
def load_personal_reward_bench(card: TaskCard, data_dir: Path | None) -> TaskData:
    folder = card.source.get("folder", "prism_personalized")
    builder = PairBuilder(card)
    for split, rows in zip(("train", "validation", "test"), read_source(card, data_dir), strict=True):
        for index, row in enumerate(rows):
            where = row.get("_where", f"{split} row {index}")
            with row_errors(where):
                part = field(row, "split", str)
                if part not in ("train", "val", "test"):
                    raise DataError(f"{where}: field 'split' must be train, val or test, got {part!r}")
                prompt = chat_text(list(field(row, "context", (list, np.ndarray))))
                chosen, rejected = field(row, "chosen", dict)["content"], field(row, "rejected", dict)["content"]
                first = (1, 0) if row.get("flip") else (0, 1)
                pair_id = f"{folder}-{split}-{row.get('conversation_id', index)}-{index}"
                pool = "test" if part == "test" else "train"
                user = str(field(row, "user_id", str))
                builder.add(user, pair_id + "-first", prompt, chosen, rejected, pool, first, where)
                builder.add(user, pair_id + "-second", prompt, chosen, rejected, pool, first[::-1], where)
    return builder.task(["each pair judged in both orders (flip gives the first)"])
