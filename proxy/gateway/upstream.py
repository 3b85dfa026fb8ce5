"""The upstream OpenAI-compatible API, as the rest of the proxy sees it.

`UpstreamClient` owns one transport (by default `AiohttpUpstream`: one keep-alive pool per
worker; tests pass `httpx.MockTransport`, which is wrapped in `HttpxUpstream`) and turns every
transport failure into the proxy's own errors (`from exc`): timeouts become
`UpstreamTimeout` (504), everything else `UpstreamUnreachable` (502). Upstream HTTP error
statuses are *not* errors here: they are relayed as they are.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import httpx

from proxy.core.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from proxy.core.settings import Settings
from proxy.gateway.transport import (
    AiohttpUpstream,
    HttpxUpstream,
    RawHeaders,
    UpstreamResponse,
    UpstreamTransport,
)
from proxy.gateway.wire import WireUpstream

__all__ = [
    "RawHeaders",
    "UpstreamClient",
    "UpstreamResponse",
    "UpstreamStatus",
    "egress_proxy_for",
    "map_transport_error",
]

# What can escape a transport: httpx's tree, plus (defensively) raw aiohttp/OS errors.
_TRANSPORT_FAILURES = (httpx.TransportError, aiohttp.ClientError, OSError)
_LOOPBACK = frozenset({"localhost", "::1"})


@dataclass(frozen=True)
class UpstreamStatus:
    """Result of a readiness probe: whether any HTTP answer came back, and a short detail."""

    reachable: bool
    detail: str


def map_transport_error(exc: BaseException) -> UpstreamError:
    """The proxy error for a transport failure: 504 when it timed out, 502 otherwise."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) and exc.__cause__ else exc
    if isinstance(exc, httpx.TimeoutException) or isinstance(cause, TimeoutError):
        return UpstreamTimeout("The upstream API did not answer in time.")
    return UpstreamUnreachable(f"The upstream API could not be reached ({type(exc).__name__}).")


def egress_proxy_for(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """The egress proxy the standard environment variables name for ``url``, if any.

    ``HTTPS_PROXY`` / ``HTTP_PROXY`` (either case) by the URL's scheme, unless ``NO_PROXY``
    lists the host (a suffix match, ``*`` for all), the rules curl and requests follow;
    loopback upstreams always go direct.
    """
    env = os.environ if env is None else env
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host or host in _LOOPBACK or host.startswith("127."):
        return None  # a local upstream is never behind the egress proxy

    def get(name: str) -> str:
        return (env.get(name.lower()) or env.get(name.upper()) or "").strip()

    proxy = get(f"{parts.scheme}_proxy")
    if not proxy:
        return None
    for entry in get("no_proxy").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return None
        name = entry.lstrip(".").split(":")[0]
        if host == name or host.endswith("." + name):
            return None
    return proxy if "://" in proxy else "http://" + proxy


class UpstreamClient:
    """Sends requests to `base_url` (which ends in `/v1`) over one keep-alive connection pool."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        transport: UpstreamTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if isinstance(transport, httpx.AsyncBaseTransport):
            transport = HttpxUpstream(transport)
        self._transport: UpstreamTransport = transport or WireUpstream()
        self._authorization = f"Bearer {api_key}".encode() if api_key else None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: UpstreamTransport | httpx.AsyncBaseTransport | None = None,
    ) -> UpstreamClient:
        if isinstance(transport, httpx.AsyncBaseTransport):
            timeout = httpx.Timeout(
                settings.read_timeout_s, connect=settings.connect_timeout_s, pool=30.0
            )
            transport = HttpxUpstream(transport, timeout)
        if transport is None:
            proxy = egress_proxy_for(settings.upstream_url)
            if proxy is not None or settings.upstream_transport == "aiohttp":
                # The lean wire client speaks only direct HTTP/1.1; aiohttp tunnels through proxies.
                transport = AiohttpUpstream(
                    max_connections=settings.max_connections,
                    connect_timeout_s=settings.connect_timeout_s,
                    read_timeout_s=settings.read_timeout_s,
                    proxy=proxy,
                )
            else:
                transport = WireUpstream(
                    max_connections=settings.max_connections,
                    connect_timeout_s=settings.connect_timeout_s,
                    read_timeout_s=settings.read_timeout_s,
                )
        return cls(settings.upstream_url, api_key=settings.upstream_api_key, transport=transport)

    @property
    def org_authorization(self) -> bytes | None:
        """`Bearer <org key>` when an org-wide key is set; None in bring-your-own-key mode."""
        return self._authorization

    def url_for(self, path: str, query: bytes = b"") -> str:
        """Map a client path `/v1/<rest>` onto the upstream base URL, query string verbatim."""
        rest = path[3:] if path.startswith("/v1") else path
        url = self.base_url + rest
        return url + "?" + query.decode("latin-1") if query else url

    async def open(
        self, method: str, url: str, headers: RawHeaders, content: bytes
    ) -> UpstreamResponse:
        """Send a request; the response once its headers arrived. The caller must `close()` it
        (`stream()` does that for you)."""
        try:
            return await self._transport.send(method, url, headers, content)
        except _TRANSPORT_FAILURES as exc:
            raise map_transport_error(exc) from exc

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: RawHeaders, content: bytes
    ) -> AsyncIterator[UpstreamResponse]:
        """Send a request and yield the response once its headers arrived; body not read.

        The response (and its connection, if the body was not fully read) is closed on exit,
        including when the caller is cancelled because its client went away.
        """
        response = await self.open(method, url, headers, content)
        try:
            yield response
        finally:
            await response.close()

    async def iter_raw(self, response: UpstreamResponse) -> AsyncIterator[bytes]:
        """The body bytes exactly as they arrive (no decoding); failures become `UpstreamError`."""
        try:
            async for chunk in response.body:
                yield chunk
        except _TRANSPORT_FAILURES as exc:
            raise map_transport_error(exc) from exc

    async def probe(self, timeout_s: float = 2.0) -> UpstreamStatus:
        """GET `/models`: any HTTP answer (even 401) means the upstream is reachable."""
        headers = [(b"authorization", self._authorization)] if self._authorization else []
        try:
            async with asyncio.timeout(timeout_s):
                async with self.stream("GET", self.base_url + "/models", headers, b"") as response:
                    return UpstreamStatus(True, f"HTTP {response.status}")
        except (UpstreamError, TimeoutError) as exc:
            return UpstreamStatus(False, type(exc).__name__)

    async def aclose(self) -> None:
        await self._transport.aclose()
