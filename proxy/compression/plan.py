"""Pure planning for one request: which compressor calls ("units") to make, and their cache keys.

A request becomes at most a few independent, deterministic compressor calls, so that
each can be cached on its own:

* one **instruction unit** per system/developer message, only when
  ``instruction_rate < 1`` (a long system prompt is then compressed once per tenant
  and served from the cache afterwards);
* one **context unit** with every compressible demonstration. The question joins
  it only when it matters to the output (``question_rate < 1`` or question-aware
  ranking); otherwise the unit does not depend on the question at all, and a shared
  few-shot block hits the cache whatever the final question is. Its rate is rounded
  to a 0.02 grid for the same reason (costs at most 1% of the prompt in accuracy).

The tenant's ``rate`` applies to the demonstrations being compressed, not to the whole
prompt: parts kept whole (an instruction at ``instruction_rate = 1``, the question,
protected tool results, messages already forwarded in an earlier turn) are neither
compressed nor paid for out of the demonstrations' budget, so a long system prompt never
erases a conversation. The question, when it joins the unit, takes ``question_rate``.

``min_forward_tokens`` raises the context rate so that the request still forwards at least
that many tokens: the compression step uses it to keep a prompt the provider would cache
(1,024 tokens or more) from being compressed below the provider's caching threshold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.compress.protect import ProtectRules
from proxy.compression.cache import cache_key
from proxy.compression.messages import ChatComponents, Item
from proxy.core.tokens import count_tokens, encoding_name_for_model
from proxy.policy.model import CompressionPolicy, QuestionAware
from proxy.store.redis import canonical_json

__all__ = ["ALGO_VERSION", "Plan", "Unit", "plan_units", "ranks_by_question"]

# Bump when compressor output for the same inputs changes: old cache entries then miss.
ALGO_VERSION = "lingua-3"  # 2: rank fill, shape-class padding; 3: passage ranking
_RATE_GRID = 0.02
_MIN_RATE = 0.02


@dataclass(frozen=True)
class Unit:
    """One compressor call: ``instruction`` or ``context``."""

    kind: str
    instruction: Item | None
    demonstrations: tuple[Item, ...]
    question: Item | None  # the question item, when it takes part in this call
    question_text: str  # passed for ranking/compression; "" when not part of the call
    rate: float
    key: str
    question_aware: bool = False  # rank the demonstrations by the question

    @property
    def items(self) -> tuple[Item, ...]:
        head = (self.instruction,) if self.instruction else ()
        tail = (self.question,) if self.question else ()
        return head + self.demonstrations + tail


@dataclass(frozen=True)
class Plan:
    units: tuple[Unit, ...]
    protect: ProtectRules


def _grid(rate: float) -> float:
    return round(max(_MIN_RATE, min(1.0, round(rate / _RATE_GRID) * _RATE_GRID)), 4)


def ranks_by_question(setting: QuestionAware, demonstrations: Sequence[Item]) -> bool:
    """Whether the context unit ranks its demonstrations by p(question | demonstration).

    ``"auto"`` turns it on for context given for this question only (documents,
    paragraphs pasted before it, tool results: ``Item.retrieved``), and only where there
    is something to rank: measured on synthetic retrieval prompts, ranking by perplexity
    alone keeps the answer document about as often as chance (bench/RESULTS.md), while
    ranking by the question kept it every time. Earlier user/assistant turns (few-shot
    examples) stay question-independent, so their compressed block is shared in the cache.
    """
    if setting != "auto":
        return bool(setting)
    return len(demonstrations) > 1 and any(d.retrieved for d in demonstrations)


def _protect(policy: CompressionPolicy, components: ChatComponents) -> ProtectRules:
    extra = components.protect_regexes
    if not extra:
        return policy.protect
    return dataclasses.replace(policy.protect, regexes=policy.protect.regexes + extra)


def plan_units(
    components: ChatComponents,
    policy: CompressionPolicy,
    *,
    rate: float,
    original_tokens: int,
    tenant: str,
    model_id: str,
    min_forward_tokens: int = 0,
    other_forward_tokens: int = 0,
) -> Plan:
    """The units for ``components`` under ``policy`` at ``rate`` (may be empty).

    ``original_tokens`` counts ``components``' texts; ``other_forward_tokens`` is what the
    rest of the request forwards (messages frozen in an earlier turn, framing), for
    ``min_forward_tokens``.
    """
    model = components.model
    protect = _protect(policy, components)
    knobs_base = {
        "segment_tokens": policy.segment_tokens,
        "granularity_k": policy.granularity_k,
        "fill": policy.fill,
        "protect": dataclasses.asdict(protect),
        "encoding": encoding_name_for_model(model),
        "ood_max_nll": policy.ood_max_nll,
    }

    def key(kind: str, texts: Sequence[str], knobs: dict[str, object]) -> str:
        return cache_key(
            tenant, "", kind, canonical_json(list(texts)), {**knobs_base, **knobs},
            model_id, ALGO_VERSION,
        )

    units: list[Unit] = []
    fixed = original_tokens  # tokens no unit compresses
    expected = 0.0  # tokens the instruction units are expected to forward

    if policy.instruction_rate < 1.0:
        for item in (i for i in components.instruction if i.compressible):
            r = policy.instruction_rate
            units.append(Unit("instruction", item, (), None, "", r,
                              key("instruction", [item.text], {"rate": r})))
            expected += r * count_tokens(item.text, model)
            fixed -= count_tokens(item.text, model)

    demos = tuple(i for i in components.demonstrations if i.compressible)
    questions = [i for i in components.question if i.compressible]
    question = questions[0] if len(questions) == 1 else None
    aware = ranks_by_question(policy.question_aware, demos)
    with_question = question is not None and (policy.question_rate < 1.0 or aware)
    demo_tokens = sum(count_tokens(i.text, model) for i in demos)
    budget = rate * demo_tokens  # the demonstrations forward ``rate`` of themselves
    ctx_tokens = demo_tokens
    if with_question and question is not None:
        question_tokens = count_tokens(question.text, model)
        ctx_tokens += question_tokens
        budget += policy.question_rate * question_tokens
    if demos and ctx_tokens:
        fixed -= ctx_tokens
        floor = min_forward_tokens - other_forward_tokens - fixed - expected
        ctx_rate = _grid(max(budget, floor) / ctx_tokens)
        if ctx_rate >= 1.0:  # nothing to gain within the floor
            return Plan(tuple(units), protect)
        qtext = question.text if with_question and question is not None else ""
        frozen = [i.text for i in components.question if i.reason == "frozen"]
        if aware and question is None and len(frozen) == 1:
            qtext = frozen[0]  # forwarded in an earlier turn: ranks, is not compressed
        ranked = aware and bool(qtext)
        knobs: dict[str, object] = {
            "rate": ctx_rate,
            "question_rate": policy.question_rate if with_question else 1.0,
            "question_aware": ranked,
        }
        units.append(Unit("context", None, demos, question if with_question else None, qtext,
                          ctx_rate, key("context", [*(d.text for d in demos), qtext], knobs),
                          question_aware=ranked))
    return Plan(tuple(units), protect)
