"""The contract between the gateway and the compression step.

The gateway's chat path hands every request to a `ChatTransform` and forwards what it
returns. The default `identity_transform` forwards the client's bytes untouched; the
compressing transform (`proxy.compression.step.CompressionStep`) is plugged in by the wiring
(`proxy.services.open_services`). Defined here, below the gateway, so that the step never
imports the gateway that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from starlette.datastructures import Headers

from proxy.policy.model import Tenant

if TYPE_CHECKING:
    from proxy.accounting.ledger import UsageRecord

__all__ = ["ChatTransform", "PipelineOutcome", "identity_transform"]


@dataclass(frozen=True)
class PipelineOutcome:
    """What the compression step decided.

    `body` is exactly the client's bytes when nothing changed; `headers` are
    `x-linguagate-*` headers to add to the response; `usage`, if any, is recorded.
    """

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # One request's accounting; the relay adds the upstream's own token counts and hands it
    # to `Services.ledger` once the answer is complete (or the client went away).
    usage: UsageRecord | None = None


class ChatTransform(Protocol):
    """The compression hook. It may only change compressible strings of `raw`; raising
    `ProxyError` rejects the request (e.g. a bad override header), any other exception
    fails open (the client's bytes are forwarded). Called with positional arguments."""

    async def __call__(
        self, raw: bytes, body: dict[str, Any], tenant: Tenant, request_headers: Headers, /
    ) -> PipelineOutcome: ...


async def identity_transform(
    raw: bytes, body: dict[str, Any], tenant: Tenant, request_headers: Headers
) -> PipelineOutcome:
    """Forward the client's bytes unchanged (the default until compression is plugged in)."""
    return PipelineOutcome(raw)
