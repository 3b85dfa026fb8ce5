"""Map an OpenAI request body onto the compressor's components, and results back onto it.

Pure functions over the parsed body; nothing here changes bytes (``proxy.compression.rewrite``
splices the replacements that ``replacements_for`` returns into the raw body).

Rules (what becomes what)
-------------------------
Where the question, the context and the instruction stand inside one text is found by
``proxy.compression.layouts`` (labels such as ``Question:``/``Context:``, DSPy fields,
rules, tags, triple quotes, numbered passages, paragraphs); this module decides which
texts are looked at how, by the message's place relative to the question:

* The **final user turn** (the last ``user`` message): its last text part holds the
  **question** (wherever it stands in the text: after a label, before or after the
  context) and may hold context (**demonstrations**, one per document). Labels, rules,
  tags and output instructions around them are template: ``instruction`` items that are
  never compressible (reason ``template``), so they are forwarded verbatim.
* ``system`` / ``developer`` messages before it -> **instruction** (one item per text),
  except context they carry (documents after an instruction that announces them, or
  labelled/delimited context): demonstrations. After the final user turn, a system
  message carries what a framework retrieved for the question (AutoGen memory): context.
* ``user`` messages sent after the last assistant turn and before the final one (no
  answer between) are context for this question; ``tool`` / ``function`` results too.
  Both are cut into documents.
* Earlier ``user`` / ``assistant`` turns (few-shot examples, conversation) ->
  demonstrations, one per ``<document>`` block / ``---`` segment / ``Document [n]``
  header of each text, not ranked by the question.
* Documents and tool results are marked ``retrieved``: a policy's ``question_aware =
  "auto"`` ranks them by the question (``proxy.compression.plan``). Earlier
  user/assistant turns are not.
* A ``tool`` / ``function`` result that is a JSON list of document-like objects
  (``[{"title": ..., "content": ...}]``): each long prose string value (12 words or
  more, no escape sequences) is a document; keys, short values and the structure stay
  verbatim, so the result stays valid JSON. Other JSON results are not compressible
  (reason ``json_tool_result``) unless the policy allows it.
* Only text is touched: ``image_url``, ``input_audio``, ``file`` and ``refusal`` parts,
  ``tool_calls``, ids, ``name``, ``tools``, ``response_format``, ``stop``,
  ``prediction``... are never items.
* ``response_format: {"type": "json_object"}``: ``json_word_required`` is set and
  ``protect_regexes`` holds ``\\bJSON\\b`` (the API rejects requests without it).
* ``/v1/completions``: a string prompt is split like a final user turn. List prompts
  (several prompts, token ids) are not compressed: each list entry is a separate
  completion whose text the upstream may batch, and token-id prompts have no text.

Several instruction items are joined with a blank line for the compressor (the
method takes one instruction string). Its compressed form can only be split back
exactly when there is one item, so with several items a changed instruction is
not mapped back (originals kept); callers that compress per item (the per-component
cache path) map each item on its own with ``replacements_for``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from proxy.compression.layouts import (
    Layout,
    Span,
    SpanKind,
    context_layout,
    final_layout,
    json_documents,
    system_layout,
)
from proxy.core.tokens import count_tokens

__all__ = [
    "JSON_WORD_REGEX",
    "ChatComponents",
    "CompressorInputs",
    "Item",
    "Path",
    "body_text_tokens",
    "compressor_inputs",
    "replacements_for",
    "split_chat",
    "split_completion",
    "split_documents",
    "text_token_count",
]

Path = tuple[str | int, ...]
Kind = Literal["instruction", "demonstration", "question"]
# Where a message stands relative to the question (the last user message).
_Place = Literal["before", "unanswered", "final", "after"]
_SPAN_KINDS: dict[SpanKind, Kind] = {
    "instruction": "instruction",
    "context": "demonstration",
    "question": "question",
}
# The API checks for the word in any case ("json" passes), so protect every spelling.
JSON_WORD_REGEX = r"(?i)\bjson\b"
_INSTRUCTION_JOIN = "\n\n"

_DOC_TAG = re.compile(r"<document\b[^>]*>(.*?)</document\s*>", re.IGNORECASE | re.DOTALL)
_SEPARATOR = re.compile(r"^[ \t]*(?:-{3,}|={3,})[ \t]*$", re.MULTILINE)
_HEADER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?document[ \t]*(?:\[\d+\]|\d+)[ \t]*[:.)]?",
    re.IGNORECASE | re.MULTILINE,
)
_INSTRUCTION_ROLES = frozenset({"system", "developer"})
_TOOL_ROLES = frozenset({"tool", "function"})
_CONTEXT_ROLES = frozenset({"user", "assistant"}) | _TOOL_ROLES


@dataclass(frozen=True)
class Item:
    """One compressible unit: ``text == string_at(path)[start:end]``."""

    kind: Kind
    path: Path
    start: int
    end: int
    text: str
    role: str
    compressible: bool = True
    reason: str | None = None  # why not compressible
    # One of several documents or paragraphs of a text, or a tool/function result: context
    # given for this question rather than a separate worked-example turn
    # (question_aware = "auto" ranks these by the question).
    retrieved: bool = False


@dataclass(frozen=True)
class ChatComponents:
    """The items of one request, in body order, plus what the compressor must respect."""

    items: tuple[Item, ...]
    texts: Mapping[Path, str] = field(default_factory=dict)  # every text string seen, by path
    model: str | None = None
    json_word_required: bool = False
    rules: tuple[str, ...] = ()  # layout rules that fired (proxy.compression.layouts)

    def _of(self, kind: Kind) -> tuple[Item, ...]:
        return tuple(item for item in self.items if item.kind == kind)

    @property
    def instruction(self) -> tuple[Item, ...]:
        return self._of("instruction")

    @property
    def demonstrations(self) -> tuple[Item, ...]:
        return self._of("demonstration")

    @property
    def question(self) -> tuple[Item, ...]:
        return self._of("question")

    @property
    def compressible(self) -> tuple[Item, ...]:
        return tuple(item for item in self.items if item.compressible)

    def mapping(self) -> str:
        """How the request was mapped, for the ``x-linguagate-mapping`` header and
        ``compress --stats``: item counts per component and the layout rules that fired."""
        counts = (
            f"instruction={len(self.instruction)}; context={len(self.demonstrations)}; "
            f"question={len(self.question)}"
        )
        return f"{counts}; rules={','.join(self.rules) or 'none'}"

    @property
    def protect_regexes(self) -> tuple[str, ...]:
        """Regexes the compressor must keep verbatim for the request to stay valid."""
        return (JSON_WORD_REGEX,) if self.json_word_required else ()


@dataclass(frozen=True)
class _Segment:
    start: int
    end: int
    document: bool  # inside <document> tags
    split: bool = False  # cut into documents (tags, separators, headers) or paragraphs


def _trimmed(
    text: str, start: int, end: int, document: bool = False, split: bool = False
) -> _Segment | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return _Segment(start, end, document, split) if start < end else None


def _segments(text: str) -> list[_Segment]:
    bounds: list[tuple[int, int, bool]] = []
    tags = list(_DOC_TAG.finditer(text))
    if tags:
        pos = 0
        for m in tags:
            bounds += [(pos, m.start(), False), (m.start(1), m.end(1), True)]
            pos = m.end()
        bounds.append((pos, len(text), False))
    elif seps := list(_SEPARATOR.finditer(text)):
        starts = [0] + [m.end() for m in seps]
        ends = [m.start() for m in seps] + [len(text)]
        bounds = [(s, e, False) for s, e in zip(starts, ends, strict=True)]
    elif headers := list(_HEADER.finditer(text)):
        bounds = [(0, headers[0].start(), False)]
        for m, nxt in zip(headers, [*headers[1:], None], strict=True):
            bounds.append((m.end(), nxt.start() if nxt else len(text), False))
    else:
        bounds = [(0, len(text), False)]
    split = len(bounds) > 1
    return [s for b in bounds if (s := _trimmed(text, *b, split=split)) is not None]


def split_documents(text: str) -> list[tuple[int, int]]:
    """Character spans of the documents in ``text`` (the whole trimmed text when undelimited)."""
    return [(s.start, s.end) for s in _segments(text)]


def _is_json(text: str) -> bool:
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return False
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True


def _text_slots(content: Any, base: Path) -> Iterator[tuple[Path, str]]:
    """The text strings of one ``content`` value: the string itself or its ``text`` parts."""
    if isinstance(content, str):
        yield base, content
    elif isinstance(content, list):
        for i, part in enumerate(content):
            if (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                yield (*base, i, "text"), part["text"]


class _Builder:
    def __init__(self, compress_json_tool_results: bool) -> None:
        self.compress_json = compress_json_tool_results
        self.items: list[Item] = []
        self.texts: dict[Path, str] = {}
        self.rules: dict[str, None] = {}  # layout rules that fired, first seen first

    def add(self, kind: Kind, path: Path, text: str, seg: _Segment, role: str) -> None:
        protected = role in _TOOL_ROLES and not self.compress_json and _is_json(text)
        self.items.append(
            Item(
                kind,
                path,
                seg.start,
                seg.end,
                text[seg.start : seg.end],
                role,
                compressible=not protected,
                reason="json_tool_result" if protected else None,
                retrieved=seg.split or role in _TOOL_ROLES,
            )
        )

    def layout(self, path: Path, text: str, layout: Layout, role: str) -> None:
        """Items of a text analysed by ``proxy.compression.layouts``."""
        self.rules.update(dict.fromkeys(layout.rules))
        for span in layout.spans:
            kind: Kind = _SPAN_KINDS[span.kind]
            template = kind == "instruction" and role not in _INSTRUCTION_ROLES
            self.items.append(
                Item(
                    kind,
                    path,
                    span.start,
                    span.end,
                    text[span.start : span.end],
                    role,
                    # Labels, rules and output instructions around a user's or a tool's
                    # context are template text: forwarded verbatim.
                    compressible=not template,
                    reason="template" if template else None,
                    retrieved=span.retrieved and kind == "demonstration",
                )
            )

    def tool(self, path: Path, text: str, role: str) -> None:
        if _is_json(text):
            spans = json_documents(text)
            if spans:  # a list of documents: their prose values, never keys or structure
                self.layout(path, text, Layout(
                    tuple(Span("context", a, b) for a, b in spans), ("json_documents",)), role)
            else:
                for seg in _segments(text):
                    self.add("demonstration", path, text, seg, role)
            return
        self.layout(path, text, context_layout(text), role)

    def message(self, index: int, message: Mapping[str, Any], place: _Place) -> None:
        role = message.get("role")
        if not isinstance(role, str) or (role not in _INSTRUCTION_ROLES | _CONTEXT_ROLES):
            return
        slots = list(_text_slots(message.get("content"), ("messages", index, "content")))
        for n, (path, text) in enumerate(slots):
            self.texts[path] = text
            if role in _INSTRUCTION_ROLES:
                # After the question, a system message carries what a framework retrieved
                # for it (AutoGen memory): context, not instruction.
                analysed = context_layout(text) if place == "after" else system_layout(text)
                self.layout(path, text, analysed, role)
            elif place == "final" and n == len(slots) - 1:
                self.layout(path, text, final_layout(text), role)
            elif role in _TOOL_ROLES:
                self.tool(path, text, role)
            elif place == "unanswered" and role == "user":
                self.layout(path, text, context_layout(text), role)
            else:
                for seg in _segments(text):
                    self.add("demonstration", path, text, seg, role)


def _places(messages: Sequence[Any]) -> list[_Place]:
    """Each message's place relative to the question (the last user message)."""
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    users = [i for i, r in enumerate(roles) if r == "user"]
    final = users[-1] if users else len(roles)
    answered = max((i for i, r in enumerate(roles[:final]) if r == "assistant"), default=-1)
    places: list[_Place] = []
    for i in range(len(roles)):
        if i == final:
            places.append("final")
        elif i > final:
            places.append("after")
        elif i > answered and roles[i] == "user":
            # Sent before the question with no answer between: context for this question.
            places.append("unanswered")
        else:
            places.append("before")
    return places


