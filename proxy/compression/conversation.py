"""One request seen as a conversation: its messages, their token counts, and the provider
cache's view of them (what the direct and the forwarded prompt would get from it).

Pure helpers for the compression step; the keys it is stored under come from
`prefix.PrefixForms` and `provider_cache.PromptCacheModel`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.compression.messages import ChatComponents, Path
from proxy.compression.prefix import Chain, message_chain, message_index, slot_tag
from proxy.compression.provider_cache import FRAMING_TOKENS, Boundary
from proxy.core.tokens import count_tokens

__all__ = ["Conversation"]

# Fields of a message that are not compressible text but still reach the model's prompt.
_PAYLOAD_FIELDS = ("tool_calls", "function_call", "name", "tool_call_id")


@dataclass(frozen=True)
class Conversation:
    """The messages of one request (a ``/v1/completions`` prompt is one message)."""

    messages: tuple[Any, ...]
    chat: bool
    chain: Chain  # prefix-form chain hashes (tenant-scoped by the store's key names)
    cache_seed: str  # model and tools: what else a provider's cached prefix depends on

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Conversation:
        messages = body.get("messages")
        chat = isinstance(messages, list)
        items: tuple[Any, ...] = (tuple(messages) if isinstance(messages, list)
                                  else (body.get("prompt"),))
        seed = json.dumps([body.get("model"), body.get("tools"), body.get("functions")],
                          sort_keys=True, ensure_ascii=False)
        return cls(items, chat, message_chain(items, ""), seed)

    def message_tokens(self, components: ChatComponents,
                       replacements: Mapping[Path, str] | None = None,
                       memo: dict[str, int] | None = None) -> list[int]:
        """Prompt tokens per message: framing, text (as forwarded with ``replacements``) and
        the non-text payload (tool calls, names) that the model also reads. ``memo`` keeps
        counts across calls for one request (the original, frozen and forwarded prompts
        share most of their texts)."""
        model = components.model
        edits = replacements or {}
        seen = memo if memo is not None else {}
        counts = [FRAMING_TOKENS] * len(self.messages)
        for path, text in components.texts.items():
            index = message_index(path)
            if index < len(counts):
                sent = edits.get(path, text)
                if sent not in seen:
                    seen[sent] = count_tokens(sent, model)
                counts[index] += seen[sent]
        if self.chat:
            for index, message in enumerate(self.messages):
                if isinstance(message, dict):
                    payload = [message[f] for f in _PAYLOAD_FIELDS if message.get(f)]
                    if payload:
                        counts[index] += count_tokens(json.dumps(payload), model)
        return counts

    def forwarded(self, replacements: Mapping[Path, str]) -> tuple[Any, ...]:
        """The messages as forwarded: a copy with ``replacements`` applied."""
        if not replacements:
            return self.messages
        out = list(self.messages)
        touched: set[int] = set()
        for path, text in replacements.items():
            index = message_index(path)
            suffix = path[2:] if self.chat else ()
            if index not in touched:
                out[index] = copy.deepcopy(out[index])
                touched.add(index)
            if not suffix:
                out[index] = text
                continue
            node = out[index]
            for step in suffix[:-1]:
                node = node[step]
            node[suffix[-1]] = text
        return tuple(out)

    def boundaries(self, messages: Sequence[Any], tokens: Sequence[int]) -> list[Boundary]:
        """Message boundaries of a prompt for the provider-cache model."""
        chain = message_chain(messages, self.cache_seed)
        # The forms' chain of the same messages names the slots: marks and forms together.
        forms = self.chain if messages is self.messages else message_chain(messages[:2], "")
        out: list[Boundary] = []
        total = 0
        for index, (chain_hash, count) in enumerate(zip(chain.hashes, tokens, strict=True)):
            total += count
            out.append(Boundary(chain_hash, total, slot_tag(forms, index)))
        return out
