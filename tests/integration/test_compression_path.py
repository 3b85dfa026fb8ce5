"""Compression in the request path, end to end: openai SDK -> proxy -> fake upstream.

The real ``CompressionStep`` runs with the tiny random-model compressor; the fake upstream
records the exact bytes it received. In-memory cache and ledger (Redis: see
``test_compression_redis``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
import openai
import pytest

from proxy.compression.messages import split_chat, text_token_count
from proxy.core.tokens import count_tokens
from tests.support.compression import (
    EXPLODE,
    SLOWDOWN,
    CompressionStack,
    assert_only_text_changed,
    few_shot,
    key_of,
    original_tokens,
)
from tests.support.tiny_lm import sample_text
from tests.support.upstream import FakeUpstream, chat_chunk, json_reply, sse_reply

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
CHAT = "/v1/chat/completions"


@pytest.fixture
def stack(compression_stack: CompressionStack, upstream: FakeUpstream) -> CompressionStack:
    compression_stack.wait_idle()
    return compression_stack


def chat(
    stack: CompressionStack,
    tenant: str,
    messages: list[dict[str, Any]],
    headers: dict[str, str] | None = None,
    **params: Any,
) -> tuple[dict[str, str], bytes]:
    """One SDK call; (the proxy's response headers, the body bytes the upstream received)."""
    with stack.client(tenant) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=params.pop("model", MODEL),
            messages=messages,  # type: ignore[arg-type]
            extra_headers=headers,
            **params,
        )
        raw.parse()
    return dict(raw.headers), stack.upstream.last(CHAT).body


def sent_bytes(stack: CompressionStack, messages: list[dict[str, Any]], **params: Any) -> bytes:
    """The exact bytes the SDK sends for this call (through the mode-off tenant, untouched)."""
    headers, body = chat(stack, "off", messages, **params)
    assert headers["x-linguagate-compression"] == "off"
    return body


def forwarded_count(body: bytes) -> int:
    return text_token_count(split_chat(json.loads(body)))


def test_applied_under_policy(stack: CompressionStack) -> None:
    messages = few_shot(1)
    params: dict[str, Any] = {
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 64,
        "seed": 7,
        "stop": ["\n\nQ:"],
        "metadata": {"run": "e2e"},
        "store": False,
    }
    headers, received = chat(stack, "team-a", messages, **params)
    assert headers["x-linguagate-compression"] == "applied"
    assert headers["x-linguagate-tenant"] == "team-a"
    assert headers["x-linguagate-cache"] == "miss"
    assert float(headers["x-linguagate-compression-ms"]) > 0
    original = int(headers["x-linguagate-original-tokens"])
    forwarded = int(headers["x-linguagate-forwarded-tokens"])
    assert original == original_tokens({"model": MODEL, "messages": messages})
    assert forwarded == forwarded_count(received)  # what actually went upstream
    assert forwarded < original * 0.8

    changed = assert_only_text_changed(sent_bytes(stack, messages, **params), received)
    assert changed, "compression was applied but no text changed"
    body = json.loads(received)
    assert [m["role"] for m in body["messages"]] == [m["role"] for m in messages]
    assert body["messages"][0] == messages[0]  # instruction_rate 1: system kept whole
    assert body["messages"][-1] == messages[-1]  # question_rate 1: question kept whole
    assert b'"temperature":1.0' in received.replace(b" ", b"")


