"""Every other /v1/* path and method is relayed as it is; health and readiness endpoints."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.proxy import ALPHA_KEY, ORG_KEY
from tests.support.servers import ProxyServer
from tests.support.upstream import FakeUpstream, json_reply, sse_reply

pytestmark = pytest.mark.integration

AUTH = {"authorization": f"Bearer {ALPHA_KEY}"}


def test_models_and_embeddings(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
    models = upstream.last("/v1/models")
    assert models.method == "GET"
    assert models.header("authorization") == f"Bearer {ORG_KEY}"
    embedding = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert embedding.data[0].embedding == [0.25, -0.5, 1.0]
    assert upstream.last("/v1/embeddings").json()["input"] == "hello"


def test_any_method_path_and_query_relayed(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    reply = json_reply({"id": "file-1", "deleted": True}, headers=[("openai-processing-ms", "12")])
    upstream.enqueue("/v1/files/file-1", reply)
    response = httpx.delete(
        proxy.base_url + "/files/file-1?purpose=batch&x=%26", headers={**AUTH, "x-custom": "kept"}
    )
    assert response.status_code == 200
    assert response.content == reply.body
    assert response.headers["openai-processing-ms"] == "12"
    assert response.headers["x-linguagate-tenant"] == "alpha"
    seen = upstream.last("/v1/files/file-1")
    assert (seen.method, seen.query) == ("DELETE", b"purpose=batch&x=%26")
    assert seen.header("x-custom") == "kept"


def test_upstream_404_relayed(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    response = httpx.get(proxy.base_url + "/no/such/thing", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    assert upstream.last().path == "/v1/no/such/thing"


def test_streaming_passthrough_on_other_paths(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    events = [b"event: response.created\ndata: {}\n\n", b"event: response.completed\ndata: {}\n\n"]
    upstream.enqueue("/v1/responses", sse_reply(events, delay_s=0.01))
    body = {"model": "gpt-4o", "input": "hi", "stream": True}
    with httpx.stream("POST", proxy.base_url + "/responses", json=body, headers=AUTH) as r:
        assert r.headers["x-accel-buffering"] == "no"
        assert b"".join(r.iter_raw()) == b"".join(events)


def test_request_id_generated_or_kept(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    upstream.enqueue("/v1/models", json_reply({"object": "list", "data": []}))
    generated = httpx.get(proxy.base_url + "/models", headers=AUTH)
    assert generated.headers["x-request-id"].startswith("lg-")
    assert upstream.last().header("x-request-id") == generated.headers["x-request-id"]
    upstream.enqueue("/v1/models", json_reply({"object": "list", "data": []}))
    kept = httpx.get(proxy.base_url + "/models", headers={**AUTH, "x-request-id": "trace-123"})
    assert kept.headers["x-request-id"] == "trace-123"
    assert upstream.last().header("x-request-id") == "trace-123"


def test_hop_by_hop_headers_not_forwarded(proxy: ProxyServer, upstream: FakeUpstream) -> None:
    headers = {
        **AUTH,
        "connection": "keep-alive, x-hop",
        "x-hop": "1",
        "te": "trailers",
        "x-linguagate-key": ALPHA_KEY,  # the proxy key: must never reach the upstream
    }
    httpx.get(proxy.base_url + "/models", headers=headers)
    seen = upstream.last("/v1/models")
    for name in ("x-hop", "te", "x-linguagate-key"):
        assert seen.header(name) is None, name
    assert seen.header("connection") in (None, "keep-alive")


def test_health_and_readiness(proxy: ProxyServer) -> None:
    assert httpx.get(proxy.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(proxy.url + "/readyz")
    assert ready.status_code == 200
    report = ready.json()
    assert report["status"] == "ready"
    assert report["policies"]["status"] == "ok"
    assert report["upstream"]["status"] == "ok"
    assert report["redis"] == {"status": "not_configured"}
    # no policy compresses: the small LM is not loaded, and not needed for readiness
    assert report["model"]["status"] == "idle"
