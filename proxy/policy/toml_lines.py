"""Best-effort line numbers for TOML keys.

``tomllib`` returns plain dicts without positions, yet a policy problem is only
useful as ``file:line: message``. This scans the text for table headers and
``key =`` lines and records where each key path first appears. It does not
parse values, so keys inside inline tables or multi-line arrays resolve to the
line of their enclosing key, which is close enough to point a reader at it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

__all__ = ["KeyPath", "key_lines", "line_of"]

KeyPath = tuple[str | int, ...]

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(_KEY)
_TRIPLE_RE = re.compile(r'"""|\'\'\'')


def _unquote(part: str) -> str:
    if part.startswith('"'):
        try:
            value = json.loads(part)
        except ValueError:
            return part[1:-1]
        return value if isinstance(value, str) else part[1:-1]
    if part.startswith("'"):
        return part[1:-1]
    return part


def _split(dotted: str) -> tuple[str, ...]:
    return tuple(_unquote(p) for p in _PART_RE.findall(dotted))


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each table header and key path in ``text`` to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_multiline = False
    for number, line in enumerate(text.splitlines(), start=1):
        triples = len(_TRIPLE_RE.findall(line))
        if in_multiline:
            in_multiline = triples % 2 == 0
            continue
        header = _HEADER_RE.match(line)
        if header:
            table = _split(header.group(1))
            lines.setdefault(table, number)
        else:
            assign = _ASSIGN_RE.match(line)
            if assign:
                lines.setdefault(table + _split(assign.group(1)), number)
        # A value opening a multi-line string hides the lines that follow it.
        in_multiline = triples % 2 == 1
    return lines


def line_of(lines: Mapping[tuple[str, ...], int], path: KeyPath) -> int:
    """Line of the longest known prefix of ``path`` (array indices are skipped); 1 if none."""
    keys = tuple(p for p in path if isinstance(p, str))
    for end in range(len(keys), 0, -1):
        found = lines.get(keys[:end])
        if found is not None:
            return found
    return 1