def split_chat(
    body: Mapping[str, Any], *, compress_json_tool_results: bool = False
) -> ChatComponents:
    """Items of a ``/v1/chat/completions`` body (see the module docstring for the rules)."""
    messages = body.get("messages")
    builder = _Builder(compress_json_tool_results)
    if isinstance(messages, list):
        for i, (message, place) in enumerate(zip(messages, _places(messages), strict=True)):
            if isinstance(message, dict):
                builder.message(i, message, place)
    response_format = body.get("response_format")
    json_object = isinstance(response_format, dict) and response_format.get("type") == "json_object"
    model = body.get("model")
    return ChatComponents(
        tuple(builder.items), builder.texts, model if isinstance(model, str) else None, json_object,
        tuple(builder.rules),
    )


def split_completion(body: Mapping[str, Any]) -> ChatComponents:
    """Items of a ``/v1/completions`` body: only a plain string ``prompt`` is compressible."""
    prompt = body.get("prompt")
    model = body.get("model")
    builder = _Builder(compress_json_tool_results=False)
    if isinstance(prompt, str):
        builder.texts[("prompt",)] = prompt
        builder.layout(("prompt",), prompt, final_layout(prompt), "prompt")
    return ChatComponents(
        tuple(builder.items), builder.texts, model if isinstance(model, str) else None,
        rules=tuple(builder.rules),
    )


