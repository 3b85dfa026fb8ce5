"""Iterative token-level prompt compression (ITPC), deciding per word.

The surviving pieces (instruction, kept demonstrations, question) form one
scoring-token stream, cut into segments of about ``segment_tokens`` tokens on word
boundaries. Each segment is scored conditioned on the *already compressed* text
before it (a KV cache of the kept tokens, see ``scoring.Stream``), then each
component keeps its highest-scoring words in that segment up to its share of
the budget, counted in target tokens. The share carries over between segments
(cumulative rounding), so the per-segment thresholds add up to the requested
total; the last, partial segment is compressed like any other.

A word's score is its information per target token: the sum of its sub-word
NLLs divided by what it costs upstream.

Losses the coarse pass already computed are reused where their context is the
same (the first segment, when nothing precedes it), so the coarse pass and this
one never forward the same tokens twice for the same context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from proxy.compress.scoring import Encoded, FloatArray, IntArray, Scorer, Stream
from proxy.compress.words import Units, unit_of_offsets

__all__ = ["Piece", "Decision", "compress_pieces"]

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Piece:
    component: int  # index into the budget list
    units: Units
    enc: Encoded
    costs: IntArray  # target tokens per unit
    forced: BoolArray  # per unit: never dropped
    coarse_nll: FloatArray | None = None  # first tokens' NLL given only a start token before them


@dataclass(frozen=True)
class Decision:
    keep: tuple[BoolArray, ...]  # per piece, per unit
    density: tuple[FloatArray, ...]  # per piece, per unit (NaN where never scored)


@dataclass(frozen=True)
class _Flat:
    ids: IntArray  # all scoring tokens, separators included
    unit: IntArray  # global unit per token, -1 for separators
    piece_of_token: IntArray
    unit_first_token: IntArray  # token whose loss stands for a unit without tokens of its own
    unit_has_tokens: BoolArray
    unit_component: IntArray
    unit_cost: IntArray
    unit_forced: BoolArray
    piece_token_start: IntArray
    piece_unit_start: IntArray


def _flatten(pieces: Sequence[Piece], sep: IntArray) -> _Flat:
    ids: list[IntArray] = []
    unit: list[IntArray] = []
    owner: list[IntArray] = []
    first: list[IntArray] = []
    has: list[BoolArray] = []
    tok_start: list[int] = []
    unit_start: list[int] = []
    n_tok = n_unit = 0
    for p, piece in enumerate(pieces):
        if p:
            ids.append(sep)
            unit.append(np.full(len(sep), -1, np.int64))
            owner.append(np.full(len(sep), p - 1, np.int64))
            n_tok += len(sep)
        tok_start.append(n_tok)
        unit_start.append(n_unit)
        local = unit_of_offsets(piece.units, piece.enc.starts)
        counts = np.bincount(local, minlength=len(piece.units))[: len(piece.units)]
        cover = np.searchsorted(piece.enc.starts, piece.units.starts, side="right") - 1
        cover = np.clip(cover, 0, max(0, len(piece.enc.ids) - 1))
        ids.append(piece.enc.ids)
        unit.append(local + n_unit)
        owner.append(np.full(len(piece.enc.ids), p, np.int64))
        first.append(cover + n_tok)
        has.append(counts > 0)
        n_tok += len(piece.enc.ids)
        n_unit += len(piece.units)
    cat = np.concatenate
    return _Flat(
        ids=cat(ids) if ids else np.zeros(0, np.int64),
        unit=cat(unit) if unit else np.zeros(0, np.int64),
        piece_of_token=cat(owner) if owner else np.zeros(0, np.int64),
        unit_first_token=cat(first) if first else np.zeros(0, np.int64),
        unit_has_tokens=cat(has) if has else np.zeros(0, bool),
        unit_component=cat([np.full(len(p.units), p.component, np.int64) for p in pieces])
        if pieces
        else np.zeros(0, np.int64),
        unit_cost=cat([p.costs for p in pieces]) if pieces else np.zeros(0, np.int64),
        unit_forced=cat([p.forced for p in pieces]) if pieces else np.zeros(0, bool),
        piece_token_start=np.asarray(tok_start, np.int64),
        piece_unit_start=np.asarray(unit_start, np.int64),
    )


def _segments(flat: _Flat, size: int) -> list[tuple[int, int]]:
    n = len(flat.ids)
    bounds: list[tuple[int, int]] = []
    a = 0
    while a < n:
        b = min(n, a + size)
        while b < n and flat.unit[b] >= 0 and flat.unit[b] == flat.unit[b - 1]:
            b += 1  # never cut a word between two segments
        bounds.append((a, b))
        a = b
    return bounds


def _pick(order: Sequence[int], cost: IntArray, budget: int) -> list[int]:
    taken: list[int] = []
    for u in order:
        c = int(cost[u])
        if c <= budget:
            taken.append(u)
            budget -= c
    return taken


def compress_pieces(
    scorer: Scorer,
    pieces: Sequence[Piece],
    free_budgets: Sequence[int],
    segment_tokens: int,
) -> Decision:
    """Decide which units of each piece survive. ``free_budgets[c]``: target tokens that the
    unforced units of component ``c`` may use in total."""
    sep = scorer.encode("\n\n").ids
    flat = _flatten(pieces, sep)
    n_units = len(flat.unit_cost)
    free = ~flat.unit_forced
    keep = flat.unit_forced.copy()
    density = np.full(n_units, np.nan, np.float32)
    n_comp = max(len(free_budgets), 1)
    free_cost = np.bincount(
        flat.unit_component[free], weights=flat.unit_cost[free], minlength=n_comp
    )
    rates = [
        min(1.0, free_budgets[c] / free_cost[c]) if free_cost[c] > 0 else 1.0 for c in range(n_comp)
    ]
    for c in range(n_comp):  # components with room for everything need no scoring
        if rates[c] >= 1.0:
            keep |= flat.unit_component == c
    undecided = ~keep
    need_tok = np.zeros(len(flat.ids), bool)
    tok_units = flat.unit >= 0
    need_tok[tok_units] = undecided[flat.unit[tok_units]]
    need_tok[flat.unit_first_token[undecided & ~flat.unit_has_tokens]] = True

    seg_size = max(8, min(segment_tokens, scorer.context // 4))
    stream = Stream(scorer)
    pending: list[IntArray] = []  # kept tokens not yet in the stream's cache
    started = False
    cum_cost = np.zeros(n_comp)
    cum_kept = np.zeros(n_comp)
    for a, b in _segments(flat, seg_size):
        seg_units = np.unique(flat.unit[a:b][flat.unit[a:b] >= 0])
        tokenless = np.flatnonzero(
            (~flat.unit_has_tokens) & (flat.unit_first_token >= a) & (flat.unit_first_token < b)
        )
        seg_units = np.union1d(seg_units, tokenless).astype(np.int64)
        todo = seg_units[undecided[seg_units]]
        if todo.size:
            nll = _segment_nll(scorer, stream, flat, pieces, a, b, pending, started, need_tok)
            started = True
            pending = []
            _decide(flat, a, nll, todo, rates, cum_cost, cum_kept, keep, density)
        kept_mask = np.ones(b - a, bool)
        inside = flat.unit[a:b] >= 0
        kept_mask[inside] = keep[flat.unit[a:b][inside]]
        pending.append(flat.ids[a:b][kept_mask])
    keeps = tuple(
        keep[s : s + len(p.units)].copy()
        for s, p in zip(flat.piece_unit_start, pieces, strict=True)
    )
    dens = tuple(
        density[s : s + len(p.units)].copy()
        for s, p in zip(flat.piece_unit_start, pieces, strict=True)
    )
    return Decision(keeps, dens)


def _segment_nll(
    scorer: Scorer,
    stream: Stream,
    flat: _Flat,
    pieces: Sequence[Piece],
    a: int,
    b: int,
    pending: list[IntArray],
    started: bool,
    need_tok: BoolArray,
) -> FloatArray:
    p = int(flat.piece_of_token[a])
    start = int(flat.piece_token_start[p])
    coarse = pieces[p].coarse_nll
    same_piece = bool(np.all(flat.piece_of_token[a:b] == p)) and flat.unit[a] >= 0
    covered = coarse is not None and b - start <= len(coarse)
    if not started and not pending and a == start and same_piece and covered:
        assert coarse is not None
        # Nothing precedes this segment: the coarse pass scored it in exactly this context.
        return coarse[a - start : b - start]
    append = np.concatenate(pending) if pending else np.zeros(0, np.int64)
    return stream.step(append, flat.ids[a:b], need_tok[a:b])


def _decide(
    flat: _Flat,
    a: int,
    nll: FloatArray,
    todo: IntArray,
    rates: Sequence[float],
    cum_cost: npt.NDArray[np.float64],
    cum_kept: npt.NDArray[np.float64],
    keep: BoolArray,
    density: FloatArray,
) -> None:
    seg_tok_units = flat.unit[a : a + len(nll)]
    inside = (seg_tok_units >= 0) & ~np.isnan(nll)
    sums = np.zeros(len(keep), np.float64)
    np.add.at(sums, seg_tok_units[inside], nll[inside])
    lonely = todo[~flat.unit_has_tokens[todo]]
    if lonely.size:
        sums[lonely] = nll[flat.unit_first_token[lonely] - a]
    cost = flat.unit_cost
    density[todo] = (sums[todo] / np.maximum(cost[todo], 1)).astype(np.float32)
    for c in np.unique(flat.unit_component[todo]):
        mine = todo[flat.unit_component[todo] == c]
        seg_cost = float(cost[mine].sum())
        target = int(np.floor(rates[c] * (cum_cost[c] + seg_cost) + 0.5))
        budget = max(0, target - int(cum_kept[c]))
        order = sorted(mine.tolist(), key=lambda u: (-float(density[u]), u))
        taken = _pick(order, cost, budget)
        keep[taken] = True
        cum_cost[c] += seg_cost
        cum_kept[c] += float(cost[taken].sum()) if taken else 0.0
