"""`load_json_object`: a JSON object, or a 400 that says what is wrong (depth included)."""

from __future__ import annotations

import pytest

from proxy.core.errors import InvalidParameter, MalformedJSON
from proxy.gateway.jsonbody import MAX_JSON_DEPTH, load_json_object


def _nested(key: str, depth: int) -> bytes:
    return b'{"model":"m","%s":%s%s}' % (key.encode(), b"[" * depth, b"]" * depth)


def test_objects_load() -> None:
    assert load_json_object(b'{"model":"m","x":[[1]]}') == {"model": "m", "x": [[1]]}


@pytest.mark.parametrize("raw", [b"", b"[1]", b"\xff", b'{"a":', b'"\\ud800"'])
def test_not_an_object_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedJSON):
        load_json_object(raw)


def test_the_depth_limit_is_inclusive() -> None:
    # The body object is level 1: its value may nest MAX_JSON_DEPTH - 1 more levels.
    assert load_json_object(_nested("tools", MAX_JSON_DEPTH - 1))["model"] == "m"
    with pytest.raises(InvalidParameter) as caught:
        load_json_object(_nested("tools", MAX_JSON_DEPTH))
    assert (caught.value.param, caught.value.code) == ("tools", "json_too_deep")


@pytest.mark.parametrize("depth", [1_000, 200_000])
def test_nesting_beyond_the_recursion_limit_names_the_field(depth: int) -> None:
    raw = b'{"model":"m","ok":{"a":[1]},"we\\"ird":' + b"{\"k\":" * depth + b"1" + b"}" * depth
    raw += b"}"
    with pytest.raises(InvalidParameter) as caught:
        load_json_object(raw)
    assert caught.value.param == 'we"ird'


def test_many_brackets_side_by_side_are_not_deep() -> None:
    raw = b'{"model":"m","x":[' + b",".join([b"[]"] * 10_000) + b"]}"
    assert len(load_json_object(raw)["x"]) == 10_000
