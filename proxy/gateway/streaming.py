"""Relaying the upstream answer to the client: byte-faithful, unbuffered, cancellable.

`UpstreamRelay` is the ASGI response every proxied route returns. It sends the prepared
request upstream, relays status, headers and body bytes as they arrive, and watches the
client connection meanwhile: when the client goes away (even while the upstream is still
thinking about a non-streaming answer) the work is cancelled and the upstream response is
closed at once, so no orphaned generation keeps billing the organisation.

Observers get copies of what was relayed, never the bytes themselves: the usage observer
(ledger) and, for sampled requests of tenants with `[alignment] capture = true`, the answer
collector of `proxy.alignment.capture`, whose pair is queued only once a 2xx answer was
relayed to its end.

Assumption (as in vLLM's `with_cancellation`): the request body has been read before the
relay runs, so the next `receive()` can only report a disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from starlette.types import Message, Receive, Scope, Send

from proxy.accounting.usage import UsageObserver
from proxy.core.errors import (
    UpstreamError,
    error_body,
    error_headers,
    error_status,
    sse_error_event,
)
from proxy.gateway.forwarding import ForwardRequest, response_headers_for_client
from proxy.gateway.upstream import RawHeaders, UpstreamClient

if TYPE_CHECKING:
    from proxy.accounting.ledger import Ledger
    from proxy.alignment.capture import PendingCapture

__all__ = ["UpstreamRelay", "sse_relay"]

_log = logging.getLogger("linguagate.relay")

# A partial event is held back until its boundary arrives; past this size it is flushed
# anyway so that a stream without boundaries cannot grow a buffer without bound.
_MAX_PENDING = 1 << 20


def _last_boundary(buf: bytes) -> int:
    """Offset just past the last complete SSE event in `buf` (0 when there is none)."""
    if buf.endswith(b"\n\n"):
        return len(buf)
    lf = buf.rfind(b"\n\n")
    crlf = buf.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


async def sse_relay(
    chunks: AsyncIterator[bytes], *, on_events: Callable[[bytes], None] | None = None
) -> AsyncIterator[bytes]:
    """Relay SSE bytes as they arrive, cut on event boundaries (bytes, not decoded text).

    Complete events go out immediately; only an incomplete trailing event (e.g. a UTF-8
    character split across reads) waits for the rest of its bytes. An upstream failure
    mid-stream drops that partial event and sends `data: {"error": ...}` instead, so the
    client always sees well-formed events. `on_events` observes each relayed block of
    complete events (for accounting) and must not modify anything.
    """
    pending = b""
    try:
        async for chunk in chunks:
            if pending:
                chunk = pending + chunk
                pending = b""
            cut = _last_boundary(chunk)
            if cut < len(chunk):
                if cut == 0 and len(chunk) < _MAX_PENDING:
                    pending = chunk
                    continue
                if cut > 0:
                    chunk, pending = chunk[:cut], chunk[cut:]
            if on_events is not None:
                on_events(chunk)
            yield chunk
        if pending:
            yield pending
    except UpstreamError as exc:
        _log.warning("upstream failed mid-stream: %s", type(exc).__name__)
        yield sse_error_event(exc)


async def _observed(
    chunks: AsyncIterator[bytes], observers: Sequence[Callable[[bytes], None]]
) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        for observe in observers:
            observe(chunk)
        yield chunk


def _fan_out(observers: Sequence[Callable[[bytes], None]]) -> Callable[[bytes], None] | None:
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]

    def observe(block: bytes) -> None:
        for fn in observers:
            fn(block)

    return observe


def _begin_capture(scope: Scope, request: ForwardRequest) -> PendingCapture | None:
    """A pending capture when the tenant opted in and this request is sampled (chat only).

    The writer lives on the app's `Services` (lifespan state); capture must never fail a
    request, so anything unexpected here only turns it off for this request.
    """
    usage = request.usage
    services = scope.get("state", {}).get("services")
    writer = getattr(services, "capture", None)
    if usage is None or writer is None or services is None:
        return None
    try:
        pending: PendingCapture | None = writer.begin(
            services.policies.current, usage.tenant, request.request_id, request.content,
            compressed=usage.outcome == "applied",
        )
    except Exception as exc:
        _log.warning("capture skipped: %s (request_id=%s)", type(exc).__name__, request.request_id)
        return None
    return pending


def _overhead_header(request: ForwardRequest, sent: float, received: float) -> tuple[bytes, bytes]:
    overhead = (sent - request.started) + (time.perf_counter() - received)
    return (b"x-linguagate-overhead-ms", f"{overhead * 1000:.3f}".encode())


class UpstreamRelay:
    """ASGI response that forwards one `ForwardRequest` and relays the upstream's answer."""

    def __init__(
        self, upstream: UpstreamClient, request: ForwardRequest, *, ledger: Ledger | None = None
    ) -> None:
        self._upstream = upstream
        self._request = request
        self._completing = False
        self._answered = False  # a 2xx answer relayed to its end
        self._event_stream = False
        self._ledger = ledger if request.usage is not None else None
        self._observer = UsageObserver() if self._ledger is not None else None
        self._capture: PendingCapture | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._capture = _begin_capture(scope, self._request)
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(self._cancel_on_disconnect(receive, task))
        try:
            await self._relay(send)
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled() or not watcher.result():
                raise
            task.uncancel()
            _log.info(
                "client disconnected; upstream request closed (request_id=%s)",
                self._request.request_id,
            )
        finally:
            watcher.cancel()
        await self._account()
        self._finish_capture()

    def _finish_capture(self) -> None:
        capture, self._capture = self._capture, None
        if capture is None or not self._answered:
            return
        try:
            capture.finish()
        except Exception as exc:  # capture never fails a request
            _log.warning("capture failed: %s (request_id=%s)", type(exc).__name__,
                         self._request.request_id)

    async def _account(self) -> None:
        """Hand the request's usage record (with the upstream's own counts) to the ledger."""
        usage, ledger, observer = self._request.usage, self._ledger, self._observer
        if usage is None or ledger is None or observer is None:
            return
        observer.finish()
        record = replace(
            usage,
            upstream_prompt_tokens=observer.prompt_tokens,
            upstream_completion_tokens=observer.completion_tokens,
            upstream_cached_tokens=observer.cached_tokens,
        )
        try:
            await ledger.record(record)
        except Exception as exc:  # accounting never fails a request
            _log.warning(
                "usage not recorded: %s (request_id=%s)",
                type(exc).__name__,
                self._request.request_id,
            )

    async def _cancel_on_disconnect(self, receive: Receive, task: asyncio.Task[object]) -> bool:
        message: Message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        # uvicorn also reports a disconnect once the response is complete: not a cancellation.
        if self._completing:
            return False
        task.cancel()
        return True

    async def _relay(self, send: Send) -> None:
        req = self._request
        upstream = self._upstream
        sent = time.perf_counter()
        try:
            response = await upstream.open(req.method, req.url, req.headers, req.content)
        except UpstreamError as exc:
            await self._send_error(send, exc)
            return
        try:
            await send(self._start_message(response.status, response.headers, sent))
            chunks = upstream.iter_raw(response)
            observer = self._observer
            capture = self._capture if response.status < 300 else None
            if self._event_stream:
                on_events = [o.on_events for o in (observer, capture and capture.collector) if o]
                body = sse_relay(chunks, on_events=_fan_out(on_events))
            else:
                body = chunks
                on_body = [o.on_body for o in (observer, capture and capture.collector) if o]
                if on_body and response.status < 300:
                    body = _observed(chunks, on_body)
            try:
                async for chunk in body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except UpstreamError as exc:
                # A plain body cut short cannot be repaired: end without completing the
                # response, which makes the server drop the connection (the client sees it).
                _log.warning(
                    "upstream failed mid-body: %s (request_id=%s)",
                    type(exc).__name__,
                    req.request_id,
                )
                return
        finally:
            await response.close()
        self._completing = True
        self._answered = response.status < 300
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _start_message(self, status: int, upstream_headers: RawHeaders, sent: float) -> Message:
        req = self._request
        received = time.perf_counter()
        found = response_headers_for_client(upstream_headers)
        self._event_stream = found.event_stream
        headers = found.headers
        headers.extend(req.response_headers)
        own_id = req.request_id.encode("latin-1")
        if not found.has_request_id:
            headers.append((b"x-request-id", own_id))
        headers.append((b"x-linguagate-request-id", own_id))
        if found.event_stream:
            headers.append((b"x-accel-buffering", b"no"))
        headers.append(_overhead_header(req, sent, received))
        return {"type": "http.response.start", "status": status, "headers": headers}

    async def _send_error(self, send: Send, exc: UpstreamError) -> None:
        _log.warning(
            "upstream request failed: %s (request_id=%s)",
            type(exc).__name__,
            self._request.request_id,
        )
        body = error_body(exc)
        headers = [(k.encode(), v.encode()) for k, v in error_headers(exc)]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", self._request.request_id.encode("latin-1")),
            *self._request.response_headers,
        ]
        await send({"type": "http.response.start", "status": error_status(exc), "headers": headers})
        self._completing = True
        await send({"type": "http.response.body", "body": body, "more_body": False})
