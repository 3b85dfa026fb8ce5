"""A local folder's model id follows its weights' contents, not where or when it was copied."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from proxy.compress.lm import load_causal_lm
from tests.support.tiny_lm import build_tiny_model


def _save(folder: Path, tokenizer: PreTrainedTokenizerFast, seed: int) -> None:
    build_tiny_model(tokenizer, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_copied_folder_keeps_its_id_and_new_weights_change_it(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    folder = tmp_path / "m"
    _save(folder, tiny_tokenizer, seed=0)
    original = load_causal_lm(str(folder), "cpu", dtype=torch.float32).model_id
    assert original.startswith(f"{folder}@")
    # The same folder arriving on another host: copied again, other mtimes.
    shutil.move(folder, tmp_path / "away")
    shutil.copytree(tmp_path / "away", folder)
    for weights in folder.glob("*.safetensors"):
        os.utime(weights, ns=(1, 1))
    assert load_causal_lm(str(folder), "cpu", dtype=torch.float32).model_id == original
    _save(folder, tiny_tokenizer, seed=1)  # same shapes and config, other values
    assert load_causal_lm(str(folder), "cpu", dtype=torch.float32).model_id != original
