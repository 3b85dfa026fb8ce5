"""The budget controller: which demonstrations survive and how the budget is shared."""

from __future__ import annotations

import pytest

from proxy.compress import Compressor, ProtectRules
from proxy.compress.budget import Shape, plan_budget
from tests.support.tiny_lm import sample_text

COSTS = (422, 292, 311, 224, 304, 314, 249, 242)  # the GSM8K 8-shot prompt's demonstrations
SCORES = (0.5, 3.0, 1.0, 2.0, 0.1, 0.2, 0.3, 0.4)  # rank order: 1, 3, 2, 0, 7, 6, 5, 4


def _shape(rate: float, **kw: object) -> Shape:
    return Shape(rate, 20, COSTS, 40, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.33, 0.5, 0.8])
def test_rank_fill_keeps_the_best_whole_and_cuts_at_most_one(rate: float) -> None:
    budget = plan_budget(_shape(rate), SCORES)
    shares = dict(zip(budget.kept, budget.demo_budgets, strict=True))
    assert sum(budget.demo_budgets) == budget.demonstrations
    assert budget.instruction + budget.question + budget.demonstrations == budget.total
    cut = [i for i, b in shares.items() if b < COSTS[i]]
    assert len(cut) <= 1
    ranked = sorted(range(len(COSTS)), key=lambda i: -SCORES[i])
    whole = [i for i, b in shares.items() if b == COSTS[i]]
    # Whole ones = a prefix of the rank order: none is skipped for a smaller, worse one.
    assert set(whole) == set(ranked[: len(whole)])
    for i in cut:  # keeps at least half of itself, or is the smallest of the rest
        rest = [j for j in ranked if j not in whole]
        assert 2 * shares[i] >= COSTS[i] or COSTS[i] == min(COSTS[j] for j in rest)
    assert all(b > 0 for b in budget.demo_budgets)


def test_a_budget_below_every_demonstration_goes_to_the_best_that_keeps_half() -> None:
    budget = plan_budget(Shape(0.0, 0, COSTS, 0), SCORES)  # rate 0 -> target set below
    assert budget.kept == ()
    small = plan_budget(Shape(200 / sum(COSTS), 0, COSTS, 0), SCORES)
    # Best-ranked is 1 (292 tokens): 200 of it is more than half.
    assert small.kept == (1,) and small.demo_budgets == (200,)
    tiny = plan_budget(Shape(100 / sum(COSTS), 0, COSTS, 0), SCORES)
    assert tiny.kept == (3,)  # nothing keeps half: the smallest (224 tokens) gets the 100


def test_uniform_fill_cuts_every_kept_demonstration_alike() -> None:
    budget = plan_budget(_shape(0.33, fill="uniform", granularity_k=2.0), SCORES)
    assert sum(budget.demo_budgets) == budget.demonstrations
    rates = [b / COSTS[i] for i, b in zip(budget.kept, budget.demo_budgets, strict=True)]
    assert max(rates) - min(rates) < 0.02
    assert max(rates) < 0.9


def test_nothing_to_rank_spreads_the_budget() -> None:
    budget = plan_budget(_shape(0.9), None)
    assert budget.kept == tuple(range(len(COSTS)))
    assert sum(budget.demo_budgets) == budget.demonstrations


@pytest.mark.usefixtures("torch_single_thread")
def test_kept_demonstrations_come_back_whole_but_one(tiny_compressor: Compressor) -> None:
    demos = [sample_text(120, s) for s in range(6)]
    # No protected text (sample_text has URLs): a dropped demonstration then comes back empty.
    plain = ProtectRules(code=False, json=False, url=False)
    result = tiny_compressor.compress("Solve it.", demos, "How many hours?", 0.4, protect=plain)
    kept = [d for d in result.demonstrations if d]
    whole = [d for d, o in zip(result.demonstrations, demos, strict=True) if d and d == o]
    assert 1 <= len(kept) < len(demos)
    assert len(whole) >= len(kept) - 1
    uniform = tiny_compressor.compress(
        "Solve it.", demos, "How many hours?", 0.4, fill="uniform", granularity_k=2.0,
        protect=plain,
    )
    assert sum(1 for d, o in zip(uniform.demonstrations, demos, strict=True) if d == o) == 0
