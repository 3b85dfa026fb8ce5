"""Two proxy replicas share a real Redis Cluster, a Sentinel-managed primary, or a TLS server
with an ACL user, through the real openai SDK: shared cache hits, exact ledger totals, and a
primary killed and replaced while requests flow (none may fail); a conversation's
prefix-stable forms identical from either replica. The cluster and the Sentinel topology
also over TLS only (``rediss+cluster://``, ``rediss+sentinel://``; no failover there).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.store.redis import tenant_slot_namespace
from tests.support.compression import (
    CompressionStack,
    ScriptedEngine,
    few_shot,
    open_compression_stack,
)
from tests.support.redis_topologies import (
    Node,
    redis_has_tls,
    start_cluster,
    start_sentinel,
    start_tls_server,
)
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.integration

TENANT = "team-a"
MODEL = "gpt-4o-mini"
PROMPTS = [few_shot(900 + i, shots=2, words=60) for i in range(4)]
RECOVERY_BUDGET_S = 10.0


@pytest.fixture
def replicas(fake_upstream: FakeUpstream, tiny_compressor: Any, tmp_path: Path
             ) -> Iterator[Callable[[str], list[CompressionStack]]]:
    """``replicas(url)``: two proxies (own compressor, cache and ledger clients) on one Redis."""
    with ExitStack() as stack:

        def start(url: str) -> list[CompressionStack]:
            out = []
            for i in range(2):
                folder = tmp_path / f"policies-{i}"
                folder.mkdir()
                out.append(stack.enter_context(open_compression_stack(
                    fake_upstream, folder, ScriptedEngine(tiny_compressor), redis_url=url)))
            return out

        yield start


def chat(sdk: openai.OpenAI, messages: list[dict[str, Any]]) -> dict[str, str]:
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    raw.parse()
    return dict(raw.headers)


def readyz(stack: CompressionStack) -> dict[str, Any]:
    return dict(httpx.get(stack.server.url + "/readyz", timeout=5).json()["redis"])


def report(url: str) -> dict[str, Any]:
    """``linguagate report --redis-url URL --json`` for the tenant (a separate process)."""
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "report", "--redis-url", url, "--tenant", TENANT,
         "--json"], capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    rows = json.loads(out.stdout)
    return rows[0] if rows else {"requests": 0, "original_tokens": 0}


@dataclass
class Tally:
    """Every successful request (the ledger must count exactly these) and every failure."""

    requests: int = 0
    original_tokens: int = 0
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def chat(self, sdk: openai.OpenAI, messages: list[dict[str, Any]]) -> dict[str, str]:
        try:
            headers = chat(sdk, messages)
        except Exception as exc:  # every failure is a finding: keep it
            with self._lock:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            raise
        with self._lock:
            self.requests += 1
            self.original_tokens += int(headers["x-linguagate-original-tokens"])
        return headers


@dataclass
class Load:
    """Threads sending the prompts in turn to both replicas until stopped."""

    stacks: list[CompressionStack]
    tally: Tally
    threads: int = 2
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self, n: int) -> None:
        clients = [s.client(TENANT) for s in self.stacks]
        i = n
        while not self._stop.is_set():
            i += 1
            try:
                self.tally.chat(clients[i % 2], PROMPTS[i % len(PROMPTS)])
            except Exception:
                continue  # counted in the tally
            time.sleep(0.01)
        for client in clients:
            client.close()

    def start(self) -> None:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)


def warm_and_share(stacks: list[CompressionStack], tally: Tally) -> None:
    """Each prompt compressed once through replica 0, then a cache hit on replica 1."""
    for messages in PROMPTS:
        with stacks[0].client(TENANT) as sdk:
            first = tally.chat(sdk, messages)
        stacks[0].wait_idle()
        with stacks[1].client(TENANT) as sdk:
            second = tally.chat(sdk, messages)
        assert first["x-linguagate-compression"] == "applied", first
        assert (first["x-linguagate-cache"], second["x-linguagate-cache"]) == ("miss", "hit")
        assert second["x-linguagate-forwarded-tokens"] == first["x-linguagate-forwarded-tokens"]


def assert_forms_shared(stacks: list[CompressionStack], tally: Tally) -> None:
    """A conversation's first turn through replica 0, its next turn through replica 1: the
    earlier messages go upstream exactly as replica 0 sent them (prefix-stable forms, shared
    through Redis)."""
    turn1 = few_shot(950, shots=2, words=60)
    with stacks[0].client(TENANT) as sdk:
        assert tally.chat(sdk, turn1)["x-linguagate-compression"] == "applied"
    first = stacks[0].upstream.last().json()["messages"]
    turn2 = [*turn1, {"role": "assistant", "content": "Case 950 is about hours."},
             {"role": "user", "content": "And how many minutes is that?"}]
    with stacks[1].client(TENANT) as sdk:
        tally.chat(sdk, turn2)
    second = stacks[1].upstream.last().json()["messages"]
    assert second[: len(first)] == first


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.1)
    return time.monotonic()


def all_hits(stacks: list[CompressionStack], tally: Tally) -> bool:
    """Both replicas see Redis up and serve every prompt from the shared cache."""
    for stack in stacks:
        if readyz(stack)["status"] != "ok":
            return False
        with stack.client(TENANT) as sdk:
            if any(tally.chat(sdk, m)["x-linguagate-cache"] != "hit" for m in PROMPTS):
                return False
    return True


def assert_ledger_exact(url: str, tally: Tally) -> None:
    """The shared ledger counts every request exactly once, across both replicas."""
    wait_for(lambda: report(url)["requests"] >= tally.requests, 15,
             f"ledger caught up ({tally.requests} sent, {report(url)})")
    time.sleep(2.5)  # more flushes: a batch written twice would show now
    row = report(url)
    assert (row["requests"], row["original_tokens"]) == (tally.requests, tally.original_tokens)


def run_failover(stacks: list[CompressionStack], url: str, kill: Callable[[], None],
                 promoted: Callable[[], bool]) -> dict[str, float]:
    """Warm the shared cache, start load on both replicas, kill the primary, and time the
    promotion and the return to normal; no request may fail, the ledger must be exact."""
    tally = Tally()
    warm_and_share(stacks, tally)
    assert_forms_shared(stacks, tally)
    load = Load(stacks, tally)
    load.start()
    try:
        time.sleep(1.0)
        kill()
        killed_at = time.monotonic()
        promoted_at = wait_for(promoted, 30, "replica promoted")
        normal_at = wait_for(lambda: all_hits(stacks, tally), RECOVERY_BUDGET_S,
                             "back to normal after the promotion")
        time.sleep(0.5)
    finally:
        load.stop()
    assert tally.failures == [], tally.failures[:5]
    assert tally.requests > 50
    assert_ledger_exact(url, tally)
    return {"killed_to_promoted_s": promoted_at - killed_at,
            "promoted_to_normal_s": normal_at - promoted_at}


def test_cluster_failover_two_replicas(
    replicas: Callable[[str], list[CompressionStack]], tmp_path: Path
) -> None:
    cluster = start_cluster(tmp_path / "cluster")
    try:
        stacks = replicas(cluster.url)
        # The primary holding the tenant's ledger slot: the ledger must buffer and resend.
        victim = cluster.owner_of(tenant_slot_namespace(TENANT) + ":ledger:models")
        replica_of_victim = set(cluster.roles())

        def promoted() -> bool:
            roles = cluster.roles()
            return (victim.address not in roles
                    and sum(r == "master" for r in roles.values()) == 3)

        times = run_failover(stacks, cluster.url, lambda: cluster.kill(victim), promoted)
        info = readyz(stacks[1])
        assert info["mode"] == "cluster" and victim.address not in info["primaries"]
        assert len(info["primaries"]) == 3 and set(info["primaries"]) <= replica_of_victim
        print(f"cluster failover: {times}")
    finally:
        cluster.stop()


def test_sentinel_failover_two_replicas(
    replicas: Callable[[str], list[CompressionStack]], tmp_path: Path
) -> None:
    sentinel = start_sentinel(tmp_path / "sentinel")
    try:
        stacks = replicas(sentinel.url)
        assert readyz(stacks[0])["primary"] == sentinel.primary.address
        times = run_failover(
            stacks, sentinel.url, sentinel.primary.kill,
            lambda: sentinel.primary_address() == sentinel.replica.address)
        info = readyz(stacks[0])
        assert (info["mode"], info["service"]) == ("sentinel", sentinel.service)
        assert info["primary"] == sentinel.replica.address
        print(f"sentinel failover: {times}")
    finally:
        sentinel.stop()


def require_tls() -> None:
    if not redis_has_tls():
        pytest.skip("this redis-server was built without TLS (redis-server --tls-port fails)")


def assert_tls_only(node: Node) -> None:
    """The node's port does not answer a plaintext PING (its TLS layer waits for a handshake
    or drops the connection): the proxy really spoke TLS to it."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=0.5) as plain:
        plain.sendall(b"PING\r\n")
        try:
            answer = plain.recv(64)
        except OSError:  # the timeout, or a reset
            answer = b""
    assert b"PONG" not in answer, answer


