"""A fake OpenAI upstream: a real HTTP server on loopback that records and can be scripted.

Every request is recorded with its exact body bytes and raw headers. Replies are queued per
path (`enqueue`); with nothing queued, a path gets a sensible default (chat completions
stream when asked to, honouring `n` and `stream_options.include_usage`; `/v1/models`;
`/v1/embeddings`). A `Reply` can be JSON, an SSE stream of given chunks with delays, an
error with status and headers, a stream that aborts the connection mid-way, or a slow
stream that records when the client closed the connection.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.provider_cache import ProviderPromptCache
from tests.support.servers import ServerThread

__all__ = [
    "FakeUpstream",
    "Recorded",
    "Reply",
    "chat_chunk",
    "chat_completion",
    "error_reply",
    "fake_upstream",
    "json_reply",
    "sse_reply",
    "upstream",
]

Scope = dict[str, Any]
Message = dict[str, Any]


@dataclass
class Recorded:
    """One request as the upstream saw it."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    disconnected: threading.Event = field(default_factory=threading.Event)
    completed: threading.Event = field(default_factory=threading.Event)

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        return next((v.decode("latin-1") for k, v in self.headers if k == wanted), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """A scripted response. `chunks` are sent as separate writes, `delay_s` apart."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    chunks: tuple[bytes, ...] = ()
    delay_s: float = 0.0
    # Wait this long before the response starts (to provoke timeouts).
    start_delay_s: float = 0.0
    # Drop the connection (no terminating chunk) after sending this many chunks.
    abort_after: int | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def json_reply(obj: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    body = json.dumps(obj).encode()
    return Reply(
        status,
        (("content-type", "application/json"), ("content-length", str(len(body))), *headers),
        (body,),
    )


def error_reply(
    status: int, message: str, headers: Sequence[tuple[str, str]] = (), *, code: str | None = None
) -> Reply:
    error = {
        "error": {
            "message": message,
            "type": "requests" if status == 429 else "server_error",
            "param": None,
            "code": code,
        }
    }
    return json_reply(error, status, headers)


def sse_reply(
    chunks: Sequence[bytes],
    *,
    delay_s: float = 0.0,
    abort_after: int | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Reply:
    return Reply(
        200,
        (("content-type", "text/event-stream; charset=utf-8"), *headers),
        tuple(chunks),
        delay_s=delay_s,
        abort_after=abort_after,
    )


def chat_completion(model: str = "gpt-4o-mini", text: str = "Hello!", n: int = 1) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        "system_fingerprint": "fp_fake",
    }


def chat_chunk(
    delta: dict[str, Any],
    *,
    index: int = 0,
    finish: str | None = None,
    with_usage: bool = False,
    usage: Any = None,
    model: str = "gpt-4o-mini",
    choices: bool = True,
) -> bytes:
    """One `chat.completion.chunk` SSE event; `with_usage` adds `"usage": usage` (null default)."""
    chunk: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if choices
        else [],
    }
    if with_usage:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


def _usage(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
    }


def _default_chat(body: dict[str, Any], prompt: tuple[int, int]) -> Reply:
    model = body.get("model", "gpt-4o-mini")
    n = int(body.get("n") or 1)
    if not body.get("stream"):
        answer = chat_completion(model, n=n)
        answer["usage"] = _usage(*prompt, 3 * n)
        return json_reply(answer, headers=[("x-request-id", "req_fake_upstream")])
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunks: list[bytes] = []
    for i in range(n):
        for delta in ({"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo!"}):
            chunks.append(chat_chunk(delta, index=i, model=model, with_usage=include_usage))
        chunks.append(chat_chunk({}, index=i, finish="stop", model=model, with_usage=include_usage))
    if include_usage:
        usage = _usage(*prompt, 3 * n)
        chunks.append(chat_chunk({}, with_usage=True, usage=usage, model=model, choices=False))
    chunks.append(b"data: [DONE]\n\n")
    return sse_reply(chunks)


def _default_completion(body: dict[str, Any], prompt: tuple[int, int]) -> Reply:
    return json_reply({
        "id": "cmpl-fake", "object": "text_completion", "created": 1700000000,
        "model": body.get("model", "gpt-3.5-turbo-instruct"),
        "choices": [{"text": "Hello!", "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(*prompt, 3),
    })


def _default_reply(method: str, path: str, body: bytes,
                   prompt: tuple[int, int] = (9, 0)) -> Reply:
    if path == "/v1/chat/completions" and method == "POST":
        return _default_chat(json.loads(body), prompt)
    if path == "/v1/completions" and method == "POST":
        return _default_completion(json.loads(body), prompt)
    if path == "/v1/models":
        return json_reply(
            {
                "object": "list",
                "data": [
                    {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "fake"}
                ],
            }
        )
    if path == "/v1/embeddings" and method == "POST":
        return json_reply(
            {
                "object": "list",
                "model": "text-embedding-3-small",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )
    return error_reply(404, f"Unknown path {path}", code="unknown_url")


async def _sleep_unless_disconnected(seconds: float, record: Recorded) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not record.disconnected.is_set():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.02))


class _Abort(Exception):
    """Raised inside the ASGI app to make uvicorn drop the connection mid-response."""


class FakeUpstream:
    """ASGI app + recorder. Thread-safe: the server runs in another thread than the tests."""

    def __init__(self) -> None:
        # Default replies bill prompts like OpenAI: real token counts, and prefixes seen
        # before (per API key, 1,024+ tokens, 128-token steps) as cached_tokens.
        self.prompt_cache = ProviderPromptCache()
        self.requests: list[Recorded] = []
        self._queues: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        self.url = ""

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def enqueue(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._queues.setdefault(path, deque()).extend(replies)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._queues.clear()
        self.prompt_cache.reset()

    def last(self, path: str | None = None) -> Recorded:
        with self._lock:
            matching = [r for r in self.requests if path is None or r.path == path]
        assert matching, f"the upstream saw no request for {path}"
        return matching[-1]

    def _next_reply(self, record: Recorded) -> Reply:
        method, path, body = record.method, record.path, record.body
        with self._lock:
            queue = self._queues.get(path)
            if queue:
                return queue.popleft()
        prompt = (9, 0)
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            key = record.header("authorization") or record.header("api-key") or ""
            prompt = self.prompt_cache.usage(key, json.loads(body))
        return _default_reply(method, path, body, prompt)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        record = Recorded(
            scope["method"], scope["path"], scope["query_string"], list(scope["headers"]), body
        )
        with self._lock:
            self.requests.append(record)
        reply = self._next_reply(record)
        watcher = asyncio.ensure_future(self._watch_disconnect(receive, record))
        try:
            await self._send_reply(reply, send, record)
        finally:
            record.completed.set()
            watcher.cancel()

    @staticmethod
    async def _watch_disconnect(receive: Any, record: Recorded) -> None:
        message = await receive()
        if message["type"] == "http.disconnect" and not record.completed.is_set():
            record.disconnected.set()

    @staticmethod
    async def _send_reply(reply: Reply, send: Any, record: Recorded) -> None:
        if reply.start_delay_s:
            await _sleep_unless_disconnected(reply.start_delay_s, record)
        headers = [(k.encode(), v.encode()) for k, v in reply.headers]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        for sent, chunk in enumerate(reply.chunks):
            if reply.abort_after is not None and sent >= reply.abort_after:
                raise _Abort("scripted mid-stream failure")
            if sent and reply.delay_s:
                await _sleep_unless_disconnected(reply.delay_s, record)
            if record.disconnected.is_set():
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    """One fake upstream server for the whole session (use `upstream` in tests: it resets)."""
    fake = FakeUpstream()
    with ServerThread(fake, name="fake-upstream") as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The session's fake upstream, with no recorded requests and no queued replies."""
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()
