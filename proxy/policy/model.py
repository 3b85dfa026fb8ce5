"""Tenant policies: the value objects, and the store that loads and hot-reloads them.

One TOML file per tenant in a policies folder (see ``policies/examples/research.toml``
for every knob). Files are parsed and validated by :mod:`proxy.policy.schema`; this
module holds what the rest of the proxy consumes:

* :class:`CompressionPolicy` (with :class:`ProtectPolicy`): the effective policy for one
  (tenant, upstream model) pair.
* :class:`Tenant` and :class:`PolicySnapshot`: an immutable view of every tenant, with
  constant-time API-key authentication.
* :class:`PolicyStore`: loads a folder and swaps in a new snapshot when files change.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
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
    "PolicyStore",
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


_Fingerprint = tuple[tuple[str, int, int], ...]


def _fingerprint(directory: Path) -> _Fingerprint:
    entries: list[tuple[str, int, int]] = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.endswith(".toml") and entry.is_file():
                    st = entry.stat()
                    entries.append((entry.name, st.st_mtime_ns, st.st_size))
    except OSError:
        return ()
    return tuple(sorted(entries))


class PolicyStore:
    """Loads ``directory/*.toml`` (not subfolders) and hot-reloads it.

    Readers use :attr:`current`, a plain attribute read; a reload builds a complete
    new snapshot and publishes it with one assignment, so a request never sees a
    half-loaded set of tenants. Reloads are serialised by a lock.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._snapshot: PolicySnapshot | None = None
        self._seen: _Fingerprint | None = None

    @property
    def current(self) -> PolicySnapshot:
        """The latest valid snapshot; :meth:`load` must have succeeded once."""
        snapshot = self._snapshot
        if snapshot is None:
            raise RuntimeError("PolicyStore.load() has not succeeded yet")
        return snapshot

    def load(self) -> PolicySnapshot:
        """Load and validate every policy file; raise :class:`PolicyError` listing all problems."""
        # Imported here, not at the top: the schema module builds the types defined above.
        from proxy.policy.schema import load_directory

        with self._lock:
            seen = _fingerprint(self.directory)
            snapshot = load_directory(self.directory)
            self._snapshot = snapshot
            self._seen = seen
            return snapshot

    def reload_if_changed(self) -> bool:
        """Reload when file names, sizes or mtimes changed; True when a new snapshot is live.

        Invalid files keep the previous snapshot in place and log a warning once per
        change (problem locations and messages only: never key material).
        """
        if _fingerprint(self.directory) == self._seen:
            return False
        from proxy.policy.schema import load_directory

        with self._lock:
            seen = _fingerprint(self.directory)
            if seen == self._seen:
                return False  # another thread reloaded it meanwhile
            self._seen = seen
            try:
                snapshot = load_directory(self.directory)
            except PolicyError as exc:
                _LOG.warning(
                    "policy reload rejected, keeping the previous policies: %s",
                    "; ".join(str(p) for p in exc.problems),
                )
                return False
            self._snapshot = snapshot
            _LOG.info("policies reloaded: %d tenant(s)", len(snapshot.tenants))
            return True
