"""Tenant policies: the value objects the rest of the proxy consumes.

One TOML file per tenant in a policies folder (see ``policies/examples/research.toml``
for every knob). Files are parsed and validated by :mod:`proxy.policy.schema`; this
module holds what the rest of the proxy consumes:

* :class:`CompressionPolicy` (with :class:`ProtectPolicy`): the effective policy for one
  (tenant, upstream model) pair.
* :class:`Tenant` and :class:`PolicySnapshot`: an immutable view of every tenant, with
  constant-time API-key authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from proxy.compress.protect import ProtectRules

__all__ = [
    "AlignmentPolicy",
    "CompressionPolicy",
    "PolicyError",
    "PolicySnapshot",
    "Problem",
    "ProtectPolicy",
    "Tenant",
]

Mode = Literal["enforce", "shadow", "off"]
Fill = Literal["rank", "uniform"]
# "auto": rank by the question only when the context holds retrieved documents or tool
# results (proxy.compression.messages marks them); few-shot turns stay question-independent, so a
# shared few-shot block is compressed once and cached whatever the question.
QuestionAware = bool | Literal["auto"]

_LOG = logging.getLogger("linguagate.policy")


# The policy's [compression.protect] table is exactly the compressor's rule set: one type,
# so a knob added to the compressor cannot silently be missing from policies.
ProtectPolicy = ProtectRules


@dataclass(frozen=True)
class CompressionPolicy:
    """The effective compression policy for one tenant and one upstream model."""

    mode: Mode = "off"
    rate: float = 0.5
    instruction_rate: float = 1.0
    question_rate: float = 1.0
    min_tokens: int = 200
    question_aware: QuestionAware = "auto"
    segment_tokens: int = 128
    # "rank": best-ranked demonstrations whole, one cut (see proxy.compress.budget);
    # "uniform": the paper's cut-everything-alike coarse stage, where granularity_k applies.
    fill: Fill = "rank"
    granularity_k: float = 1.0
    models: tuple[str, ...] = ("*",)
    # None: the compressor's device decides (60 s on CPU, 2 s on a GPU; see CompressorService).
    max_compression_ms: int | None = None
    protect: ProtectPolicy = ProtectPolicy()
    # Calibrated on SmolLM2-135M (README, "Perplexity guard"): prose 1.6-2.7, base64 5.4.
    ood_max_nll: float | None = 4.0
    compress_json_tool_results: bool = False
    allow_request_override: bool = False
    override_min_rate: float = 0.1
    override_max_rate: float = 1.0
    # The small LM scoring tokens (HF id or folder, e.g. an aligned one); None: the proxy's
    # default (`--compressor-model`, else the packaged SmolLM2).
    model: str | None = None

    def applies_to(self, model: str | None) -> bool:
        """Whether the request's ``model`` matches one of the ``models`` globs (case-sensitive)."""
        name = model or ""
        return any(fnmatchcase(name, glob) for glob in self.models)


@dataclass(frozen=True)
class AlignmentPolicy:
    """``[alignment]``: opt-in capture of (messages as sent upstream, answer) pairs.

    Captured files hold prompt and answer text (never keys): they are as sensitive as the
    traffic itself. ``max_bytes`` caps one file; ``max_files`` rotated files are kept.
    """

    capture: bool = False
    sample: float = 0.1
    max_bytes: int = 64 * 1024 * 1024
    max_files: int = 5


@dataclass(frozen=True)
class Tenant:
    """One policy file: who the tenant is, how its keys are recognised, how it compresses."""

    name: str
    anonymous: bool
    admin: bool
    key_digests: tuple[bytes, ...] = field(repr=False)
    policy_version: str
    compression: CompressionPolicy = CompressionPolicy()
    # (glob, fully merged policy) in file order; the first glob matching the model wins.
    model_policies: tuple[tuple[str, CompressionPolicy], ...] = ()
    source: Path | None = None
    alignment: AlignmentPolicy = AlignmentPolicy()

    def policy_for(self, model: str | None) -> CompressionPolicy:
        """The base ``[compression]`` policy, or the first matching ``[models."glob"]`` override."""
        if model is not None:
            for glob, policy in self.model_policies:
                if fnmatchcase(model, glob):
                    return policy
        return self.compression


def hash_api_key(api_key: str) -> bytes:
    """SHA-256 digest (32 bytes) of a proxy API key, as listed in ``api_key_sha256``."""
    return hashlib.sha256(api_key.encode("utf-8")).digest()


@dataclass(frozen=True)
class PolicySnapshot:
    """An immutable set of tenants, as loaded from one consistent state of the folder."""

    tenants: tuple[Tenant, ...] = ()

    @property
    def anonymous(self) -> Tenant | None:
        """The tenant that serves requests without a (known) key, if any."""
        return next((t for t in self.tenants if t.anonymous), None)

    def tenant(self, name: str) -> Tenant | None:
        """The tenant called ``name``, if any."""
        return next((t for t in self.tenants if t.name == name), None)

    def authenticate(self, api_key: str | None) -> Tenant | None:
        """The tenant owning ``api_key``; else the anonymous tenant; else ``None``.

        Every digest of every tenant is compared (``hmac.compare_digest``), whatever
        matches, so timing reveals neither whether nor where a key matched.
        """
        found: Tenant | None = None
        if api_key:
            digest = hash_api_key(api_key)
            for tenant in self.tenants:
                for candidate in tenant.key_digests:
                    matched = hmac.compare_digest(candidate, digest)
                    found = tenant if matched and found is None else found
        return found if found is not None else self.anonymous


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy file, located by line."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class PolicyError(Exception):
    """The policies folder is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("invalid policies:\n" + "\n".join(str(p) for p in self.problems))