def test_context_pasted_before_the_question_is_ranked_by_it(stack: CompressionStack) -> None:
    paragraphs = [sample_text(60, seed) for seed in (41, 42, 43, 44)]
    question = "Which paragraph tells about the harbour?"
    messages = [{"role": "user", "content": "\n\n".join([*paragraphs, question])}]
    headers, received = chat(stack, "team-a", messages)
    assert headers["x-linguagate-compression"] == "applied"
    # question_aware = "auto" (the default): four paragraphs, ranked by the question.
    assert stack.engine.last_options["demonstrations"] == 4
    assert stack.engine.last_options["question_aware"] is True
    content = json.loads(received)["messages"][0]["content"]
    assert content.endswith("\n\n" + question)
    assert 0 < sum(p in content for p in paragraphs) < len(paragraphs)  # whole ones kept

    headers, _ = chat(stack, "team-a", few_shot(97))  # few-shot turns: question-independent
    assert headers["x-linguagate-compression"] == "applied"
    assert stack.engine.last_options["question_aware"] is False


def test_raw_bytes_outside_text_are_untouched(stack: CompressionStack) -> None:
    messages = few_shot(2)
    head = (
        b'{ "model" :"gpt-4o-mini",\n  "temperature": 1.0, "top_p": 1e0, "user": "caf\\u00e9",'
        b' "logit_bias": {"50256": -100}, "messages": '
    )
    raw = head + json.dumps(messages, indent=1).encode() + b' , "n": 1 }'
    response = httpx.post(
        stack.server.base_url + "/chat/completions",
        content=raw,
        headers={"authorization": f"Bearer {key_of('team-a')}"},
    )
    assert response.status_code == 200
    assert response.headers["x-linguagate-compression"] == "applied"
    received = stack.upstream.last(CHAT).body
    assert received.startswith(head)
    assert received.endswith(b' , "n": 1 }')
    assert assert_only_text_changed(raw, received)
    assert int(response.headers["x-linguagate-forwarded-tokens"]) == forwarded_count(received)


def test_non_text_parts_tools_and_json_results_untouched(stack: CompressionStack) -> None:
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
    }
    call = {
        "id": "call_abc123",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"city": "Paris", "days": 3}'},
    }
    tool_json = json.dumps({"rows": [{"k": i, "v": sample_text(8, i)} for i in range(12)]})
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a city up. " + sample_text(30, 9),
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    system = "Reply in JSON only. " + sample_text(120, 40) + " Remember: valid JSON."
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "text", "text": sample_text(120, 41)}, image]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": tool_json},
        {"role": "assistant", "content": sample_text(120, 42) + " JSON"},
        {"role": "user", "content": [image, {"type": "text", "text": "Which city? Use JSON."}]},
    ]
    params: dict[str, Any] = {
        "tools": tools,
        "response_format": {"type": "json_object"},
        "tool_choice": "auto",
    }
    # "instr" compresses the system prompt too (instruction_rate 0.5).
    headers, received = chat(stack, "instr", messages, **params)
    assert headers["x-linguagate-compression"] == "applied"
    changed = assert_only_text_changed(sent_bytes(stack, messages, **params), received)
    assert system in changed  # the instruction was compressed...
    body = json.loads(received)
    out = body["messages"]
    assert "JSON" in out[0]["content"]  # ...keeping the word the API requires
    # A kept demonstration keeps the word too (the coarse stage may drop a whole one).
    assert out[4]["content"] == "" or "JSON" in out[4]["content"]
    assert out[1]["content"][1] == image and out[5]["content"][0] == image
    assert out[2] == messages[2]  # tool_calls, ids, arguments
    assert out[3] == messages[3]  # a JSON tool result is not compressed
    assert body["tools"] == tools and body["response_format"] == {"type": "json_object"}
    assert out[5] == messages[5]  # the final turn's text is the question: kept


def test_shadow_forwards_original_bytes(stack: CompressionStack) -> None:
    messages = few_shot(3)
    headers, received = chat(stack, "shadow", messages, temperature=0.5)
    assert headers["x-linguagate-compression"] == "shadow"
    assert received == sent_bytes(stack, messages, temperature=0.5)
    original = int(headers["x-linguagate-original-tokens"])
    assert int(headers["x-linguagate-forwarded-tokens"]) == original
    assert int(headers["x-linguagate-would-forward-tokens"]) < original


