"""A random-initialized tiny Llama with its tokenizer, written to a folder: the model of the tests, the CPU dry run
of the GPU sweep and the GPU smoke benchmark, with no download."""

from __future__ import annotations

from pathlib import Path

import torch

from .lm import LETTERS

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tiny_model(folder: Path, seed: int = 0, max_positions: int = 4096, chat: bool = True) -> Path:
    """A random-initialized 2-layer Llama with a byte-level BPE tokenizer whose vocabulary holds every
    byte plus ` A` … ` Z` as single tokens, and (with `chat`) a minimal chat template: for tests and smoke
    runs, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", *sorted(byte_chars)])}
    merges = [("Ġ", letter) for letter in LETTERS]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")
    if chat:
        fast.chat_template = TINY_CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
