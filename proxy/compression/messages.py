"""Map an OpenAI request body onto the compressor's components, and results back onto it.

Pure functions over the parsed body; nothing here changes bytes (``proxy.compression.rewrite``
splices the replacements that ``replacements_for`` returns into the raw body).

Rules (what becomes what)
-------------------------
* ``system`` / ``developer`` text -> **instruction**: one item per message (per text
  part when ``content`` is a list).
* The **final user turn** (the last ``user`` message): its last text part is split
  into documents (below); the last segment's last paragraph (after the last blank
  line) is the **question**, everything before it in that message is
  **demonstrations**, one per paragraph (blank lines inside code fences, ``<keep>``
  regions or a bracketed value opening a line do not cut: each protection rule needs
  its whole span).
  A final turn with a single paragraph is all question.
* Every other ``user``, ``assistant``, ``tool`` and ``function`` message text ->
  **demonstrations**, one item per document (below) of each text (or text part).
* A text holds several documents when it contains ``<document ...>...</document>``
  blocks (each block's inner text is one item, the text between blocks other
  items; the tags stay), else separator lines made only of ``---`` or ``===``
  (3+ characters; the segments between them are items, the lines stay), else
  ``Document [n]`` / ``Document n:`` headers at line starts (each header starts an
  item; the header itself stays). Leading/trailing whitespace never belongs to an
  item, so it always survives.
* Items cut out of a text holding several documents or paragraphs, and ``tool`` /
  ``function`` results, are marked ``retrieved``: a policy's ``question_aware =
  "auto"`` ranks them by the question (``proxy.compression.plan``). Earlier user/assistant turns
  (few-shot examples, conversation) are not.
* ``tool`` / ``function`` results that are JSON objects or arrays are not
  compressible (reason ``json_tool_result``) unless the policy allows it.
* Only text is touched: ``image_url``, ``input_audio``, ``file`` and ``refusal`` parts,
  ``tool_calls``, ids, ``name``, ``tools``, ``response_format``, ``stop``,
  ``prediction``... are never items.
* ``response_format: {"type": "json_object"}``: ``json_word_required`` is set and
  ``protect_regexes`` holds ``\\bJSON\\b`` (the API rejects requests without it).
* ``/v1/completions``: a string prompt is split like a final user turn (documents,
  then its last paragraph as question). List prompts (several prompts, token ids)
  are not compressed: each list entry is a separate completion whose text the
  upstream may batch, and token-id prompts have no text to compress.

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
# The API checks for the word in any case ("json" passes), so protect every spelling.
JSON_WORD_REGEX = r"(?i)\bjson\b"
_INSTRUCTION_JOIN = "\n\n"

_DOC_TAG = re.compile(r"<document\b[^>]*>(.*?)</document\s*>", re.IGNORECASE | re.DOTALL)
_SEPARATOR = re.compile(r"^[ \t]*(?:-{3,}|={3,})[ \t]*$", re.MULTILINE)
_HEADER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?document[ \t]*(?:\[\d+\]|\d+)[ \t]*[:.)]?",
    re.IGNORECASE | re.MULTILINE,
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
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


def _final_turn(text: str) -> Iterator[tuple[Kind, _Segment]]:
    segs = _segments(text)
    if not segs:
        return
    q = len(segs) - 1
    if segs[q].document:  # question before the documents: the last untagged text asks it
        q = max((i for i, s in enumerate(segs) if not s.document), default=q)
    for i, seg in enumerate(segs):
        if i != q:
            yield "demonstration", seg
            continue
        breaks = list(_PARAGRAPH_BREAK.finditer(text, seg.start, seg.end))
        last = _trimmed(text, breaks[-1].end(), seg.end) if breaks else None
        head = _trimmed(text, seg.start, breaks[-1].start(), split=seg.split) if breaks else None
        if last is None or head is None or seg.document:
            yield "question", seg
        else:
            for para in _paragraphs(text, head):
                yield "demonstration", para
            yield "question", last


_FENCE = re.compile(r"^[ \t]*(?:```|~~~)", re.MULTILINE)
_KEEP_REGION = re.compile(r"(?s)<keep>.*?</keep>")
_BRACKET = re.compile(r"[\[\]{}]")


def _unsafe_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Where a blank line must not cut: code fences, ``<keep>`` regions, bracketed values
    that open a line (JSON).

    Cutting there would leave each half without the whole span its protection rule needs
    (a fence's two ends, a keep region's two tags, a JSON value's brackets), and the halves
    would then be compressed as prose."""
    part = text[start:end]  # substring tests first: most prompts have none of these
    spans: list[tuple[int, int]] = []
    if "<keep>" in part:
        spans += [(m.start(), m.end()) for m in _KEEP_REGION.finditer(text, start, end)]
    if "```" in part or "~~~" in part:
        fences = [m.start() for m in _FENCE.finditer(text, start, end)]
        spans += [(a, b) for a, b in zip(fences[::2], [*fences[1::2], end], strict=False)]
    if "{" not in part and "[" not in part:
        return spans
    depth, opened = 0, start
    for m in _BRACKET.finditer(text, start, end):  # brackets only: prose costs nothing
        if m[0] in "[{":
            if depth == 0:
                # A JSON value opens a line; a bracket inside prose ("see [1") does not
                # start one, so a stray one cannot stop every later cut.
                line = text.rfind("\n", start, m.start())
                if text[start if line < 0 else line + 1 : m.start()].strip():
                    continue
                opened = m.start()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                spans.append((opened, m.end()))
    if depth:
        spans.append((opened, end))  # never closed: no cut after it
    return spans


