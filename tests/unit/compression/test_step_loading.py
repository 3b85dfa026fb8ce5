"""While the small LM loads, requests say so (`compressor_loading`), whoever started the load."""

from __future__ import annotations

import asyncio
import json
import threading

from starlette.datastructures import Headers

from proxy.compression.cache import MemoryCache
from proxy.compression.service import CompressorService
from proxy.compression.step import CompressionStep
from proxy.policy.model import CompressionPolicy
from tests.support.compression import few_shot, step_tenant

TENANT = step_tenant(CompressionPolicy(mode="enforce", rate=0.5, min_tokens=10))


def _header(step: CompressionStep) -> str:
    body = {"model": "gpt-4o-mini", "messages": few_shot(1)}
    raw = json.dumps(body).encode()
    outcome = asyncio.run(step(raw, body, TENANT, Headers()))
    return outcome.headers["x-linguagate-compression"]


def test_a_policy_turned_on_after_start_up_loads_the_model_and_says_loading() -> None:
    # `open_services` starts the default engine only if a policy compressed at start-up;
    # one added later (a policy reload) must not read "unavailable" while it loads.
    release = threading.Event()

    def load() -> object:
        release.wait(10)
        raise RuntimeError("no model in this test")

    service = CompressorService(load)  # type: ignore[arg-type]
    assert service.status[0] == "idle"
    step = CompressionStep(service, MemoryCache(ttl_s=60))
    try:
        assert _header(step) == "skipped: compressor_loading"
        assert service.status[0] == "loading"
        assert _header(step) == "skipped: compressor_loading"
    finally:
        release.set()
    assert service.wait_ready(10)
    assert _header(step) == "skipped: compressor_unavailable"  # failed to load: down
    service.close()
