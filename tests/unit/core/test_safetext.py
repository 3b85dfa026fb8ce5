"""`safe_text`: client strings that every sink (labels, Redis keys and fields) accepts."""

from __future__ import annotations

from proxy.core.safetext import MAX_LABEL_CHARS, safe_text


def test_plain_and_unicode_text_is_unchanged() -> None:
    assert safe_text("gpt-4o-mini") == "gpt-4o-mini"
    assert safe_text("modèle-😀") == "modèle-😀"


def test_lone_surrogates_are_escaped_and_encodable() -> None:
    value = safe_text("gpt-4o\ud800x\udfff")
    assert value == "gpt-4o\\ud800x\\udfff"
    value.encode()  # would raise UnicodeEncodeError before


def test_long_values_are_cut() -> None:
    assert len(safe_text("m" * 100_000)) == MAX_LABEL_CHARS
