"""Small fixtures in the published schemas of the personalized preference datasets (field for field,
see ../shared/data/SCHEMAS.md), written as the local layout gpo-bench reads."""

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tldr_row(worker: str, n: int, split: str, choice: int = 0) -> dict:
    return {
        "info": {
            "id": f"t3_{worker}{n}",
            "post": f"Post {n} by someone asking {worker} for advice.",
            "title": "Advice?",
            "subreddit": "relationships",
            "site": None,
            "article": None,
        },
        "summaries": [
            {"text": f" Summary one of post {n}.", "policy": "sup2", "note": None},
            {"text": f" Summary two of post {n}.", "policy": "ppo_xl", "note": None},
        ],
        "choice": choice,
        "worker": worker,
        "batch": "batch3",
        "split": "train" if split == "train" else "valid1",
        "extra": {"confidence": 7},
    }


def write_reddit_tldr(root: Path, workers: int = 8) -> None:
    """Worker w<k> has 10 + 2k training and 4 validation comparisons; w-train-only has no validation."""
    train, valid = [], []
    for k in range(workers):
        train += [tldr_row(f"w{k}", n, "train", n % 2) for n in range(10 + 2 * k)]
        valid += [tldr_row(f"w{k}", 100 + n, "valid", n % 2) for n in range(4)]
    train += [tldr_row("w-train-only", n, "train") for n in range(5)]
    write_jsonl(root / "reddit_tldr/comparisons/train.jsonl", train)
    write_jsonl(root / "reddit_tldr/comparisons/validation.jsonl", valid)


def prism_conversation(user: str, n: int) -> dict:
    history = [{"turn": 0, "role": "user", "content": f"Opening prompt {n} of {user}"}]
    for k, chosen in enumerate([True, False, False, False]):
        history.append(
            {
                "turn": 0,
                "role": "model",
                "content": f"Reply {k} to {n}",
                "model_provider": "p",
                "model_name": f"m{k}",
                "score": 90 - 10 * k,
                "if_chosen": chosen,
                "within_turn_id": k,
            }
        )
    history.append({"turn": 1, "role": "user", "content": f"Follow-up {n}"})
    for k, chosen in enumerate([False, True]):
        history.append(
            {
                "turn": 1,
                "role": "model",
                "content": f"Second reply {k} to {n}",
                "model_provider": "p",
                "model_name": "m0",
                "score": 50 + 10 * k,
                "if_chosen": chosen,
                "within_turn_id": k,
            }
        )
    attributes = dict.fromkeys(
        ["values", "fluency", "factuality", "safety", "diversity", "creativity", "helpfulness"], 50
    )
    return {
        "conversation_id": f"c{user}-{n}",
        "user_id": user,
        "included_in_balanced_subset": True,
        "generated_datetime": "2023-11-22 10:00:00",
        "timing_duration_s": 60.0,
        "timing_duration_mins": 1.0,
        "conversation_type": "unguided",
        "opening_prompt": f"Opening prompt {n} of {user}",
        "conversation_turns": 2,
        "conversation_history": history,
        "performance_attributes": attributes,
        "choice_attributes": attributes,
        "open_feedback": "fine",
    }


def write_prism(root: Path) -> None:
    """user0..user5 have 6 dialogs, user6 has 4 (dropped), user7 none completed (skipped)."""
    survey, conversations = [], []
    for u in range(8):
        dialogs = 6 if u < 6 else (4 if u == 6 else 0)
        survey.append(
            {
                "user_id": f"user{u}",
                "survey_only": dialogs == 0,
                "num_completed_conversations": dialogs,
                "stated_prefs": {"values": 50},
                "age": "25-34 years old",
                "gender": "Female",
                "location": {"birth_country": "UK", "reside_country": "UK"},
            }
        )
        conversations += [prism_conversation(f"user{u}", n) for n in range(dialogs)]
    conversations.append(prism_conversation("user7", 0))
    write_jsonl(root / "prism/survey.jsonl", survey)
    write_jsonl(root / "prism/conversations.jsonl", conversations)


def arena_row(judge: str, n: int, winner: str) -> dict:
    def conversation(model: str) -> list:
        return [
            {"content": f"Question {n} from {judge}", "role": "user"},
            {"content": f"Answer by {model} to {n}", "role": "assistant"},
        ]

    return {
        "question_id": f"q{judge}{n}",
        "model_a": "vicuna-13b",
        "model_b": "koala-13b",
        "winner": winner,
        "judge": judge,
        "conversation_a": conversation("vicuna-13b"),
        "conversation_b": conversation("koala-13b"),
        "turn": 1,
        "anony": True,
        "language": "English",
        "tstamp": 1682351591.0,
        "openai_moderation": {"categories": {}, "category_scores": {}, "flagged": False},
        "toxic_chat_tag": {"roberta-large": {"flagged": False}, "t5-large": {"flagged": False}},
    }


def write_chatbot_arena(root: Path) -> None:
    winners = ["model_a", "model_b", "tie", "model_a", "tie (bothbad)", "model_b", "model_a", "model_b"]
    write_jsonl(
        root / "chatbot_arena/train.jsonl",
        [arena_row(f"arena_user_{j}", n, w) for j in range(6) for n, w in enumerate(winners)],
    )


def write_personal_reward_bench(root: Path, folder: str = "prism_personalized") -> None:
    rows = {"train": [], "validation": [], "test": []}
    for u in range(5):
        for n, part in enumerate(["train"] * 4 + ["val"] + ["test"] * 2):
            hub_split = {"train": "train", "val": "validation", "test": "test"}[part]
            rows[hub_split].append(
                {
                    "conversation_id": f"c{u}-{n}",
                    "user_id": f"user{u}",
                    "context": [{"content": f"Prompt {n} of user{u}", "role": "user"}],
                    "chosen": {"content": f"Chosen reply {n}", "role": "model"},
                    "rejected": {"content": f"Rejected reply {n}", "role": "model"},
                    "turns": 1,
                    "type": "unguided",
                    "split": part,
                    "flip": n % 2 == 1,
                    "chosen_score": 80,
                    "rejected_score": 40,
                    "dataset": "prism",
                    "agreement": True,
                }
            )
    for split, split_rows in rows.items():
        write_jsonl(root / f"{folder}/{split}.jsonl", split_rows)
