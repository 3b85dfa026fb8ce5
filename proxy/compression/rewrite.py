"""Byte-faithful JSON rewriting: replace some string values, keep every other byte.

Re-serialising a request body would change what the upstream receives in ways the
client never asked for (``1.0`` becomes ``1.0`` or ``1``, key order, whitespace,
escapes, duplicate keys). Instead, this finds the byte span of each string value to
replace and splices the new JSON string token into the original bytes.

Paths address values the way ``body["messages"][3]["content"]`` does:
``("messages", 3, "content")``. Like ``json.loads``, a duplicated object key resolves
to its last occurrence. Values that are not on a requested path are skipped with the
C-accelerated scanner of :mod:`json`, so a 100 KB body costs well under a millisecond.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["JsonPath", "Path", "replace_strings", "string_spans"]

JsonPath = tuple[str | int, ...]
Path = JsonPath  # the name used in the interface notes

# A trie of requested paths: key -> child trie, or None where a string is expected.
_Trie = dict[str | int, "_Trie | None"]
_Scan = Callable[[str, int], tuple[Any, int]]
_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = frozenset(" \t\n\r")
# Parses one JSON string body (after the opening quote): C-accelerated, strict like json.loads.
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def string_spans(raw: bytes, paths: Iterable[JsonPath]) -> dict[JsonPath, tuple[int, int]]:
    """Byte offsets ``(start, end)`` of the JSON string token at each path, quotes included.

    Raises ``KeyError`` when a path does not exist and ``ValueError`` when the value
    there is not a string, a path goes through a value of the wrong kind, or ``raw``
    is not valid UTF-8 JSON.
    """
    wanted = list(dict.fromkeys(tuple(p) for p in paths))
    if not wanted:
        return {}
    trie = _build_trie(wanted)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"JSON body is not UTF-8 (byte {exc.start})") from None
    found: dict[JsonPath, tuple[int, int]] = {}
    scan: _Scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
    walker = _Walker(text, scan, found)
    start = 1 if text.startswith("\ufeff") else 0
    end = walker.value(_skip_ws(text, start), trie, ())
    end = _skip_ws(text, end)
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at character {end}")
    for path in wanted:
        if path not in found:
            raise KeyError(path)
    if len(text) != len(raw):
        found = _to_byte_offsets(text, found)
    return found


def replace_strings(raw: bytes, replacements: Mapping[JsonPath, str]) -> bytes:
    """``raw`` with the string value at each path replaced; every other byte identical.

    New strings are written as ``json.dumps(value, ensure_ascii=False)`` in UTF-8.
    Raises like :func:`string_spans`; ``TypeError`` for a replacement that is not a str.
    """
    if not replacements:
        return raw
    encoded = {tuple(path): _encode(value) for path, value in replacements.items()}
    spans = string_spans(raw, encoded)
    pieces: list[bytes] = []
    position = 0
    for path, (start, end) in sorted(spans.items(), key=lambda item: item[1][0]):
        pieces.append(raw[position:start])
        pieces.append(encoded[path])
        position = end
    pieces.append(raw[position:])
    return b"".join(pieces)


def _encode(value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"replacement must be a str, not {type(value).__name__}")
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates cannot be UTF-8: \u-escape them (ASCII output, same value).
        return json.dumps(value).encode("ascii")


def _build_trie(paths: list[JsonPath]) -> _Trie:
    root: _Trie = {}
    for path in paths:
        if not path:
            raise ValueError("empty path: the document itself cannot be replaced")
        node = root
        for depth, key in enumerate(path):
            is_index = isinstance(key, int) and not isinstance(key, bool)
            if not (isinstance(key, str) or (is_index and key >= 0)):
                raise ValueError(f"path {path!r}: {key!r} is not an object key or array index")
            if node and isinstance(next(iter(node)), str) != isinstance(key, str):
                raise ValueError(f"path {path!r} needs both an object and an array at one place")
            if depth == len(path) - 1:
                if key in node:
                    raise ValueError(f"path {path!r} overlaps another requested path")
                node[key] = None
            else:
                child = node.setdefault(key, {})
                if child is None:
                    raise ValueError(f"path {path!r} overlaps another requested path")
                node = child
    return root


class _Walker:
    """Descends only into requested paths, recording string spans in character offsets."""

    def __init__(self, text: str, scan: _Scan, found: dict[JsonPath, tuple[int, int]]) -> None:
        self.text = text
        self.scan = scan
        self.found = found

    def value(self, index: int, node: _Trie | None, prefix: JsonPath) -> int:
        """Walk the value starting at ``index``; return the index just after it."""
        char = self.text[index : index + 1]
        if node is None:
            if char != '"':
                raise ValueError(f"value at {prefix!r} is not a string")
            _, end = _scanstring(self.text, index + 1)
            self.found[prefix] = (index, end)
            return end
        if isinstance(next(iter(node)), str):
            if char != "{":
                raise ValueError(f"value at {prefix!r} is not an object")
            return self._object(index, node, prefix)
        if char != "[":
            raise ValueError(f"value at {prefix!r} is not an array")
        return self._array(index, node, prefix)

    def _skip(self, index: int) -> int:
        try:
            end: int = self.scan(self.text, index)[1]
            return end
        except StopIteration:
            raise ValueError(f"invalid JSON value at character {index}") from None

    def _object(self, index: int, node: _Trie, prefix: JsonPath) -> int:
        text = self.text
        index = _skip_ws(text, index + 1)
        if text.startswith("}", index):
            return index + 1
        seen: set[str] = set()
        while True:
            if not text.startswith('"', index):
                raise ValueError(f"expected an object key at character {index}")
            key, index = _scanstring(text, index + 1)
            index = _skip_ws(text, index)
            if not text.startswith(":", index):
                raise ValueError(f"expected ':' at character {index}")
            index = _skip_ws(text, index + 1)
            if key in node:
                if key in seen:  # the last duplicate wins, as in json.loads
                    self._forget((*prefix, key))
                seen.add(key)
                index = self.value(index, node[key], (*prefix, key))
            else:
                index = self._skip(index)
            index = _skip_ws(text, index)
            if text.startswith("}", index):
                return index + 1
            if not text.startswith(",", index):
                raise ValueError(f"expected ',' or '}}' at character {index}")
            index = _skip_ws(text, index + 1)

    def _array(self, index: int, node: _Trie, prefix: JsonPath) -> int:
        text = self.text
        index = _skip_ws(text, index + 1)
        if text.startswith("]", index):
            return index + 1
        position = 0
        while True:
            if position in node:
                index = self.value(index, node[position], (*prefix, position))
            else:
                index = self._skip(index)
            index = _skip_ws(text, index)
            if text.startswith("]", index):
                return index + 1
            if not text.startswith(",", index):
                raise ValueError(f"expected ',' or ']' at character {index}")
            index = _skip_ws(text, index + 1)
            position += 1

    def _forget(self, prefix: JsonPath) -> None:
        for path in [p for p in self.found if p[: len(prefix)] == prefix]:
            del self.found[path]


def _skip_ws(text: str, index: int) -> int:
    if text[index : index + 1] not in _WS_CHARS:  # compact JSON: usually no whitespace
        return index
    match = _WS.match(text, index)
    return match.end() if match else index


def _to_byte_offsets(
    text: str, spans: dict[JsonPath, tuple[int, int]]
) -> dict[JsonPath, tuple[int, int]]:
    """Character offsets -> UTF-8 byte offsets, encoding each stretch of text once."""
    positions = sorted({offset for span in spans.values() for offset in span})
    byte_at: dict[int, int] = {}
    previous, byte = 0, 0
    for position in positions:
        byte += len(text[previous:position].encode("utf-8"))
        byte_at[position] = byte
        previous = position
    return {path: (byte_at[start], byte_at[end]) for path, (start, end) in spans.items()}
