"""A tiny randomly initialised Llama + a small byte-level BPE tokenizer, built offline in ~1 s.

Scores from a random model are meaningless, but every code path (batching, KV cache,
windows, word aggregation, rate control, protection) runs for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

# torch / transformers are imported inside the functions: this plugin is loaded by every
# test session, and most of them never touch a model.
if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from proxy.compress import Compressor

__all__ = ["build_tiny_model", "build_tiny_tokenizer", "sample_text"]

_CORPUS = (
    "Question: Angelo and Melanie want to plan how many hours they should study together. "
    "They have 2 chapters and 4 worksheets. Let's think step by step. "
    "The answer is 15 hours in total, or 3.5 days. "
    "Fuel dilution happens when unburnt fuel reaches the engine oil. "
    "def add(a, b):\n    return a + b\n"
    '{"key": "value", "items": [1, 2, 3]} https://example.com/path?q=1 '
    "日本語のテキストも少し含まれています。中文文本也在这里。 "
    "Il était une fois un café très célèbre à Paris. "
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, *, max_positions: int = 512, seed: int = 0
) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.2,  # larger than usual so losses actually differ between tokens
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()  # type: ignore[no-untyped-call]
    return model


def sample_text(words: int, seed: int = 0) -> str:
    """Deterministic prose-like text of roughly ``words`` words."""
    vocab = _CORPUS.replace("\n", " ").split()
    out: list[str] = []
    state = seed * 7919 + 17
    for i in range(words):
        state = (state * 1103515245 + 12345) % (1 << 31)
        out.append(vocab[state % len(vocab)])
        if i % 23 == 22:
            out.append("\n")
    return " ".join(out).replace(" \n ", "\n")


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_compressor(tiny_tokenizer: PreTrainedTokenizerFast) -> Iterator[Compressor]:
    from proxy.compress import Compressor

    model = build_tiny_model(tiny_tokenizer)
    yield Compressor.from_pretrained_objects(model, tiny_tokenizer, model_id="tiny-llama@test")


@pytest.fixture(scope="session")
def tiny_short_context_compressor(tiny_tokenizer: PreTrainedTokenizerFast) -> Compressor:
    """Context of 64 positions: every realistic prompt needs sliding windows."""
    from proxy.compress import Compressor

    model = build_tiny_model(tiny_tokenizer, max_positions=64)
    return Compressor.from_pretrained_objects(model, tiny_tokenizer, model_id="tiny-llama-64@test")


@pytest.fixture
def torch_single_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine OpenMP barriers make tiny-model ops ~10x
    slower with two. Restored afterwards (the setting is process-wide)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
