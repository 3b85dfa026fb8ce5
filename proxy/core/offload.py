"""Keep one request's CPU work on big inputs off the event loop.

Parsing and token counting are linear but not free (tiktoken counts ~10 MB/s): on a 32 MB
body that is seconds during which no other request (not even `/healthz`) would be served.
Small inputs stay on the loop, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["OFF_LOOP_BYTES", "off_loop"]

T = TypeVar("T")

# Below this a request's parse + count takes well under a millisecond.
OFF_LOOP_BYTES = 64 * 1024


async def off_loop(size: int, fn: Callable[[], T]) -> T:
    """``fn()``: inline when ``size`` (bytes of input) is small, else in a worker thread."""
    if size <= OFF_LOOP_BYTES:
        return fn()
    return await asyncio.to_thread(fn)
