"""The local upstream's model loop, request validation and HTTP surface, on a tiny random model."""

from __future__ import annotations

import json
from collections.abc import Generator, MutableMapping, Sequence
from typing import Any

import httpx
import pytest

from proxy.local.model import (
    ChatMessage,
    Generation,
    GenerationParams,
    LocalChatModel,
    PromptTooLongError,
    _IncrementalText,
    _StopScanner,
)
from proxy.local.upstream import create_local_upstream_app
from proxy.local.wire import MAX_TOKENS_CAP, BadRequestError, parse_chat_request

HELLO = [ChatMessage("user", "hello there")]
GREEDY = GenerationParams(max_tokens=24, temperature=0)


class RecordingModel(LocalChatModel):
    """The tiny model, remembering every generation it hands out."""

    def __init__(self, base: LocalChatModel) -> None:
        super().__init__(base.model, base.tokenizer, name=base.name)
        self.generations: list[Generation] = []

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams) -> Generation:
        generation = super().generate(messages, params)
        self.generations.append(generation)
        return generation


@pytest.fixture(scope="module")
def tiny() -> LocalChatModel:
    return LocalChatModel.tiny()


@pytest.fixture
def recording(tiny: LocalChatModel) -> RecordingModel:
    return RecordingModel(tiny)


def _run(model: LocalChatModel, params: GenerationParams = GREEDY) -> tuple[str, Generation]:
    generation = model.generate(HELLO, params)
    return "".join(generation), generation


# --- the decoding loop ---------------------------------------------------------------------


def test_greedy_is_deterministic_and_counts_tokens(tiny: LocalChatModel) -> None:
    first, generation = _run(tiny)
    second, _ = _run(tiny)
    assert first == second and first
    assert generation.finish_reason == "length"
    assert generation.completion_tokens == 24
    assert generation.prompt_tokens == tiny.count_prompt_tokens(HELLO) > 0
    assert generation.closed


def test_seeded_sampling_repeats_and_seeds_differ(tiny: LocalChatModel) -> None:
    def sample(seed: int) -> str:
        return _run(tiny, GenerationParams(max_tokens=24, temperature=1.0, seed=seed))[0]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_top_p_zero_is_greedy(tiny: LocalChatModel) -> None:
    nucleus = GenerationParams(max_tokens=24, temperature=1.5, top_p=0.0, seed=3)
    assert _run(tiny, nucleus)[0] == _run(tiny)[0]


def test_stop_string_cuts_output_and_finishes_with_stop(tiny: LocalChatModel) -> None:
    full, _ = _run(tiny)
    stop = full[6:9]
    text, generation = _run(
        tiny, GenerationParams(max_tokens=24, temperature=0, stop=(stop, "zzzz"))
    )
    assert text == full[: full.index(stop)]
    assert generation.finish_reason == "stop"
    assert generation.completion_tokens < 24


def test_closing_stops_generation(tiny: LocalChatModel) -> None:
    generation = tiny.generate(HELLO, GenerationParams(max_tokens=500, temperature=0))
    next(generation)
    generation.close()
    assert generation.closed
    assert generation.completion_tokens == 1
    assert generation.finish_reason is None
    assert list(generation) == []


def test_prompt_longer_than_context_is_refused(tiny: LocalChatModel) -> None:
    long = [ChatMessage("user", "x" * (tiny.context_length + 10))]
    with pytest.raises(PromptTooLongError) as caught:
        tiny.generate(long, GREEDY)
    assert caught.value.prompt_tokens > tiny.context_length


def test_stop_scanner_holds_back_a_possible_stop_prefix() -> None:
    scanner = _StopScanner(["END"])
    assert scanner.feed("abcE") == ("abc", False)
    assert scanner.feed("N") == ("", False)
    assert scanner.feed("Dtail") == ("", True)
    other = _StopScanner(["END"])
    assert other.feed("xE") == ("x", False)
    assert other.feed("Ny") == ("ENy", False)
    assert other.release() == ""


