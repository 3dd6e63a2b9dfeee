"""Encoder throughput: gpo-bench's default encoder (MiniLM, cold cache and warm cache) side by side with
sentence-transformers' `encode` on the same texts, in one process.

    python benchmarks/encode.py --data-dir ../shared/data [--limit 600]
"""

import argparse
import tempfile
import time
from pathlib import Path

from gpo_bench.cards import load_task_card
from gpo_bench.encoders import Encoder, EncoderSpec
from gpo_bench.features import candidate_triples
from gpo_bench.loaders import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--limit", type=int, default=600, help="how many OpinionQA option texts to encode")
    args = parser.parse_args()

    card = load_task_card("opinionqa")
    task = load_task(card, args.data_dir)
    triples = [t for i in sorted(task.items) for t in candidate_triples(task.items[i], card)][: args.limit]
    with tempfile.TemporaryDirectory() as cache:
        encoder = Encoder(EncoderSpec.parse("minilm"), device="cpu", cache_dir=Path(cache))
        texts = encoder.render(triples)
        encoder.encode(triples[:8])  # load the model outside the timings
        fresh = Encoder(EncoderSpec.parse("minilm"), device="cpu", cache_dir=Path(cache) / "cold")
        tick = time.perf_counter()
        fresh.encode(triples)
        cold = time.perf_counter() - tick
        tick = time.perf_counter()
        Encoder(EncoderSpec.parse("minilm"), device="cpu", cache_dir=Path(cache) / "cold").encode(triples)
        warm = time.perf_counter() - tick

    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(encoder.folder), device="cpu")
    reference.max_seq_length = encoder.spec.max_length
    reference.encode(texts[:8])
    tick = time.perf_counter()
    reference.encode(texts, batch_size=64)
    theirs = time.perf_counter() - tick

    n = len(texts)
    print(f"{n} texts, mean {sum(map(len, texts)) / n:.0f} characters, MiniLM on CPU, batch 64")
    print(f"{'':28}{'seconds':>9}{'texts/s':>10}")
    for name, seconds in (
        ("gpo-bench, cold cache", cold),
        ("gpo-bench, warm cache", warm),
        ("sentence-transformers", theirs),
    ):
        print(f"{name:28}{seconds:9.2f}{n / seconds:10.1f}")
    print(f"ratio cold / sentence-transformers: {theirs / cold:.2f}x the throughput")
    print(f"ratio warm / sentence-transformers: {theirs / warm:.1f}x the throughput")


if __name__ == "__main__":
    main()
