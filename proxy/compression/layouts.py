"""Where a prompt's question, context and instruction stand inside one message text.

Frameworks do not send "documents, then the question" in separate messages: they render
templates. The question may come before the context (``Question: ... Context: ...``),
after a label (``Query:``, ``The original query is as follows:``, a DSPy
``[[ ## question ## ]]`` field), or be followed by output instructions (``Answer:``,
"Respond with ...", "Include citations ..."). The context may sit after a label
(``Context:``, ``New Context:``, ``Additional Information:``, ``Relevant memory
content:``), between dashed or ``===`` rules, in ``<document>`` tags or triple quotes,
as ``[n]``/``1.`` numbered passages, one per line, or as blank-line paragraphs.

This module finds them with rules about labels and delimiters only, never about a
framework's exact wording, and returns character spans. Text in no span is template
(labels, rules, tags, output instructions): the mapping never makes it compressible, so
it is forwarded verbatim.

Rules (each adds its name to ``Layout.rules``, which the response header reports)
------------------------------------------------------------------------------
* **Labels** (``label``): a line that starts with a short capitalised phrase (at most six
  words) and a colon, or a DSPy ``[[ ## name ## ]]`` line. A label's class comes from
  its words: *question* (question, query, ``Q``), *output* (answer, response, output,
  reply), *context* (context, information, documents, passages, sources, results,
  memory, knowledge, excerpts, articles, sections, snippets, references, background,
  evidence). A context label may also follow a sentence's end on the same line
  ("...summary.Additional Information: ...", CrewAI). A label may follow another one
  on its line ("Current Task: Answer the following question: ...").
* **The question** (``question_label``): the value of the *last* question label, from
  after the label to the next blank line or the next label. Earlier question labels
  (few-shot examples in one message) are ordinary text.
  Without a question label (``question_last_paragraph``) it is the last paragraph after
  the last document (or, when the documents end the text, the last paragraph before
  them); when that paragraph has no ``?`` but one of the two before it ends with one,
  that one is the question and what follows is trailing instruction
  (``question_before_instruction``).
* **Context** (``context_label``): the value of a context label, up to the next label.
  Outside labels (``delimiters``): ``<document>`` blocks and triple-quoted blocks (each
  one document), segments between ``---``/``===`` rules (with two or more segments
  between rules, the one before the first rule is a document too, else it is a heading),
  ``Document [n]`` headers.
* **Documents inside a context region**: blank-line paragraphs (a paragraph made only of
  short ``key: value`` lines, such as ``file_path: data/a.txt``, belongs to the paragraph
  after it); a single paragraph is cut at lines that start with ``[n]``, ``n.``, ``n)``
  or a bullet (``numbered``), else into its lines when every line is long (``lines``).
  A context region under 12 words is not context (a template placeholder such as
  ``{context}``).
* **No labelled or delimited context** (``paragraphs``): the paragraphs before the
  question are the context (the rule before this module existed).
* Everything else in a text that has context is instruction text.

System and developer messages (``system_context``): labelled or delimited context is
found as above; without it, the paragraphs after the first paragraph that mentions
context (context, documents, passages, retrieved, excerpts, sources, search results,
examples, demonstrations) are
context when there are at least two of them, of 12 words or more on average. The rest is
the instruction. A text that is context as a whole (a tool result, a user message sent
before the question, a system message after it) is cut into documents the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Layout",
    "Span",
    "SpanKind",
    "context_layout",
    "final_layout",
    "json_documents",
    "system_layout",
]

SpanKind = Literal["instruction", "context", "question"]

_MIN_CONTEXT_WORDS = 12  # below this a "context" region is a placeholder or a heading
_LONG_LINE_WORDS = 12  # a line this long can be a document of its own

_DOC_TAG = re.compile(r"<document\b[^>]*>(.*?)</document\s*>", re.IGNORECASE | re.DOTALL)
_TRIPLE = re.compile(r'(?ms)^[ \t]*(?:"""|\'\'\')[ \t]*\n(.*?)\n[ \t]*(?:"""|\'\'\')[ \t]*$')
_SEPARATOR = re.compile(r"^[ \t]*(?:-{3,}|={3,})[ \t]*$", re.MULTILINE)
_HEADER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?document[ \t]*(?:\[\d+\]|\d+)[ \t]*[:.)]?",
    re.IGNORECASE | re.MULTILINE,
)
_BREAK = re.compile(r"\n[ \t]*\n")
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_LINE_LABEL = re.compile(r"(?m)^[ \t]*([A-Z][\w'’\-]*(?:[ \t]+[\w'’\-]+){0,5})[ \t]*:(?=[ \t]|$)")
_CHAINED_LABEL = re.compile(r"[ \t]*([A-Z][\w'’\-]*(?:[ \t]+[\w'’\-]+){0,5})[ \t]*:(?=[ \t]|$)")
_INLINE_LABEL = re.compile(r"(?<=[.!?])[ \t]*([A-Z]\w*(?:[ \t]+[A-Z]\w*){0,3})[ \t]*:[ \t]")
_FIELD = re.compile(r"(?m)^[ \t]*\[\[ ## ([^#\n]{1,40}?) ## \]\][ \t]*$")
_ENUMERATED = re.compile(r"[ \t]*(?:\[\d+\]|\d+[.)]|[-*•])[ \t]")
_KEY_VALUE = re.compile(r"^[ \t]*[\w\-]+[ \t]*:[ \t]*\S.{0,120}$")
_WORD = re.compile(r"\w+")

