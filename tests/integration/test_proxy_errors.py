"""Errors: the proxy's own (OpenAI-shaped) and the upstream's (relayed unchanged)."""

from __future__ import annotations

import json
import socket

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.proxy import ALPHA_KEY, StartProxy, openai_error
from tests.support.servers import ProxyServer
from tests.support.upstream import FakeUpstream, Reply, chat_chunk, error_reply, sse_reply

pytestmark = pytest.mark.integration

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
AUTH = {"authorization": f"Bearer {ALPHA_KEY}"}


def test_upstream_429_relayed_with_headers(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    limits = [
        ("retry-after", "7"),
        ("retry-after-ms", "7000"),
        ("x-ratelimit-limit-requests", "500"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "7s"),
    ]
    reply = error_reply(429, "Rate limit reached", limits, code="rate_limit_exceeded")
    upstream.enqueue("/v1/chat/completions", reply)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    response = caught.value.response
    assert response.status_code == 429
    for name, value in limits:
        assert response.headers[name] == value
    assert response.content == reply.body
    assert caught.value.code == "rate_limit_exceeded"


def test_upstream_500_relayed(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    reply = error_reply(500, "The server had an error", [("x-should-retry", "true")])
    upstream.enqueue("/v1/chat/completions", reply)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 500
    assert caught.value.response.headers["x-should-retry"] == "true"
    assert caught.value.response.content == reply.body


def test_mid_stream_failure_becomes_error_event(
    proxy: ProxyServer, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    chunks = [chat_chunk({"content": w}) for w in ("a", "b", "c", "d")]
    upstream.enqueue("/v1/chat/completions", sse_reply(chunks, delay_s=0.01, abort_after=2))
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    seen = []
    with pytest.raises(openai.APIError):
        for event in stream:
            seen.append(event.choices[0].delta.content)
    assert seen == ["a", "b"]

    upstream.enqueue("/v1/chat/completions", sse_reply(chunks, delay_s=0.01, abort_after=2))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", proxy.base_url + "/chat/completions", json=body, headers=AUTH) as r:
        received = b"".join(r.iter_raw())
    assert received.startswith(chunks[0] + chunks[1] + b"data: {")
    error = json.loads(received[len(chunks[0] + chunks[1]) + len(b"data: ") :])["error"]
    assert error["code"] == "upstream_unreachable"


def test_malformed_json_and_wrong_types(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    url = proxy.base_url + "/chat/completions"
    bad = httpx.post(url, content=b'{"model": "gpt-4o", "messages": [', headers=AUTH)
    assert bad.status_code == 400
    assert openai_error(bad)["type"] == "invalid_request_error"
    assert bad.headers["x-request-id"]
    cases = {
        b'["not", "an", "object"]': None,
        b'{"messages": []}': "model",
        b'{"model": 4, "messages": []}': "model",
        b'{"model": "gpt-4o", "messages": "hi"}': "messages",
        b'{"model": "gpt-4o", "messages": [{"role": "user"}, 3]}': "messages[1]",
        b'{"model": "gpt-4o", "messages": [], "stream": "yes"}': "stream",
    }
    for body, param in cases.items():
        response = httpx.post(url, content=body, headers=AUTH)
        assert response.status_code == 400, body
        assert openai_error(response)["param"] == param, body
    assert upstream.requests == []


def test_body_over_limit_is_413(start_proxy: StartProxy, upstream: FakeUpstream) -> None:
    with start_proxy(max_body_bytes=1000) as proxy:
        big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 2000}]}
        response = httpx.post(proxy.base_url + "/chat/completions", json=big, headers=AUTH)
        assert response.status_code == 413
        assert openai_error(response)["code"] == "request_too_large"

        def chunked() -> object:
            yield b'{"model": "gpt-4o", "input": "'
            yield b"y" * 2000
            yield b'"}'

        streamed = httpx.post(proxy.base_url + "/embeddings", content=chunked(), headers=AUTH)  # type: ignore[arg-type]
        assert streamed.status_code == 413
    assert upstream.requests == []


def test_unknown_key_is_401(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    with openai.OpenAI(base_url=proxy.base_url, api_key="sk-nobody", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            sdk.models.list()
    anonymous = httpx.get(proxy.base_url + "/models")
    assert anonymous.status_code == 401
    assert upstream.requests == []


def test_unreachable_upstream_is_502(start_proxy: StartProxy) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with start_proxy(upstream_url=f"http://127.0.0.1:{closed_port}/v1") as proxy:
        response = httpx.post(
            proxy.base_url + "/chat/completions", json={"model": "m", "messages": []}, headers=AUTH
        )
        assert response.status_code == 502
        assert openai_error(response)["code"] == "upstream_unreachable"
        ready = httpx.get(proxy.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["upstream"]["status"] == "unreachable"


def test_upstream_timeout_is_504_with_retry_after(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    upstream.enqueue("/v1/chat/completions", Reply(start_delay_s=2.0, chunks=(b"{}",)))
    with start_proxy(read_timeout_s=0.3) as proxy:
        with openai.OpenAI(base_url=proxy.base_url, api_key=ALPHA_KEY, max_retries=0) as sdk:
            with pytest.raises(openai.InternalServerError) as caught:
                sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 504
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.code == "upstream_timeout"


def test_paths_outside_v1_are_404(proxy: ProxyServer) -> None:
    response = httpx.get(proxy.url + "/v2/models", headers=AUTH)
    assert response.status_code == 404
    assert openai_error(response)["code"] == "unknown_url"
