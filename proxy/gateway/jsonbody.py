"""Request bodies as JSON objects, with a documented nesting limit.

`json.loads` recurses once per nesting level and raises `RecursionError` near the
interpreter's recursion limit (~1,000 levels): a client could turn that into a 500. No
OpenAI request needs more than a few dozen levels (a tool's JSON schema is the deepest),
so bodies nested deeper than `MAX_JSON_DEPTH` are rejected with a 400 naming the
top-level field that holds the nesting.
"""

from __future__ import annotations

import json
import re
from typing import Any

from proxy.core.errors import InvalidParameter, MalformedJSON

__all__ = ["MAX_JSON_DEPTH", "load_json_object"]

MAX_JSON_DEPTH = 128
_KEY = re.compile(r'\s*"((?:[^"\\]|\\.)*)"\s*:\s*', re.DOTALL)
_COMMA = re.compile(r"\s*,")
_DECODER = json.JSONDecoder()


def load_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a dict; `MalformedJSON` or `InvalidParameter` (too deep) otherwise."""
    try:
        # Decoding first skips json's encoding sniffing: request bodies are UTF-8 (RFC 8259).
        text = raw.decode()
        body = json.loads(text)
    except RecursionError:
        raise _too_deep(_deep_key(text)) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedJSON(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedJSON("The request body must be a JSON object.")
    # Cheap guard first: nesting N levels deep needs N brackets.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        for key, value in body.items():
            if _depth_exceeds(value, MAX_JSON_DEPTH - 1):
                raise _too_deep(key)
    return body


def _too_deep(param: str | None) -> InvalidParameter:
    return InvalidParameter(
        f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.",
        param=param,
        code="json_too_deep",
    )


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests containers more than `limit` levels (iterative: no recursion)."""
    if not isinstance(value, (dict, list)):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _deep_key(text: str) -> str | None:
    """The top-level key whose value is nested too deeply for `json.loads` (None if unknown)."""
    index = text.find("{")
    while index >= 0:
        match = _KEY.match(text, index + 1)
        if match is None:
            return None
        try:
            key = json.loads(f'"{match.group(1)}"')
        except ValueError:
            return None
        try:
            _, end = _DECODER.raw_decode(text, match.end())
        except RecursionError:
            return str(key)
        except ValueError:
            return None
        comma = _COMMA.match(text, end)
        index = comma.end() - 1 if comma else -1
    return None
