"""The LM prediction cache through the CLI with a tiny random Llama: a prompt is scored once across runs,
seeds and processes (the hit/miss counts in result.json checked against the prompts the predictions imply),
a rerun writes byte-identical predictions, an interrupted run resumes without scoring again what it had
scored, a tampered entry is recomputed, and a corrupt database is quarantined."""

import json
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from gpo_bench import lm
from gpo_bench.cache import PredictionCache
from gpo_bench.cli import main
from gpo_bench.run_folder import result_validator
from gpo_bench.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


def args(method: str, model: str, out: Path, cache: Path, shots: str = "0,3", seeds: str = "0") -> list[str]:
    return [
        *("run", "--task", "synthetic", "--method", method, "--limit-items", "12", "--shots", shots),
        *("--seeds", seeds, "--set", f"model={model}", "--output-dir", str(out), "--cache-dir", str(cache)),
    ]


def run(argv: list[str], capsys) -> tuple[dict, Path]:
    assert main(argv) == 0
    run_dir = Path(capsys.readouterr().out.split("run folder: ")[1].split()[0])
    return json.loads((run_dir / "result.json").read_text()), run_dir


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_a_second_lm_base_run_scores_no_prompt_and_writes_the_same_predictions(tiny_model, tmp_path, capsys):
    first, first_dir = run(args("lm-base", tiny_model, tmp_path / "a", tmp_path / "cache"), capsys)
    second, second_dir = run(args("lm-base", tiny_model, tmp_path / "b", tmp_path / "cache"), capsys)
    items = {r["item"] for r in rows(first_dir)}  # lm-base asks one prompt per item, whatever the group or K
    assert first["predict"]["0"]["prediction_cache"] == {"hits": 0, "misses": len(items), "uncached": 0}
    assert second["predict"]["0"]["prediction_cache"] == {"hits": len(items), "misses": 0, "uncached": 0}
    assert (first_dir / "predictions.jsonl").read_bytes() == (second_dir / "predictions.jsonl").read_bytes()
    # the schema knows the counts: it accepts them, and refuses a negative one or a misspelled key
    assert not list(result_validator().iter_errors(second))
    for wrong in ({"hits": -1, "misses": 0, "uncached": 0}, {"hit": 3, "misses": 0, "uncached": 0}):
        second["predict"]["0"]["prediction_cache"] = wrong
        assert list(result_validator().iter_errors(second))


def test_lm_steered_shares_its_entries_across_seeds(tiny_model, tmp_path, capsys):
    cache = tmp_path / "cache"
    _, seed0 = run(args("lm-steered", tiny_model, tmp_path / "a", cache, shots="3", seeds="0"), capsys)
    result, seed1 = run(args("lm-steered", tiny_model, tmp_path / "b", cache, shots="3", seeds="1"), capsys)
    # a steered prompt is the group's description and the item: one per (group, item) pair
    before = {(r["group"], r["item"]) for r in rows(seed0)}
    now = {(r["group"], r["item"]) for r in rows(seed1)}
    assert now & before and now - before  # other context items at seed 1: some targets are new, most are not
    counts = result["predict"]["1"]["prediction_cache"]
    assert counts == {"hits": len(now & before), "misses": len(now - before), "uncached": 0}


def test_an_interrupted_run_resumes_without_scoring_again_what_it_had_scored(tiny_model, tmp_path, capsys, monkeypatch):
    real = lm.CausalLM.next_token_logits
    scored: list[int] = []

    def interrupted(self, prompts):  # scores the first episode's prompts, then stops as Ctrl-C would
        if scored:
            raise KeyboardInterrupt
        scored.append(len(prompts))
        return real(self, prompts)

    monkeypatch.setattr(lm.CausalLM, "next_token_logits", interrupted)
    argv = args("lm-steered", tiny_model, tmp_path / "out", tmp_path / "cache", shots="0")
    assert main(argv) == 130
    assert not list((tmp_path / "out").rglob("*.json*"))  # no result, no predictions: nothing half-written
    monkeypatch.setattr(lm.CausalLM, "next_token_logits", real)
    result, run_dir = run(argv, capsys)
    total = len({(r["group"], r["item"]) for r in rows(run_dir)})
    assert 0 < scored[0] < total
    assert result["predict"]["0"]["prediction_cache"] == {"hits": scored[0], "misses": total - scored[0], "uncached": 0}


