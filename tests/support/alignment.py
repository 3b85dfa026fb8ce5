"""Alignment fixtures: a tiny base model saved as a folder, and synthetic pairs.

* ``tiny_base_dir``: the tiny random Llama + tokenizer written with ``save_pretrained``
  (session-scoped; loadable by ``linguagate align --base`` and by ``Compressor``).
* ``synthetic_pairs``: write ``n`` pairs whose answers share one style (so a few steps of
  training make held-out answers likelier).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.tiny_lm import build_tiny_model, sample_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["tiny_base_dir", "write_pairs"]

ANSWER = "Let's think step by step. The answer is 15 hours in total."


def write_pairs(path: Path, n: int, *, seed: int = 0) -> Path:
    """``n`` synthetic pairs: varied questions, answers in one fixed style."""
    rows = []
    for i in range(n):
        question = sample_text(12, seed * 1000 + i)
        rows.append({"messages": [{"role": "system", "content": "Answer briefly."},
                                  {"role": "user", "content": f"Question: {question}"}],
                     "response": f"{ANSWER} ({i % 3 + 1} days)", "model": "gpt-4o-mini"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_base_dir(tiny_tokenizer: PreTrainedTokenizerFast,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-base")
    tokenizer = tiny_tokenizer
    model = build_tiny_model(tokenizer, seed=3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
