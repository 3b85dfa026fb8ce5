"""A real proxy with the real compression step, the tiny random-model compressor and real backends.

* ``write_policy``: a tenant policy file with any ``[compression]`` knobs.
* ``ScriptedEngine``: the tiny compressor, plus two markers a test can put in a prompt:
  ``EXPLODE`` makes the call raise, ``SLOWDOWN`` makes it wait for ``release()``.
* ``start_compression_proxy``: a context-manager factory (tenants below; optional Redis URL).
* ``compression_stack``: a module-scoped stack with an in-memory cache and ledger.
* ``assert_only_text_changed``: the byte-faithfulness check of a rewritten body.
* ``few_shot``: long prose chat turns that compress.

Tenants (name -> key): see ``TENANTS``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest

from proxy.compression.messages import split_chat, text_token_count
from proxy.compression.service import CompressorService
from proxy.core.settings import Settings
from proxy.policy.model import CompressionPolicy, Tenant
from proxy.services import open_services
from tests.support.servers import ProxyServer, run_proxy
from tests.support.tiny_lm import sample_text
from tests.support.upstream import FakeUpstream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from proxy.compress import CompressionResult, Compressor
    from proxy.gateway.state import Services

__all__ = [
    "EXPLODE",
    "SLOWDOWN",
    "TENANTS",
    "CompressionStack",
    "ScriptedEngine",
    "assert_only_text_changed",
    "compression_stack",
    "few_shot",
    "open_compression_stack",
    "key_of",
    "original_tokens",
    "start_compression_proxy",
    "step_tenant",
    "write_policy",
]

def step_tenant(compression: CompressionPolicy) -> Tenant:
    """A keyless tenant named "team" with ``compression``, for calling the compression step
    directly (no policy files, no proxy)."""
    return Tenant(name="team", anonymous=False, admin=False, key_digests=(),
                  policy_version="0" * 64, compression=compression)


EXPLODE = "EXPLODE-NOW"
SLOWDOWN = "SLOWDOWN-PLEASE"
# The tiny model is random: every text is "out of distribution" to it under the default
# perplexity guard, so the guard is set out of reach except for the "guarded" tenant.
_BASE = {
    "mode": "enforce",
    "rate": 0.5,
    "min_tokens": 50,
    "models": ["gpt-*"],
    "ood_max_nll": 1000.0,
}
_OVERRIDE = {"allow": True, "min_rate": 0.3, "max_rate": 0.8}

# name -> (compression knobs, override table or None, admin)
TENANTS: dict[str, tuple[dict[str, Any], dict[str, Any] | None, bool]] = {
    "team-a": (_BASE, _OVERRIDE, False),
    "team-b": (_BASE, _OVERRIDE, False),
    "strict": (_BASE, None, False),
    "shadow": ({**_BASE, "mode": "shadow"}, None, False),
    "off": ({"mode": "off"}, _OVERRIDE, False),
    "instr": ({**_BASE, "instruction_rate": 0.5}, None, False),
    "hasty": ({**_BASE, "max_compression_ms": 300}, None, False),
    "ledger": (_BASE, None, False),
    "guarded": ({**_BASE, "ood_max_nll": 0.5}, None, False),
    "ops": ({"mode": "off"}, None, True),
}
# Tenant "per-model": the first matching glob wins.
_PER_MODEL = """
[models."gpt-4o".compression]
mode = "shadow"

