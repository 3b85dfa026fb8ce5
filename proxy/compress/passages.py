"""The passages a document is scored by when documents are ranked by the question.

LongLLMLingua ranks each document by p(question | document). In a retrieval result every
document mentions the question's entities (that is why it was retrieved), and the one
sentence that answers is diluted by everything else the document says: the question is
about as likely after a near-miss document ("the Mirevale warehouse keeps the stock in bay
W43-L2") as after the one that answers ("the Port Avenell warehouse ... bay W37-Y6"), since
both name Port Avenell elsewhere. Scoring each sentence on its own and taking a document's
best sentence (the "MaxP" of passage retrieval) measures what matters: does the document hold
a passage after which the question is likely. bench/layouts.py measures the difference.
"""

from __future__ import annotations

import re

__all__ = ["MAX_PASSAGE_CHARS", "passages"]

# Sentence ends, and line breaks (list items, one fact per line).
_CUT = re.compile(r"(?<=[.!?;])[ \t]+|\n+")
_MIN_CHARS = 24  # shorter pieces ("Name: X", "[1]") join the next one
MAX_PASSAGE_CHARS = 600  # a run-on "sentence" is cut into pieces of this size


def passages(text: str) -> list[str]:
    """``text`` cut into sentence-sized passages (the whole text when it has one)."""
    pieces: list[str] = []
    pending = ""
    for part in _CUT.split(text):
        part = part.strip()
        if not part:
            continue
        pending = f"{pending} {part}" if pending else part
        if len(pending) >= _MIN_CHARS:
            pieces += [pending[i : i + MAX_PASSAGE_CHARS]
                       for i in range(0, len(pending), MAX_PASSAGE_CHARS)]
            pending = ""
    if pending:
        if pieces:
            pieces[-1] = f"{pieces[-1]} {pending}"
        else:
            pieces.append(pending)
    return pieces or [text]
