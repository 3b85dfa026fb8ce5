"""The SSE relay, and UpstreamRelay at the raw ASGI level (disconnect, errors, headers)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx

from proxy.core.errors import UpstreamUnreachable
from proxy.gateway.forwarding import ForwardRequest
from proxy.gateway.streaming import UpstreamRelay, sse_relay
from proxy.gateway.transport import UpstreamResponse
from proxy.gateway.upstream import UpstreamClient


async def _chunks(*parts: bytes, fail: bool = False) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if fail:
        raise UpstreamUnreachable("gone")


async def _collect(iterator: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in iterator]


async def test_complete_events_pass_straight_through() -> None:
    parts = (b"data: 1\n\n", b"data: 2\n\ndata: 3\n\n", b"data: [DONE]\n\n")
    assert await _collect(sse_relay(_chunks(*parts))) == list(parts)


async def test_partial_event_waits_for_its_boundary() -> None:
    euro = "€".encode()
    parts = (b"data: a\n\ndata: " + euro[:1], euro[1:] + b"\n\n", b"data: x\r\n\r\n")
    out = await _collect(sse_relay(_chunks(*parts)))
    assert out == [b"data: a\n\n", b"data: " + euro + b"\n\n", b"data: x\r\n\r\n"]
    assert b"".join(out) == b"".join(parts)


async def test_failure_drops_partial_event_and_sends_error() -> None:
    seen: list[bytes] = []
    out = await _collect(
        sse_relay(_chunks(b'data: 1\n\ndata: {"par', fail=True), on_events=seen.append)
    )
    assert out[0] == b"data: 1\n\n"
    assert json.loads(out[1][len(b"data: ") :])["error"]["code"] == "upstream_unreachable"
    assert seen == [b"data: 1\n\n"]


async def test_unterminated_tail_is_flushed_at_end() -> None:
    assert await _collect(sse_relay(_chunks(b"data: 1\n\ndata: 2"))) == [b"data: 1\n\n", b"data: 2"]


class _Closer:
    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def close(self) -> None:
        self.closed.set()


class _SlowTransport:
    """An upstream that streams one event, then hangs until closed."""

    def __init__(self) -> None:
        self.closer = _Closer()

    async def send(
        self, method: str, url: str, headers: object, content: bytes
    ) -> UpstreamResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            await asyncio.sleep(30)

        headers_out = [(b"Content-Type", b"text/event-stream"), (b"Content-Length", b"99")]
        return UpstreamResponse(200, headers_out, body(), self.closer)

    async def aclose(self) -> None:
        pass


def _forward() -> ForwardRequest:
    return ForwardRequest(
        method="POST",
        url="http://up/v1/chat/completions",
        headers=[],
        content=b"{}",
        request_id="rid-1",
        response_headers=[(b"x-linguagate-tenant", b"t")],
        started=time.perf_counter(),
    )


async def test_client_disconnect_closes_upstream_at_once() -> None:
    transport = _SlowTransport()
    relay = UpstreamRelay(UpstreamClient("http://up/v1", transport=transport), _forward())
    sent: list[MutableMapping[str, Any]] = []
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message.get("body") == b"data: 1\n\n":
            disconnect.set()

    await asyncio.wait_for(relay({"type": "http"}, receive, send), timeout=5)
    assert transport.closer.closed.is_set()
    start = sent[0]
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert b"content-length" not in headers
    assert headers[b"x-accel-buffering"] == b"no"
    assert headers[b"x-request-id"] == b"rid-1"
    assert headers[b"x-linguagate-tenant"] == b"t"
    assert float(headers[b"x-linguagate-overhead-ms"]) >= 0
    assert not any(m.get("more_body") is False for m in sent)


async def test_upstream_unreachable_before_start_is_502() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    relay = UpstreamRelay(
        UpstreamClient("http://up/v1", transport=httpx.MockTransport(refuse)), _forward()
    )
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await relay({"type": "http"}, receive, send)
    assert sent[0]["status"] == 502
    body = json.loads(sent[1]["body"])
    assert body["error"]["code"] == "upstream_unreachable"


async def test_plain_body_relayed_with_length() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "2"}, content=b'{"error": {}}')

    relay = UpstreamRelay(
        UpstreamClient("http://up/v1", transport=httpx.MockTransport(answer)), _forward()
    )
    sent: list[MutableMapping[str, Any]] = []
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await relay({"type": "http"}, receive, send)
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 429
    assert headers[b"retry-after"] == b"2"
    assert headers[b"content-length"] == b"13"
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b'{"error": {}}'
    assert sent[-1]["more_body"] is False