class _ByteTokenizer:
    """Token id == one UTF-8 byte: multi-byte characters span several tokens."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_text_never_splits_a_multibyte_character() -> None:
    text = _IncrementalText(_ByteTokenizer())  # type: ignore[arg-type]
    deltas = [text.push(b) for b in "aé€".encode()]
    assert [d for d in deltas if d] == ["a", "é", "€"]
    assert text.flush() == ""


# --- request validation --------------------------------------------------------------------


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_parse_maps_roles_parts_and_knobs() -> None:
    body = _body(
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
        max_tokens=10,
        max_completion_tokens=5,
        temperature=0,
        seed=-1,
        stop="##",
        stream=True,
        stream_options={"include_usage": True},
        tools=[],
        response_format={"type": "text"},
    )
    chat = parse_chat_request(body)
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "be brief"),
        ("user", "a\nb"),
        ("assistant", ""),
    ]
    assert chat.params == GenerationParams(
        max_tokens=5, temperature=0.0, seed=2**64 - 1, stop=("##",)
    )
    assert chat.stream and chat.include_usage


def test_parse_defaults_and_caps() -> None:
    chat = parse_chat_request(_body(max_tokens=10**9), default_temperature=0.3)
    assert chat.params.max_tokens == MAX_TOKENS_CAP
    assert chat.params.temperature == 0.3
    assert not chat.stream and not chat.include_usage
    assert parse_chat_request(_body(stream_options={"include_usage": True})).include_usage is False


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": "1"}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                        ],
                    }
                ]
            },
            "messages[0].content[1]",
        ),
    ],
)
def test_parse_rejects_bad_values_naming_the_parameter(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_chat_request(_body(**extra))
    assert caught.value.param == param


# --- the HTTP surface (content only: ASGITransport buffers bodies) ---------------------------


@pytest.fixture
def client(recording: RecordingModel) -> httpx.AsyncClient:
    app = create_local_upstream_app(recording)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://local")


def _sse_payloads(raw: str) -> list[Any]:
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    return [json.loads(e.removeprefix("data: ")) for e in events[:-2]]


async def test_non_streaming_completion_shape(
    client: httpx.AsyncClient, tiny: LocalChatModel
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json=_body(
            messages=[{"role": "user", "content": "hello there"}], max_tokens=24, temperature=0
        ),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == tiny.name
    assert response.headers["x-request-id"] == body["id"]
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == _run(tiny)[0]
    assert choice["finish_reason"] == "length"
    prompt = tiny.count_prompt_tokens(HELLO)
    assert body["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 24,
        "total_tokens": prompt + 24,
    }


async def test_streaming_events_with_usage(client: httpx.AsyncClient, tiny: LocalChatModel) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json=_body(
            messages=[{"role": "user", "content": "hello there"}],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = _sse_payloads(response.text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    *with_choices, usage_chunk = chunks
    assert all(c["usage"] is None for c in with_choices)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 24
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices)
    assert content == _run(tiny)[0]
    assert with_choices[-1]["choices"][0]["finish_reason"] == "length"


async def test_streaming_without_usage_has_no_usage_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=_body(max_tokens=3, stream=True))
    chunks = _sse_payloads(response.text)
    assert all("usage" not in c and len(c["choices"]) == 1 for c in chunks)


@pytest.mark.parametrize(
    ("payload", "status", "param", "code"),
    [
        (b"{not json", 400, None, None),
        (json.dumps(_body(n=3)).encode(), 400, "n", None),
        (
            json.dumps(_body(messages=[{"role": "user", "content": "x" * 3000}])).encode(),
            400,
            "messages",
            "context_length_exceeded",
        ),
    ],
)
async def test_bad_requests_get_openai_errors(
    client: httpx.AsyncClient, payload: bytes, status: int, param: str | None, code: str | None
) -> None:
    response = await client.post("/v1/chat/completions", content=payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["param"], error["code"]) == (param, code)


async def test_models_endpoints(client: httpx.AsyncClient, tiny: LocalChatModel) -> None:
    listing = (await client.get("/v1/models")).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == [tiny.name]
    assert (await client.get(f"/v1/models/{tiny.name}")).json()["id"] == tiny.name
    missing = await client.get("/v1/models/gpt-5")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    unknown = await client.get("/v1/nothing-here")
    assert unknown.status_code == 404 and "error" in unknown.json()


# --- disconnects, at the raw ASGI level ----------------------------------------------------


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_stops_generation(recording: RecordingModel, stream: bool) -> None:
    import anyio

    app = create_local_upstream_app(recording)
    body = json.dumps(_body(max_tokens=2000, temperature=0, stream=stream)).encode()
    sent: list[MutableMapping[str, Any]] = []
    gone = anyio.Event()
    delivered = [False]

    async def receive() -> dict[str, Any]:
        if not delivered[0]:
            delivered[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        if stream:
            await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        # The client hangs up after the role chunk and two content chunks.
        if len([m for m in sent if m["type"] == "http.response.body"]) >= 3:
            gone.set()

    await app(_scope(), receive, send)
    [generation] = recording.generations
    assert generation.closed
    assert generation.finish_reason is None
    assert generation.completion_tokens < 50


async def test_full_queue_answers_429_with_retry_after(recording: RecordingModel) -> None:
    import anyio

    app = create_local_upstream_app(recording, max_concurrent=1, max_waiting=0)
    body = json.dumps(_body(max_tokens=50, temperature=0, stream=True)).encode()
    holding = anyio.Event()
    release = anyio.Event()
    delivered = [False]

    async def receive() -> dict[str, Any]:
        if not delivered[0]:
            delivered[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await release.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        # The first content chunk is sent while the stream holds the only slot.
        if message["type"] == "http.response.body" and b'"delta": {"content"' in message["body"]:
            holding.set()
            await release.wait()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(app, _scope(), receive, send)
        await holding.wait()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://local"
        ) as client:
            busy = await client.post("/v1/chat/completions", json=_body(max_tokens=2))
        release.set()
    assert busy.status_code == 429
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "queue_full"
    assert recording.generations[0].closed


async def test_body_that_is_not_utf8_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", content=b'{"model": "\xff\xfe"}')
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


class BrokenModel(LocalChatModel):
    """Fails after its first token, as a model running out of memory would."""

    def __init__(self, base: LocalChatModel) -> None:
        super().__init__(base.model, base.tokenizer, name=base.name)

    def _decode(
        self, prompt_ids: list[int], params: GenerationParams, record: Generation
    ) -> Generator[str, None, None]:
        yield "partial"
        raise RuntimeError("device lost")


@pytest.mark.parametrize("stream", [True, False])
async def test_model_failure_is_an_openai_error(tiny: LocalChatModel, stream: bool) -> None:
    app = create_local_upstream_app(BrokenModel(tiny))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://local"
    ) as client:
        response = await client.post("/v1/chat/completions", json=_body(stream=stream))
    if stream:
        # Headers were already sent: the failure travels as an error event, then [DONE].
        assert response.status_code == 200
        *_, last = _sse_payloads(response.text)
        assert last["error"]["type"] == "server_error"
    else:
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "server_error"
