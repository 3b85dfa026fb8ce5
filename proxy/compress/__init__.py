"""Prompt compression for LinguaGate: a clean-room LLMLingua (budget controller + ITPC).

Usable without the proxy::

    from proxy.compress import Compressor
    result = Compressor().compress("", demonstrations, question, rate=0.3)

Names are imported lazily: ``proxy.cli.compress`` (and so ``linguagate --help``)
must not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.compress.compressor import CompressionResult, Compressor
    from proxy.compress.lm import (
        LoadedLM,
        ModelNotInstalledError,
        ensure_default_model_dir,
        load_causal_lm,
    )
    from proxy.compress.protect import ProtectRules

__all__ = [
    "CompressionResult",
    "Compressor",
    "LoadedLM",
    "ModelNotInstalledError",
    "ProtectRules",
    "ensure_default_model_dir",
    "load_causal_lm",
]

_HOME = {
    "CompressionResult": "compressor",
    "Compressor": "compressor",
    "LoadedLM": "lm",
    "ModelNotInstalledError": "lm",
    "ensure_default_model_dir": "lm",
    "load_causal_lm": "lm",
    "ProtectRules": "protect",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'proxy.compress' has no attribute {name!r}")
    return getattr(importlib.import_module(f"proxy.compress.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
