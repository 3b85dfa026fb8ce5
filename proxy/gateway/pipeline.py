"""The `POST /v1/chat/completions` path, read top to bottom in `chat_completions()`:

    tenant -> read (size limit) -> parse (what we act on) -> COMPRESSION STEP -> forward -> relay

The compression step is a `ChatTransform`: it receives the client's exact bytes and the
parsed body and returns the bytes to forward plus headers to report. The default
`identity_transform` forwards the client's bytes untouched; the compressing transform is
plugged in through `Services.chat_transform` (see `proxy.services.open_services`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from proxy.compression.transform import ChatTransform, PipelineOutcome
from proxy.core.errors import InvalidParameter, ProxyError, error_response
from proxy.core.offload import off_loop
from proxy.gateway.intake import admit, forward_request, request_id_for, started_at
from proxy.gateway.jsonbody import load_json_object
from proxy.gateway.streaming import UpstreamRelay
from proxy.policy.model import Tenant

if TYPE_CHECKING:
    from proxy.gateway.state import Services

__all__ = ["chat_completions", "parse_chat_body", "parse_completion_body"]

_log = logging.getLogger("linguagate.pipeline")


def parse_chat_body(raw: bytes) -> dict[str, Any]:
    """Parse a chat request, validating only the fields the proxy acts on.

    `model` must be a string, `messages` a list of objects, `stream` a boolean (or null);
    every other field is left for the upstream to judge and is forwarded untouched.
    """
    body = load_json_object(raw)
    if "model" not in body:
        raise InvalidParameter(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if not isinstance(body["model"], str):
        raise InvalidParameter("'model' must be a string.", param="model", code="invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise InvalidParameter(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list):
        raise InvalidParameter(
            "'messages' must be an array.", param="messages", code="invalid_type"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidParameter(
                f"'messages[{index}]' must be an object.",
                param=f"messages[{index}]",
                code="invalid_type",
            )
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise InvalidParameter("'stream' must be a boolean.", param="stream", code="invalid_type")
    return body


def parse_completion_body(raw: bytes) -> dict[str, Any]:
    """Parse a legacy `/v1/completions` request: a JSON object with a string `model`.

    Only a plain string `prompt` is ever compressed; everything else is the upstream's to judge.
    """
    body = load_json_object(raw)
    if not isinstance(body.get("model"), str):
        raise InvalidParameter("'model' must be a string.", param="model", code="invalid_type")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise InvalidParameter("'stream' must be a boolean.", param="stream", code="invalid_type")
    return body


async def _compression_step(
    transform: ChatTransform,
    raw: bytes,
    body: dict[str, Any],
    tenant: Tenant,
    headers: Headers,
    request_id: str,
) -> PipelineOutcome:
    try:
        return await transform(raw, body, tenant, headers)
    except ProxyError:
        raise
    except Exception as exc:  # fail open: compression may only ever save tokens
        _log.error(
            "chat transform failed, forwarding unchanged: %s (request_id=%s)",
            type(exc).__name__,
            request_id,
        )
        return PipelineOutcome(raw, {"x-linguagate-compression": "skipped: compressor_error"})


async def chat_completions(
    request: Request,
    services: Services,
    parse: Callable[[bytes], dict[str, Any]] = parse_chat_body,
) -> Response | UpstreamRelay:
    """Handle one (chat) completion request; every failure becomes an OpenAI-shaped error.

    `parse` is `parse_completion_body` for the legacy `/v1/completions` route, which goes
    through the same compression step.
    """
    started = started_at(request)
    request_id = request_id_for(request)
    snapshot = services.policies.current
    try:
        tenant, raw = await admit(request, snapshot, services.settings.max_body_bytes)
        body = await off_loop(len(raw), lambda: parse(raw))
        outcome = await _compression_step(
            services.chat_transform, raw, body, tenant, request.headers, request_id
        )
    except ProxyError as exc:
        return error_response(exc, request_id)
    own_headers = [(b"x-linguagate-tenant", tenant.name.encode())]
    own_headers += [(k.lower().encode(), v.encode()) for k, v in outcome.headers.items()]
    forward = forward_request(
        request,
        services.upstream,
        content=outcome.body,
        request_id=request_id,
        response_headers=own_headers,
        streaming=body.get("stream") is True,
        started=started,
        snapshot=snapshot,
        usage=outcome.usage,
    )
    return UpstreamRelay(services.upstream, forward, ledger=services.ledger)
