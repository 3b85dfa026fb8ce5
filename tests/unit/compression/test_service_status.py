"""`/readyz` names the numerics the small LM runs in; batching a bf16 CPU model warns."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.compress import Compressor
from proxy.compression.service import Batching, CompressorService


def test_ready_status_names_the_numerics(tiny_compressor: Compressor) -> None:
    service = CompressorService.ready(tiny_compressor)
    assert service.status == ("ok", "tiny-llama@test (cpu fp32)")
    remote = SimpleNamespace(model_id="m@1", device=SimpleNamespace(type="cpu"))
    assert CompressorService.ready(remote).status == ("ok", "m@1")
    service.close()


class _Engine:
    def __init__(self, numerics: str) -> None:
        self.model_id, self.numerics = "m@1", numerics
        self.device = SimpleNamespace(type="cpu")

    def with_batcher(self, batcher: object) -> _Engine:
        return self


def test_batching_a_bf16_cpu_model_warns_that_bytes_follow_the_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for numerics, warned in (("cpu bf16 (auto: native bf16)", True),
                             ("cpu bf16-matmul (requested)", False), ("cpu fp32", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="linguagate.compressor"):
            engine: Any = _Engine(numerics)  # the service reads only id, device, numerics
            service = CompressorService.ready(engine, batching=Batching("on"))
        assert ("outputs depend on the batch" in caplog.text) is warned
        service.close()
