from __future__ import annotations

from proxy.compress.passages import MAX_PASSAGE_CHARS, passages


def test_sentences_and_lines_are_passages() -> None:
    text = (
        "The depot opened in 1998 and is busy. Staff park in the north lot today!\n"
        "Is the gate code 4471? Yes; it changed in March."
    )
    assert passages(text) == [
        "The depot opened in 1998 and is busy.",
        "Staff park in the north lot today!",
        "Is the gate code 4471? Yes; it changed in March.",  # "Yes;" is too short alone
    ]


def test_short_pieces_join_the_next_and_long_ones_are_cut() -> None:
    assert passages("Name: X\nValue: the depot opened in 1998.") == [
        "Name: X Value: the depot opened in 1998."
    ]
    assert passages("tail.") == ["tail."]
    assert passages("") == [""]
    long = "word " * 400
    assert all(len(p) <= MAX_PASSAGE_CHARS for p in passages(long))
    assert "".join(passages(long)) == long.strip()
