from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from proxy.accounting.ledger import UsageRecord
from proxy.accounting.metrics import OTHER_MODEL, Metrics
from proxy.store.redis import BackendStatus


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def lbl(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


APPLIED = UsageRecord(
    "research",
    "gpt-4o",
    "applied",
    original_tokens=1000,
    forwarded_tokens=400,
    compression_ms=120.0,
    cache_hits=2,
    cache_misses=1,
    upstream_prompt_tokens=410,
    upstream_completion_tokens=30,
)


def test_applied_request_counts_tokens_rate_and_latency() -> None:
    m = Metrics()
    m.observe(APPLIED)
    s = samples(m)
    tm = lbl(tenant="research", model="gpt-4o")
    assert (
        s[("linguagate_requests_total", lbl(tenant="research", model="gpt-4o", outcome="applied"))]
        == 1
    )
    assert s[("linguagate_original_tokens_total", tm)] == 1000
    assert s[("linguagate_forwarded_tokens_total", tm)] == 400
    assert s[("linguagate_saved_tokens_total", tm)] == 600
    assert s[("linguagate_cache_lookups_total", lbl(tenant="research", result="hit"))] == 2
    assert s[("linguagate_cache_lookups_total", lbl(tenant="research", result="miss"))] == 1
    assert (
        s[
            (
                "linguagate_upstream_tokens_total",
                lbl(tenant="research", model="gpt-4o", kind="completion"),
            )
        ]
        == 30
    )
    assert (
        s[("linguagate_compression_rate_bucket", lbl(tenant="research", model="gpt-4o", le="0.4"))]
        == 1
    )
    assert (
        s[("linguagate_compression_rate_bucket", lbl(tenant="research", model="gpt-4o", le="0.3"))]
        == 0
    )
    assert s[("linguagate_compression_seconds_sum", tm)] == 0.12
    assert s[("linguagate_compression_seconds_count", tm)] == 1


def test_shadow_and_skipped_requests() -> None:
    m = Metrics()
    m.observe(
        UsageRecord("t", "m", "shadow", 1000, 1000, would_forward_tokens=250, compression_ms=5)
    )
    m.observe(UsageRecord("t", "m", "skipped", 50, 50, skip_reason="below_min_tokens"))
    s = samples(m)
    tm = lbl(tenant="t", model="m")
    assert s[("linguagate_saved_tokens_total", tm)] == 0
    assert s[("linguagate_shadow_would_save_tokens_total", tm)] == 750
    assert s[("linguagate_compression_rate_count", tm)] == 1
    assert s[("linguagate_compression_rate_sum", tm)] == 0.25
    assert s[("linguagate_skips_total", lbl(tenant="t", model="m", reason="below_min_tokens"))] == 1
    assert s[("linguagate_compression_seconds_count", tm)] == 1


def test_registries_are_per_instance() -> None:
    a, b = Metrics(), Metrics()
    a.observe(APPLIED)
    assert (
        "linguagate_original_tokens_total",
        lbl(tenant="research", model="gpt-4o"),
    ) not in samples(b)


def test_model_labels_are_bounded() -> None:
    m = Metrics(max_models=2)
    for model in ("a", "b", "c", "d", "a"):
        m.observe(UsageRecord("t", model, "off", 1, 1))
    s = samples(m)
    assert s[("linguagate_requests_total", lbl(tenant="t", model="a", outcome="off"))] == 2
    assert s[("linguagate_requests_total", lbl(tenant="t", model=OTHER_MODEL, outcome="off"))] == 2


def test_backend_status_becomes_redis_up_and_errors() -> None:
    m = Metrics()
    state = {"ok": True, "errors": 0}
    m.add_backend(
        "cache", lambda: BackendStatus("redis", state["ok"] is True, int(state["errors"]))
    )
    m.add_backend("ledger", lambda: BackendStatus("memory", True, 0))
    assert samples(m)[("linguagate_redis_up", lbl(component="cache"))] == 1
    state.update(ok=False, errors=3)
    s = samples(m)
    assert s[("linguagate_redis_up", lbl(component="cache"))] == 0
    assert ("linguagate_redis_up", lbl(component="ledger")) not in s
    assert s[("linguagate_backend_errors_total", lbl(component="cache", backend="redis"))] == 3