def test_cache_miss_then_hit_memory(stack: CompressionStack) -> None:
    messages = few_shot(4)
    first, body1 = chat(stack, "team-a", messages)
    calls = stack.engine.calls
    second, body2 = chat(stack, "team-a", messages)
    assert (first["x-linguagate-cache"], second["x-linguagate-cache"]) == ("miss", "hit")
    assert second["x-linguagate-compression"] == "applied"
    assert body1 == body2 and stack.engine.calls == calls  # served without the compressor
    # The few-shot block does not depend on the question: a new question still hits.
    third, _ = chat(stack, "team-a", messages[:-1] + [{"role": "user", "content": "And why?"}])
    assert third["x-linguagate-cache"] == "hit"


def test_shared_system_prompt_hits_partially(stack: CompressionStack) -> None:
    system = "You answer as a patient tutor. " + sample_text(150, 77)
    first, body1 = chat(stack, "instr", few_shot(5, system=system))
    second, body2 = chat(stack, "instr", few_shot(6, system=system))
    assert (first["x-linguagate-cache"], second["x-linguagate-cache"]) == ("miss", "partial")
    assert second["x-linguagate-compression"] == "applied"
    compressed_system = json.loads(body1)["messages"][0]["content"]
    assert compressed_system != system
    assert json.loads(body2)["messages"][0]["content"] == compressed_system


def test_tenants_never_share_cache_entries(stack: CompressionStack) -> None:
    messages = few_shot(7)
    a, body_a = chat(stack, "team-a", messages)
    b, body_b = chat(stack, "team-b", messages)
    assert (a["x-linguagate-cache"], b["x-linguagate-cache"]) == ("miss", "miss")
    assert body_a == body_b  # same policy, deterministic compressor: same result, computed twice
    again, _ = chat(stack, "team-b", messages)
    assert again["x-linguagate-cache"] == "hit"


def test_compressor_error_forwards_original(stack: CompressionStack) -> None:
    messages = few_shot(8)
    messages[1]["content"] += f" {EXPLODE}"
    headers, received = chat(stack, "team-a", messages)
    assert headers["x-linguagate-compression"] == "skipped: compressor_error"
    assert received == sent_bytes(stack, messages)
    assert headers["x-linguagate-forwarded-tokens"] == headers["x-linguagate-original-tokens"]


def test_deadline_and_queue_full_forward_original(stack: CompressionStack) -> None:
    slow = few_shot(9)
    slow[1]["content"] += f" {SLOWDOWN}"
    stack.engine.hold()
    try:
        headers, received = chat(stack, "hasty", slow)  # max_compression_ms = 300
        assert headers["x-linguagate-compression"] == "skipped: deadline"
        assert received == sent_bytes(stack, slow)
        # The late job still occupies the only slot (max_pending=1): the next one is refused.
        other = few_shot(10)
        busy, received = chat(stack, "team-a", other)
        assert busy["x-linguagate-compression"] == "skipped: queue_full"
        assert received == sent_bytes(stack, other)
    finally:
        stack.engine.release()
    stack.wait_idle()
    # What went upstream is frozen: the same conversation goes the same way again (its bytes
    # are in the provider's cache) ...
    again, received = chat(stack, "hasty", slow)
    assert again["x-linguagate-compression"] == "skipped: frozen_prefix"
    assert received == sent_bytes(stack, slow)
    # ... but the late result was not wasted: it warmed the cache for the same few-shot
    # block in another conversation (here: behind a system prompt of its own).
    other_conversation = [{"role": "system", "content": "Be brief."}, *slow]
    deadline = time.monotonic() + 5
    while True:
        warmed, _ = chat(stack, "hasty", other_conversation)
        if warmed.get("x-linguagate-cache") == "hit" or time.monotonic() > deadline:
            break
    assert (warmed["x-linguagate-compression"], warmed["x-linguagate-cache"]) == ("applied", "hit")


