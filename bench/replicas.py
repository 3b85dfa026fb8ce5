"""Two proxy replicas over a Redis Cluster against one replica over one Redis, and a failover.

    .venv/bin/python -m bench.replicas [--quick]
    flock /tmp/lg-model.lock .venv/bin/python -m bench.replicas --real-model

Starts, each in its own process: the fast fake upstream of ``bench/overhead.py``, one
``redis-server``, a 3-primary Redis Cluster (``redis-cli --cluster create``), one
``linguagate compressor-worker``, two proxies on the single Redis and two on the cluster.
The worker runs the tests' tiny random model by default: a warm-cache request never calls
the model (its units come from Redis), so what is measured is the same without loading the
real small LM (``--real-model`` loads the packaged one).

For compression ``off`` and for warm-cache compression (every request's units already in the
shared cache: Redis lookups + splice, no model call) it measures at c=16, in alternating
rounds so that every configuration sees the same background load: the same request sent
directly to the upstream (the baseline), through one replica on the single Redis, through
two replicas on it (c=8 each), and through the two replicas on the cluster. Added latency is
proxied minus direct, per percentile.

Then, on a new cluster with a replica per primary and warm-cache load on two proxy replicas,
it kills the primary that holds the tenant's ledger slot and reports the failover gap:
seconds until a replica was promoted, requests not served from the cache (compression
skipped or recomputed) and the seconds they span, requests failed, and whether the ledger
counted exactly the requests served.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.overhead import REQUEST, _free_port, _pct, _wait_http

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support.redis_topologies: the tests' own Redis helpers

KEYS = {"off": "sk-bench-off", "warm": "sk-bench-warm"}
_PROMPTS = 8
_ROUNDS = 8


def _warm_body(i: int) -> bytes:
    import json

    from tests.support.tiny_lm import sample_text

    messages: list[dict[str, str]] = [{"role": "system", "content": "Answer briefly."}]
    for turn in range(3):
        messages.append({"role": "user", "content": sample_text(70, 1000 + 10 * i + turn)})
        messages.append({"role": "assistant", "content": sample_text(40, 2000 + 10 * i + turn)})
    messages.append({"role": "user", "content": f"What is case {i} about?"})
    return json.dumps({"model": "gpt-4o-mini", "messages": messages}).encode()


def _policies(folder: Path, *, tiny: bool) -> None:
    for name, mode in (("off", "off"), ("warm", "enforce")):
        digest = hashlib.sha256(KEYS[name].encode()).hexdigest()
        (folder / f"{name}.toml").write_text(
            f'[tenant]\nname = "bench-{name}"\napi_key_sha256 = ["{digest}"]\n\n'
            f'[compression]\nmode = "{mode}"\nrate = 0.5\nmin_tokens = 50\n'
            'models = ["gpt-*"]\nmax_compression_ms = 60000\n'
            # A random model finds every text out of distribution: the guard off for it.
            + ("ood_max_nll = 1000.0\n" if tiny else "")
        )


def _tiny_model(folder: Path) -> Path:
    from tests.support.tiny_lm import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass
class Result:
    start: float
    ms: float
    status: int
    compression: str = ""
    cache: str = ""


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    wall_s: float = 0.0

    def ok_ms(self) -> list[float]:
        return [r.ms for r in self.results if r.status == 200]

    @property
    def errors(self) -> int:
        return sum(r.status != 200 for r in self.results)


async def _load(urls: list[str], bodies: list[bytes], key: str, concurrency: int,
                count: int | None, stop: asyncio.Event | None = None) -> Run:
    """``concurrency`` workers spread over ``urls``; ``count`` requests, or until ``stop``."""
    run = Run()
    remaining = count if count is not None else 1 << 62
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(n: int) -> None:
            nonlocal remaining
            url = urls[n % len(urls)] + "/v1/chat/completions"
            i = n
            while remaining > 0 and not (stop is not None and stop.is_set()):
                remaining -= 1
                i += concurrency
                began = time.perf_counter()
                try:
                    async with session.post(url, data=bodies[i % len(bodies)],
                                            headers=headers) as response:
                        await response.read()
                        run.results.append(Result(
                            began, (time.perf_counter() - began) * 1000, response.status,
                            response.headers.get("x-linguagate-compression", ""),
                            response.headers.get("x-linguagate-cache", "")))
                except (aiohttp.ClientError, OSError, TimeoutError):
                    run.results.append(Result(began, (time.perf_counter() - began) * 1000, 0))

        began = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        run.wall_s = time.perf_counter() - began
    return run


def _merge(into: Run, more: Run) -> None:
    into.results += more.results
    into.wall_s += more.wall_s


class Stack:
    """Every process of the bench; ``close()`` stops them all."""

    def __init__(self, workdir: Path, *, real_model: bool) -> None:
        from tests.support.redis import RedisServer
        from tests.support.redis_topologies import start_cluster

        self.procs: list[subprocess.Popen[bytes]] = []
        self.single = RedisServer(workdir / "single")
        (workdir / "single").mkdir()
        self.single.start()
        # Latency on "a 3-node cluster" (three primaries, no replicas: on this shared 2-core
        # machine three replica processes would compete with the proxies for the CPU); the
        # failover gets its own cluster with a replica per primary (``failover_cluster``).
        self.cluster = start_cluster(workdir / "cluster", replicas=0)
        self.workdir = workdir
        self.up_port = _free_port()
        self._spawn([sys.executable, "-m", "bench.overhead", "--role", "upstream",
                     "--port", str(self.up_port)])
        self.worker_port = _free_port()
        model = [] if real_model else [
            "--compressor-model", str(_tiny_model(workdir / "tiny-model"))]
        self._spawn([sys.executable, "-m", "proxy", "compressor-worker",
                     "--port", str(self.worker_port), "--torch-threads", "1", *model])
        policies = workdir / "policies"
        policies.mkdir()
        _policies(policies, tiny=not real_model)
        self.single_url = self._proxy(policies, self.single.url)
        # A second replica on the single Redis: "two replicas" against "two replicas over a
        # cluster" isolates what the cluster costs from what a second process costs.
        self.pair_urls = [self.single_url, self._proxy(policies, self.single.url)]
        self.cluster_urls = [self._proxy(policies, self.cluster.url) for _ in range(2)]
        self.cluster_procs = self.procs[-2:]
        self.policies = policies
        proxies = (*self.pair_urls, *self.cluster_urls)
        for url in (f"http://127.0.0.1:{self.up_port}/v1/models", *(
                u + "/healthz" for u in proxies)):
            _wait_http(url, 60)
        _wait_worker(self.worker_port)
        for url in proxies:
            _wait_ready(url)

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.up_port}"

    def _spawn(self, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LINGUAGATE_UPSTREAM_API_KEY": "sk-org"}
        self.procs.append(subprocess.Popen(argv, cwd=ROOT, env=env))

    def _proxy(self, policies: Path, redis_url: str) -> str:
        port = _free_port()
        self._spawn([sys.executable, "-m", "proxy", "serve", "--port", str(port),
                     "--upstream", f"{self.direct_url}/v1", "--policies", str(policies),
                     "--redis-url", redis_url, "--compressor-url",
                     f"http://127.0.0.1:{self.worker_port}", "--log-level", "warning",
                     "--no-access-log"])
        return f"http://127.0.0.1:{port}"

    def failover_cluster(self) -> Any:
        """Replace the latency cluster with one that has a replica per primary, and restart the
        two cluster replicas on it."""
        from tests.support.redis_topologies import start_cluster

        for proc in self.cluster_procs:
            proc.terminate()
            proc.wait(timeout=15)
        self.cluster.stop()
        self.cluster = start_cluster(self.workdir / "failover-cluster", replicas=1)
        self.cluster_urls = [self._proxy(self.policies, self.cluster.url) for _ in range(2)]
        self.cluster_procs = self.procs[-2:]
        for url in self.cluster_urls:
            _wait_http(url + "/healthz", 60)
            _wait_ready(url)
        return self.cluster

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.cluster.stop()
        self.single.stop()


def _wait_worker(port: int, timeout_s: float = 300) -> None:
    import json
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if json.loads(r.read())["status"] == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the compressor worker did not load its model")


def _wait_ready(url: str, timeout_s: float = 120) -> None:
    """Until the proxy's engine is up: a request it skipped (compressor_loading) would freeze
    its uncompressed form as the conversation's prefix-stable form."""
    import json
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                if json.loads(r.read()).get("model", {}).get("status") == "ok":
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready")


