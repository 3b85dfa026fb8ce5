"""UpstreamClient over httpx.MockTransport, and the aiohttp transport's error mapping."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import httpx
import pytest

from proxy.core.errors import UpstreamTimeout, UpstreamUnreachable
from proxy.core.settings import Settings
from proxy.gateway.transport import AiohttpUpstream, UpstreamTransport
from proxy.gateway.upstream import UpstreamClient, egress_proxy_for, map_transport_error
from proxy.gateway.wire import WireUpstream


def _echo(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        201,
        headers={"x-url": str(request.url), "x-auth": request.headers.get("authorization", "")},
        content=request.content[::-1],
    )


async def test_mock_transport_round_trip() -> None:
    client = UpstreamClient(
        "http://up.test/v1/", api_key="sk-org", transport=httpx.MockTransport(_echo)
    )
    assert client.org_authorization == b"Bearer sk-org"
    url = client.url_for("/v1/chat/completions", b"a=%26")
    assert url == "http://up.test/v1/chat/completions?a=%26"
    async with client.stream("POST", url, [(b"authorization", b"Bearer x")], b"abc") as response:
        assert response.status == 201
        headers = dict(response.headers)
        assert headers[b"x-url"] == url.encode()
        assert headers[b"x-auth"] == b"Bearer x"
        assert b"".join([chunk async for chunk in client.iter_raw(response)]) == b"cba"
    await client.aclose()


def test_byo_mode_has_no_org_authorization() -> None:
    client = UpstreamClient.from_settings(Settings(), transport=httpx.MockTransport(_echo))
    assert client.org_authorization is None


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("refused"), UpstreamUnreachable),
        (httpx.ReadTimeout("slow"), UpstreamTimeout),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout),
        (httpx.RemoteProtocolError("bad"), UpstreamUnreachable),
        (aiohttp.ClientPayloadError("cut"), UpstreamUnreachable),
        (TimeoutError(), UpstreamTimeout),
    ],
)
def test_error_mapping(exc: BaseException, expected: type) -> None:
    assert type(map_transport_error(exc)) is expected


async def test_mock_transport_errors_are_mapped() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = UpstreamClient("http://up.test/v1", transport=httpx.MockTransport(fail))
    with pytest.raises(UpstreamUnreachable):
        async with client.stream("GET", "http://up.test/v1/models", [], b""):
            pass


Kind = Callable[..., UpstreamTransport]


@pytest.fixture(params=[WireUpstream, AiohttpUpstream], ids=["wire", "aiohttp"])
def kind(request: pytest.FixtureRequest) -> Kind:
    """Both socket transports must behave the same."""
    factory: Kind = request.param
    return factory


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_refused_is_502_not_504(kind: Kind) -> None:
    client = UpstreamClient("http://127.0.0.1/v1", transport=kind(connect_timeout_s=2))
    try:
        with pytest.raises(UpstreamUnreachable):
            await client.open("GET", f"http://127.0.0.1:{_closed_port()}/v1/models", [], b"")
    finally:
        await client.aclose()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _serve(handler: Handler) -> AsyncIterator[int]:
    """A raw TCP server on loopback; every connection is closed before the loop ends."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.sleep(0)
        await server.wait_closed()


async def test_read_timeout_is_504(kind: Kind) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(2)

    client = UpstreamClient("http://127.0.0.1/v1", transport=kind(read_timeout_s=0.2))
    async with _serve(silent) as port:
        try:
            with pytest.raises(UpstreamTimeout):
                await client.open("GET", f"http://127.0.0.1:{port}/v1/models", [], b"")
        finally:
            await client.aclose()


async def test_body_cut_short_is_unreachable(kind: Kind) -> None:
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    client = UpstreamClient("http://127.0.0.1/v1", transport=kind())
    async with _serve(truncated) as port:
        try:
            async with client.stream(
                "GET", f"http://127.0.0.1:{port}/v1/models", [], b""
            ) as response:
                assert response.status == 200
                received = b""
                with pytest.raises(UpstreamUnreachable):
                    async for chunk in client.iter_raw(response):
                        received += chunk
                assert received == b"partial"
        finally:
            await client.aclose()


