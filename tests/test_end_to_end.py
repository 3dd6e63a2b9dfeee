"""Real runs on the shared data: loader → encoder → method → metrics → result files, with the
metrics recomputed independently from predictions.jsonl (scipy) and by the shared re-scorer."""

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from gpo_bench.cli import main

SCHEMA = json.loads((Path(__file__).parent.parent / "gpo_bench" / "result.schema.json").read_text())
RESCORE = Path(__file__).resolve().parent.parent.parent / "shared" / "tools" / "rescore.py"


def recompute(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    cells = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        p, t = np.array(r["pred"]), np.array(r["target"])
        if r["ordinal"]:
            o = np.array(r["ordinal"])
            score = 1 - wasserstein_distance(o, o, p, t) / (o.max() - o.min())
        else:
            score = 1 - jensenshannon(p, t)
        cells[str(r["shots"])][r["seed"]][r["group"]].append(score)
    return {
        k: float(np.mean([np.mean([np.mean(v) for v in groups.values()]) for groups in seeds.values()]))
        for k, seeds in cells.items()
    }


def run(args, capsys) -> tuple[dict, Path]:
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    run_dir = Path(out.split("run folder: ")[1].split()[0])
    return json.loads((run_dir / "result.json").read_text()), run_dir


@pytest.mark.parametrize(
    ("task", "limit", "methods"),
    [
        ("opinionqa", 60, ["uniform", "population", "group-knn", "head", "knn", "gpo"]),
        ("globalopinionqa", 120, ["population", "knn", "gpo"]),
    ],
)
def test_real_runs_agree_with_an_independent_rescoring(task, limit, methods, data_dir, tmp_path, capsys):
    for method in methods:
        args = [
            "--task",
            task,
            "--method",
            method,
            "--data-dir",
            str(data_dir),
            "--output-dir",
            str(tmp_path),
            "--shots",
            "0,5",
            "--seeds",
            "0,1",
            "--limit-items",
            str(limit),
        ]
        if method == "gpo":
            args += ["--set", "max_steps=6", "--set", "eval_every=3"]
        result, run_dir = run(args, capsys)
        jsonschema.validate(result, SCHEMA)
        assert result["spec"]["encoder"] == (
            None
            if method in ("uniform", "population", "group-knn")
            else "minilm,pooling=mean,template=alpaca,dtype=float32,max_length=512"
        )
        mine = recompute(run_dir)
        assert set(mine) == {"0", "5"}
        for k, value in mine.items():
            cell = result["metrics"][k]["alignment"]
            assert cell["mean"] == pytest.approx(value, abs=1e-9)
            assert cell["ci"][0] <= cell["mean"] <= cell["ci"][1]
            assert cell["n_groups"] == len(result["split"]["test"])
        assert 0.5 < mine["5"] <= 1.0
    if RESCORE.exists():
        done = subprocess.run([sys.executable, str(RESCORE), str(tmp_path), "--quiet"], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"rescored {2 * len(methods)} cells" in done.stdout


def test_rerun_reuses_the_finished_run_unless_forced(data_dir, tmp_path, capsys):
    args = [
        "--task",
        "opinionqa",
        "--method",
        "population",
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(tmp_path),
        "--shots",
        "0",
        "--seeds",
        "0",
        "--limit-items",
        "20",
    ]
    first, run_dir = run(args, capsys)
    again, again_dir = run(args, capsys)
    assert again_dir == run_dir and again["created"] == first["created"]
    forced, _ = run([*args, "--force"], capsys)
    assert forced["metrics"] == first["metrics"]  # deterministic
    assert len(list((tmp_path / "runs").iterdir())) == 1
