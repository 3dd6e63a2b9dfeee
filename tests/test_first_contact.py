"""What a new user meets first. The Hugging Face Hub paths of the loaders, without a network:
`datasets.load_dataset` and `hf_hub_download` are replaced by fakes serving the fixtures in the Hub's own
layout (dataset id, config and split; Arrow rows as `datasets` returns them); the offline message on the
real libraries with an unreachable endpoint; mistakes reported before any heavy import; `list` and
`run --help`."""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import datasets
import huggingface_hub
import pytest
from personalized_fixtures import write_chatbot_arena, write_personal_reward_bench, write_prism, write_reddit_tldr

from gpo_bench.cards import load_task_card
from gpo_bench.cli import build_parser, main
from gpo_bench.errors import DataError
from gpo_bench.loaders import LOADERS
from gpo_bench.loaders import hub as hub_access

PRB_SPLITS = ("train", "validation", "test")
# (Hub dataset, config, split) → the fixture file holding that split; written from the datasets' cards
# (SCHEMAS.md), not from the loaders' own declarations
HUB_LAYOUT = {
    ("openai/summarize_from_feedback", "comparisons", "train"): "reddit_tldr/comparisons/train.jsonl",
    ("openai/summarize_from_feedback", "comparisons", "validation"): "reddit_tldr/comparisons/validation.jsonl",
    ("HannahRoseKirk/prism-alignment", "survey", "train"): "prism/survey.jsonl",
    ("HannahRoseKirk/prism-alignment", "conversations", "train"): "prism/conversations.jsonl",
    ("lmsys/chatbot_arena_conversations", None, "train"): "chatbot_arena/train.jsonl",
    **{("MichaelR207/prism_personalized_0125", None, s): f"prism_personalized/{s}.jsonl" for s in PRB_SPLITS},
    **{
        ("MichaelR207/chatbot_arena_personalized_0125", None, s): f"chatbot_arena_personalized/{s}.jsonl"
        for s in PRB_SPLITS
    },
}
TASKS = [
    "reddit_tldr",
    "reddit_tldr_lore",
    "prism",
    "prism_lore",
    "chatbot_arena",
    "prism_personalized",
    "chatbot_arena_personalized",
]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub that answers, serving every fixture; `root` holds the same fixtures as local files, `calls` the
    Hub's calls."""
    root = tmp_path / "fixtures"
    write_reddit_tldr(root)
    write_prism(root)
    write_chatbot_arena(root)
    write_personal_reward_bench(root, "prism_personalized")
    write_personal_reward_bench(root, "chatbot_arena_personalized")
    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if (path, name, split) not in HUB_LAYOUT:
            raise ValueError(f"{path} has no config {name!r} with split {split!r}")
        return datasets.Dataset.from_json(
            str(root / HUB_LAYOUT[path, name, split]), keep_in_memory=True, cache_dir=str(tmp_path / "hf")
        )

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub_access, "hub_unreachable", lambda: None)
    return SimpleNamespace(root=root, calls=calls)


def load(name, data_dir):
    card = load_task_card(name)
    return LOADERS.get(card.loader)(card, data_dir)


@pytest.mark.parametrize("name", TASKS)
def test_the_hub_path_gives_the_same_task_as_the_local_files(hub, tmp_path, name):
    local = load(name, hub.root)
    hub.calls.clear()
    from_hub = load(name, None)
    assert hub.calls, "the Hub path was not taken"
    assert from_hub.fingerprint() == local.fingerprint()
    assert len(from_hub.groups) >= 5 and from_hub.drops == local.drops
    empty = tmp_path / "empty"  # a data folder without the task's files falls back to the Hub
    empty.mkdir()
    assert load(name, empty).fingerprint() == local.fingerprint()


@pytest.mark.parametrize("name", ["reddit_tldr", "prism", "chatbot_arena", "chatbot_arena_personalized"])
def test_fetch_writes_the_local_layout(hub, tmp_path, capsys, name):
    target = tmp_path / "fetched"
    assert main(["fetch", "--task", name, "--data-dir", str(target)]) == 0
    written = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert written and all(path.endswith(".jsonl") for path in written)
    assert not list(target.rglob(".*partial"))
    assert load(name, target).fingerprint() == load(name, hub.root).fingerprint()


def test_fetch_without_the_hub_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hub_access, "hub_unreachable", lambda: "https://hub.example cannot be reached (timeout)")
    assert main(["fetch", "--task", "prism", "--data-dir", str(tmp_path / "fetched")]) == 2
    assert "cannot fetch HannahRoseKirk/prism-alignment (configs survey, conversations)" in capsys.readouterr().err
    assert main(["fetch", "--task", "opinionqa", "--data-dir", str(tmp_path / "fetched")]) == 2
    assert "no Hugging Face Hub copy" in capsys.readouterr().err
    assert not (tmp_path / "fetched").exists()


def test_a_data_folder_with_part_of_a_task_names_what_is_missing(hub, tmp_path):
    (tmp_path / "part/prism").mkdir(parents=True)
    (tmp_path / "part/prism/survey.jsonl").write_text((hub.root / "prism/survey.jsonl").read_text())
    with pytest.raises(DataError, match=r"missing: prism/conversations.jsonl \(or .parquet\)"):
        load("prism", tmp_path / "part")


def test_globalopinionqa_from_the_hub_file(data_dir, monkeypatch):
    csv = data_dir / "globalopinionqa" / "global_opinions_subset.csv"
    asked = []

    def download(repo_id, filename, repo_type=None, **kwargs):
        asked.append((repo_id, filename, repo_type))
        return str(csv)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(hub_access, "hub_unreachable", lambda: None)
    card = replace(load_task_card("globalopinionqa"), groups=None)
    local = LOADERS.get(card.loader)(card, data_dir)
    assert LOADERS.get(card.loader)(card, None).fingerprint() == local.fingerprint()
    assert asked == [("Anthropic/llm_global_opinions", "data/global_opinions.csv", "dataset")]


