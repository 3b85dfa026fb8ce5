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

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers

from proxy.accounting.ledger import UsageRecord
from proxy.compression.cache import CompressionCache
from proxy.compression.messages import (
    ChatComponents,
    Item,
    body_text_tokens,
    replacements_for,
    split_chat,
    split_completion,
    text_token_count,
)
from proxy.compression.overrides import Override, read_override
from proxy.compression.plan import Plan, Unit, plan_units
from proxy.compression.pool import CompressorPool
from proxy.compression.rewrite import replace_strings
from proxy.compression.service import CompressionEngine, CompressorService, default_deadline_ms
from proxy.compression.transform import PipelineOutcome
from proxy.core.executor import DeadlineExceeded, QueueFull
from proxy.core.offload import off_loop
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


def _split(body: dict[str, Any], policy: CompressionPolicy) -> tuple[ChatComponents, int]:
    components = (
        split_chat(body, compress_json_tool_results=policy.compress_json_tool_results)
        if "messages" in body else split_completion(body)  # legacy /v1/completions
    )
    return components, text_token_count(components)


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


class CompressionStep:
    """Callable as ``ChatTransform``; one per app, stateless per request.

    ``service`` runs the default engine; a policy naming its own ``model`` is served by
    ``pool`` (without a pool such a policy fails open: ``compressor_unavailable``).
    """

    def __init__(self, service: CompressorService, cache: CompressionCache,
                 pool: CompressorPool | None = None) -> None:
        self._service = service
        self._cache = cache
        self._pool = pool

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
        components, original = await off_loop(len(raw), lambda: _split(body, policy))
        decision = await self._decide(raw, components, tenant, policy, override, original)
        return _outcome(raw, tenant, model, original, decision, override)

    async def _decide(self, raw: bytes, components: ChatComponents, tenant: Tenant,
                      policy: CompressionPolicy, override: Override, original: int) -> _Decision:
        # mode "off" never gets here: __call__ answers it without splitting the body.
        if override.mode_off:
            return _Decision("skipped", "request_override")
        if not policy.applies_to(components.model):
            return _Decision("skipped", "model_not_in_policy")
        if original < policy.min_tokens:
            return _Decision("skipped", "below_min_tokens")
        service = self._service_for(policy)
        engine = service.engine if service is not None else None
        if service is None or engine is None:
            state = service.status[0] if service is not None else "down"
            return _Decision("skipped", "compressor_loading" if state == "loading"
                             else "compressor_unavailable")
        started = time.perf_counter()
        plan = await off_loop(len(raw), lambda: plan_units(
            components, policy, rate=override.rate or policy.rate, original_tokens=original,
            tenant=tenant.name, model_id=engine.model_id))
        if not plan.units:
            return _Decision("skipped", "nothing_to_compress")
        deadline_ms = policy.max_compression_ms or default_deadline_ms(_device_type(engine))
        results, hits, reason = await self._results(service, engine, plan, policy,
                                                    components.model, deadline_ms / 1000)
        ms = (time.perf_counter() - started) * 1000
        cache = "hit" if hits == len(plan.units) else "miss" if hits == 0 else "partial"
        misses = len(plan.units) - hits
        if results is None:  # nothing compressed: no cache verdict to report
            return _Decision("skipped", reason, ms=ms, hits=hits, misses=misses)
        assigned: dict[Item, str] = {}
        ood = False
        for unit in plan.units:
            res = results[unit.key]
            ood |= res.ood
            if res.texts is not None:
                assigned.update(zip(unit.items, res.texts, strict=True))
        replacements = replacements_for(components, assigned)
        if not replacements:
            return _Decision("skipped", "out_of_distribution" if ood else "no_savings",
                             cache=cache, ms=ms, hits=hits, misses=misses)
        forwarded_tokens = await off_loop(
            len(raw), lambda: text_token_count(components, replacements=replacements)
        )
        if forwarded_tokens >= original:
            return _Decision("skipped", "no_savings", cache=cache, ms=ms, hits=hits, misses=misses)
        new_body = replace_strings(raw, replacements)
        outcome = "shadow" if policy.mode == "shadow" else "applied"
        return _Decision(outcome, "out_of_distribution" if ood else None, new_body,
                         forwarded_tokens, cache, ms, hits, misses)

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
             d: _Decision, override: Override) -> PipelineOutcome:
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
    )
    body = d.forwarded if d.outcome == "applied" and d.forwarded is not None else raw
    return PipelineOutcome(body, headers, usage)