_QUESTION_WORDS = re.compile(r"(?i)\b(?:questions?|query|queries)\b|^q$")
_OUTPUT_WORDS = re.compile(r"(?i)\b(?:answers?|responses?|output|reply)\b")
_CONTEXT_WORDS = re.compile(
    r"(?i)\b(?:contexts?|information|documents?|passages?|sources?|results?|memory|memories|"
    r"knowledge|excerpts?|articles?|sections?|snippets?|references?|background|evidence)\b"
)
# An instruction paragraph that announces context after it (system messages). Worked
# examples announced in a system prompt are demonstrations (method: few-shot context) too
# (plural only: "for example" inside an instruction announces nothing).
_ANNOUNCES_CONTEXT = re.compile(
    r"(?i)\b(?:context|documents?|passages?|retrieved|excerpts?|sources|search results"
    r"|examples|demonstrations)\b"
)

Cls = Literal["question", "output", "context", "field"]


@dataclass(frozen=True)
class Span:
    kind: SpanKind
    start: int
    end: int
    retrieved: bool = True  # context given for this question (ranked by it under "auto")


@dataclass(frozen=True)
class Layout:
    spans: tuple[Span, ...]  # in text order, trimmed, non-overlapping
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Mark:
    start: int  # the label's own text
    end: int
    cls: Cls


def _words(text: str, start: int, end: int) -> int:
    return len(_WORD.findall(text, start, end))


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _classify(name: str) -> Cls | None:
    if _QUESTION_WORDS.search(name):
        return "question"
    if _OUTPUT_WORDS.search(name):
        return "output"
    if _CONTEXT_WORDS.search(name):
        return "context"
    return None


def _marks(text: str) -> list[_Mark]:
    """Labels that bound fields, in text order (see the module docstring)."""
    found: dict[int, _Mark] = {}
    for m in _LINE_LABEL.finditer(text):
        end, name, start = m.end(), m[1], m.start(1)
        while True:
            cls = _classify(name)
            if cls is not None:
                found[start] = _Mark(start, end, cls)
            chained = _CHAINED_LABEL.match(text, end)
            if chained is None or "\n" in text[end : chained.start(1)]:
                break
            end, name, start = chained.end(), chained[1], chained.start(1)
    for m in _INLINE_LABEL.finditer(text):
        if _classify(m[1]) == "context" and m.start(1) not in found:
            found[m.start(1)] = _Mark(m.start(1), m.end(), "context")
    for m in _FIELD.finditer(text):
        found[m.start()] = _Mark(m.start(), m.end(), _classify(m[1]) or "field")
    return [found[k] for k in sorted(found)]


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


