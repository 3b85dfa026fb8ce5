"""Budget controller: component budgets and the coarse, demonstration-level pass.

All budgets are in *target* tokens (what the upstream bills). Demonstrations are
ranked by perplexity under the small LM (more surprising = more information), or
question-aware by how likely they make the question (LongLLMLingua's
p(question | document)). Whole demonstrations are kept in rank order up to
``k`` times their share of the budget, so the token-level pass has room to choose;
the share that the coarse pass did not use is handed back (Δτ) to instruction and
question.

Each kept demonstration then gets its own token-level budget. ``fill="rank"``
(default) gives it out in rank order: the best demonstrations stay whole and one
more, where the budget runs out, is compressed token by token (the best-ranked of
the rest that keeps at least half of itself, else the smallest). This is the
extreme of LongLLMLingua's dynamic compression ratio, and a departure from the
paper's LLMLingua, which cuts ``k`` times the budget's worth of demonstrations at one
rate (``fill="uniform"``, where ``k`` applies): measured with a different small LM as
judge, fragments of every demonstration help a target less than no demonstrations at
all, and whole ones help more (bench/RESULTS.md, "Compressor").
Demonstrations are never reordered (a proxy must not move messages).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Budget", "Fill", "Shape", "needs_ranking", "plan_budget", "select_demonstrations"]

Fill = Literal["rank", "uniform"]


@dataclass(frozen=True)
class Budget:
    total: int  # target tokens the whole prompt may use
    instruction: int
    demonstrations: int
    question: int
    kept: tuple[int, ...]  # indices of demonstrations the coarse pass kept, original order
    demo_budgets: tuple[int, ...] = ()  # per kept demonstration (same order as ``kept``)


def select_demonstrations(
    costs: Sequence[int], scores: Sequence[float], budget: float, floor: float
) -> tuple[int, ...]:
    """Greedy by score (higher first, index breaks ties): keep each demonstration that fits
    ``budget``; then, if fewer than ``floor`` tokens were kept (the token-level pass needs at
    least its own budget to choose from), add the next best ones until they are."""
    order = _rank_order(scores)
    kept: list[int] = []
    used = 0
    for i in order:
        if costs[i] == 0 or used + costs[i] <= budget:
            kept.append(i)
            used += costs[i]
    for i in order:
        if used >= floor:
            break
        if i not in kept:
            kept.append(i)
            used += costs[i]
    return tuple(sorted(kept))


def _rank_order(scores: Sequence[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def _fill_in_rank_order(
    costs: Sequence[int], scores: Sequence[float], kept: Sequence[int], budget: int
) -> dict[int, int]:
    """Whole demonstrations in rank order while they fit; what is left goes to one more.

    That one is the best-ranked of the rest that keeps at least half of itself (a fragment
    of a long demonstration reads worse than most of a short one), else the smallest.
    """
    out: dict[int, int] = {}
    left = budget
    rest = [i for i in _rank_order(scores) if i in kept]
    while left > 0 and rest:
        pick = rest[0]
        if costs[pick] > left:
            halves = [i for i in rest if costs[i] <= 2 * left]
            pick = halves[0] if halves else min(rest, key=lambda i: (costs[i], rest.index(i)))
        # A pick smaller than what is left is whole, and the fill goes on.
        out[pick] = min(costs[pick], left)
        left -= out[pick]
        rest.remove(pick)
    return out


def _spread(costs: Sequence[int], kept: Sequence[int], budget: int) -> dict[int, int]:
    """The same rate for every kept demonstration (cumulative rounding: sums to ``budget``)."""
    whole = sum(costs[i] for i in kept)
    out: dict[int, int] = {}
    seen = given = 0
    for i in kept:
        seen += costs[i]
        share = math.floor(budget * seen / whole + 0.5) if whole else 0
        out[i] = share - given
        given = share
    return out


@dataclass(frozen=True)
class Shape:
    """Component sizes (target tokens) and the requested rates."""

    rate: float
    instruction_tokens: int
    demo_tokens: tuple[int, ...]
    question_tokens: int
    instruction_rate: float = 1.0
    question_rate: float = 1.0
    granularity_k: float = 1.0
    fill: Fill = "rank"

    def demo_rate(self) -> float:
        """τ_dems: what is left for demonstrations once instruction and question have theirs."""
        l_dem = sum(self.demo_tokens)
        if not l_dem:
            return 0.0
        total = self.instruction_tokens + self.question_tokens + l_dem
        fixed = (
            min(1.0, self.instruction_rate) * self.instruction_tokens
            + min(1.0, self.question_rate) * self.question_tokens
        )
        return max(0.0, (self.rate * total - fixed) / l_dem)


def needs_ranking(shape: Shape) -> bool:
    """Whether the coarse pass can drop anything (else its scoring is skipped)."""
    l_dem = sum(shape.demo_tokens)
    if len(shape.demo_tokens) < 2 or not l_dem:
        return False
    return shape.granularity_k * shape.demo_rate() * l_dem < l_dem


def plan_budget(shape: Shape, demo_scores: Sequence[float] | None) -> Budget:
    """Split ``shape.rate`` of the prompt into component budgets and pick demonstrations.

    ``demo_scores`` (higher = keep first) may be None when every demonstration
    fits anyway; the caller skips scoring then.
    """
    demo_tokens = shape.demo_tokens
    l_ins, l_que, l_dem = shape.instruction_tokens, shape.question_tokens, sum(demo_tokens)
    total = round(shape.rate * (l_ins + l_que + l_dem))
    tau_ins, tau_que = min(1.0, shape.instruction_rate), min(1.0, shape.question_rate)
    kept: tuple[int, ...] = tuple(range(len(demo_tokens)))
    if l_dem:
        tau_dems = shape.demo_rate()
        coarse = shape.granularity_k * tau_dems * l_dem
        if coarse < l_dem and demo_scores is not None:
            kept = select_demonstrations(demo_tokens, demo_scores, coarse, tau_dems * l_dem)
        kept_len = sum(demo_tokens[i] for i in kept)
        if l_ins + l_que and coarse > kept_len:
            delta = (coarse - kept_len) / (l_ins + l_que)
            tau_ins, tau_que = min(1.0, tau_ins + delta), min(1.0, tau_que + delta)
    ins = min(l_ins, math.floor(tau_ins * l_ins + 0.5))
    que = min(l_que, math.floor(tau_que * l_que + 0.5))
    dem = min(sum(demo_tokens[i] for i in kept), max(0, total - ins - que))
    if shape.fill == "rank" and demo_scores is not None:
        # The fill picks from every demonstration itself (k plays no part here).
        everyone = range(len(demo_tokens))
        shares = _fill_in_rank_order(demo_tokens, demo_scores, everyone, dem)
        # Demonstrations the fill never reached are dropped whole, not cut to nothing.
        kept = tuple(i for i in everyone if shares.get(i, 0) > 0 or demo_tokens[i] == 0)
    else:
        shares = _spread(demo_tokens, kept, dem)
    return Budget(total, ins, dem, que, kept, tuple(shares.get(i, 0) for i in kept))
