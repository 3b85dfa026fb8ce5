"""Money net of the provider's prompt cache: what a request was billed, against what sending
the original would have cost.

Providers bill cached input tokens at a fraction of the input price (OpenAI: 10% for the
GPT-5 family, 25% for GPT-4.1 and o3/o4-mini, 50% for GPT-4o and o1; Anthropic cache reads:
10%). "Tokens saved" is therefore not money saved: a compressor that broke the provider's
prefix cache could forward fewer tokens and still cost more. Every request records both sides
in prompt tokens, as the provider counts them:

* **billed**: the prompt that went upstream, with the upstream's own ``prompt_tokens`` and
  ``prompt_tokens_details.cached_tokens`` when it reports them (else the proxy's estimate);
* **direct**: the original prompt, as if the client had sent it straight to the provider,
  with the cached tokens the provider would have served it (estimated from the tenant's own
  earlier original prompts: `proxy.compression.provider_cache`);
* **would** (shadow mode): the compressed prompt that was not sent, estimated likewise.

Token sums stay linear, so money is computed when reading, at the price table's rates.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CacheEstimate", "PromptBill", "input_cost"]


@dataclass(frozen=True)
class CacheEstimate:
    """The proxy's provider-cache estimates for one request (prompt tokens incl. framing)."""

    direct_prompt: int  # the original prompt
    direct_cached: int
    sent_prompt: int  # what was forwarded (shadow mode: what would have been)
    sent_cached: int


@dataclass(frozen=True)
class PromptBill:
    """Prompt tokens of one side of a request, or summed over many."""

    prompt: int
    cached: int

    @property
    def uncached(self) -> int:
        return max(0, self.prompt - self.cached)


def input_cost(bill: PromptBill, price_per_m: float, cached_fraction: float) -> float:
    """USD for ``bill`` at ``price_per_m`` per 1M input tokens, cached ones at the fraction."""
    return (bill.uncached + cached_fraction * bill.cached) * price_per_m / 1_000_000
