"""Chat completions through the real proxy, driven by the real OpenAI SDK and raw HTTP."""

from __future__ import annotations

import json

import httpx
import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.proxy import ALPHA_KEY, ORG_KEY
from tests.support.servers import ProxyServer
from tests.support.upstream import FakeUpstream, chat_chunk, sse_reply

pytestmark = pytest.mark.integration

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


def _capture_sdk_body(proxy: ProxyServer) -> tuple[openai.OpenAI, list[bytes]]:
    """An SDK client that also records the exact bytes it sends."""
    sent: list[bytes] = []

    def record(request: httpx2.Request) -> None:
        sent.append(request.read())

    # The SDK's own HTTP stack (openai 3.x ships on httpx2).
    http_client = httpx2.Client(event_hooks={"request": [record]})
    sdk = openai.OpenAI(
        base_url=proxy.base_url, api_key=ALPHA_KEY, max_retries=0, http_client=http_client
    )
    return sdk, sent


def test_non_streaming_round_trip(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello!"
    assert completion.usage is not None and completion.usage.total_tokens == 12
    assert raw.headers["x-linguagate-tenant"] == "alpha"
    assert float(raw.headers["x-linguagate-overhead-ms"]) >= 0
    # The upstream's own request id is relayed; ours is reported beside it.
    assert raw.headers["x-request-id"] == "req_fake_upstream"
    assert raw.headers["x-linguagate-request-id"].startswith("lg-")
    seen = upstream.last("/v1/chat/completions")
    assert seen.header("authorization") == f"Bearer {ORG_KEY}"
    assert seen.header("x-request-id") == raw.headers["x-linguagate-request-id"]


def test_sdk_bytes_reach_upstream_unchanged(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    sdk, sent = _capture_sdk_body(proxy)
    with sdk:
        sdk.chat.completions.create(
            model="gpt-4o",
            messages=[
                {"role": "system", "content": "You are terse."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this image? Reply in JSON."},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "lookup",
                                "arguments": '{"q": "ORD-42", "n": 1.0}',
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
            ],
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "lookup",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                    },
                }
            ],
            tool_choice="auto",
            temperature=1.0,
            response_format={"type": "json_object"},
            extra_body={"vendor_extension": {"keep": [1, 2.50, "x"]}},
        )
    assert upstream.last("/v1/chat/completions").body == sent[-1]


def test_raw_bytes_forwarded_verbatim(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    # Odd but valid JSON: spacing, key order, number forms, escapes, unknown fields.
    body = (
        b'{ "messages" : [ {"content":"caf\\u00e9 \xe2\x9c\x93","role":"user"} ],'
        b'"model":"gpt-4o-mini", "temperature":1.0, "top_p":1e0,'
        b' "unknown_field":{"a":[null,true]} }'
    )
    response = httpx.post(
        proxy.base_url + "/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {ALPHA_KEY}", "content-type": "application/json"},
    )
    assert response.status_code == 200
    assert upstream.last("/v1/chat/completions").body == body


def test_streaming_bytes_identical(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    chunks = [chat_chunk({"role": "assistant", "content": ""})]
    chunks += [chat_chunk({"content": w}) for w in ("One ", "two ", "three.")]
    chunks += [chat_chunk({}, finish="stop"), b"data: [DONE]\n\n"]
    upstream.enqueue("/v1/chat/completions", sse_reply(chunks, delay_s=0.01))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = {"authorization": f"Bearer {ALPHA_KEY}"}
    with httpx.stream(
        "POST", proxy.base_url + "/chat/completions", json=body, headers=headers
    ) as r:
        received = b"".join(r.iter_raw())
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in r.headers
    assert received == b"".join(chunks)
    assert upstream.last().header("accept-encoding") == "identity"


def test_streaming_with_sdk_and_include_usage(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    events = list(stream)
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == "Hello!"
    last = events[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.total_tokens == 12
    assert all(e.usage is None for e in events[:-1])


def test_n_greater_than_one(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=3)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, n=2, stream=True
    )
    texts = {0: "", 1: ""}
    for event in stream:
        for choice in event.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "Hello!", 1: "Hello!"}


def test_streamed_tool_calls_untouched(
    proxy: ProxyServer, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    call = {
        "index": 0,
        "id": "call_9",
        "type": "function",
        "function": {"name": "lookup", "arguments": ""},
    }
    chunks = [
        chat_chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": "OR'}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'D-42"}'}}]}),
        chat_chunk({}, finish="tool_calls"),
        b"data: [DONE]\n\n",
    ]
    upstream.enqueue("/v1/chat/completions", sse_reply(chunks))
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    arguments = ""
    for event in stream:
        for tool_call in event.choices[0].delta.tool_calls or []:
            arguments += (tool_call.function and tool_call.function.arguments) or ""
    assert json.loads(arguments) == {"q": "ORD-42"}


def test_unicode_split_across_chunks(
    proxy: ProxyServer, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    event = chat_chunk({"content": "naïve 🦜 café"})
    cut_in_parrot = event.index("🦜".encode()) + 2
    cut_in_i = event.index("ï".encode()) + 1
    pieces = [
        event[:cut_in_i],
        event[cut_in_i:cut_in_parrot],
        event[cut_in_parrot:],
        b"data: [DONE]\n\n",
    ]
    upstream.enqueue("/v1/chat/completions", sse_reply(pieces, delay_s=0.02))
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert "".join(e.choices[0].delta.content or "" for e in stream) == "naïve 🦜 café"

    upstream.enqueue("/v1/chat/completions", sse_reply(pieces, delay_s=0.02))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = {"authorization": f"Bearer {ALPHA_KEY}"}
    with httpx.stream(
        "POST", proxy.base_url + "/chat/completions", json=body, headers=headers
    ) as r:
        assert b"".join(r.iter_raw()) == b"".join(pieces)
