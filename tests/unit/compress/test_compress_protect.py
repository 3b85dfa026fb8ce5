"""Force-keep rules and word units: pure text processing, no model."""

from __future__ import annotations

import pytest

from proxy.compress import ProtectRules
from proxy.compress.protect import apply_rules
from proxy.compress.words import BREAK, PROTECTED, segment, target_costs
from proxy.core.tokens import count_tokens, encoding_for_model


def _protected_texts(text: str, rules: ProtectRules) -> list[str]:
    p = apply_rules(text, rules)
    return [p.text[a:b].strip() for a, b in p.spans]


def test_default_rules_protect_code_json_urls_not_numbers() -> None:
    text = (
        "See https://example.com/a?b=1). Run `make test` first.\n"
        "```python\nprint('x')\n```\n"
        'Payload {"id": 7, "tags": ["a"]} and 42 apples.'
    )
    found = _protected_texts(text, ProtectRules())
    assert "https://example.com/a?b=1" in found
    assert "`make test`" in found
    assert any(f.startswith("```python") and f.endswith("```") for f in found)
    assert '{"id": 7, "tags": ["a"]}' in found
    assert "42" not in found


def test_numbers_quotes_and_user_regexes_when_enabled() -> None:
    rules = ProtectRules(number=True, quoted=True, regexes=(r"ORD-\d+",))
    found = _protected_texts('Order ORD-981 cost $12.50 for "Fuel Dilution" test', rules)
    assert "ORD-981" in found
    assert "$12.50" in found
    assert '"Fuel Dilution"' in found


def test_keep_tags_removed_and_their_content_protected() -> None:
    p = apply_rules("a <keep>do NOT touch</keep> b <keep>unclosed", ProtectRules())
    assert p.text == "a do NOT touch b <keep>unclosed"
    assert [p.text[a:b].strip() for a, b in p.spans] == ["do NOT touch"]
    off = apply_rules("a <keep>x</keep>", ProtectRules(keep_tags=False))
    assert off.text == "a <keep>x</keep>"


def test_invalid_user_regex_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="invalid protect regex"):
        ProtectRules(regexes=("(",))


def test_units_tile_the_text_and_never_split_characters() -> None:
    text = "Héllo wo\u0301rld, 日本語です!\n\n  Fuel Dilution 👨\u200d👩\u200d👧 3.5km"
    units = segment(text, [])
    pieces = [units.piece(i) for i in range(len(units))]
    assert "".join(pieces) == text
    assert " wo\u0301rld" in pieces  # combining accent stays with its letter
    assert " 日" in pieces and "本" in pieces  # CJK: one character per unit
    assert " 👨\u200d👩\u200d👧" in pieces  # ZWJ emoji sequence is one unit
    assert units.kinds[pieces.index("\n\n  ")] == BREAK


def test_protected_span_is_one_unit_with_its_leading_space() -> None:
    text = "call https://x.io/y now"
    p = apply_rules(text, ProtectRules())
    units = segment(p.text, p.spans)
    pieces = [units.piece(i) for i in range(len(units))]
    assert " https://x.io/y" in pieces
    assert units.kinds[pieces.index(" https://x.io/y")] == PROTECTED


def test_target_costs_add_up_to_the_token_count() -> None:
    text = "Angelo and Melanie study 12 hours.\n\n日本語のテキスト, café ✓"
    units = segment(text, [])
    costs = target_costs(units, encoding_for_model(None))
    assert int(costs.sum()) == count_tokens(text)
    o200 = target_costs(units, encoding_for_model("gpt-4o"))
    assert int(o200.sum()) == count_tokens(text, "gpt-4o")
