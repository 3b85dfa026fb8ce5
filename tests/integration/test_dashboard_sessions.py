"""Dashboard sessions against live policies: a hot reload that removes a key, a tenant or
an admin flag takes effect at once; replicas sharing a secret share sessions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.support.compression import write_policy
from tests.support.proxy import ALPHA_KEY, StartProxy
from tests.support.servers import ProxyServer, write_tenant

pytestmark = pytest.mark.integration

SECRET = "a-shared-dashboard-secret-0123456789"
COOKIE = "linguagate_dashboard"


@contextmanager
def signed_in(server: ProxyServer, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.post("/dashboard/login", data={"key": key})
        assert response.status_code == 303, response.text
        yield client


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """The policy store polls the folder every 0.1 s in tests."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the policy change was not picked up"
        time.sleep(0.05)


def test_removed_key_or_tenant_ends_the_session(start_proxy: StartProxy) -> None:
    with start_proxy(dashboard_secret=SECRET) as server:
        policies = server.settings.policies_dir
        with signed_in(server, ALPHA_KEY) as client:
            assert 'id="tenant-name">alpha<' in client.get("/dashboard").text
            write_tenant(policies, "alpha", ["sk-lg-alpha-rotated"])  # the key is rotated
            eventually(lambda: "Sign in" in client.get("/dashboard").text)
            assert client.get("/dashboard/api/summary").status_code == 401

        with signed_in(server, "sk-lg-alpha-rotated") as again:
            assert again.get("/dashboard/api/summary").json()["tenant"] == "alpha"
            write_tenant(policies, "beta", ["sk-lg-beta"])  # an empty folder would be refused
            (policies / "alpha.toml").unlink()  # the tenant is removed
            eventually(lambda: again.get("/dashboard/api/summary").status_code == 401)


def test_admin_flag_is_checked_on_every_request(start_proxy: StartProxy) -> None:
    with start_proxy(dashboard_secret=SECRET) as server:
        policies = server.settings.policies_dir
        write_policy(policies, "boss", ["sk-lg-boss"], {"mode": "off"}, admin=True)
        eventually(
            lambda: (
                httpx.post(server.url + "/dashboard/login", data={"key": "sk-lg-boss"}).status_code
                == 303
            )
        )
        with signed_in(server, "sk-lg-boss") as client:
            assert "All tenants" in client.get("/dashboard").text
            assert client.get("/dashboard/api/tenants").status_code == 200
            write_policy(policies, "boss", ["sk-lg-boss"], {"mode": "off"}, admin=False)
            eventually(lambda: client.get("/dashboard/api/tenants").status_code == 403)
            page = client.get("/dashboard").text
            assert "All tenants" not in page and 'id="tenant-name">boss<' in page
            assert client.get("/dashboard", params={"tenant": "alpha"}).status_code == 403


def test_replicas_with_one_secret_share_sessions(start_proxy: StartProxy) -> None:
    with start_proxy(dashboard_secret=SECRET) as one, start_proxy(dashboard_secret=SECRET) as two:
        with signed_in(one, ALPHA_KEY) as client:
            token = client.cookies[COOKIE]
        other = httpx.get(two.url + "/dashboard/api/summary", cookies={COOKIE: token})
        assert other.status_code == 200 and other.json()["tenant"] == "alpha"
    with start_proxy(dashboard_secret="a-different-secret-9876543210") as three:
        refused = httpx.get(three.url + "/dashboard/api/summary", cookies={COOKIE: token})
        assert refused.status_code == 401
    # Without a configured secret each app makes its own: sessions do not carry over.
    with start_proxy() as four:
        assert (
            httpx.get(four.url + "/dashboard/api/summary", cookies={COOKIE: token}).status_code
            == 401
        )


def test_the_anonymous_tenant_never_signs_in(start_proxy: StartProxy) -> None:
    with start_proxy() as server:
        write_tenant(server.settings.policies_dir, "default", [], anonymous=True)
        eventually(lambda: httpx.get(server.url + "/v1/models").status_code != 401)
        response = httpx.post(server.url + "/dashboard/login", data={"key": "sk-anything"})
        assert response.status_code == 401 and "set-cookie" not in response.headers
        assert httpx.get(server.url + "/dashboard/api/summary").status_code == 401
        bearer = httpx.get(
            server.url + "/dashboard/api/summary", headers={"authorization": "Bearer sk-anything"}
        )
        assert bearer.status_code == 401
