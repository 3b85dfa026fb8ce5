"""The typed state every handler reads: the long-lived services of one worker process.

Built and closed by the wiring (`proxy.services.open_services`), the only place that knows
every stage; handlers receive a `Services` and never build their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from proxy.compression.transform import ChatTransform, identity_transform
from proxy.core.settings import Settings
from proxy.gateway.upstream import UpstreamClient
from proxy.policy.store import PolicyStore

if TYPE_CHECKING:
    from proxy.accounting.ledger import Ledger
    from proxy.accounting.metrics import Metrics
    from proxy.alignment.capture import CaptureWriter
    from proxy.compression.cache import CompressionCache
    from proxy.compression.service import CompressorService

__all__ = ["ComponentStatus", "Probe", "Services"]


@dataclass(frozen=True)
class ComponentStatus:
    """One line of `/readyz`: `status` is "ok", "down", "not_configured", "loading", ...

    `required` components make `/readyz` answer 503 while they are not ok; the upstream and
    Redis are reported but not required (requests fail open without Redis, and every replica
    shares the same upstream, so pulling replicas out of rotation would not help).
    """

    status: str
    required: bool = False
    detail: str | None = None
    # Structured facts shown beside the status (Redis: the topology it sees).
    info: Mapping[str, object] | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "not_configured")


Probe = Callable[[], Awaitable[ComponentStatus]]


@dataclass(frozen=True)
class Services:
    """Everything a handler may use. Frozen: swapping a service means building a new app."""

    settings: Settings
    upstream: UpstreamClient
    policies: PolicyStore
    chat_transform: ChatTransform = identity_transform
    # Where `PipelineOutcome.usage` records go once an answer is complete (None: nowhere).
    ledger: Ledger | None = None
    # `/readyz` components beside policies and upstream: "redis" (when configured), "model", ...
    probes: Mapping[str, Probe] = field(default_factory=lambda: MappingProxyType({}))
    # The compression stack (None when a test plugs in its own transform without them).
    compressor: CompressorService | None = None
    cache: CompressionCache | None = None
    metrics: Metrics | None = None
    # Opt-in pair capture for alignment (`[alignment] capture = true` tenants); see
    # proxy.alignment.capture. None: never captures.
    capture: CaptureWriter | None = None
