"""`/readyz` names the numerics the small LM runs in (and a remote engine's lack of them)."""

from __future__ import annotations

from types import SimpleNamespace

from proxy.compress import Compressor
from proxy.compression.service import CompressorService


def test_ready_status_names_the_numerics(tiny_compressor: Compressor) -> None:
    service = CompressorService.ready(tiny_compressor)
    assert service.status == ("ok", "tiny-llama@test (cpu fp32)")
    remote = SimpleNamespace(model_id="m@1", device=SimpleNamespace(type="cpu"))
    assert CompressorService.ready(remote).status == ("ok", "m@1")
    service.close()
