"""Force-keep rules: spans of a prompt that compression must leave byte-identical.

Each rule finds character spans; overlapping spans merge. ``<keep>…</keep>``
regions are the one rule that edits text: the two tags are instructions to the
proxy, not to the upstream model, so they are removed and only the enclosed text
(kept verbatim) is forwarded. An unclosed ``<keep>`` is ordinary text.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ProtectRules", "Protected", "apply_rules", "demands_keeping"]

_FENCE = re.compile(r"(?ms)^[ \t]*(```|~~~)[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)")
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"""(?i)\b(?:https?://|ftp://|www\.)[^\s<>"'`]+""")
_URL_TRAIL = ".,;:!?)]}'\""
_NUMBER = re.compile(r"[-+$€£¥]?\d+(?:[.,:/]\d+)*%?")
_QUOTED = re.compile(
    r"\"[^\"\n]{1,400}\"|“[^”\n]{1,400}”|‘[^’\n]{1,400}’|(?<!\w)'[^'\n]{1,400}'(?!\w)"
)
_KEEP = re.compile(r"(?s)<keep>(.*?)</keep>")
_JSON_START = re.compile(r"[\[{]")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ProtectRules:
    """What is never compressed (same fields as a policy's ``[compression.protect]``)."""

    number: bool = False
    code: bool = True
    json: bool = True
    url: bool = True
    quoted: bool = False
    regexes: tuple[str, ...] = ()
    keep_tags: bool = True

    def __post_init__(self) -> None:
        for pattern in self.regexes:
            _compile(pattern)  # fail at construction, not mid-request


@dataclass(frozen=True)
class Protected:
    text: str  # the input with <keep> tags removed (when keep_tags)
    spans: tuple[tuple[int, int], ...]  # sorted, disjoint [start, end) char spans to keep verbatim


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid protect regex {pattern!r}: {exc}") from exc


def _strip_keep_tags(text: str) -> tuple[str, list[tuple[int, int]]]:
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    length = 0
    for m in _KEEP.finditer(text):
        before = text[pos : m.start()]
        parts.append(before)
        length += len(before)
        inner = m.group(1)
        parts.append(inner)
        spans.append((length, length + len(inner)))
        length += len(inner)
        pos = m.end()
    parts.append(text[pos:])
    return "".join(parts), spans


def _json_spans(text: str) -> Iterator[tuple[int, int]]:
    pos = 0
    while True:
        m = _JSON_START.search(text, pos)
        if m is None:
            return
        start = m.start()
        try:
            value, end = _DECODER.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        if isinstance(value, dict) or (isinstance(value, list) and value):
            yield start, end
            pos = end
        else:
            pos = start + 1


def _url_spans(text: str) -> Iterator[tuple[int, int]]:
    for m in _URL.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in _URL_TRAIL:
            end -= 1
        yield m.start(), end


def _rule_spans(text: str, rules: ProtectRules) -> Iterator[tuple[int, int]]:
    if rules.code:
        for pattern in (_FENCE, _INLINE_CODE):
            yield from (m.span() for m in pattern.finditer(text))
    if rules.json:
        yield from _json_spans(text)
    if rules.url:
        yield from _url_spans(text)
    if rules.number:
        yield from (m.span() for m in _NUMBER.finditer(text))
    if rules.quoted:
        yield from (m.span() for m in _QUOTED.finditer(text))
    for user_pattern in rules.regexes:
        yield from (m.span() for m in _compile(user_pattern).finditer(text))


def _merge(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def apply_rules(text: str, rules: ProtectRules | None) -> Protected:
    """Strip keep tags (if enabled) and find every protected span of ``text``."""
    if rules is None:
        return Protected(text, ())
    spans: list[tuple[int, int]] = []
    if rules.keep_tags and "<keep>" in text:
        text, spans = _strip_keep_tags(text)
    spans.extend(_rule_spans(text, rules))
    return Protected(text, _merge(spans))


def demands_keeping(text: str, rules: ProtectRules | None) -> bool:
    """Whether ``text`` holds spans the caller asked for by name: ``<keep>`` regions or
    user regexes (the proxy's "json" guard is one). Unlike code, JSON or URLs, which are
    only kept from being mangled, these survive even when the text around them is dropped.
    """
    if rules is None:
        return False
    if rules.keep_tags and "<keep>" in text and _KEEP.search(text):
        return True
    return any(_compile(p).search(text) for p in rules.regexes)