def replacements_for(components: ChatComponents, compressed: Mapping[Item, str]) -> dict[Path, str]:
    """New full strings per path for ``proxy.compression.rewrite.replace_strings``.

    ``compressed`` maps items to their new text (items left out stay as they are).
    Several items of one string (documents) are spliced into it; paths whose
    string does not change are left out, so an empty result means "forward the
    original bytes". Raises ``ValueError`` for an item that is not compressible or
    not part of ``components``.
    """
    known = set(components.items)
    by_path: dict[Path, list[tuple[Item, str]]] = {}
    for item, new in compressed.items():
        if item not in known:
            raise ValueError(f"item at {item.path} is not part of these components")
        if not item.compressible and new != item.text:
            raise ValueError(f"item at {item.path} is not compressible ({item.reason})")
        by_path.setdefault(item.path, []).append((item, new))
    out: dict[Path, str] = {}
    for path, edits in by_path.items():
        original = components.texts[path]
        text = original
        for item, new in sorted(edits, key=lambda e: e[0].start, reverse=True):
            text = text[: item.start] + new + text[item.end :]
        if text != original:
            out[path] = text
    return out


def body_text_tokens(body: Mapping[str, Any], model: str | None = None) -> int:
    """``text_token_count(split_chat(body))`` (or of ``split_completion``) without the split.

    The hot path for requests that will not be compressed (mode off): the same texts,
    counted without building items or looking for documents.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = body.get("prompt")
        return count_tokens(prompt, model) if isinstance(prompt, str) else 0
    total = 0
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") in _INSTRUCTION_ROLES | _CONTEXT_ROLES:
            for _, text in _text_slots(message.get("content"), ("messages", index, "content")):
                total += count_tokens(text, model)
    return total


def text_token_count(
    components: ChatComponents,
    model: str | None = None,
    replacements: Mapping[Path, str] | None = None,
    memo: dict[str, int] | None = None,
) -> int:
    """Target-model tokens of the request's message text (not framing, roles or tool schemas).

    With ``replacements``, counts the text as it will be forwarded. ``memo`` (text -> tokens
    under ``components.model``) keeps counts across one request's calls: counting is linear
    in the body, and the original, fresh and forwarded texts are mostly the same strings. It is
    not used for another ``model``.
    """
    target = model if model is not None else components.model
    edits = replacements or {}
    if memo is None or target != components.model:
        return sum(count_tokens(edits.get(path, text), target)
                   for path, text in components.texts.items())
    total = 0
    for path, text in components.texts.items():
        sent = edits.get(path, text)
        if sent not in memo:
            memo[sent] = count_tokens(sent, target)
        total += memo[sent]
    return total


class _ResultLike(Protocol):
    @property
    def instruction(self) -> str: ...
    @property
    def demonstrations(self) -> Sequence[str]: ...
    @property
    def question(self) -> str: ...


@dataclass(frozen=True)
class CompressorInputs:
    """Arguments for ``Compressor.compress`` built from the compressible items."""

    instruction: str
    demonstrations: tuple[str, ...]
    question: str
    instruction_items: tuple[Item, ...]
    demonstration_items: tuple[Item, ...]
    question_items: tuple[Item, ...]

    def assign(self, result: _ResultLike) -> dict[Item, str]:
        """Map a ``CompressionResult`` back to items (for ``replacements_for``)."""
        if len(result.demonstrations) != len(self.demonstration_items):
            raise ValueError("result has a different number of demonstrations")
        out = dict(zip(self.demonstration_items, result.demonstrations, strict=True))
        if len(self.instruction_items) == 1:
            out[self.instruction_items[0]] = result.instruction
        if len(self.question_items) == 1:
            out[self.question_items[0]] = result.question
        return out


def compressor_inputs(components: ChatComponents) -> CompressorInputs:
    """Instruction (joined), demonstrations and question strings of the compressible items."""
    inst = tuple(i for i in components.instruction if i.compressible)
    demos = tuple(i for i in components.demonstrations if i.compressible)
    quest = tuple(i for i in components.question if i.compressible)
    return CompressorInputs(
        instruction=_INSTRUCTION_JOIN.join(i.text for i in inst),
        demonstrations=tuple(i.text for i in demos),
        question=_INSTRUCTION_JOIN.join(i.text for i in quest),
        instruction_items=inst,
        demonstration_items=demos,
        question_items=quest,
    )
