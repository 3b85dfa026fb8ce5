"""Fixtures that run the real proxy (uvicorn, loopback) in front of the fake upstream.

* `proxy`: org-key mode (`LINGUAGATE_UPSTREAM_API_KEY` = `ORG_KEY`), tenants `alpha` and
  `beta`, no anonymous tenant (unknown keys get 401). Session-scoped; its policies folder
  is `proxy.settings.policies_dir` (tests that add files there must remove them).
* `byo_proxy`: bring-your-own-key mode with an anonymous `default` tenant.
* `start_proxy`: a context-manager factory for one-off settings (timeouts, limits, ...).
* `client`: an OpenAI SDK client for `proxy`, authenticated as tenant `alpha`, no retries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.core.settings import Settings
from tests.support.servers import ProxyServer, run_proxy, write_tenant
from tests.support.upstream import FakeUpstream

__all__ = [
    "ALPHA_KEY",
    "BETA_KEY",
    "ORG_KEY",
    "StartProxy",
    "byo_proxy",
    "client",
    "openai_error",
    "proxy",
    "start_proxy",
]

ORG_KEY = "sk-org-secret"
ALPHA_KEY = "sk-lg-alpha"
BETA_KEY = "sk-lg-beta"
# What the `start_proxy` fixture returns.
StartProxy = Callable[..., AbstractContextManager[ProxyServer]]


def openai_error(response: httpx.Response) -> dict[str, object]:
    """The ``error`` object of an OpenAI-shaped error body, checked to have exactly its fields."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, object] = body["error"]
    return error


@pytest.fixture(scope="session")
def proxy(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    policies = tmp_path_factory.mktemp("policies")
    write_tenant(policies, "alpha", [ALPHA_KEY])
    write_tenant(policies, "beta", [BETA_KEY])
    settings = Settings(
        upstream_url=fake_upstream.base_url, upstream_api_key=ORG_KEY, policies_dir=policies
    )
    with run_proxy(settings) as server:
        yield server


@pytest.fixture(scope="session")
def byo_proxy(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    policies = tmp_path_factory.mktemp("byo-policies")
    write_tenant(policies, "default", [], anonymous=True)
    write_tenant(policies, "alpha", [ALPHA_KEY])
    with run_proxy(Settings(upstream_url=fake_upstream.base_url, policies_dir=policies)) as server:
        yield server


@pytest.fixture
def start_proxy(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> Callable[..., AbstractContextManager[ProxyServer]]:
    """`with start_proxy(read_timeout_s=0.3) as p:` a proxy with tenant alpha and these settings."""

    @contextmanager
    def start(**overrides: Any) -> Iterator[ProxyServer]:
        policies = tmp_path / "policies"
        policies.mkdir(exist_ok=True)
        write_tenant(policies, "alpha", [ALPHA_KEY])
        values: dict[str, Any] = {
            "upstream_url": fake_upstream.base_url,
            "upstream_api_key": ORG_KEY,
            "policies_dir": policies,
            **overrides,
        }
        with run_proxy(Settings(**values)) as server:
            yield server

    return start


@pytest.fixture(scope="session")
def _session_client(proxy: ProxyServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=proxy.base_url, api_key=ALPHA_KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def client(_session_client: openai.OpenAI, upstream: FakeUpstream) -> openai.OpenAI:
    return _session_client
