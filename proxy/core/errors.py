"""Errors the proxy itself raises, and their one translation into the OpenAI error envelope.

```
ProxyError
 ├── InvalidRequest                 400 invalid_request_error
 │    ├── MalformedJSON             400 (body is not a JSON object)
 │    └── InvalidParameter          400 (a field we act on has the wrong type; `param` names it)
 ├── PayloadTooLarge                413 invalid_request_error
 ├── AuthenticationFailed           401 invalid_api_key
 ├── PermissionDenied               403 (an operator surface asked for without an admin key)
 ├── NotFound                       404 (a path outside /v1/*)
 └── UpstreamError
      ├── UpstreamUnreachable       502 (connect failed, connection dropped, bad response)
      └── UpstreamTimeout           504 + retry-after
```

Errors that the upstream returns are never re-raised as these: they are relayed with the
upstream's own status, headers and body. `ERROR_TABLE` is the single place that maps a class
to status, error `type`, default `code` and extra headers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import MappingProxyType

from starlette.responses import Response

__all__ = [
    "ERROR_TABLE",
    "AuthenticationFailed",
    "ErrorSpec",
    "InvalidParameter",
    "InvalidRequest",
    "MalformedJSON",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "ProxyError",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "error_body",
    "error_headers",
    "error_response",
    "error_status",
    "sse_error_event",
]


class ProxyError(Exception):
    """Base of every error the proxy reports to clients in the OpenAI shape."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(message={self.message!r}, param={self.param!r}, code={self.code!r})"


class InvalidRequest(ProxyError):
    pass


class MalformedJSON(InvalidRequest):
    pass


class InvalidParameter(InvalidRequest):
    pass


class PayloadTooLarge(ProxyError):
    pass


class AuthenticationFailed(ProxyError):
    pass


class PermissionDenied(ProxyError):
    pass


class NotFound(ProxyError):
    pass


class UpstreamError(ProxyError):
    pass


class UpstreamUnreachable(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


@dataclass(frozen=True)
class ErrorSpec:
    status: int
    type: str
    code: str | None
    headers: tuple[tuple[str, str], ...] = ()


# Most specific class first: lookup walks the MRO, so subclasses may be omitted.
ERROR_TABLE: MappingProxyType[type[ProxyError], ErrorSpec] = MappingProxyType(
    {
        InvalidRequest: ErrorSpec(
            400, "invalid_request_error", None, (("x-should-retry", "false"),)
        ),
        PayloadTooLarge: ErrorSpec(
            413, "invalid_request_error", "request_too_large", (("x-should-retry", "false"),)
        ),
        AuthenticationFailed: ErrorSpec(
            401, "invalid_request_error", "invalid_api_key", (("x-should-retry", "false"),)
        ),
        PermissionDenied: ErrorSpec(
            403, "invalid_request_error", "permission_denied", (("x-should-retry", "false"),)
        ),
        NotFound: ErrorSpec(
            404, "invalid_request_error", "unknown_url", (("x-should-retry", "false"),)
        ),
        UpstreamUnreachable: ErrorSpec(502, "upstream_error", "upstream_unreachable"),
        UpstreamTimeout: ErrorSpec(
            504, "upstream_error", "upstream_timeout", (("retry-after", "1"),)
        ),
        ProxyError: ErrorSpec(500, "server_error", None),
    }
)


def _spec(exc: ProxyError) -> ErrorSpec:
    for cls in type(exc).__mro__:
        spec = ERROR_TABLE.get(cls)
        if spec is not None:
            return spec
    raise AssertionError("ProxyError is in the table")  # pragma: no cover


def error_status(exc: ProxyError) -> int:
    return _spec(exc).status


def error_headers(exc: ProxyError) -> tuple[tuple[str, str], ...]:
    return _spec(exc).headers


def error_body(exc: ProxyError) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}` as UTF-8 JSON bytes."""
    spec = _spec(exc)
    envelope = {
        "error": {
            "message": exc.message,
            "type": spec.type,
            "param": exc.param,
            "code": exc.code if exc.code is not None else spec.code,
        }
    }
    return json.dumps(envelope, ensure_ascii=False).encode()


def sse_error_event(exc: ProxyError) -> bytes:
    """The SSE event that reports a failure after a stream has started (the SDK raises APIError)."""
    return b"data: " + error_body(exc) + b"\n\n"


def error_response(exc: ProxyError, request_id: str) -> Response:
    """The HTTP response for `exc`, carrying `x-request-id`."""
    headers = dict(error_headers(exc))
    headers["x-request-id"] = request_id
    return Response(
        error_body(exc),
        status_code=error_status(exc),
        headers=headers,
        media_type="application/json",
    )
