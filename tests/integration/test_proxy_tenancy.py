"""Tenants: hot reload of policy files, org key vs bring-your-own-key, Redis in /readyz."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.proxy import ALPHA_KEY, BETA_KEY, ORG_KEY, StartProxy
from tests.support.redis import RedisServer
from tests.support.servers import ProxyServer, write_tenant
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.integration

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _status(proxy: ProxyServer, key: str) -> int:
    return httpx.get(
        proxy.base_url + "/models", headers={"authorization": f"Bearer {key}"}
    ).status_code


def _eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_tenants_are_told_apart(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    for key, name in ((ALPHA_KEY, "alpha"), (BETA_KEY, "beta")):
        response = httpx.get(proxy.base_url + "/models", headers={"authorization": f"Bearer {key}"})
        assert response.headers["x-linguagate-tenant"] == name


def test_policy_hot_reload(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    key = "sk-lg-gamma"
    assert _status(proxy, key) == 401
    path = write_tenant(proxy.settings.policies_dir, "gamma", [key])
    try:
        assert _eventually(lambda: _status(proxy, key) == 200)
        # An invalid edit keeps the last good policies live.
        path.write_text("[tenant]\nname = 'gamma'\nno_such_key = 1\n")
        time.sleep(0.3)
        assert _status(proxy, key) == 200
    finally:
        path.unlink()
    assert _eventually(lambda: _status(proxy, key) == 401)
    assert _status(proxy, ALPHA_KEY) == 200


def test_org_key_replaces_client_key(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert upstream.last().header("authorization") == f"Bearer {ORG_KEY}"


def test_bring_your_own_key(byo_proxy: ProxyServer, upstream: FakeUpstream) -> None:
    with openai.OpenAI(base_url=byo_proxy.base_url, api_key="sk-users-own", max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-linguagate-tenant"] == "default"
    assert upstream.last().header("authorization") == "Bearer sk-users-own"
    with openai.OpenAI(base_url=byo_proxy.base_url, api_key=ALPHA_KEY, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-linguagate-tenant"] == "alpha"
    # A proxy key is never forwarded, in any mode (it was, here, before issue 13).
    assert upstream.last().header("authorization") is None


def test_proxy_key_header_with_own_upstream_key(
    byo_proxy: ProxyServer, upstream: FakeUpstream
) -> None:
    # The team's upstream key rides in Authorization, the proxy key in its own header.
    with openai.OpenAI(
        base_url=byo_proxy.base_url,
        api_key="sk-users-own",
        default_headers={"x-linguagate-key": ALPHA_KEY},
        max_retries=0,
    ) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-linguagate-tenant"] == "alpha"
    sent = upstream.last()
    assert sent.header("authorization") == "Bearer sk-users-own"
    assert sent.header("x-linguagate-key") is None
    with openai.OpenAI(
        base_url=byo_proxy.base_url,
        api_key="sk-users-own",
        default_headers={"x-linguagate-key": "sk-lg-unknown"},
        max_retries=0,
    ) as sdk:
        # An unknown proxy key falls back to the anonymous tenant, like any unknown key.
        raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-linguagate-tenant"] == "default"


def test_redis_outage_reported_but_ready(
    start_proxy: StartProxy, redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    with start_proxy(redis_url=redis_server.url) as proxy:
        ready = httpx.get(proxy.url + "/readyz")
        assert (ready.status_code, ready.json()["redis"]["status"]) == (200, "ok")
        redis_server.stop()
        down = httpx.get(proxy.url + "/readyz")
        assert (down.status_code, down.json()["redis"]["status"]) == (200, "down")
        assert _status(proxy, ALPHA_KEY) == 200