[models."gpt-4.1*".compression]
mode = "off"
"""


def key_of(tenant: str) -> str:
    return f"sk-lg-{tenant}"


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and string arrays read the same


def write_policy(
    directory: Path,
    name: str,
    keys: list[str],
    compression: Mapping[str, Any],
    override: Mapping[str, Any] | None = None,
    *,
    admin: bool = False,
    extra: str = "",
) -> Path:
    """A policy file for tenant ``name`` with these ``[compression]`` knobs (``extra``: more
    TOML appended, e.g. per-model tables)."""
    digests = ", ".join(f'"{hashlib.sha256(k.encode()).hexdigest()}"' for k in keys)
    lines = [
        "[tenant]",
        f'name = "{name}"',
        f"api_key_sha256 = [{digests}]",
        f"admin = {_toml(admin)}",
        "",
        "[compression]",
        *(f"{k} = {_toml(v)}" for k, v in compression.items()),
    ]
    if override is not None:
        lines += ["", "[compression.override]", *(f"{k} = {_toml(v)}" for k, v in override.items())]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


class ScriptedEngine:
    """The tiny compressor; ``EXPLODE`` in a prompt raises, ``SLOWDOWN`` waits for ``release``."""

    def __init__(self, inner: Compressor) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self._gate = threading.Event()
        self.calls = 0
        self.last_options: dict[str, Any] = {}  # the knobs of the latest call

    def release(self) -> None:
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def compress(
        self,
        instruction: str,
        demonstrations: list[str],
        question: str,
        rate: float,
        **kwargs: Any,
    ) -> CompressionResult:
        self.calls += 1
        self.last_options = {"demonstrations": len(demonstrations), **kwargs}
        text = "\n".join([instruction, *demonstrations, question])
        if EXPLODE in text:
            raise RuntimeError("scripted compressor failure")
        if SLOWDOWN in text:
            self._gate.wait(20)
        return self.inner.compress(instruction, demonstrations, question, rate, **kwargs)

    def mean_nll(self, text: str) -> float:
        return self.inner.mean_nll(text)


@dataclass(frozen=True)
class CompressionStack:
    server: ProxyServer
    engine: ScriptedEngine
    service: CompressorService
    upstream: FakeUpstream

    def client(self, tenant: str, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.server.base_url,
            api_key=key_of(tenant),
            max_retries=0,
            timeout=20,
            **kwargs,
        )

    def wait_idle(self, timeout_s: float = 20) -> None:
        """Until no compression job runs (late jobs finish in the background)."""
        deadline = time.monotonic() + timeout_s
        while self.service.executor.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.service.executor.pending, "a compression job is still running"


@contextmanager
def open_compression_stack(
    upstream: FakeUpstream,
    policies: Path,
    engine: ScriptedEngine,
    *,
    redis_url: str | None = None,
    max_pending: int = 1,
) -> Iterator[CompressionStack]:
    import torch

    for name, (compression, override, admin) in TENANTS.items():
        write_policy(policies, name, [key_of(name)], compression, override, admin=admin)
    write_policy(policies, "per-model", [key_of("per-model")], _BASE, extra=_PER_MODEL)
    settings = Settings(
        upstream_url=upstream.base_url,
        upstream_api_key="sk-org",
        policies_dir=policies,
        redis_url=redis_url,
    )
    service = CompressorService.ready(engine, max_workers=1, max_pending=max_pending)

    @asynccontextmanager
    async def services(s: Settings) -> AsyncIterator[Services]:
        async with open_services(s, compressor=service) as built:
            yield built

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny-model ops are ~10x slower with OpenMP barriers on 2 cores
    try:
        with run_proxy(settings, services=services) as server:
            yield CompressionStack(server, engine, service, upstream)
    finally:
        engine.release()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def compression_stack(
    fake_upstream: FakeUpstream,
    tiny_compressor: Compressor,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CompressionStack]:
    """In-memory cache and ledger; one compression job at a time (max_pending=1)."""
    with open_compression_stack(
        fake_upstream, tmp_path_factory.mktemp("cpolicies"), ScriptedEngine(tiny_compressor)
    ) as stack:
        yield stack


@pytest.fixture
def start_compression_proxy(
    fake_upstream: FakeUpstream,
    tiny_compressor: Compressor,
    tmp_path: Path,
) -> Callable[..., AbstractContextManager[CompressionStack]]:
    """``with start_compression_proxy(redis_url=...) as stack:`` a one-off stack."""

    def start(**kwargs: Any) -> AbstractContextManager[CompressionStack]:
        policies = tmp_path / "policies"
        policies.mkdir(exist_ok=True)
        engine = ScriptedEngine(tiny_compressor)
        return open_compression_stack(fake_upstream, policies, engine, **kwargs)

    return start


def few_shot(
    seed: int,
    *,
    shots: int = 3,
    words: int = 90,
    question: str | None = None,
    system: str = "You are a careful assistant. Answer briefly.",
) -> list[dict[str, Any]]:
    """System prompt, ``shots`` user/assistant pairs of prose, then a short final question."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for i in range(shots):
        first = seed * 101 + 2 * i
        messages.append({"role": "user", "content": sample_text(words, first)})
        messages.append({"role": "assistant", "content": sample_text(words, first + 1)})
    messages.append({"role": "user", "content": question or f"How many hours in case {seed}?"})
    return messages


def original_tokens(body: Mapping[str, Any]) -> int:
    """The proxy's own count for a body: tiktoken tokens of its message text."""
    return text_token_count(split_chat(body))


_JSON_STRING = re.compile(rb'("(?:[^"\\]|\\.)*")')


def assert_only_text_changed(original: bytes, forwarded: bytes) -> list[str]:
    """Every byte outside JSON strings equal, every string equal unless it is message text.

    Returns the original texts that changed (callers assert it is not empty when
    compression was applied).
    """
    texts = set(split_chat(json.loads(original)).texts.values())
    a, b = _JSON_STRING.split(original), _JSON_STRING.split(forwarded)
    assert len(a) == len(b), "the JSON structure changed"
    changed: list[str] = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if i % 2 == 0:
            assert x == y, f"non-string bytes changed: {x!r} -> {y!r}"
        elif x != y:
            before = json.loads(x)
            assert before in texts, f"a string that is not message text changed: {x[:60]!r}"
            changed.append(before)
    return changed
