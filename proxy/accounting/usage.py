"""Reading the upstream's own `usage` off a relayed answer, for the savings ledger.

Parse, never mutate: the relay hands this observer copies of what it already sent.
For event streams, only events that carry a `usage` object are parsed (the
`stream_options.include_usage` chunk); for plain JSON answers, the body is kept (up to a
bound) and parsed once at the end.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["UsageObserver"]

_MAX_JSON_BODY = 4 * 1024 * 1024
_USAGE_MARK = b'"usage":'
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*')


class UsageObserver:
    """Collects `prompt_tokens` / `completion_tokens` and the provider's cached prompt tokens
    (`prompt_tokens_details.cached_tokens`) from one upstream answer."""

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.cached_tokens: int | None = None
        self._body: list[bytes] = []
        self._size = 0

    def on_events(self, block: bytes) -> None:
        """A block of complete SSE events, as relayed."""
        if _USAGE_MARK not in block:
            return
        for line in block.splitlines():
            if line.startswith(b"data:") and _USAGE_MARK in line:
                self._take(_loads(line[5:]))

    def on_body(self, chunk: bytes) -> None:
        """A chunk of a plain (JSON) body, as relayed."""
        self._size += len(chunk)
        if self._size <= _MAX_JSON_BODY:
            self._body.append(chunk)

    def finish(self) -> None:
        if self._body and self._size <= _MAX_JSON_BODY:
            self._take({"usage": _usage_object(b"".join(self._body))})
        self._body.clear()

    def _take(self, payload: Any) -> None:
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
        if isinstance(completion, int):
            self.completion_tokens = completion
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if isinstance(cached, int) and not isinstance(cached, bool) and cached >= 0:
            self.cached_tokens = cached


def _usage_object(body: bytes) -> Any:
    """The value of the last top-level-looking `"usage":` key, parsed alone (a completion's
    choices can be long; only this small object is needed)."""
    matches = list(_USAGE_KEY.finditer(body))
    if not matches:
        return None
    try:
        text = body[matches[-1].end() :].decode()
        return json.JSONDecoder().raw_decode(text)[0]
    except ValueError:  # UnicodeDecodeError included
        return None


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
