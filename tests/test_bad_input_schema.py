"""The package's own outputs against its own schema: every task card that runs offline (the shared data where it
is, the personalized sources' fixtures, the examples) runs with a fast method, and its result.json must follow
result.schema.json, whatever its headline metric (alignment, accuracy, user_accuracy), and count as finished, so
that a sweep never trains it again (per-person sweeps included)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from gpo_bench import loaders
from gpo_bench.cards import load_task_card
from gpo_bench.cli import main
from gpo_bench.discovery import INCLUDE_ENV, task_names
from gpo_bench.run_folder import PACKAGE_DIR, data_identity, run_state
from gpo_bench.runner import limit_items
from tests import personalized_fixtures as pf

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


def copy_fixture(name: str) -> Callable[[Path], None]:
    return lambda root: shutil.copytree(FIXTURES / name, root, dirs_exist_ok=True)


# task card → how to write its data under a fresh folder (None: it needs no data; "shared": the shared data)
SOURCES: dict[str, Callable[[Path], None] | str | None] = {
    "synthetic": None,
    "synthetic_individual": None,
    "synthetic_mixture": None,
    "synthetic_one_topic": None,
    "synthetic_pairwise": None,
    "synthetic_pairwise_shared": None,
    "opinionqa": "shared",
    "opinionqa_22groups": "shared",
    "globalopinionqa": "shared",
    "opinionqa_individual": copy_fixture("opinionqa_responses"),
    "reddit_tldr": pf.write_reddit_tldr,
    "reddit_tldr_lore": pf.write_reddit_tldr,
    "prism": pf.write_prism,
    "prism_lore": pf.write_prism,
    "chatbot_arena": pf.write_chatbot_arena,
    "prism_personalized": pf.write_personal_reward_bench,
    "chatbot_arena_personalized": lambda root: pf.write_personal_reward_bench(root, "chatbot_arena_personalized"),
    "example_survey": None,
    "example_pairs": None,
}


@pytest.fixture(autouse=True)
def examples_included(monkeypatch):
    monkeypatch.setenv(INCLUDE_ENV, str(REPO / "examples"))


def test_every_task_card_has_an_offline_source_here():
    """A new task card must be added above, so that its output is checked against the schema too."""
    assert sorted(SOURCES) == sorted(task_names())


def data_for(task: str, tmp_path: Path, request) -> Path | None:
    source = SOURCES[task]
    if source is None:
        return None
    if source == "shared":
        return request.getfixturevalue("data_dir")
    source(tmp_path / "data")
    return tmp_path / "data"


@pytest.mark.parametrize("task", sorted(SOURCES))
def test_a_finished_run_of_every_task_follows_the_schema_and_counts_as_finished(task, tmp_path, request):
    data_dir = data_for(task, tmp_path, request)
    limit = 40 if SOURCES[task] == "shared" else None  # the shared data, cut for speed; the fixtures are small
    argv = ["run", "--task", task, "--method", "uniform", "--seeds", "0", "--output-dir", str(tmp_path / "out")]
    argv += (["--data-dir", str(data_dir)] if data_dir else []) + (["--limit-items", str(limit)] if limit else [])
    if task == "opinionqa_individual":  # the fixture's 3 respondents: 2 to meta-train, 1 to test
        argv += ["--train-frac", "0.7"]
    assert main(argv) == 0
    folder = next((tmp_path / "out" / "runs").iterdir())
    result = json.loads((folder / "result.json").read_text())
    schema = json.loads((PACKAGE_DIR / "result.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(result)
    headline = result["metric"]
    assert all(headline in cell for cell in result["metrics"].values())
    loaded = limit_items(loaders.load_task(load_task_card(task), data_dir), limit)
    assert run_state(folder, data_identity(loaded))[::2] == ("finished", "finished")


@pytest.mark.parametrize("task", ["reddit_tldr", "prism_personalized"])
def test_a_per_person_sweep_resumes_without_running_again(task, tmp_path, capsys):
    SOURCES[task](tmp_path / "data")
    argv = ["sweep", "--tasks", task, "--methods", "uniform,population", "--seeds", "0", "--shots", "0,2"]
    argv += ["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "2 ran now" in first, first
    loaders.clear_loaded_tasks()  # a new command is a new process
    assert main([*argv, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert [line.split()[0] for line in listing.splitlines()] == ["finished", "finished"], listing
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "2 already finished, 0 ran now" in again, again
