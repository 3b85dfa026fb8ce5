"""A client that goes away makes the proxy close the upstream request at once."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.proxy import ALPHA_KEY
from tests.support.servers import ProxyServer
from tests.support.upstream import FakeUpstream, Reply, chat_chunk, sse_reply

pytestmark = pytest.mark.integration

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a long story"}]


def test_stream_closed_by_client(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    chunks = [chat_chunk({"content": f"word{i} "}) for i in range(200)]
    upstream.enqueue("/v1/chat/completions", sse_reply(chunks, delay_s=0.05))
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == "word0 "
    stream.close()
    seen = upstream.last("/v1/chat/completions")
    assert seen.disconnected.wait(5), "the upstream never saw the connection close"


def test_client_gone_while_upstream_thinks(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    # A non-streaming answer that takes long: the client gives up before any byte came back.
    upstream.enqueue("/v1/chat/completions", Reply(start_delay_s=5.0, chunks=(b"{}",)))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            proxy.base_url + "/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {ALPHA_KEY}"},
            timeout=httpx.Timeout(5.0, read=0.3),
        )
    seen = upstream.last("/v1/chat/completions")
    assert seen.disconnected.wait(5), "the upstream never saw the connection close"