def test_tls_cluster_two_replicas(
    replicas: Callable[[str], list[CompressionStack]], tmp_path: Path
) -> None:
    """``rediss+cluster://``: 3 primaries with a replica each on TLS ports only, the cluster
    bus and replication over TLS, client certificates required."""
    require_tls()
    cluster = start_cluster(tmp_path / "cluster", tls=True)
    try:
        assert cluster.url.startswith("rediss+cluster://")
        assert_tls_only(cluster.nodes[0])
        stacks = replicas(cluster.url)
        tally = Tally()
        warm_and_share(stacks, tally)
        assert_forms_shared(stacks, tally)
        primaries = sorted(a for a, role in cluster.roles().items() if role == "master")
        assert len(primaries) == 3
        for stack in stacks:
            assert readyz(stack) == {"status": "ok", "mode": "cluster",
                                     "primaries": primaries, "replicas": 3}
        assert_ledger_exact(cluster.url, tally)
    finally:
        cluster.stop()


def test_tls_sentinel_two_replicas(
    replicas: Callable[[str], list[CompressionStack]], tmp_path: Path
) -> None:
    """``rediss+sentinel://``: a primary, a replica syncing over TLS and three sentinels on
    TLS ports (TLS to the data nodes and to each other), client certificates required."""
    require_tls()
    sentinel = start_sentinel(tmp_path / "sentinel", tls=True)
    try:
        assert sentinel.url.startswith("rediss+sentinel://")
        assert_tls_only(sentinel.sentinels[0])
        assert_tls_only(sentinel.primary)
        stacks = replicas(sentinel.url)
        tally = Tally()
        warm_and_share(stacks, tally)
        assert_forms_shared(stacks, tally)
        for stack in stacks:
            assert readyz(stack) == {"status": "ok", "mode": "sentinel",
                                     "service": sentinel.service,
                                     "primary": sentinel.primary.address, "replicas": 1}
        assert_ledger_exact(sentinel.url, tally)
    finally:
        sentinel.stop()