def test_rate_override_within_bounds(stack: CompressionStack) -> None:
    messages = few_shot(11, shots=4)
    default, _ = chat(stack, "team-a", messages)
    # A conversation's forwarded messages are frozen, whatever the rate asked later: the
    # override applies to messages compressed for the first time (here: another block).
    other = few_shot(111, shots=4)
    low, _ = chat(stack, "team-a", other, headers={"x-linguagate-rate": "0.3"})
    assert low["x-linguagate-override"] == "applied"

    def rate(h: Mapping[str, str]) -> float:
        return int(h["x-linguagate-forwarded-tokens"]) / int(h["x-linguagate-original-tokens"])

    assert rate(low) < rate(default)
    clamped, _ = chat(stack, "team-a", other, headers={"x-linguagate-rate": "0.05"})
    assert clamped["x-linguagate-override"] == "clamped to 0.3"
    assert clamped["x-linguagate-cache"] == "hit"  # the same frozen forms as at rate 0.3
    assert clamped["x-linguagate-forwarded-tokens"] == low["x-linguagate-forwarded-tokens"]


def test_override_ignored_when_not_allowed(stack: CompressionStack) -> None:
    messages = few_shot(12)
    plain, body = chat(stack, "strict", messages)
    for extra in ({"x-linguagate-rate": "0.3"}, {"x-linguagate-mode": "off"}):
        headers, received = chat(stack, "strict", messages, headers=extra)
        assert headers["x-linguagate-override"] == "ignored: not allowed by policy"
        assert headers["x-linguagate-compression"] == "applied"
        assert received == body


def test_mode_off_override(stack: CompressionStack) -> None:
    messages = few_shot(13)
    headers, received = chat(stack, "team-a", messages, headers={"x-linguagate-mode": "off"})
    assert headers["x-linguagate-compression"] == "skipped: request_override"
    assert received == sent_bytes(stack, messages)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-linguagate-rate", "fast"),
        ("x-linguagate-rate", "1.5"),
        ("x-linguagate-mode", "sometimes"),
    ],
)
def test_bad_override_is_a_400(stack: CompressionStack, name: str, value: str) -> None:
    with stack.client("team-a") as sdk, pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model=MODEL,
            messages=few_shot(14),  # type: ignore[arg-type]
            extra_headers={name: value},
        )
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == name and error["type"]
    assert stack.upstream.requests == []


def test_size_and_model_skips(stack: CompressionStack) -> None:
    short = [{"role": "user", "content": "What is 2 + 2?"}]
    headers, received = chat(stack, "team-a", short)
    assert headers["x-linguagate-compression"] == "skipped: below_min_tokens"
    assert "x-linguagate-cache" not in headers
    assert received == sent_bytes(stack, short)
    messages = few_shot(15)
    headers, received = chat(stack, "team-a", messages, model="o3-mini")  # models = ["gpt-*"]
    assert headers["x-linguagate-compression"] == "skipped: model_not_in_policy"
    assert received == sent_bytes(stack, messages, model="o3-mini")


def test_out_of_distribution_skip(stack: CompressionStack) -> None:
    messages = few_shot(18)
    headers, received = chat(stack, "guarded", messages)  # ood_max_nll = 0.5
    assert headers["x-linguagate-compression"] == "skipped: out_of_distribution"
    assert received == sent_bytes(stack, messages)


def test_mode_off_forwards_exact_bytes(stack: CompressionStack) -> None:
    raw = json.dumps({"model": MODEL, "messages": few_shot(16), "temperature": 1.0}).encode()
    response = httpx.post(
        stack.server.base_url + "/chat/completions",
        content=raw,
        headers={"authorization": f"Bearer {key_of('off')}"},
    )
    assert response.headers["x-linguagate-compression"] == "off"
    assert (
        response.headers["x-linguagate-forwarded-tokens"]
        == response.headers["x-linguagate-original-tokens"]
    )
    assert stack.upstream.last(CHAT).body == raw


