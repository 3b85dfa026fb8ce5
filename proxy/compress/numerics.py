"""CPU numerics for the small LM: what this host's CPU does natively, and what to run.

On a CPU with native bf16 (Intel AVX512_BF16 / AMX-BF16, AMD Zen 4+ AVX512_BF16) oneDNN runs
bf16 matrix products several times faster than fp32; on a CPU without it, bf16 is emulated
and measured 7.5x *slower* (bench/RESULTS.md, "CPU variants"). The choice is made once, at
load time, from the CPU's flags:

- ``fp32``: fp32 weights and fp32 products (the reference; the default without native bf16).
- ``bf16``: the model's weights and activations in bf16. Local to this model: nothing else in
  the process (the embedded upstream's model, other engines) changes.
- ``bf16-matmul``: fp32 weights, but oneDNN rounds the inputs of fp32 matrix products to bf16
  (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``). Closest to fp32, slower than
  ``bf16``, and process-wide: every fp32 CPU matmul in the process changes, the embedded
  upstream's included. Never picked by ``auto`` for that reason.

``auto`` picks ``bf16`` where the CPU has native bf16, else ``fp32``: it never picks
emulated bf16. "Native" means what oneDNN will run, not only what the CPU has: an operator (or a
container image) that caps oneDNN's instruction set below AVX512_BF16 with
``ONEDNN_MAX_CPU_ISA``/``DNNL_MAX_CPU_ISA`` gets emulated bf16 kernels on any CPU (measured on an
AMX machine capped at AVX512_CORE_VNNI: a bf16 Linear 4.4x slower than fp32, 9x at AVX2), so
``auto`` reads the cap too. The choice is part of the model identity in cache keys (``id_suffix``):
different numerics may give different bytes. Torch-free, so the CLI can report the choice
without importing torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "CPU_PRECISIONS",
    "CpuFeatures",
    "Numerics",
    "NumericsName",
    "choose_numerics",
    "read_cpu_features",
]

NumericsName = Literal["fp32", "bf16", "bf16-matmul"]
CPU_PRECISIONS = ("auto", "fp32", "bf16", "bf16-matmul")
# x86 /proc/cpuinfo flags meaning bf16 dot products in hardware (oneDNN's avx512_core_bf16
# and avx512_core_amx kernels). Other architectures: not trusted, auto keeps fp32.
_NATIVE_BF16 = ("avx512_bf16", "amx_bf16")
_SHOWN = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA, case-insensitive) by whether a cap at that level still
# allows native bf16 dot products. A cap not listed here is not trusted: auto keeps fp32.
_CAP_BELOW_BF16 = frozenset({"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core",
                             "avx512_core_vnni"})
_CAP_WITH_BF16 = frozenset({"avx512_core_bf16", "avx512_core_fp16", "avx512_core_amx",
                            "avx512_core_amx_fp16", "avx10_1_512", "avx10_1_512_amx",
                            "avx10_1_512_amx_fp16", "avx10_2_512", "avx10_2_512_amx_2",
                            "all", "default"})
_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU flags that matter here (from /proc/cpuinfo's first ``flags`` line)."""

    flags: frozenset[str] = frozenset()
    isa_cap: str | None = None  # oneDNN's ONEDNN_MAX_CPU_ISA, lower case, where set

    @classmethod
    def parse(cls, cpuinfo: str, isa_cap: str | None = None) -> CpuFeatures:
        for line in cpuinfo.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "flags":
                return cls(frozenset(value.split()), isa_cap)
        return cls(isa_cap=isa_cap)

    @property
    def native_bf16(self) -> bool:
        if self.isa_cap is not None and self.isa_cap not in _CAP_WITH_BF16:
            return False
        return any(flag in self.flags for flag in _NATIVE_BF16)

    def describe(self) -> str:
        shown = [flag for flag in _SHOWN if flag in self.flags]
        text = " ".join(shown) if shown else "no flags read"
        if self.isa_cap is None:
            return text
        known = self.isa_cap in _CAP_WITH_BF16 or self.isa_cap in _CAP_BELOW_BF16
        return f"{text}; oneDNN capped at {self.isa_cap}{'' if known else ' (unknown cap)'}"


def read_cpu_features(
    path: Path = Path("/proc/cpuinfo"), environ: Mapping[str, str] | None = None
) -> CpuFeatures:
    """This host's features and oneDNN's ISA cap; no flags where /proc/cpuinfo cannot be read
    (auto then keeps fp32)."""
    env = os.environ if environ is None else environ
    cap = next((env[v].strip().lower() for v in _CAP_VARIABLES if env.get(v, "").strip()), None)
    try:
        return CpuFeatures.parse(path.read_text(errors="replace"), cap)
    except OSError:
        return CpuFeatures(isa_cap=cap)


@dataclass(frozen=True)
class Numerics:
    """What the small LM runs in on a CPU, and why (for the log and ``/readyz``)."""

    name: NumericsName
    reason: str

    @property
    def id_suffix(self) -> str:
        # fp32 keeps the ids (and cache entries) written before numerics were a choice.
        return "" if self.name == "fp32" else f"~{self.name}"

    def describe(self) -> str:
        return f"cpu {self.name} ({self.reason})"


def choose_numerics(requested: str, features: CpuFeatures) -> Numerics:
    """The numerics for ``requested`` (one of ``CPU_PRECISIONS``) on a CPU with ``features``."""
    if requested not in CPU_PRECISIONS:
        raise ValueError(f"cpu precision must be one of {', '.join(CPU_PRECISIONS)}: {requested!r}")
    native = features.native_bf16
    if requested == "auto":
        if native:
            return Numerics("bf16", f"auto: native bf16 ({features.describe()})")
        return Numerics("fp32", f"auto: bf16 would be emulated ({features.describe()})")
    if requested == "fp32":
        return Numerics("fp32", "requested")
    name: NumericsName = "bf16" if requested == "bf16" else "bf16-matmul"
    if native:
        return Numerics(name, "requested")
    return Numerics(name, "requested; this CPU emulates bf16: expect it slower than fp32")
