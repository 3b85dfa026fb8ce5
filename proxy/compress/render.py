"""Turning keep decisions back into text, and the final rate fit.

Per-unit target-token costs are almost, not exactly, additive (neighbours
re-merge once a word between them is gone), so after ITPC the real count of the
rendered text is checked and, when it misses the budget by more than a small
tolerance, the lowest-scoring kept words are dropped (or the best dropped words
restored) by bisection: a handful of tiktoken counts, no model calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from proxy.compress.words import BREAK, Units

__all__ = ["fit_budget", "render"]

BoolArray = npt.NDArray[np.bool_]


def render(units: Units, keep: BoolArray) -> str:
    """Concatenate kept units. Spaces that separated a kept word from a dropped one at
    the start of a line are dropped with it; if nothing but whitespace is left, ""."""
    out: list[str] = []
    at_line_start = True
    prev_kept = True
    need_space = False  # a dropped line break must still separate the words around it
    for i in range(len(units)):
        if not keep[i]:
            prev_kept = False
            need_space = need_space or (units.kinds[i] == BREAK and not at_line_start)
            continue
        piece = units.piece(i)
        if at_line_start and not prev_kept and units.kinds[i] != BREAK:
            piece = piece.lstrip(" \t")
        if need_space and piece and not piece[0].isspace() and out:
            piece = " " + piece
        need_space = False
        if piece:
            out.append(piece)
            at_line_start = piece.endswith("\n")
        prev_kept = True
    text = "".join(out)
    return text if text.strip() else ""


Counter = Callable[[Sequence[BoolArray]], int]


def fit_budget(
    keeps: Sequence[BoolArray],
    densities: Sequence[npt.NDArray[np.float32]],
    adjustable: Sequence[BoolArray],
    count: Counter,
    target: int,
    tolerance: int,
) -> list[BoolArray]:
    """Adjust ``keeps`` (only where ``adjustable``) so ``count(keeps)`` lands near ``target``."""
    current = [k.copy() for k in keeps]
    total = count(current)
    if abs(total - target) <= tolerance:
        return current
    over = total > target
    cands: list[tuple[float, int, int]] = []  # (sort key, piece, unit)
    for p, (k, d, adj) in enumerate(zip(current, densities, adjustable, strict=True)):
        mask = adj & (k if over else ~k)
        for u in np.flatnonzero(mask).tolist():
            score = float(d[u]) if not np.isnan(d[u]) else 0.0
            cands.append(((score if over else -score), p, u))
    cands.sort()  # stable: ties by (piece, unit)

    def trial(n: int) -> list[BoolArray]:
        trial_keeps = [k.copy() for k in current]
        for _, p, u in cands[:n]:
            trial_keeps[p][u] = not over
        return trial_keeps

    lo, hi = 0, len(cands)
    # Smallest n whose count crosses the target (count is monotone in n up to re-merging).
    while lo < hi:
        mid = (lo + hi) // 2
        c = count(trial(mid))
        if (c <= target) if over else (c >= target):
            hi = mid
        else:
            lo = mid + 1
    best_n, best_gap = 0, abs(total - target)
    for n in sorted({max(0, lo - 1), lo}):
        gap = abs(count(trial(n)) - target)
        if gap < best_gap or (gap == best_gap and n < best_n):
            best_n, best_gap = n, gap
    return trial(best_n)
