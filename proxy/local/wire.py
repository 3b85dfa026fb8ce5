"""Validating a chat completion request for the local upstream.

Only the fields the local model acts on are read; everything else a client may
send (``tools``, ``response_format``, ``logprobs``, ``user`` …) is accepted and
ignored, as a provider ignores options a model does not support. Malformed
values are rejected with the parameter named, in OpenAI's wording where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.local.model import ChatMessage, GenerationParams

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_TOKENS_CAP",
    "BadRequestError",
    "ChatRequest",
    "parse_chat_request",
]

DEFAULT_MAX_TOKENS = 256
# A small CPU model gains nothing from longer answers; cap them instead of failing.
MAX_TOKENS_CAP = 2048
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}
_TEXT_PART_KEYS = {"text": "text", "refusal": "refusal"}


class BadRequestError(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    params: GenerationParams
    stream: bool
    include_usage: bool


def parse_chat_request(body: Any, *, default_temperature: float = 1.0) -> ChatRequest:
    """Check a decoded request body; raises ``BadRequestError`` naming the bad parameter."""
    if not isinstance(body, dict):
        raise BadRequestError("The request body must be a JSON object.")
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise BadRequestError("The local model supports only n=1.", param="n")
    stream = _optional(body, "stream", bool, False)
    options = _optional(body, "stream_options", dict, {})
    params = GenerationParams(
        max_tokens=_max_tokens(body),
        temperature=_number(body, "temperature", 0.0, 2.0, default_temperature),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0),
        seed=_seed(body),
        stop=_stop(body.get("stop")),
    )
    include_usage = bool(options.get("include_usage")) if stream else False
    return ChatRequest(_messages(body.get("messages")), params, stream, include_usage)


def _messages(raw: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(raw, list) or not raw:
        raise BadRequestError("'messages' must be a non-empty array.", param="messages")
    messages = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequestError(f"'{where}' must be an object.", param=where)
        role = message.get("role")
        if role not in _ROLES:
            raise BadRequestError(
                f"Invalid value for '{where}.role': {role!r}.", param=f"{where}.role"
            )
        messages.append(ChatMessage(_ROLES[role], _content(message.get("content"), where)))
    return tuple(messages)


def _content(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise BadRequestError(
            f"'{where}.content' must be a string or an array of parts.", param=f"{where}.content"
        )
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = _TEXT_PART_KEYS.get(kind) if isinstance(kind, str) else None
        if key is None or not isinstance(part.get(key), str):
            raise BadRequestError(
                f"The local model accepts text only; '{where}.content[{j}]' "
                f"is {kind or 'invalid'}.",
                param=f"{where}.content[{j}]",
                code="unsupported_content",
            )
        texts.append(part[key])
    return "\n".join(texts)


def _max_tokens(body: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise BadRequestError(f"'{name}' must be a positive integer.", param=name)
        return int(min(value, MAX_TOKENS_CAP))
    return DEFAULT_MAX_TOKENS


def _number(body: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequestError(
            f"'{name}' must be a number between {low:g} and {high:g}.", param=name
        )
    return float(value)


def _seed(body: dict[str, Any]) -> int | None:
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise BadRequestError("'seed' must be an integer.", param="seed")
    # torch seeds are unsigned 64-bit; fold any integer into that range.
    return None if seed is None else int(seed) % (1 << 64)


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise BadRequestError("'stop' must be a string or an array of at most 4 strings.", param="stop")


def _optional(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise BadRequestError(f"Invalid type for '{name}': expected {kind.__name__}.", param=name)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