def test_tls_with_acl_user_and_client_certificate(
    replicas: Callable[[str], list[CompressionStack]], tmp_path: Path
) -> None:
    require_tls()
    server = start_tls_server(tmp_path / "tls")
    try:
        stacks = replicas(server.url())
        tally = Tally()
        warm_and_share(stacks, tally)
        assert_forms_shared(stacks, tally)
        assert readyz(stacks[0]) == {"status": "ok", "mode": "standalone",
                                     "address": f"127.0.0.1:{server.node.port}",
                                     "role": "master", "replicas": 0}
        assert_ledger_exact(server.url(), tally)
    finally:
        server.node.kill()


def test_tls_verification_failure_fails_open(
    start_compression_proxy: Callable[..., Any], tmp_path: Path
) -> None:
    """A CA that did not sign the server: Redis is reported down, requests still succeed."""
    require_tls()
    from tests.support.redis_topologies import make_certs

    server = start_tls_server(tmp_path / "tls")
    make_certs(tmp_path / "other", names=())
    try:
        url = server.url(ssl_ca_certs=str(tmp_path / "other" / "ca.pem"))
        with start_compression_proxy(redis_url=url) as stack:
            with stack.client(TENANT) as sdk:
                headers = chat(sdk, PROMPTS[0])
            assert headers["x-linguagate-compression"] == "applied"
            status = readyz(stack)
            assert status["status"] == "down" and status["mode"] == "standalone"
    finally:
        server.node.kill()
