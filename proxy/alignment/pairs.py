"""The pair format: one JSON object per line, ``{"messages": [...], "response": "..."}``.

``messages`` are chat messages as sent upstream (``role`` plus ``content``: a string or a
list of content parts, of which the text parts count); ``response`` is the target LLM's
answer. Other keys (``model``, ``tenant``, ``time``, ``compressed``) are metadata and are
ignored here. Capture writes exactly this format, so captured files feed ``linguagate align``.

Reading is strict: every bad line is reported as ``file:line: problem``, never skipped
silently, because a training run on half the data looks just like a good one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Pair",
    "PairsError",
    "data_sha256",
    "heldout_score",
    "message_text",
    "read_pairs",
    "split_holdout",
]

_MAX_PROBLEMS = 20


class PairsError(ValueError):
    """The pair files are missing or invalid; ``problems`` lists each located problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid pair data:\n" + "\n".join(self.problems))


@dataclass(frozen=True)
class Pair:
    """One (prompt messages, target answer) example."""

    messages: tuple[tuple[str, str], ...]  # (role, text)
    response: str
    source: str = ""  # "file:line", for messages only

    def as_chat(self) -> list[dict[str, str]]:
        """The messages as chat-template input (``[{"role", "content"}, ...]``)."""
        return [{"role": role, "content": text} for role, text in self.messages]

    def canonical(self) -> str:
        return json.dumps([self.messages, self.response], ensure_ascii=False)


def message_text(content: Any) -> str | None:
    """The text of a message's ``content``: a string, or a list's text parts (None: invalid)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                return None
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    return None


def _parse(obj: Any) -> tuple[Pair | None, str | None]:
    if not isinstance(obj, dict):
        return None, "must be a JSON object"
    messages, response = obj.get("messages"), obj.get("response")
    if not isinstance(messages, list) or not messages:
        return None, '"messages" must be a non-empty array'
    if not isinstance(response, str) or not response.strip():
        return None, '"response" must be a non-empty string'
    out: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return None, f'"messages[{index}]" must be an object with a string "role"'
        text = message_text(message.get("content"))
        if text is None:
            return None, f'"messages[{index}].content" must be a string or an array of parts'
        out.append((message["role"], text))
    if not any(text.strip() for _, text in out):
        return None, '"messages" contain no text'
    return Pair(tuple(out), response), None


def read_pairs(paths: Iterable[Path]) -> list[Pair]:
    """Every pair of every file, in order; raise :class:`PairsError` on any problem."""
    pairs: list[Pair] = []
    problems: list[str] = []
    names = list(paths)
    if not names:
        raise PairsError(["no data file given (--data FILE)"])
    for path in names:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        found = 0
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                problems.append(f"{path}:{number}: not a JSON line ({type(exc).__name__})")
                continue
            pair, problem = _parse(obj)
            if pair is None:
                problems.append(f"{path}:{number}: {problem}")
                continue
            pairs.append(Pair(pair.messages, pair.response, f"{path}:{number}"))
            found += 1
        if found == 0 and not any(p.startswith(f"{path}:") for p in problems):
            problems.append(f"{path}: no pairs in the file")
        if len(problems) >= _MAX_PROBLEMS:
            break
    if problems:
        raise PairsError(problems[:_MAX_PROBLEMS])
    return pairs


def data_sha256(paths: Iterable[Path]) -> str:
    """SHA-256 over the bytes of every data file, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        data = Path(path).read_bytes()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def heldout_score(pair: Pair, seed: int) -> float:
    """A number in [0, 1) fixed by the pair's content and the seed (not its position)."""
    digest = hashlib.sha256(f"{seed}\0{pair.canonical()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_holdout(
    pairs: Sequence[Pair], fraction: float, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): a pair is held out when its seeded hash falls below ``fraction``.

    Hashing the content keeps a pair on the same side when files are reordered or grow.
    """
    train: list[Pair] = []
    held: list[Pair] = []
    scores = [heldout_score(pair, seed) for pair in pairs]
    for pair, score in zip(pairs, scores, strict=True):
        (held if score < fraction else train).append(pair)
    if fraction > 0 and not held and len(pairs) > 1:
        # Small data: still hold one pair out (the lowest score), so before/after is measured.
        index = min(range(len(pairs)), key=scores.__getitem__)
        held = [pairs[index]]
        train = [p for i, p in enumerate(pairs) if i != index]
    return train, held
