"""`gpo-bench sweep` on the synthetic task with cheap methods: the grid from flags or a file, one run per
seed (GPO: one run for all seeds, predicting as one run per seed), resume after a kill or a failure (only the
missing runs execute), failures recorded in error.json, and the same run folders with --jobs 2 (and Ray) as
with --jobs 1."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpo_bench import runner, sweep, sweep_backends
from gpo_bench.cli import main
from gpo_bench.errors import CardError

REPO = Path(__file__).resolve().parent.parent
FAST = ["--tasks", "synthetic", "--methods", "uniform,population", "--shots", "0,5"]


def finished(output: Path) -> dict[str, float]:
    """run folder name → mtime of its result.json."""
    return {p.parent.name: p.stat().st_mtime_ns for p in (output / "runs").glob("*/result.json")}


def spy_on_execute(monkeypatch, fail_method: str | None = None) -> list[str]:
    """Record the run ids that really execute (and make one method fail, if asked)."""
    executed = []
    real = runner.execute

    def execute(spec, *args, **kwargs):
        executed.append(runner.run_id(spec.resolved()))
        if spec.method == fail_method:
            raise RuntimeError(f"{fail_method} broke on purpose")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(sweep_backends, "execute", execute)
    return executed


def test_the_grid_from_a_file_and_flags(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "tasks: [synthetic]\nmethods: [uniform, knn, gpo]\nencoders: [minilm, bow]\ntrain_fracs: [0.5, 0.7]\n"
        "seeds: [0, 1]\nshots: [0, 5]\nset: {max_steps: 7, knn.neighbors: 4}\n"
    )
    runs = sweep.plan(sweep.make_grid(path, {"seeds": (3,)}))  # a flag replaces the file's field
    by_method = {m: [r for r in runs if r.spec.method == m] for m in ("uniform", "knn", "gpo")}
    assert len(by_method["uniform"]) == 2  # one per train frac: uniform uses no encoder, so one run for both
    assert len(by_method["knn"]) == len(by_method["gpo"]) == 4  # 2 encoders × 2 train fracs
    assert all(r.resolved["seeds"] == [3] and r.resolved["shots"] == [0, 5] for r in runs)
    assert {r.resolved["settings"]["max_steps"] for r in by_method["gpo"]} == {7}
    assert {r.resolved["settings"]["neighbors"] for r in by_method["knn"]} == {4}
    assert len({r.run_id for r in runs}) == len(runs)
    assert [r.run_id for r in sweep.plan(sweep.make_grid(path, {"seeds": (3,)}))] == [r.run_id for r in runs]

    with pytest.raises(CardError, match=r"sweep.yaml: unknown field 'method'"):
        path.write_text("tasks: [synthetic]\nmethod: [uniform]\n")
        sweep.make_grid(path, {})
    with pytest.raises(CardError, match=r"sweep.yaml: field 'seeds' holds 'a'"):
        path.write_text("tasks: [synthetic]\nmethods: [uniform]\nseeds: [0, a]\n")
        sweep.make_grid(path, {})
    path.write_text("tasks: [synthetic]\nmethods: [gpo, uniform]\nseeds: [0, 1]\nseeds_together: false\n")
    assert [r.spec.seeds for r in sweep.plan(sweep.make_grid(path, {}))] == [(0,), (1,), (0,), (1,)]
    assert len(sweep.plan(sweep.make_grid(path, {"seeds_together": True}))) == 3  # the flag replaces the file's
    with pytest.raises(CardError, match=r"field 'seeds_together' must be a bool, got 1"):
        path.write_text("tasks: [synthetic]\nmethods: [gpo]\nseeds_together: 1\n")
        sweep.make_grid(path, {})
    with pytest.raises(CardError, match="no method of this sweep"):
        sweep.make_grid(None, {"tasks": ("synthetic",), "methods": ("uniform",), "set": ["max_steps=5"]}).specs()
    with pytest.raises(CardError, match="method 'gpo' is not in this sweep"):
        sweep.make_grid(None, {"tasks": ("synthetic",), "methods": ("knn",), "set": ["gpo.max_steps=5"]}).specs()
    # a file's override of a method that --methods leaves out is dropped, not an error
    path.write_text("tasks: [synthetic]\nmethods: [gpo, knn]\nset: {gpo.max_steps: 5, knn.neighbors: 4}\n")
    narrowed = sweep.make_grid(path, {"methods": ("knn",)})
    assert narrowed.overrides == {"knn.neighbors": 4} and narrowed.specs()
    with pytest.raises(CardError, match="a sweep needs methods"):
        sweep.make_grid(None, {"tasks": ("synthetic",)})


def test_parallel_runs_that_encode_the_same_texts_wait_for_one_that_does_not_train():
    grid = {"tasks": ("synthetic",), "methods": ("gpo", "uniform", "head", "knn"), "encoders": ("bow",)}
    runs = sweep.plan(sweep.make_grid(None, {**grid, "seeds": (0, 1)}))
    ready, held = sweep_backends.waves(runs)
    leader = ready[0]
    assert leader.spec.method == "head" and leader.spec.seeds == (0,)  # the first feature run without training
    assert [r.spec.method for r in ready[1:]] == ["uniform", "uniform"]
    assert [(r.spec.method, r.spec.seeds) for r in held[leader.run_id]] == [
        ("gpo", (0, 1)),  # GPO trains both seeds in one run
        ("head", (1,)),
        ("knn", (0,)),
        ("knn", (1,)),
    ]


def test_a_failing_run_is_recorded_the_others_go_on_and_a_rerun_executes_only_it(tmp_path, monkeypatch, capsys):
    args = ["sweep", *FAST, "--seeds", "0,1", "--output-dir", str(tmp_path)]
    executed = spy_on_execute(monkeypatch, fail_method="population")
    assert main(args) == 1
    summary = capsys.readouterr().out
    assert "4 runs: 0 already finished, 2 ran now, 2 failed" in summary
    failed = [
        r
        for r in sweep.plan(
            sweep.make_grid(
                None, {"tasks": ("synthetic",), "methods": ("population",), "shots": (0, 5), "seeds": (0, 1)}
            )
        )
    ]
    for run in failed:
        error = json.loads((run.folder(tmp_path) / "error.json").read_text())
        assert error["error"] == "RuntimeError: population broke on purpose" and error["run_id"] == run.run_id
        assert f"FAILED {run.folder(tmp_path)}: RuntimeError: population broke on purpose" in summary
        assert not (run.folder(tmp_path) / "result.json").exists()
    before = finished(tmp_path)
    assert len(before) == 2 and len(executed) == 4

    executed = spy_on_execute(monkeypatch)
    assert main(args) == 0
    assert sorted(executed) == sorted(r.run_id for r in failed)
    assert "4 runs: 2 already finished, 2 ran now, 0 failed" in capsys.readouterr().out
    after = finished(tmp_path)
    assert len(after) == 4 and all(after[name] == mtime for name, mtime in before.items())
    assert not any((tmp_path / "runs").glob("*/error.json"))


def test_a_killed_sweep_resumes_with_only_the_missing_runs(tmp_path, monkeypatch, capsys):
    args = ["sweep", *FAST, "--seeds", "0,1,2,3,4,5", "--output-dir", str(tmp_path)]
    process = subprocess.Popen(
        [sys.executable, "-m", "gpo_bench", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not finished(tmp_path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = finished(tmp_path)
    assert 1 <= len(before) < 12, "the sweep was not killed midway"

    executed = spy_on_execute(monkeypatch)
    assert main(args) == 0
    after = finished(tmp_path)
    assert len(after) == 12
    assert sorted(executed) == sorted(set(after) - set(before))  # only the missing runs ran
    assert all(after[name] == mtime for name, mtime in before.items())
    assert f"12 runs: {len(before)} already finished, {12 - len(before)} ran now, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("seeds", ["--seeds-together", "--no-seeds-together"])
def test_workers_end_when_the_sweep_is_killed(tmp_path, seeds):
    """Together: one GPO run, in the sweep's process, whose seeds train in processes that report through a
    manager's queue; apart: two sweep workers, one GPO run each. Every child ends with the sweep."""
    args = ["sweep", "--tasks", "synthetic", "--methods", "gpo", "--encoders", "bow", "--seeds", "0,1", seeds]
    args += ["--set", "max_steps=100000", "--jobs", "2", "--output-dir", str(tmp_path)]
    process = subprocess.Popen([sys.executable, "-m", "gpo_bench", *args], cwd=REPO, stderr=subprocess.DEVNULL)

    def workers() -> list[int]:
        listed = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in listed.split()]

    deadline = time.monotonic() + 120
    while len(started := workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(started) >= 2, "the sweep never started its workers"
    time.sleep(3)  # into training
    started = workers()
    process.kill()  # SIGKILL: no handler of the sweep runs
    process.wait()

    def running(pid: int) -> bool:  # a zombie (ended, not yet reaped) counts as ended
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False

    deadline = time.monotonic() + 20
    while any(running(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in started if running(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "workers outlived the sweep"


def results(output: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text())["metrics"] for p in (output / "runs").glob("*/result.json")}


def test_two_jobs_give_the_same_run_folders_as_one(tmp_path):
    args = ["sweep", "--tasks", "synthetic", "--methods", "uniform,population,knn", "--encoders", "bow"]
    args += ["--shots", "0,5", "--seeds", "0,1"]
    assert main([*args, "--jobs", "1", "--output-dir", str(tmp_path / "one")]) == 0
    assert main([*args, "--jobs", "2", "--output-dir", str(tmp_path / "two")]) == 0
    one, two = results(tmp_path / "one"), results(tmp_path / "two")
    assert len(one) == 6 and one == two
    threads = [json.loads(p.read_text())["threads"] for p in (tmp_path / "two" / "runs").glob("*/result.json")]
    cores = len(os.sched_getaffinity(0))
    policy = os.environ["OMP_WAIT_POLICY"]  # the user's, else the CLI's default
    assert threads == [{"torch": max(1, cores // 2), "omp_wait_policy": policy}] * 6  # each worker its share


def predictions(output: Path, method: str) -> dict[tuple, list[float]]:
    """(group, item, K, seed) → prediction, over every run folder of `method`."""
    rows = [json.loads(line) for p in (output / "runs").glob(f"*--{method}--*/predictions.jsonl") for line in p.open()]
    return {(r["group"], r["item"], r["shots"], r["seed"]): r["pred"] for r in rows}


def test_gpo_seeds_train_in_one_run_and_predict_as_runs_one_per_seed(tmp_path):
    args = ["sweep", "--tasks", "synthetic", "--methods", "gpo,uniform", "--encoders", "bow", "--shots", "0,5"]
    args += ["--seeds", "0,1", "--set", "gpo.max_steps=12", "--set", "gpo.eval_every=6", "--jobs", "2"]
    assert main([*args, "--output-dir", str(tmp_path / "together")]) == 0
    assert main([*args, "--no-seeds-together", "--output-dir", str(tmp_path / "apart")]) == 0
    together, apart = (
        {p.parent.name.split("--")[1] + str(json.loads(p.read_text())["spec"]["seeds"]) for p in runs}
        for runs in ((tmp_path / side / "runs").glob("*/result.json") for side in ("together", "apart"))
    )
    assert together == {"gpo[0, 1]", "uniform[0]", "uniform[1]"}
    assert apart == {"gpo[0]", "gpo[1]", "uniform[0]", "uniform[1]"}
    # each worker process trains with (cores // 2) threads on both sides, so the floats match exactly
    same = predictions(tmp_path / "together", "gpo")
    assert len(same) > 0 and same == predictions(tmp_path / "apart", "gpo")
    assert {seed for *_, seed in same} == {0, 1}


@pytest.mark.slow
def test_the_ray_backend_gives_the_same_run_folders(tmp_path):
    pytest.importorskip("ray")
    args = ["sweep", *FAST, "--seeds", "0,1"]
    assert main([*args, "--output-dir", str(tmp_path / "local")]) == 0
    assert main([*args, "--backend", "ray", "--output-dir", str(tmp_path / "ray")]) == 0
    assert results(tmp_path / "local") == results(tmp_path / "ray")


def test_parallel_lm_runs_that_score_the_same_prompts_wait_for_one_that_fills_the_cache():
    grid = {"tasks": ("opinionqa",), "methods": ("lm-base", "lm-steered", "few-shot"), "train_fracs": (0.4, 0.6)}
    runs = sweep.plan(sweep.make_grid(None, {**grid, "seeds": (0, 1)}))
    ready, held = sweep_backends.waves(runs)
    leaders = [r for r in ready if r.run_id in held]
    assert [(r.spec.method, r.spec.train_frac, r.spec.seeds) for r in leaders] == [
        ("lm-base", 0.4, (0,)),
        ("lm-steered", 0.4, (0,)),
    ]
    for leader in leaders:  # every other split and seed of the same method reads the leader's cache
        assert {(r.spec.method, r.spec.train_frac, r.spec.seeds) for r in held[leader.run_id]} == {
            (leader.spec.method, 0.4, (1,)),
            (leader.spec.method, 0.6, (0,)),
            (leader.spec.method, 0.6, (1,)),
        }
    # few-shot's prompts hold the seed's context items: its runs start at once
    assert sorted(r.spec.seeds for r in ready if r.spec.method == "few-shot") == [(0,), (0,), (1,), (1,)]
