"""Prometheus view of the compressor engines: queue, batching and GPU memory, read at scrape time.

Served by the proxy's ``/metrics`` (every engine it holds: the default and the
policy-named ones) and by ``linguagate compressor-worker``'s ``/metrics`` (the models it
serves, where the GPU is). Nothing is kept here: each scrape reads the services' own
counters, so there is no second copy to keep in sync. ``model`` is the engine's name as
the operator wrote it (``--compressor-model``, ``--extra-model``, a policy's ``model``),
``default`` for the packaged default: never anything a client sent.

    linguagate_compressor_up{model}                        1 loaded, 0 loading/down/idle
    linguagate_compressor_pending{model}                   compressions running + waiting
    linguagate_compressor_pending_limit{model}             past it: queue_full, fail open
    linguagate_compressor_batch_forwards_total{model}      batched model forwards run
    linguagate_compressor_batch_jobs_total{model}          forward jobs they carried
    linguagate_compressor_batch_tokens_total{model,kind}   kind: real|padded (rows x width)
    linguagate_compressor_batch_rejected_total{model}      jobs refused (queue bound)
    linguagate_compressor_batch_queued{model}              jobs waiting for a batch now
    linguagate_compressor_peak_gpu_bytes{model}            torch's peak allocated (GPU only)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.compression.service import CompressorService

__all__ = ["CompressorCollector"]

Source = Callable[[], Mapping[str, CompressorService]]


class CompressorCollector(Collector):
    """Collects ``source()`` (engine name -> service) at every scrape."""

    def __init__(self, source: Source) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        up = _gauge("up", "1 when the small LM is loaded")
        pending = _gauge("pending", "Compressions running or waiting")
        limit = _gauge(
            "pending_limit",
            "Pending compressions past which requests go upstream uncompressed (queue_full)",
        )
        forwards = _counter("batch_forwards", "Batched model forwards run")
        jobs = _counter("batch_jobs", "Forward jobs carried by batched forwards")
        tokens = _counter(
            "batch_tokens",
            "Tokens of batched forwards: the requests' own (real), rows x width computed (padded)",
            "kind",
        )
        rejected = _counter("batch_rejected", "Forward jobs refused: the batch queue was full")
        queued = _gauge("batch_queued", "Forward jobs waiting for a batch")
        peak = _gauge("peak_gpu_bytes", "Peak GPU memory allocated by this process (torch)")
        for name, service in sorted(self._source().items()):
            up.add_metric([name], 1.0 if service.status[0] == "ok" else 0.0)
            pending.add_metric([name], float(service.executor.pending))
            limit.add_metric([name], float(service.executor.max_pending))
            stats = service.batch_stats
            if stats is not None:
                forwards.add_metric([name], float(stats.forwards))
                jobs.add_metric([name], float(stats.jobs))
                tokens.add_metric([name, "real"], float(stats.tokens))
                tokens.add_metric([name, "padded"], float(stats.padded_tokens))
                rejected.add_metric([name], float(stats.rejected))
                queued.add_metric([name], float(stats.queued))
            gpu = service.peak_gpu_bytes()
            if gpu is not None:
                peak.add_metric([name], float(gpu))
        yield from (up, pending, limit, forwards, jobs, tokens, rejected, queued, peak)


def _gauge(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"linguagate_compressor_{name}", doc, labels=["model"])


def _counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(f"linguagate_compressor_{name}", doc, labels=["model", *labels])