async def test_verbatim_url_and_no_invented_headers(kind: Kind) -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(b"HTTP/1.1 204 No Content\r\nset-cookie: a=b\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    client = UpstreamClient("http://127.0.0.1/v1", transport=kind())
    async with _serve(record) as port:
        try:
            for _ in range(2):
                url = f"http://127.0.0.1:{port}/v1/files/a%2Fb?x=%26&y=1"
                async with client.stream("GET", url, [(b"x-custom", b"1")], b"") as response:
                    assert response.status == 204
        finally:
            await client.aclose()
    first, second = (head.decode("latin-1").lower() for head in seen)
    assert first.startswith("get /v1/files/a%2fb?x=%26&y=1 http/1.1")
    assert "user-agent" not in first and "x-custom: 1" in first
    assert "cookie" not in second  # no cookie jar: nothing replayed across requests/tenants


async def test_keep_alive_reuse_chunked_and_stale_retry(kind: Kind) -> None:
    connections = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        served = 0
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            served += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            await writer.drain()
            if served == 2:  # then close while idle: the client must retry on a new one
                writer.close()
                return

    client = UpstreamClient("http://127.0.0.1/v1", transport=kind())
    async with _serve(keep_alive) as port:
        try:
            for _ in range(3):
                url = f"http://127.0.0.1:{port}/v1/models"
                async with client.stream("POST", url, [], b"{}") as response:
                    assert b"".join([c async for c in client.iter_raw(response)]) == b"hello world"
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
    assert connections == 2


async def test_wire_head_and_cancelled_body_closes_connection() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
            await writer.drain()
            await reader.read()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\n\n")
        await writer.drain()
        await reader.read()  # returns when the client closes
        closed.set()

    client = UpstreamClient("http://127.0.0.1/v1", transport=WireUpstream())
    async with _serve(handler) as port:
        try:
            async with client.stream("HEAD", f"http://127.0.0.1:{port}/v1/x", [], b"") as response:
                assert response.status == 200
                assert [c async for c in client.iter_raw(response)] == []
            async with client.stream("GET", f"http://127.0.0.1:{port}/v1/x", [], b"") as response:
                async for chunk in client.iter_raw(response):
                    assert chunk == b"data: 1\n\n"
                    break
            await asyncio.wait_for(closed.wait(), 5)
        finally:
            await client.aclose()


async def test_body_delimited_by_close(kind: Kind) -> None:
    async def old_style(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nall of it"
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    client = UpstreamClient("http://127.0.0.1/v1", transport=kind())
    async with _serve(old_style) as port:
        try:
            async with client.stream("GET", f"http://127.0.0.1:{port}/v1/x", [], b"") as response:
                assert b"".join([c async for c in client.iter_raw(response)]) == b"all of it"
        finally:
            await client.aclose()


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://api.openai.com/v1", {}, None),
        ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://egress:3128"}, "http://egress:3128"),
        ("https://api.openai.com/v1", {"https_proxy": "egress:3128"}, "http://egress:3128"),
        ("https://api.openai.com/v1", {"HTTP_PROXY": "http://egress:3128"}, None),
        ("http://10.0.0.5:8000/v1", {"HTTP_PROXY": "http://egress:3128"}, "http://egress:3128"),
        (
            "https://api.openai.com/v1",
            {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": "localhost,.openai.com"},
            None,
        ),
        (
            "https://api.openai.com/v1",
            {"HTTPS_PROXY": "http://egress:3128", "no_proxy": "openai.com:443"},
            None,
        ),
        (
            "https://notopenai.com/v1",
            {"HTTPS_PROXY": "http://egress:3128", "NO_PROXY": "openai.com"},
            "http://egress:3128",
        ),
        ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://e:1", "NO_PROXY": "*"}, None),
        ("http://127.0.0.1:9000/v1", {"HTTP_PROXY": "http://e:1"}, None),
        ("http://localhost:9000/v1", {"HTTP_PROXY": "http://e:1"}, None),
    ],
)
def test_egress_proxy_from_environment(
    url: str, env: dict[str, str], expected: str | None
) -> None:
    assert egress_proxy_for(url, env) == expected


async def test_requests_go_through_the_egress_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real socket acting as a forward proxy: it must see the absolute-form request line.
    seen: list[bytes] = []

    async def forward_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async with _serve(forward_proxy) as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        client = UpstreamClient.from_settings(Settings(upstream_url="http://upstream.invalid/v1"))
        try:
            url = "http://upstream.invalid/v1/models"
            async with client.stream("GET", url, [], b"") as response:
                assert response.status == 200
        finally:
            await client.aclose()
    assert seen[0].lower().startswith(b"get http://upstream.invalid/v1/models http/1.1")
