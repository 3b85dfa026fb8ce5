"""`count_tokens`: exact on text with word breaks, linear on one long run (segments)."""

from __future__ import annotations

import pytest

from proxy.core.tokens import count_tokens, encoding_for_model

PROSE = (
    "The proxy counts target-model tokens of every request.\n\n"
    "  Indented line,   several  spaces; numbers 12345 and symbols {}[]()!\n"
) * 400


@pytest.mark.parametrize("model", [None, "gpt-4o"])
def test_long_prose_is_counted_exactly(model: str | None) -> None:
    exact = len(encoding_for_model(model).encode(PROSE, disallowed_special=()))
    assert len(PROSE) > 20_000
    assert count_tokens(PROSE, model) == exact


@pytest.mark.parametrize("model", [None, "gpt-4o"])
def test_one_long_run_is_counted_within_one_token_per_segment(model: str | None) -> None:
    text = "a" * 200_000 + "b" * 50_001
    exact = len(encoding_for_model(model).encode(text, disallowed_special=()))
    counted = count_tokens(text, model)
    assert exact <= counted <= exact + len(text) // 2048
