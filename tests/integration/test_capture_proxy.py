"""Capture and per-policy compressor models, end to end: openai SDK -> proxy -> fake upstream.

Tenants: ``keen`` opts in (sample 1.0) and compresses with its own model folder;
``quiet`` never opted in; ``never`` opted in with ``sample = 0``; ``broken`` names a model
folder that does not exist (fails open, reported on /readyz).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

from proxy.compression.service import CompressorService
from proxy.core.settings import Settings
from proxy.services import open_services
from tests.support.compression import few_shot, key_of, write_policy
from tests.support.servers import ProxyServer, run_proxy
from tests.support.upstream import FakeUpstream

if TYPE_CHECKING:
    from proxy.compress import Compressor
    from proxy.gateway.state import Services

pytestmark = pytest.mark.integration

ORG_KEY = "sk-org-capture-secret"
MODEL = "gpt-4o-mini"
_COMPRESS = {"mode": "enforce", "rate": 0.5, "min_tokens": 50, "models": ["gpt-*"],
             "ood_max_nll": 1000.0}


@dataclass(frozen=True)
class _Stack:
    server: ProxyServer
    captures: Path
    model_dir: Path

    def client(self, tenant: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.base_url, api_key=key_of(tenant),
                             max_retries=0, timeout=30)

    def readyz(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.server.url + "/readyz", timeout=10).json()
        return body


def _lines(path: Path, count: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """The file's lines once it has ``count`` of them (capture is written off the request)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines()]
            if len(lines) >= count:
                return lines
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {count} line(s)")


@pytest.fixture(scope="module")
def stack(fake_upstream: FakeUpstream, tiny_compressor: Compressor, tiny_base_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Stack]:
    import torch

    root = tmp_path_factory.mktemp("capture")
    policies = root / "policies"
    policies.mkdir()
    alignment = "\n[alignment]\ncapture = true\nsample = {}\n"
    write_policy(policies, "keen", [key_of("keen")], {**_COMPRESS, "model": str(tiny_base_dir)},
                 extra=alignment.format(1.0))
    write_policy(policies, "quiet", [key_of("quiet")], {"mode": "off"})
    write_policy(policies, "never", [key_of("never")], {"mode": "off"},
                 extra=alignment.format(0.0))
    write_policy(policies, "broken", [key_of("broken")],
                 {**_COMPRESS, "model": str(root / "no-such-model")})
    settings = Settings(upstream_url=fake_upstream.base_url, upstream_api_key=ORG_KEY,
                        policies_dir=policies, capture_dir=root / "captures", torch_threads=0,
                        device="cpu")
    service = CompressorService.ready(tiny_compressor)

    @asynccontextmanager
    async def services(s: Settings) -> AsyncIterator[Services]:
        async with open_services(s, compressor=service) as built:
            yield built

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with run_proxy(settings, services=services) as server:
            built = _Stack(server, root / "captures", tiny_base_dir)
            deadline = time.monotonic() + 60
            while "ok" not in built.readyz()["models"].get("detail", ""):
                assert time.monotonic() < deadline, "the policy's model never loaded"
                time.sleep(0.05)
            yield built
    finally:
        torch.set_num_threads(threads)


def test_opted_in_tenant_gets_json_and_streamed_pairs(stack: _Stack,
                                                      upstream: FakeUpstream) -> None:
    quiet = stack.client("quiet").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Not for capture."}])
    assert quiet.choices[0].message.content == "Hello!"
    never = stack.client("never").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Sampled out."}])
    assert never.choices[0].message.content == "Hello!"
    keen = stack.client("keen")
    raw = keen.chat.completions.with_raw_response.create(model=MODEL, messages=few_shot(3))
    assert raw.headers["x-linguagate-compression"] == "applied"
    forwarded = upstream.last("/v1/chat/completions").json()["messages"]
    stream = keen.chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": "Stream, please."}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello!"

    first, second = _lines(stack.captures / "keen.jsonl", 2)
    assert first["messages"] == forwarded  # as sent upstream: the compressed prompt
    assert first["messages"] != few_shot(3)
    assert (first["response"], first["compressed"], first["model"]) == ("Hello!", True, MODEL)
    assert first["tenant"] == "keen"
    assert second["messages"] == [{"role": "user", "content": "Stream, please."}]
    assert (second["response"], second["compressed"]) == ("Hello!", False)
    # Written in order by one thread: the earlier requests would be there by now.
    assert sorted(p.name for p in stack.captures.iterdir()) == ["keen.jsonl"]
    capture = stack.readyz()["capture"]
    assert capture["status"] == "ok" and "dropped 0, write errors 0" in capture["detail"]
    text = (stack.captures / "keen.jsonl").read_text()
    assert key_of("keen") not in text and ORG_KEY not in text and "authorization" not in text


def test_policy_models_are_loaded_reported_and_fail_open(stack: _Stack,
                                                         upstream: FakeUpstream) -> None:
    models = stack.readyz()["models"]
    assert models["status"] == "down"  # the broken tenant's folder; not required for ready
    assert f"{stack.model_dir}: ok" in models["detail"]
    assert "no-such-model: down" in models["detail"]
    raw = stack.client("broken").chat.completions.with_raw_response.create(
        model=MODEL, messages=few_shot(4))
    assert raw.headers["x-linguagate-compression"] == "skipped: compressor_unavailable"
    assert upstream.last("/v1/chat/completions").json()["messages"] == few_shot(4)
    assert not (stack.captures / "broken.jsonl").exists()
