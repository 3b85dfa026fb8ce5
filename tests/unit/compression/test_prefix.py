"""Chain hashes, frozen forms and the provider-cache model (issue 18), on the in-memory cache."""

from __future__ import annotations

import itertools

from proxy.compression.cache import MemoryCache
from proxy.compression.messages import Path
from proxy.compression.prefix import Chain, PrefixForms, message_chain, message_index, slot_tag
from proxy.compression.provider_cache import Boundary, PromptCacheModel, cached_tokens
from tests.support.provider_cache import ProviderPromptCache

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi \ud800"},  # a lone surrogate still hashes
    {"role": "assistant", "content": [{"type": "text", "text": "Hello there."}]},
]


def test_a_chain_hash_depends_on_every_message_up_to_it() -> None:
    a = message_chain(MESSAGES, "")
    assert len(a) == 3 and len(set(a.hashes)) == 3
    edited = [MESSAGES[0], {"role": "user", "content": "Hi!"}, MESSAGES[2]]
    b = message_chain(edited, "")
    assert b.hashes[0] == a.hashes[0] and b.hashes[1:] != a.hashes[1:]
    # Key order inside a message does not matter (canonical JSON), the seed does.
    reordered = [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
    assert message_chain(reordered, "").hashes == a.hashes
    assert message_chain(MESSAGES, "other").hashes != a.hashes


def test_message_index_of_text_paths() -> None:
    assert message_index(("messages", 4, "content")) == 4
    assert message_index(("messages", 2, "content", 1, "text")) == 2
    assert message_index(("prompt",)) == 0


async def frozen(cache: MemoryCache, forms: PrefixForms,
                 chain: Chain) -> tuple[int, dict[Path, str]]:
    """What the compression step reads (there in one MGET with the provider-cache marks)."""
    return PrefixForms.read(await cache.get_many(forms.keys(chain)), chat=True)


async def test_forms_are_frozen_per_tenant_and_cover_the_leading_run() -> None:
    cache = MemoryCache()
    chain = message_chain(MESSAGES, "")
    forms = PrefixForms("t1")
    assert await frozen(cache, forms, chain) == (0, {})
    path = ("messages", 2, "content", 0, "text")
    await cache.set_many(forms.items(chain, 0, {path: "Hello."}))
    assert await frozen(cache, forms, chain) == (3, {path: "Hello."})
    longer = message_chain([*MESSAGES, {"role": "user", "content": "More?"}], "")
    assert await frozen(cache, forms, longer) == (3, {path: "Hello."})
    # Another tenant, or shadow mode, never sees these forms.
    assert await frozen(cache, PrefixForms("t2"), chain) == (0, {})
    assert await frozen(cache, PrefixForms("t1", shadow=True), chain) == (0, {})
    assert not any("Hello" in key or "t1" in key for key in cache._entries)


def test_cached_tokens_follow_the_providers_steps() -> None:
    assert cached_tokens(1023, 5000) == 0
    assert cached_tokens(5000, 1000) == 0  # the prompt itself is too short
    assert cached_tokens(1024, 1100) == 1024
    assert cached_tokens(1300, 2000) == 1280


async def test_the_proxy_estimate_matches_the_fake_providers_cache() -> None:
    # The proxy's message-boundary estimate (proxy side) and the token-exact emulation the
    # fake upstream bills with (tests side) agree on a conversation that grows by turns.
    provider = ProviderPromptCache()
    cache = MemoryCache()
    model = PromptCacheModel("t", "direct", ttl_s=600)
    history = [{"role": "system", "content": "word " * 1100}]
    counter = itertools.count()
    for turn in range(4):
        history += [{"role": "user", "content": f"question {turn} " * 30},
                    {"role": "assistant", "content": f"answer {next(counter)} " * 80}]
        request = {"model": "gpt-4o", "messages": history[:-1]}
        _prompt, billed = provider.usage("key", request)
        chain = message_chain(history[:-1], "seed")
        totals = list(itertools.accumulate(
            provider.usage("probe-" + h, {"messages": [m]})[0] - 3
            for h, m in zip(chain.hashes, history[:-1], strict=True)))
        boundaries = [Boundary(h, n, slot_tag(chain, i))
                      for i, (h, n) in enumerate(zip(chain.hashes, totals, strict=True))]
        seen = model.longest(boundaries, await cache.get_many(model.keys(boundaries)))
        estimate = cached_tokens(seen, totals[-1] + 3)
        await cache.set_many(model.marks(boundaries), ttl_s=model.ttl_s)
        assert abs(estimate - billed) <= 128, (turn, estimate, billed)


def test_a_conversations_keys_share_two_cluster_slots() -> None:
    from redis.crc import key_slot

    from proxy.compression.conversation import Conversation

    def first_read(messages: list[dict[str, str]]) -> list[str]:
        conv = Conversation.of({"model": "gpt-4o", "messages": messages})
        forms = PrefixForms("t1")
        marks = PromptCacheModel("t1", "direct", ttl_s=60)
        boundaries = conv.boundaries(conv.messages, [10] * len(conv.messages))
        return forms.keys(conv.chain) + marks.keys(boundaries)

    system = {"role": "system", "content": "Shared system prompt."}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"}
             for i in range(9)]
    a = first_read([system, *turns])
    # One MGET of 20 keys is two commands on a cluster, not twenty.
    assert len({key_slot(k.encode()) for k in a}) == 2
    # A later turn names its earlier messages' keys exactly as before (the tag depends only
    # on messages 0..i), and another conversation shares only the system prompt's keys.
    longer = first_read([system, *turns, {"role": "user", "content": "more"}])
    assert set(a) < set(longer)
    other = first_read([system, {"role": "user", "content": "another conversation"}])
    assert set(a) & set(other) == {other[0], other[2]}
