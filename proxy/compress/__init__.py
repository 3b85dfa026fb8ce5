"""Prompt compression for LinguaGate: a clean-room LLMLingua (budget controller + ITPC).

Usable without the proxy::

    from proxy.compress import Compressor
    result = Compressor().compress("", demonstrations, question, rate=0.3)
"""

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