def _paragraphs(text: str, seg: _Segment) -> list[_Segment]:
    """``seg`` cut at its blank lines into paragraphs, except inside fences, keep regions
    and brackets (see ``_unsafe_spans``): the budget controller's demonstrations."""
    unsafe = _unsafe_spans(text, seg.start, seg.end)
    cuts = [
        m for m in _PARAGRAPH_BREAK.finditer(text, seg.start, seg.end)
        if not any(a < m.start() and m.end() <= b + 1 for a, b in unsafe)
    ]
    bounds = zip([seg.start, *(m.end() for m in cuts)], [*(m.start() for m in cuts), seg.end],
                 strict=True)
    split = seg.split or bool(cuts)
    return [p for a, b in bounds if (p := _trimmed(text, a, b, split=split)) is not None]


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

    def message(self, index: int, message: Mapping[str, Any], final_user: bool) -> None:
        role = message.get("role")
        if not isinstance(role, str) or (role not in _INSTRUCTION_ROLES | _CONTEXT_ROLES):
            return
        slots = list(_text_slots(message.get("content"), ("messages", index, "content")))
        for n, (path, text) in enumerate(slots):
            self.texts[path] = text
            if role in _INSTRUCTION_ROLES:
                whole = _trimmed(text, 0, len(text))
                if whole is not None:
                    self.add("instruction", path, text, whole, role)
            elif final_user and n == len(slots) - 1:
                for kind, seg in _final_turn(text):
                    self.add(kind, path, text, seg, role)
            else:
                for seg in _segments(text):
                    self.add("demonstration", path, text, seg, role)


def split_chat(
    body: Mapping[str, Any], *, compress_json_tool_results: bool = False
) -> ChatComponents:
    """Items of a ``/v1/chat/completions`` body (see the module docstring for the rules)."""
    messages = body.get("messages")
    builder = _Builder(compress_json_tool_results)
    if isinstance(messages, list):
        users = [
            i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"
        ]
        final_user = users[-1] if users else -1
        for i, message in enumerate(messages):
            if isinstance(message, dict):
                builder.message(i, message, i == final_user)
    response_format = body.get("response_format")
    json_object = isinstance(response_format, dict) and response_format.get("type") == "json_object"
    model = body.get("model")
    return ChatComponents(
        tuple(builder.items), builder.texts, model if isinstance(model, str) else None, json_object
    )


def split_completion(body: Mapping[str, Any]) -> ChatComponents:
    """Items of a ``/v1/completions`` body: only a plain string ``prompt`` is compressible."""
    prompt = body.get("prompt")
    model = body.get("model")
    builder = _Builder(compress_json_tool_results=False)
    if isinstance(prompt, str):
        builder.texts[("prompt",)] = prompt
        for kind, seg in _final_turn(prompt):
            builder.add(kind, ("prompt",), prompt, seg, "prompt")
    return ChatComponents(
        tuple(builder.items), builder.texts, model if isinstance(model, str) else None
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
) -> int:
    """Target-model tokens of the request's message text (not framing, roles or tool schemas).

    With ``replacements``, counts the text as it will be forwarded.
    """
    target = model if model is not None else components.model
    edits = replacements or {}
    return sum(
        count_tokens(edits.get(path, text), target) for path, text in components.texts.items()
    )


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