def _warm(stack: Stack, bodies: list[bytes]) -> None:
    """Compress every warm prompt once per Redis, and check the next request is a hit."""
    for urls in (stack.pair_urls, stack.cluster_urls):
        _warm_urls(urls, bodies)


def _warm_urls(urls: list[str], bodies: list[bytes]) -> None:
    asyncio.run(_load(urls[:1], bodies, KEYS["warm"], 1, len(bodies)))
    check = asyncio.run(_load(urls, bodies, KEYS["warm"], 2, 2 * len(bodies)))
    verdicts = {(r.compression, r.cache) for r in check.results}
    if verdicts != {("applied", "hit")}:
        raise RuntimeError(f"warm-up did not leave every prompt cached: {verdicts}")


def _measure(stack: Stack, mode: str, bodies: list[bytes], count: int) -> dict[str, Run]:
    targets = {"direct": [stack.direct_url], "single": [stack.single_url],
               "pair": stack.pair_urls, "cluster": stack.cluster_urls}
    runs = {name: Run() for name in targets}
    for urls in targets.values():  # warm-up: connection pools
        asyncio.run(_load(urls, bodies, KEYS[mode], 16, 200))
    for _ in range(_ROUNDS):
        for name, urls in targets.items():
            _merge(runs[name], asyncio.run(
                _load(urls, bodies, KEYS[mode], 16, count // _ROUNDS)))
    return runs


def _ledger_requests(url: str, tenant: str) -> int:
    from proxy.accounting.ledger import RedisLedger

    async def read() -> int:
        ledger = RedisLedger.from_url(url)
        try:
            rows = await ledger.totals(tenant)
        finally:
            await ledger.close()
        return sum(r.requests for r in rows)

    return asyncio.run(read())


def _failover(stack: Stack, bodies: list[bytes], budget_s: float) -> dict[str, Any]:
    from proxy.store.redis import tenant_slot_namespace

    cluster = stack.failover_cluster()
    _warm_urls(stack.cluster_urls, bodies)
    victim = cluster.owner_of(tenant_slot_namespace("bench-warm") + ":ledger:models")
    time.sleep(2.5)  # the measurements' last records reach the ledger first
    before = _ledger_requests(cluster.url, "bench-warm")
    facts: dict[str, Any] = {}

    async def scenario() -> Run:
        stop = asyncio.Event()
        load = asyncio.create_task(
            _load(stack.cluster_urls, bodies, KEYS["warm"], 16, None, stop))
        await asyncio.sleep(2.0)
        facts["killed_at"] = time.perf_counter()
        await asyncio.to_thread(cluster.kill, victim)
        while True:
            roles = await asyncio.to_thread(cluster.roles)
            if victim.address not in roles and sum(r == "master" for r in roles.values()) == 3:
                break
            await asyncio.sleep(0.05)
        facts["promoted_at"] = time.perf_counter()
        await asyncio.sleep(budget_s)
        stop.set()
        return await load

    run = asyncio.run(scenario())
    time.sleep(3.0)  # the replicas' ledgers flush every second
    after = _ledger_requests(cluster.url, "bench-warm")
    killed, promoted = facts["killed_at"], facts["promoted_at"]
    degraded = [r.start for r in run.results
                if r.status == 200 and (r.compression, r.cache) != ("applied", "hit")]
    return {
        "requests": len(run.results),
        "failed": run.errors,
        "promotion_s": promoted - killed,
        "not_from_cache": len(degraded),
        "gap_s": (max(degraded) - min(degraded)) if degraded else 0.0,
        "gap_after_promotion_s": max(0.0, max(degraded) - promoted) if degraded else 0.0,
        "ledger_delta": after - before,
        "ok_requests": len(run.results) - run.errors,
    }


def _row(mode: str, runs: dict[str, Run]) -> dict[str, float]:
    d99 = _pct(runs["direct"].ok_ms(), 0.99)
    d50 = _pct(runs["direct"].ok_ms(), 0.5)
    row: dict[str, float] = {}
    for name in ("single", "pair", "cluster"):
        ms = runs[name].ok_ms()
        row[f"{name}_rps"] = len(ms) / runs[name].wall_s
        row[f"{name}_p50"] = _pct(ms, 0.5) - d50
        row[f"{name}_p99"] = _pct(ms, 0.99) - d99
        row[f"{name}_errors"] = runs[name].errors
    row["direct_rps"] = len(runs["direct"].ok_ms()) / runs["direct"].wall_s
    row["direct_p99"] = d99
    return row


def _table(rows: dict[str, dict[str, float]], failover: dict[str, Any], count: int) -> str:
    lines = [
        f"Generated by `python -m bench.replicas` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at the end. c=16, {count} requests per configuration in "
        f"{_ROUNDS} alternating rounds; added = proxied minus direct (same run), ms. Configs: "
        "1 = one replica on one Redis; 2 = two replicas on one Redis; 2C = two replicas on a "
        "3-primary cluster (no replicas). Redis, proxies and load generator share the CPUs.",
        "",
        "| mode | req/s direct | req/s 1 | req/s 2 | req/s 2C | added p50 1 / 2 / 2C "
        "| added p99 1 / 2 / 2C | p99 ratio 2C/2 | p99 ratio 2C/1 | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in rows.items():
        def ratio(a: str, b: str, r: dict[str, float] = r) -> str:
            return f"{r[a] / r[b]:.2f}" if r[b] > 0 else "n/a"

        lines.append(
            f"| {mode} | {r['direct_rps']:.0f} | {r['single_rps']:.0f} | {r['pair_rps']:.0f} "
            f"| {r['cluster_rps']:.0f} "
            f"| {r['single_p50']:+.2f} / {r['pair_p50']:+.2f} / {r['cluster_p50']:+.2f} "
            f"| {r['single_p99']:+.2f} / {r['pair_p99']:+.2f} / {r['cluster_p99']:+.2f} "
            f"| {ratio('cluster_p99', 'pair_p99')} | {ratio('cluster_p99', 'single_p99')} "
            f"| {int(r['single_errors'] + r['pair_errors'] + r['cluster_errors'])} |")
    f = failover
    lines += [
        "",
        "Failover (a 3-primary cluster with a replica each; warm-cache load, c=16 over two proxy "
        "replicas; the primary holding the tenant's ledger slot SIGKILLed):",
        "",
        "| requests | failed | kill → promotion s | requests not from cache | gap s (first → last "
        "such request) | gap after promotion s | ledger counted / served |",
        "|---|---|---|---|---|---|---|",
        f"| {f['requests']} | {f['failed']} | {f['promotion_s']:.2f} | {f['not_from_cache']} "
        f"| {f['gap_s']:.2f} | {f['gap_after_promotion_s']:.2f} "
        f"| {f['ledger_delta']} / {f['ok_requests']} |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    parser.add_argument("--real-model", action="store_true",
                        help="the packaged small LM in the worker "
                        "(wrap in flock /tmp/lg-model.lock)")
    args = parser.parse_args()
    count = 800 if args.quick else 3200
    workdir = Path(tempfile.mkdtemp(prefix="lg-replicas-"))
    warm_bodies = [_warm_body(i) for i in range(_PROMPTS)]
    stack = Stack(workdir, real_model=args.real_model)
    try:
        _warm(stack, warm_bodies)
        rows = {
            "compression off": _row("off", _measure(stack, "off", [REQUEST], count)),
            "warm-cache compression": _row("warm", _measure(stack, "warm", warm_bodies, count)),
        }
        failover = _failover(stack, warm_bodies, budget_s=5.0)
    finally:
        stack.close()
    print(_table(rows, failover, count))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
