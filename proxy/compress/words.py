"""Word segmentation: the units that compression keeps or drops whole.

Text is cut into contiguous units over *characters*, so a decision can never
split a character (byte-level sub-word tokens of one character always land in
the same unit). A unit is a word with its leading spaces, a punctuation run, one
CJK character (those scripts have no spaces), a line break with the indentation
around it, or one protected span. Sub-word scores are summed per unit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import tiktoken

__all__ = ["Units", "segment", "target_costs", "unit_of_offsets"]

_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
# Combining marks, joiners and variation selectors belong to the character before them.
_MARKS = (
    "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u200c\u200d\u20d0-\u20ff\ufe00-\ufe0f\ufe20-\ufe2f"
)
_WORD_CHAR = rf"(?:(?![{_CJK}])[^\W_]|[{_MARKS}])"
_UNIT = re.compile(
    rf"""
    [ \t]*(?:\r?\n[ \t]*)+                                   # line break(s) + indentation
  | [ \t]*[{_CJK}][{_MARKS}]*                                # one CJK character
  | [ \t]*{_WORD_CHAR}+(?:['’.,:/-]{_WORD_CHAR}+)*          # word, with inner punctuation
  | [ \t]*(?:[^\w\s]|_)(?:(?:[^\w\s]|_)|[{_MARKS}])*         # punctuation / symbol run
  | [ \t]+                                                   # trailing spaces
  | (?s:.)                                                   # anything else, one char
    """,
    re.VERBOSE,
)

BREAK, WORD, PROTECTED = 0, 1, 2


@dataclass(frozen=True)
class Units:
    text: str
    starts: npt.NDArray[np.int64]  # char start of each unit; units tile the text
    kinds: npt.NDArray[np.int8]  # BREAK / WORD / PROTECTED

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def piece(self, i: int) -> str:
        end = int(self.starts[i + 1]) if i + 1 < len(self) else len(self.text)
        return self.text[int(self.starts[i]) : end]


def segment(text: str, protected: Sequence[tuple[int, int]]) -> Units:
    """Cut ``text`` into units; each protected span becomes a single unit."""
    starts: list[int] = []
    kinds: list[int] = []
    pos = 0
    for span_start, span_end in [*protected, (len(text), len(text))]:
        # Spaces before a protected span go with it: dropping them would glue it
        # to the previous word.
        while span_start > pos and text[span_start - 1] in " \t" and span_end > span_start:
            span_start -= 1
        for m in _UNIT.finditer(text, pos, span_start):
            starts.append(m.start())
            kinds.append(BREAK if "\n" in m.group() else WORD)
        if span_end > span_start:
            starts.append(span_start)
            kinds.append(PROTECTED)
        pos = span_end
    return Units(text, np.asarray(starts, dtype=np.int64), np.asarray(kinds, dtype=np.int8))


def unit_of_offsets(units: Units, char_starts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Index of the unit holding each character offset."""
    if len(units) == 0:
        return np.zeros(char_starts.shape, dtype=np.int64)
    idx = np.searchsorted(units.starts, char_starts, side="right") - 1
    return np.clip(idx, 0, len(units) - 1).astype(np.int64)


def target_costs(units: Units, encoding: tiktoken.Encoding) -> npt.NDArray[np.int64]:
    """Target-LLM tokens per unit (each token charged to the unit where it starts).

    Counts add up exactly to the text's token count; a dropped unit's saving is
    approximate because neighbours may re-merge, which the rate fix-up absorbs.
    """
    costs = np.zeros(len(units), dtype=np.int64)
    if not units.text:
        return costs
    tokens = encoding.encode(units.text, disallowed_special=())
    _, offsets = encoding.decode_with_offsets(tokens)
    np.add.at(costs, unit_of_offsets(units, np.asarray(offsets, dtype=np.int64)), 1)
    return costs