def _paragraph_bounds(
    text: str, start: int, end: int, safe: bool = True
) -> list[tuple[int, int]]:
    """``[start, end)`` cut at its blank lines, except (``safe``) inside fences, keep
    regions and brackets (see ``_unsafe_spans``); trimmed."""
    unsafe = _unsafe_spans(text, start, end) if safe else []
    cuts = [
        m for m in _BREAK.finditer(text, start, end)
        if not any(a < m.start() and m.end() <= b + 1 for a, b in unsafe)
    ]
    bounds = zip([start, *(m.end() for m in cuts)], [*(m.start() for m in cuts), end],
                 strict=True)
    return [t for a, b in bounds if (t := _trim(text, a, b)) is not None]


def _is_metadata(text: str, start: int, end: int) -> bool:
    lines = text[start:end].split("\n")
    return len(lines) <= 3 and all(_KEY_VALUE.match(line) for line in lines)


def _line_bounds(text: str, start: int, end: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        nl = text.find("\n", pos, end)
        stop = end if nl < 0 else nl
        if (t := _trim(text, pos, stop)) is not None:
            out.append(t)
        pos = stop + 1
    return out


def _is_closing(text: str, paras: list[tuple[int, int]]) -> bool:
    """Whether the last paragraph is a short line after longer documents."""
    last = _words(text, *paras[-1])
    sizes = sorted(_words(text, a, b) for a, b in paras[:-1])
    return last < _MIN_CONTEXT_WORDS and last * 2 < sizes[len(sizes) // 2]


def _undelimited(text: str, start: int, end: int) -> tuple[list[tuple[int, int]], str]:
    """Documents of a context region with no tags, quotes or rules."""
    paras = _paragraph_bounds(text, start, end)
    while len(paras) > 1 and _is_closing(text, paras):
        paras.pop()  # a closing instruction ("Be brief."), not a document
    if len(paras) > 1:
        docs: list[tuple[int, int]] = []
        pending: int | None = None  # start of a metadata paragraph waiting for its text
        for a, b in paras:
            if _is_metadata(text, a, b) and pending is None:
                pending = a
                continue
            docs.append((pending if pending is not None else a, b))
            pending = None
        if pending is not None:
            docs.append((pending, paras[-1][1]))
        return docs, "paragraphs"
    if not paras:
        return [], ""
    lines = _line_bounds(text, *paras[0])
    starts = [i for i, (a, _) in enumerate(lines) if _ENUMERATED.match(text, a)]
    if len(starts) > 1:
        docs = []
        for i, first in enumerate(starts):
            last = starts[i + 1] - 1 if i + 1 < len(starts) else len(lines) - 1
            docs.append((lines[first][0], lines[last][1]))
        return docs, "numbered"
    if len(lines) > 1 and all(_words(text, a, b) >= _LONG_LINE_WORDS for a, b in lines):
        return lines, "lines"
    return [paras[0]], "paragraphs"


def _delimited(
    text: str, start: int, end: int, whole: bool = False
) -> tuple[list[tuple[int, int]], bool]:
    """Documents marked by tags, triple quotes, rules or ``Document [n]`` headers in the
    region, and whether any delimiter was found (text outside them is template).

    ``whole``: the region is all context (a tool result), so the segments before the first
    rule and after the last one are documents too; otherwise the first one is a heading
    unless it looks like the others, and the last one holds the question."""
    blocks = [(m.start(1), m.end(1)) for m in _DOC_TAG.finditer(text, start, end)]
    blocks += [(m.start(1), m.end(1)) for m in _TRIPLE.finditer(text, start, end)]
    if blocks:
        return [t for a, b in sorted(blocks) if (t := _trim(text, a, b)) is not None], True
    seps = list(_SEPARATOR.finditer(text, start, end))
    if seps:
        docs: list[tuple[int, int]] = []
        middles = [(a.end(), b.start()) for a, b in zip(seps, seps[1:], strict=False)]
        for a, b in middles:
            docs += _undelimited(text, a, b)[0]
        lead = _trim(text, start, seps[0].start())
        if whole:
            tail = _trim(text, seps[-1].end(), end)
            return [t for t in (lead, *docs, tail) if t is not None], True
        if lead is not None and len(middles) > 1:
            sizes = sorted(_words(text, a, b) for a, b in middles)
            if _words(text, *lead) * 2 >= sizes[len(sizes) // 2]:
                docs.insert(0, lead)  # rules close each document: the first one is too
        return docs, True
    headers = list(_HEADER.finditer(text, start, end))
    if headers:
        ends = [m.start() for m in headers[1:]] + [end]
        docs = [t for m, b in zip(headers, ends, strict=True) if (t := _trim(text, m.end(), b))]
        return docs, True
    return [], False


def _context_docs(text: str, start: int, end: int) -> tuple[list[tuple[int, int]], str]:
    """Documents of a labelled context field (nothing when it is a placeholder)."""
    docs, delimited = _delimited(text, start, end, whole=True)
    rule = "delimiters"
    if not delimited:
        docs, rule = _undelimited(text, start, end)
    if sum(_words(text, a, b) for a, b in docs) < _MIN_CONTEXT_WORDS:
        return [], ""
    return docs, rule


def _gaps(start: int, end: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pos = start
    for a, b in sorted(taken):
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < end:
        out.append((pos, end))
    return out


def _question_value(text: str, start: int, stop: int) -> tuple[int, int] | None:
    """From a question label's end: the rest of its paragraph, or the next paragraph when
    the label ends its line."""
    pos = start
    while pos < stop and text[pos] in " \t":
        pos += 1
    if pos < stop and text[pos] == "\n":  # the value starts on a later line
        while pos < stop and text[pos].isspace():
            pos += 1
    brk = _BREAK.search(text, pos, stop)
    return _trim(text, pos, brk.start() if brk else stop)


def _fallback_question(
    text: str, start: int, end: int, docs: list[tuple[int, int]]
) -> tuple[tuple[int, int] | None, str]:
    """The question of a text with no question label (see the module docstring)."""
    def prose(a: int, b: int) -> bool:  # not only closing tags or rules
        return bool(_WORD.search(_TAG.sub("", text[a:b])))

    tail = max((b for _, b in docs), default=start)
    region = (tail, end) if prose(tail, end) else (start, min(a for a, _ in docs))
    # A question is never inside a fence, so the raw blank lines cut.
    paras = [p for p in _paragraph_bounds(text, *region, safe=False) if prose(*p)]
    if not paras:
        return None, ""
    if "?" not in text[paras[-1][0] : paras[-1][1]]:
        for a, b in reversed(paras[-3:-1]):
            if text[a:b].rstrip().endswith("?"):
                return _untagged(text, a, b), "question_before_instruction"
    return _untagged(text, *paras[-1]), "question_last_paragraph"


_LEAD_TAG = re.compile(r"\s*</?[A-Za-z][^>]*>")
_TRAIL_TAG = re.compile(r"</?[A-Za-z][^>]*>\s*$")


def _untagged(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without the tags that open or close it (a wrapper's, not the question's)."""
    while True:
        lead = _LEAD_TAG.match(text, start, end)
        trail = _TRAIL_TAG.search(text, start, end)
        if lead is not None and lead.end() < end:
            new = _trim(text, lead.end(), end)
        elif trail is not None and trail.start() > start:
            new = _trim(text, start, trail.start())
        else:
            return start, end
        if new is None:
            return start, end
        start, end = new


def _layout(
    text: str, docs: list[tuple[int, int]], question: tuple[int, int] | None,
    rules: list[str], rest: SpanKind = "instruction", retrieved: bool = True,
) -> Layout:
    spans = [Span("context", a, b, retrieved) for a, b in docs]
    if question is not None:
        spans.append(Span("question", *question, retrieved=False))
    taken = [(s.start, s.end) for s in spans]
    for a, b in _gaps(0, len(text), taken):
        if (t := _trim(text, a, b)) is not None:
            spans.append(Span(rest, *t, retrieved=False))
    return Layout(tuple(sorted(spans, key=lambda s: s.start)), tuple(dict.fromkeys(rules)))


def _labelled_context(
    text: str, marks: list[_Mark], skip: tuple[int, int] | None, whole: bool = False
) -> tuple[list[tuple[int, int]], list[str]]:
    """Documents in context-label fields, then delimited documents in the text around them."""
    docs: list[tuple[int, int]] = []
    rules: list[str] = []
    taken: list[tuple[int, int]] = [skip] if skip else []
    taken += [(m.start, m.end) for m in marks]  # a label is never part of a document
    for i, m in enumerate(marks):
        if m.cls != "context":
            continue
        stop = marks[i + 1].start if i + 1 < len(marks) else len(text)
        if skip is not None and m.end <= skip[0] < stop:
            stop = skip[0]
        found, rule = _context_docs(text, m.end, stop)
        if found:
            docs += found
            taken.append((m.end, stop))
            rules += ["context_label", rule]
    for a, b in _gaps(0, len(text), taken):
        found, delimited = _delimited(text, a, b, whole)
        if delimited and found:
            docs += found
            rules.append("delimiters")
    return sorted(docs), rules


def _after_last_rule(
    text: str, docs: list[tuple[int, int]], question: int, marks: list[_Mark]
) -> list[tuple[int, int]]:
    """Whole paragraphs between the last rule and the question's paragraph (which starts at
    ``question``): the last document, when rules separate documents rather than close them."""
    seps = [m for m in _SEPARATOR.finditer(text, 0, question)]
    if not seps or any(a >= seps[-1].end() for a, _ in docs):
        return []
    start = seps[-1].end()
    breaks = list(_BREAK.finditer(text, start, question))
    if not breaks or any(start <= m.start < breaks[-1].start() for m in marks):
        return []
    region = _trim(text, start, breaks[-1].start())
    if region is None:
        return []
    tail = _undelimited(text, *region)[0]
    # Rules between documents: the text before the first rule is one too, unless it is a
    # heading (much shorter than the documents, or a label).
    lead = _trim(text, 0, seps[0].start())
    if lead is not None and lead not in docs and not any(m.start < lead[1] for m in marks):
        sizes = sorted(_words(text, a, b) for a, b in [*docs, *tail])
        if _words(text, *lead) * 2 >= sizes[len(sizes) // 2]:
            tail.insert(0, lead)
    return tail


def final_layout(text: str) -> Layout:
    """The question-bearing text (the final user turn, a completion prompt)."""
    marks = _marks(text)
    rules: list[str] = ["label"] if marks else []
    question: tuple[int, int] | None = None
    head_end = len(text)  # where the text before the question ends
    questions = [i for i, m in enumerate(marks) if m.cls == "question"]
    if questions:
        i = questions[-1]
        stop = marks[i + 1].start if i + 1 < len(marks) else len(text)
        question = _question_value(text, marks[i].end, stop)
        head_end = marks[i].start
        last = _paragraph_bounds(text, 0, len(text), safe=False)[-1]
        if question is not None and last[0] >= question[1] and text[: last[1]].endswith("?") and (
            not any(last[0] <= m.start < last[1] for m in marks)
        ):
            # A question asked after the labelled one, outside any field: the label was
            # part of pasted text.
            question, head_end = last, last[0]
        if question is not None:
            rules.append("question_label" if head_end != question[0] else "question_last_paragraph")
    docs, found = _labelled_context(text, marks, question)
    rules += found
    if question is None:
        question, rule = _fallback_question(text, 0, len(text), docs)
        rules.append(rule)
        docs = [d for d in docs if question is None or d[1] <= question[0] or d[0] >= question[1]]
    if docs and question is not None:
        docs = sorted(docs + _after_last_rule(text, docs, min(head_end, question[0]), marks))
    if not docs and question is not None:
        # No labelled or delimited context: the paragraphs before the question are.
        head = _trim(text, 0, min(head_end, question[0]))
        if head is not None:
            paras = _paragraph_bounds(text, *head)
            return _layout(text, paras, question, [*rules, "paragraphs"], retrieved=len(paras) > 1)
    return _layout(text, docs, question, rules)


def context_layout(text: str) -> Layout:
    """A text that is context as a whole: documents, and the template around them."""
    marks = [m for m in _marks(text) if m.cls != "question"]
    docs, rules = _labelled_context(text, marks, None, whole=True)
    if not docs and (whole := _trim(text, 0, len(text))) is not None:
        docs, rule = _undelimited(text, *whole)
        rules.append(rule)
    return _layout(text, docs, None, rules)


def system_layout(text: str) -> Layout:
    """A system/developer message: its instruction, and any context it carries."""
    marks = [m for m in _marks(text) if m.cls != "question"]
    docs, rules = _labelled_context(text, marks, None)
    if not docs:
        paras = _paragraph_bounds(text, 0, len(text))
        intro = next(
            (i for i, (a, b) in enumerate(paras) if _ANNOUNCES_CONTEXT.search(text, a, b)), None
        )
        if intro is not None:
            tail = paras[intro + 1 :]
            while tail and _words(text, *tail[-1]) < _MIN_CONTEXT_WORDS:
                tail.pop()  # a closing rule after the documents stays instruction
            if len(tail) > 1 and sum(_words(text, a, b) for a, b in tail) >= (
                _MIN_CONTEXT_WORDS * len(tail)
            ):
                docs, _ = _undelimited(text, tail[0][0], tail[-1][1])
                rules.append("paragraphs")
    if docs:
        rules.insert(0, "system_context")
    return _layout(text, docs, None, rules)


_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|[\[\]{}:,]')


def json_documents(text: str) -> list[tuple[int, int]]:
    """Spans (inside the quotes) of the prose values of a JSON list of document-like objects.

    A tool that returns ``[{"title": ..., "content": ...}, ...]`` returns documents: each
    string value of an object that is an element of an array, of 12 words or more and
    without escape sequences, is one. Keys, short values (titles, ids, links), numbers and
    the structure are not spans, so they stay verbatim; a value without backslashes stays
    a valid JSON string whatever words are dropped from it. Empty unless there are two.
    """
    stack: list[str] = []
    prev = ""
    spans: list[tuple[int, int]] = []
    for m in _JSON_STRING.finditer(text):
        tok = m[0]
        if tok in "[{":
            stack.append(tok)
        elif tok in "]}":
            if stack:
                stack.pop()
        elif tok.startswith('"'):
            value = prev == ":" and len(stack) >= 2 and stack[-1] == "{" and stack[-2] == "["
            inner = (m.start() + 1, m.end() - 1)
            # Whitespace words: a link or a code counts as one (they are not prose).
            long = len(text[inner[0] : inner[1]].split()) >= _MIN_CONTEXT_WORDS
            if value and "\\" not in tok and long:
                if (t := _trim(text, *inner)) is not None:
                    spans.append(t)
        prev = tok if not tok.startswith('"') else '"'
    return spans if len(spans) > 1 else []
