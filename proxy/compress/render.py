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
    """Concatenate kept units; if nothing but whitespace is left, "".

    Removing a unit never glues two words together (a space is put back between two
    letters or digits that a dropped unit separated), and spaces that separated a kept word
    from a dropped one at the start of a line go with the dropped word.
    """
    out: list[str] = []
    last = "\n"  # last emitted character
    prev_kept = True
    for i in range(len(units)):
        piece = units.piece(i)
        if not keep[i]:
            prev_kept = False
            continue
        if last == "\n" and not prev_kept and units.kinds[i] != BREAK:
            piece = piece.lstrip(" \t")
        if piece and not prev_kept and _wordy(last) and _wordy(piece[0]):
            piece = " " + piece
        if piece:
            out.append(piece)
            last = piece[-1]
        prev_kept = True
    text = "".join(out)
    return text if text.strip() else ""


def _wordy(ch: str) -> bool:
    return ch.isalnum() and not ("\u3040" <= ch <= "\u9fff")


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