def test_streaming_compressed_request_relays_bytes(stack: CompressionStack) -> None:
    chunks = [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"content": "Fünf"}),
        chat_chunk({"content": " 🙂"}),
        chat_chunk({}, finish="stop"),
        b"data: [DONE]\n\n",
    ]
    stack.upstream.enqueue(CHAT, sse_reply(chunks))
    with (
        stack.client("team-a") as sdk,
        sdk.chat.completions.with_streaming_response.create(
            model=MODEL,
            messages=few_shot(17),  # type: ignore[arg-type]
            stream=True,
        ) as response,
    ):
        assert response.headers["x-linguagate-compression"] == "applied"
        relayed = b"".join(response.iter_bytes())
    assert relayed == b"".join(chunks)
    received = stack.upstream.last(CHAT).json()
    assert received["stream"] is True
    assert int(response.headers["x-linguagate-forwarded-tokens"]) == text_token_count(
        split_chat(received)
    )


def test_legacy_completions_prompt_is_compressed(stack: CompressionStack) -> None:
    # messages.split_completion maps a string prompt like a final user turn (documents, then
    # its last paragraph as the question); the step must use it for /v1/completions.
    prompt = "\n\n".join(sample_text(90, 60 + i) for i in range(4)) + "\n\nWhat is the answer?"
    completion = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"text": "42", "index": 0, "logprobs": None, "finish_reason": "stop"}],
    }
    stack.upstream.enqueue("/v1/completions", json_reply(completion))
    with stack.client("team-a") as sdk:
        raw = sdk.completions.with_raw_response.create(model=MODEL, prompt=prompt, max_tokens=5)
    received = stack.upstream.last("/v1/completions").json()
    assert int(raw.headers["x-linguagate-original-tokens"]) == count_tokens(prompt, MODEL)
    assert raw.headers["x-linguagate-compression"] == "applied"
    assert count_tokens(received["prompt"], MODEL) < count_tokens(prompt, MODEL)
    assert received["prompt"].endswith("What is the answer?")


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("where", ["instruction", "demonstration"])
def test_json_object_requests_keep_the_word_json(
    stack: CompressionStack, seed: int, where: str
) -> None:
    # The API rejects json_object requests whose messages lack "json" in any case.
    if where == "instruction":
        system = sample_text(60, seed) + " Reply in json. " + sample_text(60, seed + 50)
        messages, tenant = few_shot(seed + 200, system=system), "instr"
    else:
        messages, tenant = few_shot(seed + 300), "team-a"
        messages[1]["content"] = "Always answer in JSON. " + messages[1]["content"]
    headers, received = chat(stack, tenant, messages, response_format={"type": "json_object"})
    assert headers["x-linguagate-compression"] == "applied"
    texts = " ".join(m["content"] for m in json.loads(received)["messages"])
    assert "json" in texts.lower()


@pytest.mark.parametrize(
    ("model", "outcome"),
    [("gpt-4o", "shadow"), ("gpt-4.1-mini", "off"), ("gpt-4o-mini", "applied")],
)
def test_per_model_policies(stack: CompressionStack, model: str, outcome: str) -> None:
    headers, _ = chat(stack, "per-model", few_shot(19), model=model)
    assert headers["x-linguagate-compression"] == outcome


def test_no_prompt_text_in_logs(stack: CompressionStack, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Quetzalcoatlus"
    caplog.set_level(logging.DEBUG)
    for tenant, marker in (("team-a", ""), ("team-a", EXPLODE), ("shadow", "")):
        messages = few_shot(26)
        messages[1]["content"] = f"{secret} {marker} " + messages[1]["content"]
        chat(stack, tenant, messages)
    assert any(r.name.startswith("linguagate") for r in caplog.records)  # logs were captured
    for record in caplog.records:
        assert secret not in record.getMessage()
