"""Byte-faithful JSON string splicing."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from proxy.compression.rewrite import JsonPath, replace_strings, string_spans

BODY = (
    b'{"model": "gpt-4o",  "temperature" :1.0, "top_p":1e0, "n":2,\n'
    b' "messages":[\n'
    b'  {"role":"system","content":"Be \\u0062rief \\"always\\""},\n'
    b'  {"role":"user","content":[{"type":"text","text":"caf\xc3\xa9 \xf0\x9f\x98\x80"},'
    b'{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},\n'
    b'  {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",'
    b'"function":{"name":"f","arguments":"{\\"a\\": 1.50}"}}]}\n'
    b' ], "x_unknown": {"deep": [true, false, null, -0.0, 12345678901234567890]}}'
)


def test_spans_cover_the_string_tokens() -> None:
    paths: list[JsonPath] = [("messages", 0, "content"), ("messages", 1, "content", 0, "text")]
    spans = string_spans(BODY, paths)
    assert BODY[slice(*spans[paths[0]])] == b'"Be \\u0062rief \\"always\\""'
    assert BODY[slice(*spans[paths[1]])] == '"café 😀"'.encode()
    assert string_spans(BODY, []) == {}


def test_replace_keeps_every_other_byte() -> None:
    path = ("messages", 0, "content")
    start, end = string_spans(BODY, [path])[path]
    out = replace_strings(BODY, {path: "Brief."})
    assert out == BODY[:start] + b'"Brief."' + BODY[end:]
    assert b'"temperature" :1.0, "top_p":1e0' in out
    assert b"12345678901234567890" in out


def test_several_paths_in_one_pass() -> None:
    out = replace_strings(
        BODY,
        {
            ("messages", 1, "content", 0, "text"): 'ça 😀 "q" \\ \n\t\x00 \u2028',
            ("messages", 0, "content"): "",
            ("model",): "gpt-4o-mini",
        },
    )
    expected = json.loads(BODY)
    expected["messages"][1]["content"][0]["text"] = 'ça 😀 "q" \\ \n\t\x00 \u2028'
    expected["messages"][0]["content"] = ""
    expected["model"] = "gpt-4o-mini"
    assert json.loads(out) == expected
    # New strings are UTF-8, not \u-escaped; control characters are escaped.
    assert '"ça 😀 \\"q\\" \\\\ \\n\\t\\u0000 \u2028"'.encode() in out
    assert b'"arguments":"{\\"a\\": 1.50}"' in out


def test_no_replacements_returns_the_same_bytes() -> None:
    assert replace_strings(BODY, {}) is BODY


def test_duplicate_keys_resolve_to_the_last_one() -> None:
    raw = b'{"a": "first", "b": {"c": "x"}, "a": "last", "b": {"d": 1, "c": "y"}}'
    out = replace_strings(raw, {("a",): "A", ("b", "c"): "C"})
    assert out == b'{"a": "first", "b": {"c": "x"}, "a": "A", "b": {"d": 1, "c": "C"}}'
    with pytest.raises(KeyError):
        string_spans(b'{"b": {"c": "x"}, "b": {}}', [("b", "c")])


def test_escaped_keys_match_their_decoded_form() -> None:
    raw = b'{"con\\u0074ent": "hello"}'
    assert replace_strings(raw, {("content",): "bye"}) == b'{"con\\u0074ent": "bye"}'


def test_byte_order_mark_and_surrounding_whitespace() -> None:
    raw = b'\xef\xbb\xbf \n{"k": "\xc3\xa9t\xc3\xa9"} \n'
    assert (
        replace_strings(raw, {("k",): "été!"}) == b'\xef\xbb\xbf \n{"k": "\xc3\xa9t\xc3\xa9!"} \n'
    )


def test_lone_surrogate_replacement_is_escaped() -> None:
    out = replace_strings(b'{"k": "v"}', {("k",): "a\ud800b"})
    assert out == b'{"k": "a\\ud800b"}'
    assert json.loads(out) == {"k": "a\ud800b"}


@pytest.mark.parametrize(
    ("path", "error", "match"),
    [
        (("nope",), KeyError, "nope"),
        (("messages", 9, "content"), KeyError, "9"),
        (("messages", 2, "content"), ValueError, "not a string"),
        (("temperature",), ValueError, "not a string"),
        (("messages", 1, "content"), ValueError, "not a string"),
        (("messages", "0"), ValueError, "not an object"),
        (("model", 0), ValueError, "not an array"),
        ((), ValueError, "empty path"),
        (("messages", -1, "content"), ValueError, "not an object key or array index"),
        (("messages", True), ValueError, "not an object key or array index"),
    ],
)
def test_bad_paths(path: JsonPath, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        replace_strings(BODY, {path: "x"})


def test_conflicting_paths() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        string_spans(BODY, [("messages", 1, "content"), ("messages", 1, "content", 0, "text")])
    with pytest.raises(ValueError, match="overlaps"):
        string_spans(BODY, [("messages", 1, "content", 0), ("messages", 1, "content")])
    with pytest.raises(ValueError, match="both an object and an array"):
        string_spans(BODY, [("messages", 0), ("messages", "x")])
    # The same path twice is one request, not a conflict.
    assert len(string_spans(BODY, [("model",), ("model",)])) == 1


def test_replacement_must_be_str() -> None:
    with pytest.raises(TypeError):
        replace_strings(BODY, {("model",): 3})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "x"',
        b'{"a": "x"} extra',
        b'{"a" "x"}',
        b'{"a": "x" "b": 1}',
        b'{"a": "x", "b": tru}',
        b'{"a": "x", "b": [1 2]}',
        b'{"a": "x\x01"}',
        b'{"a": "x", 1: 2}',
        b'\xff{"a": "x"}',
        b"",
    ],
)
def test_invalid_json_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        replace_strings(raw, {("a",): "y"})


# -- randomised property check (seeded, no extra dependency) ----------------------------

_ALPHABET = ["a", "Z", " ", "é", "😀", '"', "\\", "/", "\n", "\t", "\x00", "\u2028", "\ufeff", "0"]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 12)))


def _document(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([True, False, None])
    if kind == 1:
        return rng.choice([0, -7, 2**70, 1.0, -0.5, 1e-9, 3.25e10])
    if kind in (2, 3, 4):
        return _text(rng)
    if kind == 5:
        return [_document(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {_text(rng): _document(rng, depth + 1) for _ in range(rng.randrange(0, 5))}


def _string_paths(value: Any, prefix: JsonPath = ()) -> list[JsonPath]:
    if isinstance(value, str):
        return [prefix] if prefix else []
    if isinstance(value, dict):
        return [p for key, child in value.items() for p in _string_paths(child, (*prefix, key))]
    if isinstance(value, list):
        return [p for i, child in enumerate(value) for p in _string_paths(child, (*prefix, i))]
    return []


def _serialise(rng: random.Random, value: Any) -> bytes:
    indent = rng.choice([None, None, 0, 2, "\t"])
    separators = rng.choice([(",", ":"), (", ", ": "), (" ,", " : ")])
    text = json.dumps(value, indent=indent, separators=separators, ensure_ascii=rng.random() < 0.5)
    return (rng.choice(["", " ", "\n"]) + text + rng.choice(["", "\r\n"])).encode("utf-8")


def _get(document: Any, path: JsonPath) -> Any:
    for key in path:
        document = document[key]
    return document


def _set(document: Any, path: JsonPath, value: str) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


def test_random_documents_round_trip() -> None:
    rng = random.Random(20261127)
    checked = 0
    for _ in range(400):
        document = {"root": _document(rng)}
        paths = _string_paths(document)
        if not paths:
            continue
        raw = _serialise(rng, document)
        chosen = rng.sample(paths, rng.randrange(1, len(paths) + 1))
        replacements = {path: _text(rng) for path in chosen}
        out = replace_strings(raw, replacements)

        expected = copy.deepcopy(document)
        for path, value in replacements.items():
            _set(expected, path, value)
        assert json.loads(out) == expected

        spans = sorted(string_spans(raw, chosen).items(), key=lambda item: item[1])
        rebuilt, position = b"", 0
        for path, (start, end) in spans:
            assert json.loads(raw[start:end]) == _get(document, path)
            new = json.dumps(replacements[path], ensure_ascii=False).encode("utf-8")
            rebuilt += raw[position:start] + new
            position = end
        assert out == rebuilt + raw[position:]
        checked += 1
    assert checked > 200