def test_a_tampered_entry_is_recomputed_never_trusted(tiny_model, tmp_path, capsys, caplog):
    _, first_dir = run(args("lm-base", tiny_model, tmp_path / "a", tmp_path / "cache"), capsys)
    db = sqlite3.connect(tmp_path / "cache" / PredictionCache.FILE)
    with db:
        (n,) = db.execute(f"SELECT COUNT(*) FROM {PredictionCache.TABLE}").fetchone()
        (dim,) = db.execute(f"SELECT dim FROM {PredictionCache.TABLE} WHERE rowid = 1").fetchone()
        # another answer of the right size, without its checksum
        db.execute(f"UPDATE {PredictionCache.TABLE} SET vector = ? WHERE rowid = 1", (b"\0" * 4 * dim,))
    db.close()
    with caplog.at_level(logging.WARNING):
        result, second_dir = run(args("lm-base", tiny_model, tmp_path / "b", tmp_path / "cache"), capsys)
    assert "does not match its key; recomputing" in caplog.text
    assert result["predict"]["0"]["prediction_cache"] == {"hits": n - 1, "misses": 1, "uncached": 0}
    for a, b in zip(rows(first_dir), rows(second_dir), strict=True):
        np.testing.assert_allclose(a["pred"], b["pred"], atol=1e-6)  # scored again, alone rather than batched


def test_a_corrupt_prediction_cache_is_moved_aside_and_rebuilt(tiny_model, tmp_path, capsys, caplog):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / PredictionCache.FILE).write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.WARNING):
        result, _ = run(args("lm-base", tiny_model, tmp_path / "out", tmp_path / "cache"), capsys)
    assert "LM prediction cache" in caplog.text and "moved it to" in caplog.text
    assert list((tmp_path / "cache").glob(f"{PredictionCache.FILE}.corrupt-*"))
    assert result["predict"]["0"]["prediction_cache"]["hits"] == 0


def test_a_read_only_cold_cache_is_an_error_naming_it(tiny_model, tmp_path, capsys):
    (tmp_path / "cache" / PredictionCache.FILE).mkdir(parents=True)  # sqlite cannot open it, even for root
    assert main(args("lm-base", tiny_model, tmp_path / "out", tmp_path / "cache")) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cache" / PredictionCache.FILE) in err and "--cache-dir" in err


def test_scores_with_an_adapter_are_cached_under_its_recipe(tiny_model, tmp_path, capsys):
    sft = [*args("sft", tiny_model, tmp_path / "a", tmp_path / "cache"), "--set", "steps=2", "--set", "batch_size=2"]
    result, run_dir = run(sft, capsys)
    by_k = {k: {r["item"] for r in rows(run_dir) if r["shots"] == k} for k in (0, 3)}
    adapted = sum(r["shots"] == 3 for r in rows(run_dir))  # one adapter per group at K = 3: its own entries
    counts = result["predict"]["0"]["prediction_cache"]
    # K = 0 has no adapter (sft is lm-base there); at K = 3 each group's adapter scores its targets
    assert counts == {"hits": 0, "misses": len(by_k[0]) + adapted, "uncached": 0}
    db = sqlite3.connect(tmp_path / "cache" / PredictionCache.FILE)
    assert db.execute(f"SELECT COUNT(*) FROM {PredictionCache.TABLE}").fetchone() == (len(by_k[0]) + adapted,)


@pytest.mark.parametrize(("method", "training_forward"), [("sft", "letter_log_probs"), ("reward-model", "last_hidden")])
def test_an_adapter_is_trained_once_for_every_split_and_rerun(
    method, training_forward, tiny_model, tmp_path, capsys, monkeypatch
):
    """The same group, K and seed train the same adapter at every split: the second split reads its predictions
    from the cache without training; other training (another seed) trains and scores afresh."""
    cache, trained = tmp_path / "cache", []
    real = getattr(lm.CausalLM, training_forward)

    def counted(self, prompts, *rest):  # the training forward passes (scoring goes through last_positions)
        trained.append(len(prompts))
        return real(self, prompts, *rest)

    monkeypatch.setattr(lm.CausalLM, training_forward, counted)
    sft = [*args(method, tiny_model, tmp_path / "out", cache, shots="3"), "--set", "steps=2", "--set", "lora_layers=1"]
    first, first_dir = run([*sft, "--train-frac", "0.4"], capsys)
    assert trained and all(isinstance(v, list) for v in first["predict"]["0"]["train_loss"]["3"].values())
    trained.clear()
    second, second_dir = run([*sft, "--train-frac", "0.6"], capsys)
    assert not trained  # every adapter's predictions were in the cache
    assert set(second["predict"]["0"]["train_loss"]["3"].values()) == {"cached"}
    counts = second["predict"]["0"]["prediction_cache"]
    assert counts["misses"] == counts["uncached"] == 0 and counts["hits"] > 0
    shared = {(r["group"], r["item"], r["shots"]): r for r in rows(first_dir)}
    for row in rows(second_dir):  # the test groups of 60% are among those of 40%: the very same predictions
        assert row == shared[(row["group"], row["item"], row["shots"])]
    third, _ = run([*sft, "--train-frac", "0.6", "--seeds", "1"], capsys)
    assert trained and third["predict"]["1"]["prediction_cache"]["misses"] > 0
