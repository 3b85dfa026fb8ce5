"""The compressing ``ChatTransform``: policy -> split -> plan -> cache -> compress -> rewrite.

Every way this can go wrong ends in forwarding the client's original bytes with a
``skipped: <reason>`` header: compression may only ever save tokens, never fail a
request. Skip reasons (a small, documented set)::

    below_min_tokens  model_not_in_policy  request_override  nothing_to_compress
    compressor_loading  compressor_unavailable  queue_full  deadline
    compressor_error  out_of_distribution  no_savings

Only a malformed override header is the client's fault (400).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers

from proxy.accounting.cost import CacheEstimate
from proxy.accounting.ledger import UsageRecord
from proxy.compression.cache import CompressionCache
from proxy.compression.conversation import Conversation
from proxy.compression.messages import (
    ChatComponents,
    Item,
    Path,
    body_text_tokens,
    replacements_for,
    split_chat,
    split_completion,
    text_token_count,
)
from proxy.compression.overrides import Override, read_override
from proxy.compression.plan import Plan, Unit, plan_units
from proxy.compression.pool import CompressorPool
from proxy.compression.prefix import PrefixForms, message_index
from proxy.compression.provider_cache import (
    CACHE_STEP_TOKENS,
    MIN_CACHED_TOKENS,
    REPLY_TOKENS,
    Boundary,
    PromptCacheModel,
    cached_tokens,
)
from proxy.compression.rewrite import replace_strings
from proxy.compression.service import CompressionEngine, CompressorService, default_deadline_ms
from proxy.compression.transform import PipelineOutcome
from proxy.core.executor import DeadlineExceeded, QueueFull
from proxy.core.offload import off_loop
from proxy.core.tokens import count_tokens
from proxy.policy.model import CompressionPolicy, Tenant

__all__ = ["CompressionStep", "UnitResult"]

_log = logging.getLogger("linguagate.compression")
# Enough of a component to tell prose from code or base64 without a second full pass.
_OOD_SAMPLE_CHARS = 2000


@dataclass(frozen=True)
class UnitResult:
    texts: tuple[str, ...] | None  # compressed text per unit item; None: left as is
    ood: bool = False

    def dumps(self) -> str:
        return json.dumps({"t": self.texts, "ood": self.ood}, ensure_ascii=False)

    @classmethod
    def loads(cls, raw: str) -> UnitResult:
        data = json.loads(raw)
        texts = data["t"]
        return cls(tuple(texts) if texts is not None else None, bool(data["ood"]))


def _compress_unit(engine: CompressionEngine, unit: Unit, plan: Plan,
                   policy: CompressionPolicy, model: str | None) -> UnitResult:
    if policy.ood_max_nll is not None:
        sample = "\n\n".join(i.text for i in unit.items)[:_OOD_SAMPLE_CHARS]
        if engine.mean_nll(sample) > policy.ood_max_nll:
            return UnitResult(None, ood=True)
    common: dict[str, Any] = {
        "target_model": model,
        "segment_tokens": policy.segment_tokens,
        "granularity_k": policy.granularity_k,
        "fill": policy.fill,
        "protect": plan.protect,
    }
    if unit.kind == "instruction" and unit.instruction is not None:
        r = engine.compress(unit.instruction.text, [], "", unit.rate,
                            instruction_rate=unit.rate, **common)
        return UnitResult((r.instruction,))
    with_q = unit.question is not None
    r = engine.compress(
        "", [d.text for d in unit.demonstrations], unit.question_text, unit.rate,
        question_rate=policy.question_rate if with_q else 1.0,
        question_aware=unit.question_aware, **common,
    )
    return UnitResult((*r.demonstrations, *((r.question,) if with_q else ())))


def _split(body: dict[str, Any], policy: CompressionPolicy,
           memo: dict[str, int]) -> tuple[ChatComponents, int]:
    components = (
        split_chat(body, compress_json_tool_results=policy.compress_json_tool_results)
        if "messages" in body else split_completion(body)  # legacy /v1/completions
    )
    return components, text_token_count(components, memo=memo)


def _device_type(engine: CompressionEngine) -> str:
    device = getattr(engine, "device", None)
    return str(getattr(device, "type", "cpu"))


@dataclass(frozen=True)
class _Decision:
    outcome: str  # applied | shadow | off | skipped
    reason: str | None = None
    forwarded: bytes | None = None  # new body (applied)
    forwarded_tokens: int | None = None
    cache: str | None = None  # hit | partial | miss
    ms: float = 0.0
    hits: int = 0
    misses: int = 0
    frozen: int = 0  # leading messages forwarded as an earlier turn forwarded them
    messages: int = 0
    estimate: CacheEstimate | None = None


@dataclass(frozen=True)
class _Fresh:
    """What compressing the messages no earlier turn forwarded gave."""

    reason: str | None = None  # why nothing (more) was compressed
    replacements: Mapping[Path, str] = field(default_factory=dict)
    cache: str | None = None
    ms: float = 0.0
    hits: int = 0
    misses: int = 0
    ood: bool = False


def _tail(components: ChatComponents, start: int) -> ChatComponents:
    """The items and texts of messages ``start..`` (the ones not frozen).

    A frozen question stays, not compressible (reason ``frozen``): it still ranks the new
    context (an agent's tool result arrives a turn after the question was forwarded)."""
    if start == 0:
        return components
    return dataclasses.replace(
        components,
        items=tuple(
            i if message_index(i.path) >= start
            else dataclasses.replace(i, compressible=False, reason="frozen")
            for i in components.items
            if message_index(i.path) >= start or i.kind == "question"
        ),
        texts={p: t for p, t in components.texts.items() if message_index(p) >= start},
    )


def _keep_cacheable_head(components: ChatComponents, conv: Conversation,
                         tokens: list[int], rate: float) -> ChatComponents:
    """Leave the leading system/developer messages whole when compressing them would take a
    prompt head the provider caches (1,024+ tokens) below its caching threshold.

    A system prompt is usually a template that every conversation of a tenant starts with,
    so the provider serves it from its cache at 10-50% of the price. Compressed to under
    1,024 tokens it would never be cached again: the tenant would pay full price, every
    request, for what costs a fraction sent whole. Compressed and still over the threshold,
    it stays cached and cheaper, so it is compressed.
    """
    head = 0
    while (head < len(conv.messages) and isinstance(conv.messages[head], dict)
           and conv.messages[head].get("role") in ("system", "developer")):
        head += 1
    threshold = MIN_CACHED_TOKENS + CACHE_STEP_TOKENS
    head_tokens = sum(tokens[:head])
    if not head or head_tokens < threshold:
        return components
    items = [i for i in components.items if message_index(i.path) < head and i.compressible]
    compressible = sum(count_tokens(i.text, components.model) for i in items)
    if head_tokens - (1 - rate) * compressible >= threshold:
        return components
    kept = set(items)
    return dataclasses.replace(components, items=tuple(
        dataclasses.replace(i, compressible=False, reason="cached_head") if i in kept else i
        for i in components.items))


class _CacheSides:
    """The provider-cache models of one request: the original prompt as sent directly, and
    the prompt that was forwarded (shadow mode: the one that would have been)."""

    def __init__(self, tenant: str, shadow: bool, ttl_s: float) -> None:
        self.direct = PromptCacheModel(tenant, "direct", ttl_s)
        self.sent = PromptCacheModel(tenant, "shadow" if shadow else "forwarded", ttl_s)


_FAULTS = frozenset({"compressor_loading", "compressor_unavailable", "queue_full", "deadline",
                     "compressor_error", "out_of_distribution"})
# How long a provider keeps a prompt prefix (OpenAI: 5-10 minutes idle, up to an hour).
# Longer errs towards counting more cached tokens on both sides, i.e. smaller net savings.
PROVIDER_CACHE_TTL_S = 3600.0


class CompressionStep:
    """Callable as ``ChatTransform``; one per app, stateless per request.

    ``service`` runs the default engine; a policy naming its own ``model`` is served by
    ``pool`` (without a pool such a policy fails open: ``compressor_unavailable``).
    Messages an earlier turn forwarded are forwarded again exactly as then
    (`proxy.compression.prefix`); only new messages are compressed.
    """

    def __init__(self, service: CompressorService, cache: CompressionCache,
                 pool: CompressorPool | None = None, *,
                 provider_cache_ttl_s: float = PROVIDER_CACHE_TTL_S) -> None:
        self._service = service
        self._cache = cache
        self._pool = pool
        self._provider_cache_ttl_s = provider_cache_ttl_s

    def _service_for(self, policy: CompressionPolicy) -> CompressorService | None:
        if policy.model is None:
            return self._service
        if self._pool is None:
            return None
        try:
            return self._pool.service_for(policy.model)
        except RuntimeError:  # closing down
            return None

    async def __call__(self, raw: bytes, body: dict[str, Any], tenant: Tenant,
                       request_headers: Headers) -> PipelineOutcome:
        model = body.get("model") if isinstance(body.get("model"), str) else None
        policy = tenant.policy_for(model)
        override = read_override(policy, request_headers)  # may raise InvalidParameter
        if policy.mode == "off":
            # The common case for most traffic: count (the ledger needs it), nothing more.
            original = await off_loop(len(raw), lambda: body_text_tokens(body, model))
            return _outcome(raw, tenant, model, original, _Decision("off"), override)
        # Every count of this request's texts (original, per message, fresh, forwarded) shares
        # one memo: each distinct text is tokenized once.
        memo: dict[str, int] = {}
        components, original = await off_loop(len(raw), lambda: _split(body, policy, memo))
        decision = await self._decide(raw, body, components, tenant, policy, override, original,
                                      memo)
        return _outcome(raw, tenant, model, original, decision, override, components.mapping())

    async def _decide(self, raw: bytes, body: dict[str, Any], components: ChatComponents,
                      tenant: Tenant, policy: CompressionPolicy, override: Override,
                      original: int, memo: dict[str, int]) -> _Decision:
        # mode "off" never gets here: __call__ answers it without splitting the body.
        if override.mode_off:
            return _Decision("skipped", "request_override")
        if not policy.applies_to(components.model):
            return _Decision("skipped", "model_not_in_policy")
        shadow = policy.mode == "shadow"
        # Hashing and counting are linear in the body: off the loop for big ones.
        conv = await off_loop(len(raw), lambda: Conversation.of(body))
        if not conv.messages:
            return _Decision("skipped", "nothing_to_compress")
        forms = PrefixForms(tenant.name, shadow=shadow)
        sides = _CacheSides(tenant.name, shadow, self._provider_cache_ttl_s)

        def direct_prompt() -> tuple[list[int], list[Boundary]]:
            tokens = conv.message_tokens(components, memo=memo)
            return tokens, conv.boundaries(conv.messages, tokens)

        orig_tokens, direct = await off_loop(len(raw), direct_prompt)
        # One round trip reads both the stored forms and what the provider has seen of the
        # original prompt: every Redis call of a warm request is latency (and, on a cluster,
        # one command per slot).
        form_keys, direct_keys = forms.keys(conv.chain), sides.direct.keys(direct)
        found = await self._cache.get_many([*form_keys, *direct_keys])
        frozen_count, frozen = PrefixForms.read(found[:len(form_keys)], chat=conv.chat)
        direct_cached = cached_tokens(sides.direct.longest(direct, found[len(form_keys):]),
                                      direct[-1].tokens)
        frozen_tokens = (await off_loop(len(raw), lambda: conv.message_tokens(
            components, frozen, memo)) if frozen else orig_tokens)
        # A prompt the provider would cache for the direct client must not be compressed
        # below the provider's caching threshold: its later turns would lose the discount.
        floor = (MIN_CACHED_TOKENS + CACHE_STEP_TOKENS
                 if direct_cached >= MIN_CACHED_TOKENS
                 and sum(frozen_tokens[:frozen_count]) < MIN_CACHED_TOKENS else 0)
        fresh_items = _tail(components, frozen_count)
        if frozen_count == 0:
            fresh_items = _keep_cacheable_head(fresh_items, conv, orig_tokens,
                                               override.rate or policy.rate)
        fresh = await self._compress_fresh(
            raw, fresh_items, tenant, policy, override, original,
            floor=floor,
            other=sum(frozen_tokens[:frozen_count]) + sum(orig_tokens[frozen_count:]), memo=memo)
        replacements = {**frozen, **fresh.replacements}
        sent_tokens = (await off_loop(len(raw), lambda: conv.message_tokens(
            components, replacements, memo)) if replacements else orig_tokens)
        sent = await off_loop(len(raw), lambda: conv.boundaries(conv.forwarded(replacements),
                                                                sent_tokens))
        sent_seen = sides.sent.longest(sent, await self._cache.get_many(sides.sent.keys(sent)))
        estimate = CacheEstimate(
            direct_prompt=direct[-1].tokens + REPLY_TOKENS, direct_cached=direct_cached,
            sent_prompt=sent[-1].tokens + REPLY_TOKENS,
            sent_cached=cached_tokens(sent_seen, sent[-1].tokens))
        # The new messages' forms and both prompts' prefixes, in one pipeline.
        await self._cache.set_groups([
            (forms.items(conv.chain, frozen_count, fresh.replacements), None),
            (sides.direct.marks(direct), sides.direct.ttl_s),
            (sides.sent.marks(sent), sides.sent.ttl_s),
        ])
        reason = fresh.reason or ("out_of_distribution" if fresh.ood else None)
        if reason == "nothing_to_compress" and frozen_count == len(conv.messages):
            reason = "frozen_prefix"  # every message goes exactly as an earlier turn sent it
        # Frozen compressed text counts as one cached unit beside the fresh ones.
        hits = fresh.hits + (1 if frozen else 0)
        units = hits + fresh.misses
        cache = None if not units else "hit" if hits == units else "miss" if not hits else "partial"
        skipped = _Decision("skipped", reason or "no_savings", cache=cache, ms=fresh.ms,
                            hits=hits, misses=fresh.misses, frozen=frozen_count,
                            messages=len(conv.messages), estimate=estimate)
        if not replacements:
            return skipped
        forwarded_tokens = await off_loop(
            len(raw), lambda: text_token_count(components, replacements=replacements, memo=memo)
        )
        if forwarded_tokens >= original:
            return dataclasses.replace(skipped, reason="no_savings")
        # Applied with frozen text: keep only a reason that says the new messages failed.
        failed = reason if reason in _FAULTS else None
        return dataclasses.replace(
            skipped, outcome="shadow" if shadow else "applied", reason=failed,
            forwarded=replace_strings(raw, replacements), forwarded_tokens=forwarded_tokens)

    async def _compress_fresh(self, raw: bytes, components: ChatComponents, tenant: Tenant,
                              policy: CompressionPolicy, override: Override, original: int,
                              *, floor: int, other: int, memo: dict[str, int]) -> _Fresh:
        """Compress the messages no earlier turn forwarded (``components`` holds only them);
        ``original`` counts the whole request's text (``min_tokens`` is about the request)."""
        if original < policy.min_tokens:
            return _Fresh("below_min_tokens")
        service = self._service_for(policy)
        engine = service.engine if service is not None else None
        if service is None or engine is None:
            if service is not None:
                # A policy that began compressing after start-up (a reload) finds the default
                # engine never started ("idle"): load it now, and say so, rather than report
                # it unavailable until something polls /readyz.
                service.start()
            state = service.status[0] if service is not None else "down"
            return _Fresh("compressor_loading" if state == "loading"
                          else "compressor_unavailable")
        started = time.perf_counter()
        fresh_tokens = text_token_count(components, memo=memo)  # all counted before: no work
        plan = await off_loop(len(raw), lambda: plan_units(
            components, policy, rate=override.rate or policy.rate, original_tokens=fresh_tokens,
            tenant=tenant.name, model_id=engine.model_id, min_forward_tokens=floor,
            other_forward_tokens=other - fresh_tokens))
        if not plan.units:
            return _Fresh("nothing_to_compress")
        deadline_ms = policy.max_compression_ms or default_deadline_ms(_device_type(engine))
        results, hits, reason = await self._results(service, engine, plan, policy,
                                                    components.model, deadline_ms / 1000)
        ms = (time.perf_counter() - started) * 1000
        cache = "hit" if hits == len(plan.units) else "miss" if hits == 0 else "partial"
        misses = len(plan.units) - hits
        if results is None:  # nothing compressed: no cache verdict to report
            return _Fresh(reason, ms=ms, hits=hits, misses=misses)
        assigned: dict[Item, str] = {}
        ood = False
        for unit in plan.units:
            res = results[unit.key]
            ood |= res.ood
            if res.texts is not None:
                assigned.update(zip(unit.items, res.texts, strict=True))
        replacements = replacements_for(components, assigned)
        saved = replacements and await off_loop(len(raw), lambda: text_token_count(
            components, replacements=replacements, memo=memo)) < fresh_tokens
        why = None if saved else "out_of_distribution" if ood else "no_savings"
        return _Fresh(why, replacements if saved else {}, cache, ms, hits, misses, ood)

    async def _results(
        self, service: CompressorService, engine: CompressionEngine, plan: Plan,
        policy: CompressionPolicy, model: str | None, deadline_s: float,
    ) -> tuple[dict[str, UnitResult] | None, int, str | None]:
        keys = [u.key for u in plan.units]
        cached = await self._cache.get_many(keys)
        results: dict[str, UnitResult] = {}
        for key, raw in zip(keys, cached, strict=True):
            if raw is not None:
                try:
                    results[key] = UnitResult.loads(raw)
                except (ValueError, KeyError, TypeError):
                    pass  # a foreign or corrupt entry is a miss
        hits = len(results)
        missing = [u for u in plan.units if u.key not in results]
        if not missing:
            return results, hits, None

        def job() -> dict[str, UnitResult]:
            return {u.key: _compress_unit(engine, u, plan, policy, model) for u in missing}

        async def store(fresh: Mapping[str, UnitResult]) -> None:
            await self._cache.set_many({k: v.dumps() for k, v in fresh.items()})

        try:
            fresh = await service.run(job, deadline_s=deadline_s, on_late_result=store)
        except QueueFull:
            return None, hits, "queue_full"
        except DeadlineExceeded:
            return None, hits, "deadline"
        except Exception as exc:  # fail open; the type only: messages may quote the prompt
            _log.error("compressor error: %s", type(exc).__name__)
            return None, hits, "compressor_error"
        await store(fresh)
        results.update(fresh)
        return results, hits, None


def _outcome(raw: bytes, tenant: Tenant, model: str | None, original: int,
             d: _Decision, override: Override, mapping: str | None = None) -> PipelineOutcome:
    forwarded_tokens = (
        d.forwarded_tokens if d.outcome == "applied" and d.forwarded_tokens is not None
        else original
    )
    label = f"skipped: {d.reason}" if d.outcome == "skipped" else d.outcome
    headers = {
        "x-linguagate-compression": label,
        "x-linguagate-original-tokens": str(original),
        "x-linguagate-forwarded-tokens": str(forwarded_tokens),
    }
    if d.cache is not None:
        headers["x-linguagate-cache"] = d.cache
    if d.ms:
        headers["x-linguagate-compression-ms"] = f"{d.ms:.1f}"
    if d.outcome == "shadow" and d.forwarded_tokens is not None:
        headers["x-linguagate-would-forward-tokens"] = str(d.forwarded_tokens)
    if override.note:
        headers["x-linguagate-override"] = override.note
    if mapping is not None:
        # How the messages were mapped (item counts, layout rules): why a tenant's context
        # was or was not compressed. Counts and rule names only, never prompt text.
        headers["x-linguagate-mapping"] = mapping
    if d.messages:
        # How many leading messages went exactly as an earlier turn forwarded them.
        headers["x-linguagate-prefix"] = f"{d.frozen}/{d.messages}"
    usage = UsageRecord(
        tenant=tenant.name,
        model=model or "unknown",
        outcome=d.outcome,
        original_tokens=original,
        forwarded_tokens=forwarded_tokens,
        would_forward_tokens=d.forwarded_tokens if d.outcome == "shadow" else None,
        compression_ms=d.ms,
        cache_hits=d.hits,
        cache_misses=d.misses,
        skip_reason=d.reason,
        cache_estimate=d.estimate,
    )
    body = d.forwarded if d.outcome == "applied" and d.forwarded is not None else raw
    return PipelineOutcome(body, headers, usage)
