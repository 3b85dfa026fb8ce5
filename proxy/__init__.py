"""LinguaGate: an OpenAI-compatible reverse proxy that compresses prompts."""

__version__ = "0.1.0"

__all__ = ["__version__"]
