"""Measuring alignment: answer likelihood under a model, with full or compressed prompts.

Two questions, both on held-out pairs:

1. **Perplexity of the target answers** under the base and the aligned small LM (the
   training objective itself, on pairs it never saw).
2. **What the compressor's choices are worth**: compress each held-out prompt at the same
   rate with the base and with the aligned compressor, then measure the likelihood of the
   target answer given each compressed prompt under one fixed *judge* model. A compressor
   that better shares the target's sense of what matters keeps the tokens the answer needs,
   so the answer's NLL given its output is lower.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.alignment.examples import IGNORE, Example, collate, encode_pairs
from proxy.alignment.pairs import Pair

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from proxy.compression.service import CompressionEngine

__all__ = [
    "CompressedScore",
    "answer_nll",
    "compress_prompt",
    "compressed_answer_nll",
    "format_table",
    "token_loss",
]


def token_loss(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed NLL over answer tokens, number of answer tokens) for one batch."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :]
    target = labels[:, 1:]
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    return total, int((target != IGNORE).sum().item())


def answer_nll(model: PreTrainedModel, examples: Sequence[Example], *, pad_id: int,
               batch_size: int = 4) -> float | None:
    """Mean NLL (nats) per answer token over ``examples`` (None when there are none)."""
    import torch

    if not examples:
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # type: ignore[no-untyped-call]
    total, count = 0.0, 0
    # Similar lengths together: less padding, same result.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start:start + batch_size]]
            loss, n = token_loss(model, *collate(batch, pad_id, device))
            total += float(loss)
            count += n
    if was_training:
        model.train()
    return total / count if count else None


def compress_prompt(engine: CompressionEngine, pair: Pair, rate: float) -> Pair:
    """``pair`` with its last user message compressed to ``rate`` (the question kept whole
    would leave nothing to choose on one-message prompts, so the whole message is context)."""
    index = max((i for i, (role, _) in enumerate(pair.messages) if role == "user"), default=-1)
    if index < 0:
        return pair
    role, text = pair.messages[index]
    result = engine.compress("", [text], "", rate)
    messages = list(pair.messages)
    messages[index] = (role, result.demonstrations[0])
    return Pair(tuple(messages), pair.response, pair.source)


@dataclass(frozen=True)
class CompressedScore:
    label: str
    nll: float | None  # judge's mean NLL per answer token
    rate: float  # achieved: compressed prompt characters / original, in target tokens


def compressed_answer_nll(
    judge: PreTrainedModel, judge_tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair],
    compressors: Sequence[tuple[str, Callable[[Pair], Pair] | None]], *,
    rate_of: Callable[[Pair, Pair], float],
    max_tokens: int, batch_size: int = 4,
) -> list[CompressedScore]:
    """For each (label, compress-function or None for the original prompt): the judge's NLL
    of the held-out answers given the (compressed) prompts, and the mean achieved rate."""
    pad = _pad_id(judge_tokenizer)
    scores: list[CompressedScore] = []
    for label, fn in compressors:
        prompts = [fn(p) if fn is not None else p for p in pairs]
        rates = [rate_of(o, c) for o, c in zip(pairs, prompts, strict=True)]
        examples = encode_pairs(judge_tokenizer, prompts, max_tokens)
        nll = answer_nll(judge, examples, pad_id=pad, batch_size=batch_size)
        scores.append(CompressedScore(label, nll, sum(rates) / len(rates) if rates else 1.0))
    return scores


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def ppl(nll: float | None) -> str:
    return f"{math.exp(nll):.3f}" if nll is not None else "n/a"


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A plain fixed-width table (also valid Markdown)."""
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
