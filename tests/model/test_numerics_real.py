"""The real default model in what `--cpu-precision auto` picks on this host (bf16 where the CPU
does it natively, else fp32): same decisions as the fp32 reference on a short prompt, same
bytes run after run, and the numerics in the model id."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from proxy.compress import Compressor, ProtectRules
from proxy.compress.numerics import choose_numerics, read_cpu_features
from tests.model.test_compress_real import DOCS, QUESTION

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def auto() -> Iterator[Compressor]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Compressor(device="cpu", cpu_precision="auto")
    torch.set_num_threads(before)


def test_auto_runs_what_the_cpu_does_natively(auto: Compressor) -> None:
    chosen = choose_numerics("auto", read_cpu_features())
    assert auto.numerics.startswith(f"cpu {chosen.name} (auto: ")
    assert auto.model_id.startswith("SmolLM2-135M-Instruct@")
    assert auto.model_id.endswith(chosen.id_suffix)


def test_auto_keeps_the_answer_and_repeats_its_bytes(auto: Compressor) -> None:
    rules = ProtectRules(regexes=(r"silver-otter-\d+",))
    runs = [auto.compress("", DOCS, QUESTION, 0.35, question_aware=True, protect=rules)
            for _ in range(2)]
    assert runs[0].demonstrations == runs[1].demonstrations
    assert "silver-otter-417" in runs[0].demonstrations[2]
