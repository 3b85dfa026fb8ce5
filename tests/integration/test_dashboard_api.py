"""The dashboard's JSON and pages after real compressed requests (SDK -> proxy -> fake
upstream, tiny compressor, in-memory ledger): figures, tenant isolation, admin views."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.support.compression import CompressionStack, few_shot, key_of
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"


def send(stack: CompressionStack, tenant: str, seeds: list[int]) -> dict[str, int]:
    """Chat requests through the proxy; the sums of the proxy's own token headers."""
    sums = {"original": 0, "forwarded": 0, "hits": 0}
    with stack.client(tenant) as sdk:
        for seed in seeds:
            raw = sdk.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=few_shot(seed),  # type: ignore[arg-type]
            )
            assert raw.headers["x-linguagate-compression"] == "applied"
            sums["original"] += int(raw.headers["x-linguagate-original-tokens"])
            sums["forwarded"] += int(raw.headers["x-linguagate-forwarded-tokens"])
            sums["hits"] += raw.headers.get("x-linguagate-cache") == "hit"
    return sums


def api(
    stack: CompressionStack, path: str, key: str | None = None, **params: str
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(
        f"{stack.server.url}/dashboard/api/{path}", params=params, headers=headers, timeout=10
    )


def summary(stack: CompressionStack, tenant: str, requests: int, **params: str) -> dict[str, Any]:
    """The tenant's own summary once ``requests`` are recorded (the relay records after the
    answer is sent, so the last one may land a moment after the client has it)."""
    deadline = time.monotonic() + 5
    while True:
        response = api(stack, "summary", key_of(tenant), **params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["requests"] >= requests or time.monotonic() > deadline:
            assert body["requests"] == requests
            return body
        time.sleep(0.02)


@contextmanager
def sign_in(stack: CompressionStack, tenant: str) -> Iterator[httpx.Client]:
    """A cookie-holding client signed in with the tenant's key through the form."""
    with httpx.Client(base_url=stack.server.url, timeout=10) as client:
        response = client.post("/dashboard/login", data={"key": key_of(tenant)})
        assert response.status_code == 303 and response.headers["location"] == "/dashboard"
        yield client


def test_summary_shows_the_compressed_requests(
    compression_stack: CompressionStack, upstream: FakeUpstream
) -> None:
    stack = compression_stack
    sums = send(stack, "team-a", [40, 41, 40])  # the third is a cache hit
    body = summary(stack, "team-a", 3)
    assert body["object"] == "linguagate.dashboard.summary"
    assert body["tenant"] == "team-a" and body["period"] == "24h"
    assert body["scope"] == "this_process"
    assert body["original_tokens"] == sums["original"]
    assert body["forwarded_tokens"] == sums["forwarded"]
    assert body["saved_tokens"] == sums["original"] - sums["forwarded"] > 0
    assert body["compressed_requests"] == 3
    assert sum(b["count"] for b in body["compression_rate_histogram"]) == 3
    rate = body["forwarded_tokens"] / body["original_tokens"]
    assert any(
        b["count"] and (b["le"] is None or b["le"] >= rate - 0.1)
        for b in body["compression_rate_histogram"]
    )
    assert sum(b["count"] for b in body["compression_ms_histogram"]) >= 2
    assert body["compression_ms_p50"] is not None and body["percentiles_approximate"]
    assert body["cache_hits"] >= 1 and body["cache_hit_rate"] is not None
    # gpt-4o-mini is in the price table: money is net of the provider's prompt cache
    # (rounded to micro-dollars in the JSON); test_net_money checks it against the ledger.
    assert body["billed_dollars"] < body["direct_dollars"]
    assert body["dollars_saved"] == pytest.approx(
        body["direct_dollars"] - body["billed_dollars"], abs=2e-6)
    assert sum(p["original_tokens"] for p in body["series"]) == sums["original"]
    assert len(body["series"]) == 24
    for period, buckets in (("7d", 7), ("30d", 30)):
        longer = summary(stack, "team-a", 3, period=period)
        assert len(longer["series"]) == buckets
        assert longer["saved_tokens"] == body["saved_tokens"]

    bad = api(stack, "summary", key_of("team-a"), period="1y")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "period"


def test_a_tenant_key_never_reads_another_tenant(
    compression_stack: CompressionStack, upstream: FakeUpstream
) -> None:
    stack = compression_stack
    send(stack, "team-b", [42])
    summary(stack, "team-b", 1)
    answers = set()
    for params in (
        {"tenant": "team-b"},
        {"tenant": "team-b", "period": "30d"},
        {"tenant": "nobody"},  # the same answer: names cannot be probed
        {"tenant": "TEAM-B"},
        {"tenant": "team-b "},
    ):
        response = api(stack, "summary", key_of("team-a"), **params)
        assert response.status_code == 403
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "saved_tokens" not in response.text and "requests" not in response.text
        answers.add(response.text)
    assert len(answers) == 1
    # Repeating the parameter does not sneak past the check.
    repeated = httpx.get(
        f"{stack.server.url}/dashboard/api/summary?tenant=team-a&tenant=team-b",
        headers={"authorization": f"Bearer {key_of('team-a')}"},
    )
    assert repeated.status_code == 403 or repeated.json()["tenant"] == "team-a"
    assert api(stack, "tenants", key_of("team-a")).status_code == 403
    assert api(stack, "summary").status_code == 401
    assert api(stack, "summary", "sk-not-a-key").status_code == 401

    # The same with a browser session, on the page and on the API.
    with sign_in(stack, "team-a") as browser:
        page = browser.get("/dashboard", params={"tenant": "team-b"})
        assert page.status_code == 403 and "text/html" in page.headers["content-type"]
        assert "only see its own tenant" in page.text
        assert "Tokens saved" not in page.text
        assert browser.get("/dashboard/api/summary", params={"tenant": "team-b"}).status_code == 403
        own = browser.get("/dashboard").text
        assert 'id="tenant-name">team-a<' in own and "team-b" not in own
        assert browser.get("/dashboard/api/summary").json()["tenant"] == "team-a"


def test_admin_sees_every_tenant(
    compression_stack: CompressionStack, upstream: FakeUpstream
) -> None:
    stack = compression_stack
    send(stack, "team-b", [43])
    listing = api(stack, "tenants", key_of("ops"), period="7d")
    assert listing.status_code == 200
    rows = {r["tenant"]: r for r in listing.json()["data"]}
    assert {"team-a", "team-b", "ops", "strict"} <= set(rows)  # idle tenants listed too
    assert rows["team-a"]["saved_tokens"] > 0 and rows["team-b"]["saved_tokens"] > 0
    assert rows["strict"]["requests"] == 0
    by_requests = api(stack, "tenants", key_of("ops"), sort="requests", dir="asc").json()["data"]
    counts = [r["requests"] for r in by_requests]
    assert counts == sorted(counts)
    other = api(stack, "summary", key_of("ops"), tenant="team-b")
    assert other.status_code == 200 and other.json()["tenant"] == "team-b"
    assert api(stack, "summary", key_of("ops"), tenant="nobody").status_code == 404

    with sign_in(stack, "ops") as admin:
        page = admin.get("/dashboard", params={"sort": "tenant", "dir": "asc"})
        assert page.status_code == 200 and "All tenants" in page.text
        names = re.findall(r'<th scope="row"><a href="[^"]*">([^<]+)</a>', page.text)
        assert names == sorted(names) and {"team-a", "team-b"} <= set(names)
        assert 'aria-sort="ascending"' in page.text
        desc = admin.get("/dashboard", params={"sort": "tenant", "dir": "desc"}).text
        assert re.findall(r'<th scope="row"><a href="[^"]*">([^<]+)</a>', desc) == names[::-1]
        detail = admin.get("/dashboard", params={"tenant": "team-b", "period": "30d"})
        assert detail.status_code == 200 and 'id="tenant-name">team-b<' in detail.text
        assert "<svg" in detail.text and "Current policy" in detail.text
        assert "api_key_sha256" not in detail.text
        # The policy reads the way its file is written, not as Python reprs.
        assert "<dt>mode</dt><dd>&quot;enforce&quot;</dd>" in detail.text
        assert "False" not in detail.text and "None" not in detail.text
        assert admin.get("/dashboard", params={"tenant": "nobody"}).status_code == 404


def test_sign_in_cookie_and_csrf(
    compression_stack: CompressionStack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = compression_stack
    url = stack.server.url
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/dashboard/").headers["location"] == "/dashboard"
        form = client.get("/dashboard")
        assert form.status_code == 200 and 'method="post"' in form.text
        assert form.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
        assert client.post("/dashboard/login", data={"key": "sk-wrong"}).status_code == 401
        # Only POST signs in: a key never travels in a URL.
        assert client.get("/dashboard/login", params={"key": key_of("team-a")}).status_code in (
            404,
            405,
        )
        for headers in (
            {"origin": "https://evil.example"},
            {"origin": "null"},
            {"sec-fetch-site": "cross-site", "origin": url},
        ):
            refused = client.post(
                "/dashboard/login", data={"key": key_of("team-a")}, headers=headers
            )
            assert refused.status_code == 403 and "set-cookie" not in refused.headers
        ok = client.post(
            "/dashboard/login",
            data={"key": key_of("team-a")},
            headers={"origin": url, "sec-fetch-site": "same-origin"},
        )
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Path=/dashboard" in cookie and "Secure" not in cookie  # plain http here
        assert key_of("team-a") not in cookie
        assert "Tokens saved" in client.get("/dashboard").text

        token = client.cookies["linguagate_dashboard"]
        client.cookies.set("linguagate_dashboard", token[:-2] + "xx", path="/dashboard")
        assert "Sign in" in client.get("/dashboard").text
        assert client.get("/dashboard/api/summary").status_code == 401
        client.cookies.set("linguagate_dashboard", token, path="/dashboard")
        out = client.post("/dashboard/logout")
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    assert key_of("team-a") not in caplog.text
