"""CPU numerics: `auto` reads the CPU's flags (faked here), never picks emulated bf16, and the
choice is part of the model id. Runs the same on hosts with and without native bf16."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from proxy.compress import Compressor, lm
from proxy.compress.numerics import CpuFeatures, choose_numerics, read_cpu_features
from tests.support.tiny_lm import build_tiny_model, sample_text

# First lines of /proc/cpuinfo's "flags" on the kinds of hosts this runs on (abridged).
SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN4 = "fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16"
ICE_LAKE = "fpu sse2 avx2 avx512f avx512bw avx512_vnni"  # AVX-512 but bf16 only emulated
ZEN3 = "fpu sse2 avx avx2 fma"


def _cpuinfo(flags: str) -> str:
    return f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize(("flags", "native"), [
    (SAPPHIRE_RAPIDS, True), (ZEN4, True), (ICE_LAKE, False), (ZEN3, False), ("", False),
])
def test_auto_picks_bf16_only_where_the_cpu_does_it_natively(flags: str, native: bool) -> None:
    features = CpuFeatures.parse(_cpuinfo(flags))
    assert features.native_bf16 is native
    chosen = choose_numerics("auto", features)
    assert chosen.name == ("bf16" if native else "fp32")
    assert chosen.id_suffix == ("~bf16" if native else "")
    assert chosen.reason.startswith("auto: ")


def test_no_cpuinfo_or_another_architecture_keeps_fp32(tmp_path: Path) -> None:
    assert read_cpu_features(tmp_path / "missing", environ={}) == CpuFeatures()
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"  # aarch64 spells it differently
    assert choose_numerics("auto", CpuFeatures.parse(arm)).name == "fp32"


@pytest.mark.parametrize(("cap", "native"), [
    ("AVX512_CORE_VNNI", False), ("avx2", False), ("AVX512_CORE_AMX", True), ("ALL", True),
    ("AVX512_CORE_TYPO", False),  # an unknown cap is not trusted
])
def test_a_onednn_isa_cap_below_bf16_makes_auto_keep_fp32(
    tmp_path: Path, cap: str, native: bool
) -> None:
    # oneDNN then runs emulated bf16 kernels whatever the CPU has (bench/RESULTS.md,
    # "CPU numerics": 4.4x slower than fp32 at AVX512_CORE_VNNI on an AMX machine).
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(_cpuinfo(SAPPHIRE_RAPIDS))
    features = read_cpu_features(cpuinfo, environ={"ONEDNN_MAX_CPU_ISA": cap})
    chosen = choose_numerics("auto", features)
    assert chosen.name == ("bf16" if native else "fp32")
    assert f"oneDNN capped at {cap.lower()}" in chosen.reason
    assert read_cpu_features(cpuinfo, environ={"DNNL_MAX_CPU_ISA": cap}) == features
    assert read_cpu_features(cpuinfo, environ={}).native_bf16


def test_operator_overrides_win_and_say_when_bf16_is_emulated() -> None:
    slow = CpuFeatures.parse(_cpuinfo(ZEN3))
    fast = CpuFeatures.parse(_cpuinfo(ZEN4))
    assert choose_numerics("fp32", fast).name == "fp32"
    assert choose_numerics("bf16", fast).reason == "requested"
    emulated = choose_numerics("bf16", slow)
    assert emulated.name == "bf16" and "emulates bf16" in emulated.reason
    assert choose_numerics("bf16-matmul", fast).id_suffix == "~bf16-matmul"
    with pytest.raises(ValueError, match="cpu precision"):
        choose_numerics("int8", fast)


@pytest.fixture
def tiny_dir(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> Path:
    folder = tmp_path / "tiny"
    build_tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def use(flags: str) -> None:
        monkeypatch.setattr(lm, "read_cpu_features", lambda: CpuFeatures.parse(_cpuinfo(flags)))

    yield use


@pytest.fixture
def restore_matmul_precision() -> Iterator[None]:
    """`bf16-matmul` sets a process-wide flag: put it back for the other tests."""
    mkldnn: Any = torch.backends.mkldnn  # `matmul` is missing from torch's stubs
    matmul = mkldnn.matmul
    before = matmul.fp32_precision
    try:
        yield
    finally:
        matmul.fp32_precision = before


def test_the_choice_is_part_of_the_model_id(tiny_dir: Path, fake_cpu: Any) -> None:
    fake_cpu(ZEN3)
    plain = lm.load_causal_lm(str(tiny_dir), "cpu", cpu_precision="auto")
    assert plain.model.dtype == torch.float32 and "~" not in plain.model_id
    assert plain.numerics.startswith("cpu fp32 (auto: bf16 would be emulated")
    fake_cpu(SAPPHIRE_RAPIDS)
    fast = lm.load_causal_lm(str(tiny_dir), "cpu", cpu_precision="auto")
    assert fast.model.dtype == torch.bfloat16
    # (A folder's digest covers its config, which names the dtype: the suffix says why.)
    assert fast.model_id.endswith("~bf16") and fast.model_id != plain.model_id
    # The library's default stays the fp32 reference, whatever the host.
    assert lm.load_causal_lm(str(tiny_dir), "cpu").model_id == plain.model_id
    # An explicit dtype is taken as it is (the alignment trainer asks for fp32).
    assert lm.load_causal_lm(str(tiny_dir), "cpu", dtype=torch.float32).numerics == "cpu fp32"


def test_bf16_matmul_is_process_wide_and_later_fp32_loads_say_so(
    tiny_dir: Path, fake_cpu: Any, restore_matmul_precision: None
) -> None:
    fake_cpu(ZEN4)
    mkldnn: Any = torch.backends.mkldnn  # `matmul` is missing from torch's stubs
    matmul = mkldnn.matmul
    matmul.fp32_precision = "none"
    mixed = lm.load_causal_lm(str(tiny_dir), "cpu", cpu_precision="bf16-matmul")
    assert mixed.model.dtype == torch.float32 and mixed.model_id.endswith("~bf16-matmul")
    assert matmul.fp32_precision == "bf16"
    # fp32 asked for, but every fp32 matmul in the process is now rounded: the id must say it.
    later = lm.load_causal_lm(str(tiny_dir), "cpu", cpu_precision="fp32")
    assert later.model_id == mixed.model_id and "earlier load" in later.numerics


@pytest.mark.usefixtures("torch_single_thread")
def test_bf16_compresses_deterministically(tiny_dir: Path, fake_cpu: Any) -> None:
    fake_cpu(SAPPHIRE_RAPIDS)
    comp = Compressor(str(tiny_dir), "cpu", cpu_precision="auto")
    assert comp.numerics.startswith("cpu bf16") and comp.model_id.endswith("~bf16")
    demos = [sample_text(120, seed) for seed in range(4)]
    runs = {comp.compress("Answer briefly.", demos, "Which one?", 0.4).demonstrations
            for _ in range(2)}
    assert len(runs) == 1
