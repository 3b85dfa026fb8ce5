"""Prefix stability: a message is compressed once, when it first appears, and then stays frozen.

Chat apps and agents resend their whole history every turn, and providers bill a prompt
prefix they have seen at 10–50% of the input price. A compressor that rewrote earlier
turns differently on every turn would throw that discount away. So within a tenant:

* every message gets a **chain hash**: SHA-256 over the tenant and the canonical JSON of
  every message up to and including it. Two requests share a chain hash at message ``i``
  exactly when their first ``i + 1`` messages are identical (an earlier turn of the same
  conversation, a retry, a shared system prompt);
* what the proxy forwarded for a message (its **form**: the replaced text strings, or
  nothing when it went as it was) is stored under that chain hash, once, the first time
  the message is forwarded, whatever the outcome (compressed, kept whole, too short,
  skipped on a deadline);
* a later request reuses the stored forms of its longest stored leading run of messages,
  byte for byte, and compresses only the messages after it.

A conversation that forks (two different turn 3s) shares the forms of its common turns; an
edited earlier message changes every chain hash from that message on, so the conversation
starts a new prefix there. Forms live in the compression cache (Redis when configured, so
replicas and restarts agree; the in-process LRU otherwise), with its TTL, under
``lg:v1:<tenant digest>:pfx:{<slot tag>}:<chain hash>`` (``pfxs`` for shadow mode, whose forms
were never sent and must not mix with real ones; ``slot_tag``: two cluster slots per
conversation). Key names hold digests only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.compression.messages import Path
from proxy.store.redis import tenant_namespace

__all__ = ["Chain", "PrefixForms", "message_chain", "message_index", "slot_tag"]

_log = logging.getLogger("linguagate.prefix")
_FORM_VERSION = 1
_SEED = b"linguagate-chain-v1\x00"


def _canonical(value: Any) -> bytes:
    # surrogatepass: a lone surrogate is valid JSON (\ud800) and must still hash.
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Chain:
    """Chain hashes (hex) of one request's messages, in order."""

    hashes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.hashes)


def message_chain(messages: Sequence[Any], seed: str) -> Chain:
    """Chain hashes of ``messages``: message ``i``'s depends on ``seed`` and messages 0..i."""
    digest = hashlib.sha256(_SEED + seed.encode("utf-8", "surrogatepass")).digest()
    out: list[str] = []
    for message in messages:
        digest = hashlib.sha256(digest + _canonical(message)).digest()
        out.append(digest.hex())
    return Chain(tuple(out))


def slot_tag(chain: Chain, index: int) -> str:
    """The Redis Cluster hash tag of message ``index``'s keys: the chain hash of messages
    ``0..min(index, 1)``.

    One conversation's keys then fall in two slots (its first message's, shared by every
    conversation with that system prompt, and its own from the second message on), so a
    request's MGET is two commands on a cluster instead of one per message. The tag depends
    only on messages ``0..index``, like the key itself: every request that reaches a key
    computes the same name. Tagging the first message's key by the conversation instead
    would split a shared system prompt's form per conversation.
    """
    return "{" + chain.hashes[min(index, 1)][:16] + "}"


def message_index(path: Path) -> int:
    """The message a text path belongs to (a ``/v1/completions`` prompt is message 0)."""
    if len(path) >= 2 and path[0] == "messages" and isinstance(path[1], int):
        return path[1]
    return 0


def _split_path(path: Path) -> tuple[int, list[str | int]]:
    if len(path) >= 2 and path[0] == "messages" and isinstance(path[1], int):
        return path[1], list(path[2:])
    return 0, list(path)


def _join_path(index: int, suffix: Sequence[str | int], chat: bool) -> Path:
    return ("messages", index, *suffix) if chat else tuple(suffix)


class PrefixForms:
    """Names and encodes the forwarded forms of one tenant's messages (see the module doc).

    No I/O of its own: the compression step reads these keys together with the provider-cache
    marks' in one round trip, and writes them with the marks in one pipeline."""

    def __init__(self, tenant: str, *, shadow: bool = False) -> None:
        self._prefix = f"{tenant_namespace(tenant)}:{'pfxs' if shadow else 'pfx'}:"

    def _key(self, chain: Chain, index: int) -> str:
        return f"{self._prefix}{slot_tag(chain, index)}:{chain.hashes[index]}"

    def keys(self, chain: Chain) -> list[str]:
        """One key per message of ``chain``: what ``read`` decodes and ``items`` writes."""
        return [self._key(chain, i) for i in range(len(chain))]

    @staticmethod
    def read(raw: Sequence[str | None], *, chat: bool) -> tuple[int, dict[Path, str]]:
        """``(k, replacements)`` from the values of ``keys(chain)``: the first ``k`` messages
        have stored forms, and ``replacements`` re-creates them (full new strings per path)."""
        replacements: dict[Path, str] = {}
        for index, value in enumerate(raw):
            form = _decode_form(value)
            if form is None:  # the frozen prefix ends at the first message never forwarded
                return index, replacements
            for suffix, text in form:
                replacements[_join_path(index, suffix, chat)] = text
        return len(raw), replacements

    def items(self, chain: Chain, start: int, forwarded: Mapping[Path, str]) -> dict[str, str]:
        """The entries that store the forms of messages ``start..`` as forwarded
        (``forwarded``: the request's replacements; a message without any went as it was)."""
        per_message: dict[int, list[list[Any]]] = {i: [] for i in range(start, len(chain))}
        for path, text in forwarded.items():
            index, suffix = _split_path(path)
            if index in per_message:
                per_message[index].append([suffix, text])
        return {
            self._key(chain, i): json.dumps({"v": _FORM_VERSION, "t": form},
                                                   ensure_ascii=False)
            for i, form in per_message.items()
        }


def _decode_form(raw: str | None) -> list[tuple[list[str | int], str]] | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        if data.get("v") != _FORM_VERSION:
            return None
        return [(list(suffix), str(text)) for suffix, text in data["t"]]
    except (ValueError, TypeError, KeyError, AttributeError):
        _log.warning("unreadable prefix form ignored")
        return None
