"""Chat request validation: only the fields the proxy acts on, with `param` in errors."""

from __future__ import annotations

import pytest

from proxy.compression.transform import PipelineOutcome, identity_transform
from proxy.core.errors import InvalidParameter, MalformedJSON
from proxy.gateway.pipeline import parse_chat_body


def test_valid_body_keeps_unknown_fields() -> None:
    body = parse_chat_body(
        b'{"model": "m", "messages": [{"role": "user"}], "stream": null, "zzz": [1.0]}'
    )
    assert body["zzz"] == [1.0]


@pytest.mark.parametrize(
    ("raw", "error", "param"),
    [
        (b"{", MalformedJSON, None),
        (b"\xff\xfe", MalformedJSON, None),
        (b"[]", MalformedJSON, None),
        (b'{"messages": []}', InvalidParameter, "model"),
        (b'{"model": null, "messages": []}', InvalidParameter, "model"),
        (b'{"model": "m"}', InvalidParameter, "messages"),
        (b'{"model": "m", "messages": {}}', InvalidParameter, "messages"),
        (b'{"model": "m", "messages": ["hi"]}', InvalidParameter, "messages[0]"),
        (b'{"model": "m", "messages": [], "stream": 1}', InvalidParameter, "stream"),
    ],
)
def test_invalid(raw: bytes, error: type[Exception], param: str | None) -> None:
    with pytest.raises(error) as caught:
        parse_chat_body(raw)
    assert getattr(caught.value, "param", None) == param


async def test_identity_returns_same_bytes() -> None:
    raw = b'{"model":"m","messages":[]}'
    outcome = await identity_transform(raw, {}, None, None)  # type: ignore[arg-type]
    assert outcome == PipelineOutcome(raw)
    assert outcome.body is raw
