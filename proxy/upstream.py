"""The one pooled HTTP client that talks to the upstream OpenAI-compatible API.

The httpx API is kept, but the hot path runs on the aiohttp transport (`httpx-aiohttp`, the
transport openai-python offers): httpx's default transport costs ~1.35 ms of CPU per relayed
request, which dominates a relay. Tests plug any `httpx.AsyncBaseTransport` in instead.

Lower-layer failures are re-raised as the proxy's own errors (`from exc`):
timeouts become `UpstreamTimeout` (504), everything else `UpstreamUnreachable` (502).
Upstream HTTP error statuses are *not* errors here: they are relayed as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from proxy.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from proxy.settings import Settings

__all__ = ["RawHeaders", "UpstreamClient", "UpstreamStatus", "map_transport_error"]

RawHeaders = Sequence[tuple[bytes, bytes]]

# What can escape a transport: httpx's tree, plus what httpx-aiohttp leaves unmapped
# (aiohttp.ClientResponseError for a garbled response, bare OSErrors).
_TRANSPORT_FAILURES = (httpx.TransportError, aiohttp.ClientError, OSError)


@dataclass(frozen=True)
class UpstreamStatus:
    """Result of a readiness probe: whether any HTTP answer came back, and a short detail."""

    reachable: bool
    detail: str


def map_transport_error(exc: BaseException) -> UpstreamError:
    """The proxy error for a transport failure: 504 when it timed out, 502 otherwise.

    httpx-aiohttp maps *every* `aiohttp.ClientConnectionError` (connection refused included)
    to `httpx.ConnectTimeout`, so the original aiohttp exception (`__cause__`) decides.
    """
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) and exc.__cause__ else exc
    if isinstance(cause, TimeoutError | httpx.TimeoutException):
        return UpstreamTimeout("The upstream API did not answer in time.", code="upstream_timeout")
    return UpstreamUnreachable(
        f"The upstream API could not be reached ({type(cause).__name__}).",
        code="upstream_unreachable",
    )


class UpstreamClient:
    """Sends requests to `base_url` (which ends in `/v1`) over one keep-alive connection pool."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | None = None,
        limits: httpx.Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        limits = limits or httpx.Limits(
            max_connections=512, max_keepalive_connections=512, keepalive_expiry=30.0
        )
        self._client = httpx.AsyncClient(
            transport=transport or AiohttpTransport(limits=limits),
            timeout=timeout or httpx.Timeout(600.0, connect=10.0, pool=30.0),
            follow_redirects=False,
            # Env proxies would mount httpx's slow default transport beside ours.
            trust_env=False,
        )
        self._authorization = f"Bearer {api_key}".encode() if api_key else None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> UpstreamClient:
        return cls(
            settings.upstream_url,
            api_key=settings.upstream_api_key,
            timeout=httpx.Timeout(
                settings.read_timeout_s, connect=settings.connect_timeout_s, pool=30.0
            ),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
                keepalive_expiry=30.0,
            ),
            transport=transport,
        )

    @property
    def org_authorization(self) -> bytes | None:
        """`Bearer <org key>` when an org-wide key is set; None in bring-your-own-key mode."""
        return self._authorization

    def url_for(self, path: str, query: bytes = b"") -> str:
        """Map a client path `/v1/<rest>` onto the upstream base URL, query string verbatim."""
        rest = path[3:] if path.startswith("/v1") else path
        url = self.base_url + rest
        return url + "?" + query.decode("latin-1") if query else url

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: RawHeaders, content: bytes
    ) -> AsyncIterator[httpx.Response]:
        """Send a request and yield the response once its headers arrived; body not read.

        The response (and its connection, if the body was not fully read) is closed on exit,
        including when the caller is cancelled because its client went away.
        """
        request = httpx.Request(method, url, headers=list(headers), content=content)
        try:
            response = await self._client.send(request, stream=True)
        except _TRANSPORT_FAILURES as exc:
            raise map_transport_error(exc) from exc
        try:
            yield response
        finally:
            await response.aclose()

    async def iter_raw(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The body bytes exactly as they arrive (no decoding); failures become `UpstreamError`."""
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except _TRANSPORT_FAILURES as exc:
            raise map_transport_error(exc) from exc

    async def probe(self, timeout_s: float = 2.0) -> UpstreamStatus:
        """GET `/models`: any HTTP answer (even 401) means the upstream is reachable."""
        headers = [(b"authorization", self._authorization)] if self._authorization else []
        try:
            async with asyncio.timeout(timeout_s):
                async with self.stream("GET", self.base_url + "/models", headers, b"") as response:
                    return UpstreamStatus(True, f"HTTP {response.status_code}")
        except (UpstreamError, TimeoutError) as exc:
            return UpstreamStatus(False, type(exc).__name__)

    async def aclose(self) -> None:
        await self._client.aclose()
