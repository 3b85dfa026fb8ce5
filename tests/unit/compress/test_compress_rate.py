"""Rate accuracy in target tokens, at every length from 50 to 8,000 tokens."""

from __future__ import annotations

import pytest

from proxy.compress import Compressor
from proxy.core.tokens import count_tokens
from tests.support.tiny_lm import sample_text

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _demos_of(tokens: int) -> list[str]:
    """Documents adding up to about ``tokens`` target tokens (~400 each)."""
    demos: list[str] = []
    total = 0
    seed = 0
    while total < tokens:
        words = max(5, min(300, int((tokens - total) / 1.45)))
        text = sample_text(words, seed)
        demos.append(text)
        total += count_tokens(text)
        seed += 1
    return demos


def _within(achieved: int, original: int, rate: float) -> bool:
    wanted = rate * original
    return abs(achieved - wanted) <= max(8.0, 0.1 * wanted)


@pytest.mark.parametrize("length", [50, 90, 160, 400, 1000, 2500, 8000])
@pytest.mark.parametrize("rate", [0.2, 0.33, 0.6])
def test_achieved_rate_is_within_tolerance(
    tiny_compressor: Compressor, length: int, rate: float
) -> None:
    demos = _demos_of(length)
    result = tiny_compressor.compress("", demos, "", rate)
    assert result.original_tokens == sum(count_tokens(d) for d in demos)
    assert result.compressed_tokens == sum(count_tokens(d) for d in result.demonstrations)
    assert _within(result.compressed_tokens, result.original_tokens, rate), (
        length,
        rate,
        result.compressed_tokens,
        result.original_tokens,
    )


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_rate_holds_with_compressible_instruction_and_question(
    tiny_compressor: Compressor, rate: float
) -> None:
    result = tiny_compressor.compress(
        sample_text(120, 7),
        _demos_of(1200),
        sample_text(60, 8),
        rate,
        instruction_rate=rate,
        question_rate=rate,
    )
    assert _within(result.compressed_tokens, result.original_tokens, rate)
    ins, que = result.component_tokens["instruction"], result.component_tokens["question"]
    assert ins[1] < ins[0] and que[1] < que[0]


def test_target_tokens_overrides_rate(tiny_compressor: Compressor) -> None:
    demos = _demos_of(2400)
    result = tiny_compressor.compress("", demos, "", 0.9, target_tokens=200)
    assert abs(result.compressed_tokens - 200) <= 20


def test_short_single_prompt_is_compressed_too(tiny_compressor: Compressor) -> None:
    text = sample_text(60, 3)
    result = tiny_compressor.compress("", [text], "", 0.5)
    assert result.demonstrations[0] != text
    assert _within(result.compressed_tokens, result.original_tokens, 0.5)


def test_o200k_target_model_counts_with_its_own_encoding(tiny_compressor: Compressor) -> None:
    demos = _demos_of(600)
    result = tiny_compressor.compress("", demos, "", 0.4, target_model="gpt-4o")
    assert result.original_tokens == sum(count_tokens(d, "gpt-4o") for d in demos)
    assert _within(result.compressed_tokens, result.original_tokens, 0.4)
