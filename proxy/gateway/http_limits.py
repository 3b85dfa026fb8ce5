"""HTTP/1.1 server limits that uvicorn leaves open, enforced where requests are parsed.

uvicorn's httptools protocol puts no bound on a request's header size or count, no
deadline on a client that never finishes its headers or body, and answers malformed HTTP
in plain text. `LimitedHttpToolsProtocol` is that protocol with:

| limit                       | answer                  | default             |
|-----------------------------|-------------------------|---------------------|
| request line + headers size | 431 `headers_too_large` | 64 KiB              |
| number of headers           | 431 `headers_too_large` | 100                 |
| headers not complete within | 408 `request_timeout`   | 10 s from 1st byte  |
| body silent for             | 408 `request_timeout`   | 30 s between bytes  |
| requests in flight (worker) | 503 `server_busy`       | 1024, retry-after 1 |
| malformed HTTP              | 400 `invalid_http`      |                     |

Every answer is the OpenAI error envelope and closes the connection (the rest of the
request is never parsed: it is drained for at most 2 s, then the connection is closed).
A connection that sends nothing is closed by the header deadline; between requests
uvicorn's keep-alive timeout (5 s) applies.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.core.settings import Settings

__all__ = ["HttpLimits", "LimitedHttpToolsProtocol", "limited_protocol"]

_log = logging.getLogger("linguagate.http")
_LINGER_S = 2.0
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_concurrency: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_concurrency=settings.max_concurrency,
        )


def limited_protocol(limits: HttpLimits) -> functools.partial[LimitedHttpToolsProtocol]:
    """What to pass as uvicorn's `http=`: the protocol class bound to `limits` (picklable,
    so `--workers N` can hand it to each worker process)."""
    return functools.partial(LimitedHttpToolsProtocol, limits=limits)


def _error_response(status: int, message: str, code: str, retry_after: bool = False) -> bytes:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error" if status < 500
                   else "server_error", "param": None, "code": code}}
    ).encode()
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        b"x-should-retry: " + (b"true" if retry_after else b"false"),
    ]
    if retry_after:
        head.append(b"retry-after: 1")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits in the module docstring."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HttpLimits = HttpLimits(),
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits
        self._timer: asyncio.TimerHandle | None = None
        self._phase = "idle"  # idle -> headers -> body -> idle (response is the app's)
        self._fed = 0  # bytes received since the headers began
        self._header_bytes = 0
        self._header_count = 0
        self._rejected = False
        self._deferred: bytes | None = None  # a refusal waiting for an earlier answer

    # connection -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._begin_headers()  # a connection that never sends a request is not kept

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        if self._phase == "idle":
            self._begin_headers()
        in_headers = self._phase == "headers"
        super().data_received(data)
        if in_headers and self._phase == "headers" and not self._rejected:
            self._fed += len(data)
            if self._fed > self._limits.max_header_bytes:
                self._too_large()

    def send_400_response(self, msg: str) -> None:
        self._reject(400, "The request is not valid HTTP/1.1.", "invalid_http")

    # parser callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase == "idle":  # pipelined: this request began in the last one's packet
            self._begin_headers()
        self._header_bytes = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._rejected:
            return
        super().on_header(name, value)
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        if self._rejected:
            return
        self._cancel_timer()
        limits = self._limits
        if self._header_count > limits.max_headers or self._header_bytes > limits.max_header_bytes:
            self._too_large()
            return
        if len(self.tasks) >= limits.max_concurrency:
            _log.warning("concurrency limit (%d requests) reached: 503", limits.max_concurrency)
            self._reject(503, "The proxy is at its concurrency limit; retry shortly.",
                         "server_busy", retry_after=True)
            return
        self._phase = "body"
        super().on_headers_complete()
        self._arm(limits.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        if self._rejected:
            return
        super().on_body(body)
        self._arm(self._limits.body_timeout_s)

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        self._cancel_timer()
        self._phase = "idle"
        super().on_message_complete()

    # limits -----------------------------------------------------------------------------
    def _begin_headers(self) -> None:
        self._phase = "headers"
        self._fed = self._header_bytes = self._header_count = 0
        self._arm(self._limits.header_timeout_s)

    def _too_large(self) -> None:
        limits = self._limits
        self._reject(431, f"The request headers exceed the proxy's limits "
                     f"({limits.max_header_bytes} bytes, {limits.max_headers} headers).",
                     "headers_too_large")

    def _arm(self, delay_s: float) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay_s, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._phase == "body" and self.flow is not None and self.flow.read_paused:
            # Reading is paused because the app has not taken the body yet: not the client.
            self._arm(self._limits.body_timeout_s)
            return
        if self._phase == "idle" or self.transport.is_closing():
            return
        what = "headers" if self._phase == "headers" else "body"
        timeout = (self._limits.header_timeout_s if what == "headers"
                   else self._limits.body_timeout_s)
        self._reject(408, f"The request {what} did not arrive within {timeout:g} s.",
                     "request_timeout")

    def _reject(self, status: int, message: str, code: str, retry_after: bool = False) -> None:
        """Answer with the OpenAI envelope (unless a response began), then close.

        A request refused before its headers were accepted may follow one whose answer is
        still being sent (pipelining): that answer goes out first.
        """
        self._rejected = True
        self._cancel_timer()
        answer = _error_response(status, message, code, retry_after)
        cycle = self.cycle
        earlier = self._phase == "headers" and cycle is not None and not cycle.response_complete
        if earlier:
            self._deferred = answer
            self.flow.pause_reading()
            return
        started = cycle is not None and cycle.response_started and not cycle.response_complete
        self._close_with(b"" if started else answer)
        if cycle is not None and not cycle.response_complete:
            # The app, if it is still reading the body, sees the client as gone.
            cycle.disconnected = True
            cycle.message_event.set()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deferred is not None:
            answer, self._deferred = self._deferred, None
            self._close_with(answer)

    def _close_with(self, answer: bytes) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if answer:
            transport.write(answer)
        if transport.can_write_eof():
            # Lingering close: what the client is still sending is read and dropped for a
            # moment; closing with unread bytes would reset the connection, and the client
            # would see that instead of the answer.
            transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(_LINGER_S, transport.close)
        else:
            transport.close()
