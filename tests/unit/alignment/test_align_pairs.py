"""The pair format: strict reading with located problems, seeded held-out split, data digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.alignment.pairs import PairsError, data_sha256, read_pairs, split_holdout
from tests.support.alignment import write_pairs


def _lines(path: Path, *rows: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_reads_messages_text_parts_and_ignores_metadata(tmp_path: Path) -> None:
    path = _lines(
        tmp_path / "p.jsonl",
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                   {"type": "image_url", "image_url": {}},
                                                   {"type": "text", "text": "there"}]},
                      {"role": "assistant", "content": None, "tool_calls": []}],
         "response": "Hello.", "model": "gpt-4o", "tenant": "a", "compressed": True},
        "",
    )
    [pair] = read_pairs([path])
    assert pair.messages == (("system", "Be brief."), ("user", "Hi\nthere"), ("assistant", ""))
    assert pair.response == "Hello."
    assert pair.source == f"{path}:1"


def test_every_bad_line_is_reported_with_its_location(tmp_path: Path) -> None:
    path = _lines(
        tmp_path / "bad.jsonl",
        {"messages": [{"role": "user", "content": "ok"}], "response": "fine"},
        "{not json",
        {"messages": [], "response": "x"},
        {"messages": [{"role": "user", "content": "q"}], "response": ""},
        {"messages": [{"content": "no role"}], "response": "x"},
        [1, 2],
    )
    with pytest.raises(PairsError) as info:
        read_pairs([path])
    located = [p.split(": ", 1)[0] for p in info.value.problems]
    assert located == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert '"response" must be a non-empty string' in str(info.value)


def test_missing_and_empty_files_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(PairsError) as info:
        read_pairs([tmp_path / "nope.jsonl", empty])
    text = str(info.value)
    assert "nope.jsonl: cannot read" in text and "empty.jsonl: no pairs" in text
    with pytest.raises(PairsError, match="no data file"):
        read_pairs([])


def test_holdout_is_seeded_by_content_not_position(tmp_path: Path) -> None:
    pairs = read_pairs([write_pairs(tmp_path / "p.jsonl", 40)])
    train, held = split_holdout(pairs, 0.25, seed=7)
    assert 0 < len(held) < 40 and len(train) + len(held) == 40
    again_train, again_held = split_holdout(list(reversed(pairs)), 0.25, seed=7)
    assert {p.canonical() for p in again_held} == {p.canonical() for p in held}
    _, other = split_holdout(pairs, 0.25, seed=8)
    assert {p.canonical() for p in other} != {p.canonical() for p in held}
    assert split_holdout(pairs, 0.0, seed=7) == (pairs, [])
    # Tiny data still holds one pair out, so before/after is always measured.
    assert len(split_holdout(pairs[:3], 0.01, seed=7)[1]) == 1


def test_data_digest_covers_every_file_and_its_bytes(tmp_path: Path) -> None:
    a = write_pairs(tmp_path / "a.jsonl", 3)
    b = write_pairs(tmp_path / "b.jsonl", 3, seed=1)
    digest = data_sha256([a, b])
    assert digest == data_sha256([a, b]) and len(digest) == 64
    assert digest != data_sha256([a]) and digest != data_sha256([b, a])
