"""Client-chosen strings made safe for every sink: Prometheus labels, Redis keys and fields.

JSON may carry lone surrogates (`"\\ud800"` is valid JSON), which Python keeps in a `str`
but no UTF-8 encoder accepts: one such `model` once broke `/metrics` rendering and every
Redis ledger flush for all tenants. Long values are cut, because a label or key is
stored and rendered over and over.
"""

from __future__ import annotations

__all__ = ["MAX_LABEL_CHARS", "safe_text"]

MAX_LABEL_CHARS = 256


def safe_text(value: str, limit: int = MAX_LABEL_CHARS) -> str:
    """`value`, at most `limit` characters, with lone surrogates as `\\udXXX` escapes."""
    if len(value) > limit:
        value = value[:limit]
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode()
    return value
