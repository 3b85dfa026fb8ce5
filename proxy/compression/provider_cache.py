"""An estimate of what the provider's automatic prompt cache serves, per tenant and model.

Providers bill a prompt prefix they have recently seen at a fraction of the input price.
OpenAI caches prompts of at least 1,024 tokens, matched in 128-token steps (Anthropic's cache
reads work alike). To count money net of that discount the proxy needs, for every request,
how much of the prompt the provider would have cached had the client sent it **directly**
(the original messages), and, where the upstream does not report ``cached_tokens`` (or in
shadow mode, where the compressed prompt was never sent), how much of the **forwarded**
prompt was cached. Both are computed the same way, from what this tenant sent before:

* a prompt is seen as its messages' boundaries: the chain hash of messages 0..i (model,
  tools and the messages themselves) and the prompt's token count up to the end of message i
  (text tokens plus a fixed framing per message, as OpenAI's chat format adds);
* the cached prefix is the longest boundary seen within the TTL, rounded down to the
  128-token step, and zero below 1,024 tokens or when the whole prompt is shorter;
* every boundary of the prompt is then marked seen (and its TTL refreshed).

Boundaries fall on whole messages, so a prefix shared only inside a message is not counted:
an estimate that errs the same way for the direct and the forwarded prompt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.store.redis import tenant_namespace

__all__ = [
    "FRAMING_TOKENS",
    "MIN_CACHED_TOKENS",
    "CACHE_STEP_TOKENS",
    "REPLY_TOKENS",
    "Boundary",
    "PromptCacheModel",
    "cached_tokens",
]

MIN_CACHED_TOKENS = 1024
CACHE_STEP_TOKENS = 128
# OpenAI's chat format: about 3 tokens around each message plus its role, 3 to prime the reply.
FRAMING_TOKENS = 4
REPLY_TOKENS = 3


@dataclass(frozen=True)
class Boundary:
    """The end of one message: the chain hash of the prompt so far and its token count."""

    chain_hash: str
    tokens: int
    # Redis Cluster hash tag (``prefix.slot_tag`` of the same messages): a prompt's marks
    # share the slots of its forms.
    tag: str


def cached_tokens(common: int, total: int) -> int:
    """Tokens a provider serves from its cache when ``common`` leading tokens of a
    ``total``-token prompt were seen before."""
    if total < MIN_CACHED_TOKENS or common < MIN_CACHED_TOKENS:
        return 0
    return min(common, total) // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS


class PromptCacheModel:
    """Seen prompt prefixes of one tenant, for one side ("direct", "forwarded", "shadow"):
    their key names, how to read a lookup (``longest``) and what to write (``marks``). No I/O
    of its own: the compression step batches it with the prefix forms'."""

    def __init__(self, tenant: str, side: str, ttl_s: float) -> None:
        self._prefix = f"{tenant_namespace(tenant)}:pc:{side}:"
        self._ttl_s = ttl_s

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def keys(self, boundaries: Sequence[Boundary]) -> list[str]:
        """One key per boundary: what ``longest`` reads and ``marks`` writes."""
        return [f"{self._prefix}{b.tag}:{hashlib.sha256(b.chain_hash.encode()).hexdigest()[:32]}"
                for b in boundaries]

    @staticmethod
    def longest(boundaries: Sequence[Boundary], seen: Sequence[str | None]) -> int:
        """Tokens of the longest prefix seen, from the values of ``keys(boundaries)``."""
        return max((b.tokens for b, s in zip(boundaries, seen, strict=True) if s), default=0)

    def marks(self, boundaries: Sequence[Boundary]) -> dict[str, str]:
        """The entries that remember this prompt's prefixes, written with ``ttl_s`` (none
        below 1,024 tokens: a provider caches no shorter prompt)."""
        if boundaries and boundaries[-1].tokens + REPLY_TOKENS >= MIN_CACHED_TOKENS:
            return dict.fromkeys(self.keys(boundaries), "1")
        return {}