def run_cli(args, env_changes, tmp_path, code="from gpo_bench.cli import main; sys.exit(main(sys.argv[1:]))"):
    env = {k: v for k, v in os.environ.items() if k not in {"GPO_BENCH_DATA", "HF_HUB_OFFLINE", "OMP_WAIT_POLICY"}}
    env.update(HF_HOME=str(tmp_path / "hf-home"), **env_changes)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}", *args], env=env, capture_output=True, text=True, timeout=300
    )
    return done, time.perf_counter() - started


@pytest.mark.parametrize(
    "env", [{"HF_ENDPOINT": "http://127.0.0.1:9"}, {"HF_HUB_OFFLINE": "1"}], ids=["unreachable", "HF_HUB_OFFLINE"]
)
def test_without_the_hub_one_message_names_the_dataset_the_files_and_the_fetch_command(tmp_path, env):
    args = ["run", "--task", "prism", "--method", "uniform", "--output-dir", str(tmp_path / "out")]
    done, seconds = run_cli(args, env, tmp_path)
    assert done.returncode == 2, done.stderr
    for part in [
        "HannahRoseKirk/prism-alignment (configs survey, conversations)",
        "prism/survey.jsonl (or .parquet), prism/conversations.jsonl (or .parquet)",
        "no data folder was given",
        "`gpo-bench fetch --task prism --data-dir DIR`",
        "pass --data-dir DIR",
    ]:
        assert part in done.stderr
    assert "retry" not in done.stderr.lower() and "retrying" not in done.stdout.lower()
    assert [line for line in done.stderr.splitlines() if line.strip()] == [done.stderr.strip()]  # one line
    assert seconds < 60  # torch's import included; the Hub itself answers in well under a second
    assert not (tmp_path / "out" / "runs").exists()


def test_cheap_mistakes_are_reported_before_any_heavy_import(tmp_path):
    code = (
        "from gpo_bench.cli import main\n"
        "for args in sys.argv[1:]:\n"
        "    try:\n"
        "        print(main(args.split()))\n"
        "    except SystemExit as error:  # argparse's own checks (flag ranges)\n"
        "        print(error.code)\n"
        "heavy = ['torch', 'pandas', 'transformers', 'datasets', 'gpo_bench.loaders', 'gpo_bench.runner']\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "import os; print(os.environ['OMP_WAIT_POLICY'])"
    )
    mistakes = [
        "run --task prsim --method gpo",
        "run --task prism --method gop",
        "run --task prism --method gpo --encoder minlm",
        "run --task prism --method gpo --set max_step=10",
        "run --task prism --method gpo --train-frac 1.5",
        "sweep --tasks prism,opinonqa --methods gpo",
    ]
    done, _ = run_cli(mistakes, {}, tmp_path, code)
    *codes, heavy, policy = done.stdout.split("\n")[:-1]
    assert codes == ["2"] * len(mistakes), done.stderr
    assert heavy == "[]"
    assert policy == "PASSIVE"  # the CLI's default, set before torch can load
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert "unknown task 'prsim'" in errors[0] and "unknown method 'gop'" in errors[1]
    assert "Did you mean minilm" in errors[2] and "max_step" in errors[3]
    assert "argument --train-frac: expected a number in (0, 1), got '1.5'" in errors[4]
    assert "unknown task 'opinonqa'" in errors[5]
    done, _ = run_cli(["list"], {"OMP_WAIT_POLICY": "ACTIVE"}, tmp_path, code)
    assert done.stdout.split("\n")[-2] == "ACTIVE"  # a user's own setting is kept


def test_list_aligns_every_description_and_run_help_names_every_encoder(capsys):
    assert main(["list"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    starts = {len(line) - len(line.lstrip()[line.lstrip().index("  ") :].lstrip()) for line in rows}
    assert len(rows) > 30 and len(starts) == 1  # one column, even after chatbot_arena_personalized
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in ("minilm", "bow", "smollm2"))


def subcommands(parser: argparse.ArgumentParser, name: str = "gpo-bench") -> dict[str, argparse.ArgumentParser]:
    """Every (nested) subcommand's parser by its full name, the top one included."""
    found = {name: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                found.update(subcommands(child, f"{name} {sub}"))
    return found


def test_help_explains_every_flag_and_run_and_sweep_share_theirs():
    parsers = subcommands(build_parser())
    assert {"gpo-bench run", "gpo-bench sweep", "gpo-bench plot shots", "gpo-bench plot groups"} <= set(parsers)
    for name, parser in parsers.items():
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"{name} {action.option_strings[0]} has no help"

    def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
        return {action.option_strings[-1]: action for action in parser._actions if action.option_strings}

    run, sweep = options(parsers["gpo-bench run"]), options(parsers["gpo-bench sweep"])
    shared = {"--shots", "--seeds", "--split-seed", "--limit-items", "--set", "--data-dir", "--output-dir"}
    shared |= {"--cache-dir", "--device", "--force", "--strict"}
    assert shared <= set(run) & set(sweep)
    for flag in shared:  # one declaration: the same kind of value, parsed alike
        assert type(run[flag]) is type(sweep[flag]) and run[flag].choices == sweep[flag].choices, flag
        assert getattr(run[flag].type, "__name__", None) == getattr(sweep[flag].type, "__name__", None), flag
    assert run["--seeds"].type("0, 2") == sweep["--seeds"].type("0, 2") == (0, 2)
