"""`linguagate compressor-worker` and the proxy's `RemoteEngine`: real HTTP on loopback.

The worker runs the tiny compressor with batching on; the proxy side must get exactly the
bytes a local compressor gives, and the worker's back-pressure must reach the proxy as
`QueueFull` (which the request path turns into `skipped: queue_full`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.compress import Compressor, ProtectRules
from proxy.compression.remote import RemoteEngine, RemoteError
from proxy.compression.service import Batching, CompressorService
from proxy.compression.worker import create_worker_app
from proxy.core.executor import QueueFull
from proxy.core.settings import Settings
from proxy.services import _default_engine
from tests.support.prometheus import sample
from tests.support.servers import ServerThread
from tests.support.tiny_lm import sample_text

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class _Gated:
    """An engine that blocks until released (and fails on 'EXPLODE')."""

    model_id = "gated@1"
    device = None

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def compress(
        self, instruction: str, demonstrations: list[str], question: str, rate: float, **_: Any
    ) -> Any:
        if "EXPLODE" in question:
            raise RuntimeError("secret prompt text must not leak")
        self.entered.set()
        self.release.wait(10)
        raise RuntimeError("released")

    def mean_nll(self, text: str) -> float:
        return 0.0


@pytest.fixture(scope="module")
def worker(tiny_compressor: Compressor) -> Iterator[ServerThread]:
    service = CompressorService.ready(tiny_compressor, max_pending=16, batching=Batching("on"))
    with ServerThread(create_worker_app(service), name="compressor-worker") as server:
        yield server


def test_remote_compressions_are_the_local_bytes(
    worker: ServerThread, tiny_compressor: Compressor
) -> None:
    remote = RemoteEngine.connect(worker.url)
    try:
        assert remote.model_id == tiny_compressor.model_id and remote.device.type == "cpu"
        demos = [sample_text(60, 1), sample_text(45, 2)]
        cases: list[dict[str, Any]] = [
            {},
            {"question_aware": True, "question_rate": 0.8},
            {
                "protect": ProtectRules(number=True, regexes=(r"\d+ hours",)),
                "target_model": "gpt-4o",
            },
        ]
        for options in cases:
            args = ("Instruction: " + sample_text(15, 3), demos, sample_text(12, 4), 0.4)
            got = remote.compress(*args, **options)
            assert got == _without_time(tiny_compressor.compress(*args, **options), got)
        text = sample_text(40, 5)
        assert remote.mean_nll(text) == tiny_compressor.mean_nll(text)
    finally:
        remote.close()


def _without_time(local: Any, remote: Any) -> Any:
    """``local`` with the remote's timing (the only field that may differ)."""
    from dataclasses import replace

    return replace(local, elapsed_ms=remote.elapsed_ms)


def test_the_proxy_runs_as_many_remote_calls_as_it_admits(worker: ServerThread) -> None:
    settings = Settings(compressor_url=worker.url, compress_queue=12)
    engine = _default_engine(settings)
    assert isinstance(engine, RemoteEngine)
    service = CompressorService.ready(engine, max_pending=settings.compress_queue)
    try:
        assert service.executor.max_workers == 12
    finally:
        service.close()
        engine.close()


def test_a_full_worker_queue_is_queue_full_and_errors_hide_the_prompt() -> None:
    gated = _Gated()
    service = CompressorService.ready(gated, max_pending=1)
    with ServerThread(create_worker_app(service), name="gated-worker") as server:
        remote = RemoteEngine.connect(server.url)
        try:
            with pytest.raises(RemoteError) as failure:
                remote.compress("", [], "EXPLODE", 0.5)
            assert "RuntimeError" in str(failure.value) and "secret" not in str(failure.value)
            first = threading.Thread(target=_swallow, args=(remote,))
            first.start()
            assert gated.entered.wait(10)
            with pytest.raises(QueueFull):
                remote.compress("", ["x"], "q", 0.5)
            gated.release.set()
            first.join(10)
        finally:
            gated.release.set()
            remote.close()


def _swallow(remote: RemoteEngine) -> None:
    with pytest.raises(RemoteError):
        remote.compress("", ["x"], "q", 0.5)


def test_settings_reject_a_compressor_url_without_a_scheme() -> None:
    from proxy.core.settings import SettingsError

    with pytest.raises(SettingsError):
        Settings(compressor_url="localhost:8181")


class _Counting:
    def __init__(self, inner: Compressor) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.device = inner.device
        self.calls = 0

    def compress(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner.compress(*args, **kwargs)

    def mean_nll(self, text: str) -> float:
        return self.inner.mean_nll(text)


def test_several_workers_are_used_in_turn_and_must_serve_one_model(
    tiny_compressor: Compressor,
) -> None:
    a, b = _Counting(tiny_compressor), _Counting(tiny_compressor)
    services = [CompressorService.ready(e, max_pending=4) for e in (a, b, _Gated())]
    with (
        ServerThread(create_worker_app(services[0]), name="worker-a") as wa,
        ServerThread(create_worker_app(services[1]), name="worker-b") as wb,
        ServerThread(create_worker_app(services[2]), name="worker-c") as wc,
    ):
        remote = RemoteEngine.connect(f"{wa.url}, {wb.url}")
        try:
            for i in range(4):
                remote.compress("", [sample_text(30, i)], "", 0.5)
        finally:
            remote.close()
        assert (a.calls, b.calls) == (2, 2)
        with pytest.raises(RemoteError, match="different models"):
            RemoteEngine.connect(f"{wa.url},{wc.url}")




def test_worker_metrics_report_batching_and_the_queue_bound(worker: ServerThread) -> None:
    import httpx

    remote = RemoteEngine.connect(worker.url)
    try:
        remote.compress("", [sample_text(50, 7), sample_text(40, 8)], "", 0.5)
    finally:
        remote.close()
    text = httpx.get(worker.url + "/metrics", timeout=10).text
    assert sample(text, "linguagate_compressor_up", model="default") == 1.0
    assert sample(text, "linguagate_compressor_pending", model="default") == 0.0
    assert sample(text, "linguagate_compressor_pending_limit", model="default") == 16.0
    forwards = sample(text, "linguagate_compressor_batch_forwards_total", model="default")
    jobs = sample(text, "linguagate_compressor_batch_jobs_total", model="default")
    assert jobs >= forwards >= 1
    real = sample(text, "linguagate_compressor_batch_tokens_total", model="default", kind="real")
    padded = sample(
        text, "linguagate_compressor_batch_tokens_total", model="default", kind="padded"
    )
    assert 0 < real <= padded
    assert sample(text, "linguagate_compressor_batch_queued", model="default") == 0.0
    assert "linguagate_compressor_peak_gpu_bytes{" not in text  # CPU: no GPU series
