"""Turning pairs into token sequences whose loss counts only the answer.

With a chat template the prompt is the template applied to the messages with the
generation prompt, and the answer is whatever the template adds for the assistant turn
(the response plus its end-of-turn marker), so the model learns where answers stop.
Without one, a plain ``role: text`` transcript is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.alignment.pairs import Pair

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["Example", "collate", "encode_pair", "encode_pairs", "prompt_answer_text"]

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """Token ids of prompt + answer; loss is taken from ``answer_start`` on."""

    ids: tuple[int, ...]
    answer_start: int

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.answer_start


def prompt_answer_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                       response: str) -> tuple[str, str]:
    """(prompt text, answer text) as the model sees them."""
    if getattr(tokenizer, "chat_template", None):
        prompt = str(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                   tokenize=False))
        full = str(tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}], tokenize=False))
        if full.startswith(prompt) and len(full) > len(prompt):
            return prompt, full[len(prompt):]
        return prompt, response + (tokenizer.eos_token or "")
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant: ", response + (tokenizer.eos_token or "")


def encode_pair(tokenizer: PreTrainedTokenizerBase, pair: Pair, max_tokens: int) -> Example:
    """Encode one pair, cutting the prompt's start (then the answer's end) beyond ``max_tokens``."""
    prompt, answer = prompt_answer_text(tokenizer, pair.as_chat(), pair.response)
    p_ids: list[int] = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    a_ids: list[int] = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not getattr(tokenizer, "chat_template", None) and tokenizer.bos_token_id is not None:
        p_ids = [int(tokenizer.bos_token_id), *p_ids]
    if len(p_ids) + len(a_ids) > max_tokens:
        # Keep at least half the window for the prompt: an answer without its question
        # teaches nothing about the target's conditional distribution.
        a_ids = a_ids[: max(1, max_tokens - min(len(p_ids), max_tokens // 2))]
        p_ids = p_ids[len(p_ids) - (max_tokens - len(a_ids)):]
    return Example(tuple(p_ids + a_ids), len(p_ids))


def encode_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair],
                 max_tokens: int) -> list[Example]:
    return [encode_pair(tokenizer, p, max_tokens) for p in pairs]


def collate(examples: Sequence[Example], pad_id: int,
            device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), right-padded; labels are IGNORE outside answers."""
    import torch

    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.ids)
        ids[row, :n] = torch.tensor(ex.ids, dtype=torch.long)
        mask[row, :n] = 1
        labels[row, ex.answer_start:n] = ids[row, ex.answer_start:n]
    return ids.to(device), mask.to(device), labels.to(device)
