"""The local upstream on a real loopback port, driven by the real OpenAI SDK (and the proxy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.local.model import ChatMessage, Generation, GenerationParams, LocalChatModel
from proxy.local.upstream import LocalUpstreamServer, start_local_upstream_server

pytestmark = pytest.mark.integration

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


class RecordingModel(LocalChatModel):
    """The tiny random model, remembering every generation it hands out."""

    def __init__(self) -> None:
        base = LocalChatModel.tiny()
        super().__init__(base.model, base.tokenizer, name=base.name)
        self.generations: list[Generation] = []

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams) -> Generation:
        generation = super().generate(messages, params)
        self.generations.append(generation)
        return generation


@pytest.fixture(scope="module")
def model() -> RecordingModel:
    return RecordingModel()


@pytest.fixture(scope="module")
def local(model: RecordingModel) -> Iterator[LocalUpstreamServer]:
    with start_local_upstream_server(model=model) as server:
        yield server


@pytest.fixture
def sdk(local: LocalUpstreamServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=local.base_url, api_key="unused", max_retries=0) as client:
        yield client


def test_streaming_and_non_streaming_agree(sdk: openai.OpenAI, model: RecordingModel) -> None:
    completion = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=16, temperature=0
    )
    assert completion.model == model.name
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 16
    text = completion.choices[0].message.content
    assert text

    stream = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == completion.usage
    assert chunks[-2].choices[0].finish_reason == "length"
    deltas = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert len(deltas) > 1 and "".join(d or "" for d in deltas) == text


def test_stop_and_seed_through_the_sdk(sdk: openai.OpenAI) -> None:
    def ask(**knobs: object) -> tuple[str, str]:
        completion = sdk.chat.completions.create(
            model="local",
            messages=HELLO,
            max_tokens=16,
            **knobs,  # type: ignore[call-overload]
        )
        choice = completion.choices[0]
        return choice.message.content or "", choice.finish_reason

    full, _ = ask(temperature=0)
    assert ask(temperature=0, stop=[full[5:8]]) == (full[: full.index(full[5:8])], "stop")
    assert ask(temperature=0.9, seed=11) == ask(temperature=0.9, seed=11)


def test_bad_requests_raise_sdk_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as n_error:
        sdk.chat.completions.create(model="local", messages=HELLO, n=2)
    assert n_error.value.param == "n"
    image: list[ChatCompletionMessageParam] = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}],
        }
    ]
    with pytest.raises(openai.BadRequestError) as image_error:
        sdk.chat.completions.create(model="local", messages=image)
    assert image_error.value.code == "unsupported_content"


def test_models_list(sdk: openai.OpenAI, model: RecordingModel) -> None:
    assert [m.id for m in sdk.models.list()] == [model.name]
    assert sdk.models.retrieve(model.name).owned_by == "linguagate-local"


async def test_concurrent_requests_queue_and_all_finish(local: LocalUpstreamServer) -> None:
    async with openai.AsyncOpenAI(base_url=local.base_url, api_key="unused") as client:
        answers = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="local", messages=HELLO, max_tokens=6, temperature=0
                )
                for _ in range(4)
            )
        )
    assert {a.choices[0].message.content for a in answers} != {None}
    assert len({a.choices[0].message.content for a in answers}) == 1
    assert all(a.usage is not None and a.usage.completion_tokens == 6 for a in answers)


def _wait_closed(generation: Generation) -> None:
    deadline = time.monotonic() + 30
    while not generation.closed and time.monotonic() < deadline:
        time.sleep(0.02)


def test_client_hanging_up_mid_stream_stops_generation(
    local: LocalUpstreamServer, model: RecordingModel
) -> None:
    body = {
        "model": "local",
        "messages": HELLO,
        "max_tokens": 2000,
        "temperature": 0,
        "stream": True,
    }
    with (
        httpx.Client() as client,
        client.stream("POST", f"{local.base_url}/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        assert [next(lines) for _ in range(4)][0].startswith("data: {")
    generation = model.generations[-1]
    _wait_closed(generation)
    assert generation.closed
    assert generation.finish_reason is None
    assert generation.completion_tokens < 2000


def test_client_giving_up_on_a_non_streaming_answer_stops_generation(
    local: LocalUpstreamServer, model: RecordingModel
) -> None:
    body = {"model": "local", "messages": HELLO, "max_tokens": 2000, "temperature": 0}
    before = len(model.generations)
    with httpx.Client(timeout=httpx.Timeout(10, read=0.5)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{local.base_url}/chat/completions", json=body)
    [generation] = model.generations[before:]
    _wait_closed(generation)
    assert generation.closed
    assert generation.finish_reason is None
    assert 0 < generation.completion_tokens < 2000


def test_the_proxy_relays_the_local_upstream(local: LocalUpstreamServer, tmp_path: Path) -> None:
    # Imported here: the rest of this file tests the local upstream alone.
    from proxy.core.settings import Settings
    from tests.support.servers import run_proxy, write_tenant

    write_tenant(tmp_path, "default", [], anonymous=True)
    settings = Settings(upstream_url=local.base_url, policies_dir=tmp_path)
    with (
        run_proxy(settings) as proxy,
        openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0) as client,
        openai.OpenAI(base_url=local.base_url, api_key="unused", max_retries=0) as direct,
    ):
        knobs = {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 12, "temperature": 0}
        expected = direct.chat.completions.create(**knobs).choices[0].message.content  # type: ignore[call-overload]
        via_proxy = client.chat.completions.create(**knobs)  # type: ignore[call-overload]
        assert via_proxy.choices[0].message.content == expected
        streamed = client.chat.completions.create(stream=True, **knobs)  # type: ignore[call-overload]
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert text == expected


@pytest.mark.model
def test_real_smollm2_answers_a_trivial_question() -> None:
    with (
        start_local_upstream_server() as server,
        openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client,
    ):
        completion = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16,
            temperature=0,
        )
    assert completion.model == "SmolLM2-135M-Instruct"
    assert "Paris" in (completion.choices[0].message.content or "")
