"""Bring your own task, method and code: include folders (`--include-path`, $GPO_BENCH_INCLUDE_PATH) and the
`gpo_bench.plugins` entry-point group, end to end through the command line; clashes and broken plugins."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from gpo_bench.cli import main
from gpo_bench.discovery import INCLUDE_ENV

SURVEY = "group,item,prompt,option,weight\n" + "".join(
    f"g{g},q{q},Question {q}?,{o},{(g * 7 + q * 3 + i) % 5 + (g % 2) * 4 * (i == 0)}\n"
    for g in range(6)
    for q in range(8)
    for i, o in enumerate(("yes", "no", "maybe"))
)
TASK_CARD = """\
name: {name}
description: a survey from an include folder
version: 1
loader: survey
source: {{file: ../survey.csv}}
protocol: opinion
metric: alignment
shots: [0, 3]
train_frac: 0.5
val_frac: 0.3
"""
METHOD_CARD = """\
name: {name}
description: a fixed distribution from a plugin module
version: 1
implementation: {name}
settings: {{first: 0.6}}
"""
METHOD_CODE = """\
import numpy as np
from gpo_bench.methods.base import Method
from gpo_bench.registry import METHODS


@METHODS.register("{name}", "the first option gets `first`, the rest share the remainder")
class FirstHeavy(Method):
    def predict_episode(self, episode):
        out = []
        for item in episode.targets:
            n = self.n_candidates(item)
            out.append(np.array([self.settings["first"]] + [(1 - self.settings["first"]) / (n - 1)] * (n - 1)))
        return out
"""


@pytest.fixture(autouse=True)
def no_include_path(monkeypatch):
    """Each test starts without include folders; what main() puts into the environment is undone after it."""
    monkeypatch.setenv(INCLUDE_ENV, "")


def include_folder(root: Path, name: str) -> Path:
    (root / "tasks").mkdir(parents=True)
    (root / "baselines").mkdir()
    (root / "survey.csv").write_text(SURVEY)
    (root / "tasks" / f"{name}.yaml").write_text(TASK_CARD.format(name=name))
    (root / "baselines" / f"{name}.yaml").write_text(METHOD_CARD.format(name=name))
    (root / f"{name.replace('-', '_')}.py").write_text(METHOD_CODE.format(name=name))
    return root


def test_task_card_method_card_and_python_method_from_an_include_path_run_end_to_end(tmp_path, capsys):
    folder = include_folder(tmp_path / "mine", "mine-first")
    out = tmp_path / "out"
    assert main(["list", "--include-path", str(folder)]) == 0
    listing = capsys.readouterr().out
    assert re.search(
        rf"mine-first +a survey from an include folder \[{re.escape(str(folder / 'tasks' / 'mine-first.yaml'))}\]",
        listing,
    )
    assert "[built-in]" in listing.splitlines()[1]
    args = ["run", "--task", "mine-first", "--method", "mine-first", "--seeds", "0,1", "--output-dir", str(out)]
    assert main([*args, "--include-path", str(folder)]) == 0
    result = json.loads(next((out / "runs").glob("mine-first--mine-first--*/result.json")).read_text())
    assert result["cards"] == {
        "task": str(folder / "tasks" / "mine-first.yaml"),
        "method": str(folder / "baselines" / "mine-first.yaml"),
    }
    # every prediction is the plugin's fixed distribution, and the score is recomputed independently
    from scipy.spatial.distance import jensenshannon

    rows = [json.loads(line) for line in (next((out / "runs").glob("mine-first--*")) / "predictions.jsonl").open()]
    assert rows and all(r["pred"] == [0.6, 0.2, 0.2] for r in rows)
    by_group: dict = {}
    for r in rows:
        if r["shots"] == 3:
            by_group.setdefault((r["seed"], r["group"]), []).append(1 - jensenshannon(r["pred"], r["target"]))
    expected = np.mean([np.mean([np.mean(v) for (s, _), v in by_group.items() if s == seed]) for seed in (0, 1)])
    assert result["metrics"]["3"]["alignment"]["mean"] == pytest.approx(expected, abs=1e-9)


def test_environment_variable_and_sweep_workers_see_the_include_path(tmp_path, monkeypatch):
    folder = include_folder(tmp_path / "env", "env-first")
    monkeypatch.setenv(INCLUDE_ENV, str(folder))
    out = tmp_path / "out"
    args = ["sweep", "--tasks", "env-first", "--methods", "env-first,uniform", "--seeds", "0,1", "--jobs", "2"]
    assert main([*args, "--output-dir", str(out)]) == 0  # spawned worker processes import the plugin too
    assert len(list((out / "runs").glob("env-first--*/result.json"))) == 4


def test_a_card_that_clashes_with_a_built_in_one_names_both_files(tmp_path, capsys):
    folder = include_folder(tmp_path / "clash", "clash-card")
    (folder / "baselines" / "uniform.yaml").write_text(METHOD_CARD.format(name="uniform"))
    assert main(["list", "--include-path", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder / "baselines" / "uniform.yaml") in err
    assert str(Path("baselines") / "uniform.yaml") in err and "already defines" in err


def test_a_python_name_that_clashes_names_both_files(tmp_path, capsys):
    folder = tmp_path / "clash-code"
    folder.mkdir()
    (folder / "again.py").write_text(METHOD_CODE.format(name="population"))
    assert main(["run", "--task", "synthetic", "--method", "uniform", "--include-path", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder / "again.py") in err and "gpo_bench/methods/baselines.py" in err and "registered twice" in err


def test_a_broken_plugin_names_its_file_and_line(tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "bad.py").write_text("import numpy\n\nraise ImportError('no module named missing_thing')\n")
    assert main(["list", "--include-path", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'bad.py'}: the plugin failed to import (line 3): ImportError" in err
    (folder / "bad.py").unlink()
    (folder / "syntax.py").write_text("def broken(:\n")
    assert main(["list", "--include-path", str(folder)]) == 2
    assert f"{folder / 'syntax.py'}: the plugin failed to import (line 1): SyntaxError" in capsys.readouterr().err
    assert main(["list", "--include-path", str(tmp_path / "absent")]) == 2
    assert "--include-path" in capsys.readouterr().err


def test_entry_point_plugins_bring_cards_and_code(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    package = include_folder(site / "ep_plugin", "ep-first")
    (package / "__init__.py").write_text("from . import ep_first  # noqa: F401\n")
    info = site / "ep_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gpo_bench.plugins]\nfirst = ep_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        assert main(["list"]) == 0
        listing = capsys.readouterr().out
        assert "ep-first" in listing and str(package / "baselines" / "ep-first.yaml") in listing
        out = tmp_path / "out"
        assert (
            main(["run", "--task", "ep-first", "--method", "ep-first", "--seeds", "0", "--output-dir", str(out)]) == 0
        )
        (info / "entry_points.txt").write_text("[gpo_bench.plugins]\nbroken = ep_missing_module\n")
        assert main(["list"]) == 2
        err = capsys.readouterr().err
        assert "entry point broken = ep_missing_module" in err and "ep-plugin" in err
    finally:
        sys.modules.pop("ep_plugin", None)
        sys.modules.pop("ep_plugin.ep_first", None)
