"""Prompt compression (clean-room LLMLingua) for LinguaGate."""

from proxy.compress.lm import LoadedLM, ModelNotInstalledError, ensure_default_model_dir, load_causal_lm

__all__ = ["LoadedLM", "ModelNotInstalledError", "ensure_default_model_dir", "load_causal_lm"]
