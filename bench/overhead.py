"""Added latency of the proxy over calling the upstream directly.

    python bench/overhead.py [--quick] [--access-log]

Starts a fast fake upstream and the proxy (`linguagate serve`, one uvicorn worker with
uvloop + httptools) in their own processes, so the load generator (aiohttp, this process)
does not share their GIL. For concurrency 1, 16 and 64, non-streaming and streaming, it
measures the same request sent directly to the upstream and through the proxy, and prints a
Markdown table: p50/p99 of total latency (and of time to first body byte for streams), the
added latency (proxy minus direct, per percentile), errors, and the proxy's CPU milliseconds
per request (from /proc/<pid>/stat: the figure that noise on a shared machine disturbs least).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

KEY = "sk-bench-tenant"
_ROUNDS = 4
STREAM_EVENTS = 10
REQUEST = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise the plot of Hamlet in three sentences."},
        ],
        "temperature": 0.2,
    }
).encode()
STREAM_REQUEST = REQUEST[:-1] + b', "stream": true, "stream_options": {"include_usage": true}}'


# ---------------------------------------------------------------- fake upstream (subprocess)
def _upstream_app() -> Any:
    completion = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hamlet " * 40},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 30, "completion_tokens": 40, "total_tokens": 70},
        }
    ).encode()
    chunk = (
        b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
        b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hamlet "},'
        b'"finish_reason":null}],"usage":null}\n\n'
    )
    json_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(completion)).encode()),
    ]
    sse_headers = [(b"content-type", b"text/event-stream")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = "startup" if message["type"] == "lifespan.startup" else "shutdown"
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if b'"stream": true' in body:
            await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
            for _ in range(STREAM_EVENTS):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": completion})

    return app


def _run_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(
        _upstream_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=4096,
    )


# ---------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout_s: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def _cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks * 1000.0 / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- load generator
@dataclass
class Sample:
    ttfb: list[float]
    total: list[float]
    errors: int
    wall_s: float


async def _load(url: str, body: bytes, concurrency: int, count: int, stream: bool) -> Sample:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    ttfb: list[float] = []
    total: list[float] = []
    errors = 0
    remaining = count

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        first = None
                        async for _chunk in response.content.iter_any():
                            if first is None:
                                first = time.perf_counter()
                        end = time.perf_counter()
                        if response.status != 200:
                            errors += 1
                            continue
                except (aiohttp.ClientError, OSError):
                    errors += 1
                    continue
                ttfb.append(((first or end) - start) * 1000)
                total.append((end - start) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Sample(ttfb, total, errors, time.perf_counter() - began)


def _merge(into: Sample, more: Sample) -> None:
    into.ttfb += more.ttfb
    into.total += more.total
    into.errors += more.errors
    into.wall_s += more.wall_s


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    parser.add_argument("--access-log", action="store_true", help="keep uvicorn's access log on")
    parser.add_argument("--role", choices=["upstream"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        _run_upstream(args.port)
        return 0

    counts = {1: 300, 16: 1600, 64: 3200}
    if args.quick:
        counts = {c: n // 4 for c, n in counts.items()}
    load_before = os.getloadavg()[0]
    up_port, proxy_port = _free_port(), _free_port()
    policies = Path(tempfile.mkdtemp(prefix="lg-bench-"))
    import hashlib

    digest = hashlib.sha256(KEY.encode()).hexdigest()
    (policies / "bench.toml").write_text(
        f'[tenant]\nname = "bench"\napi_key_sha256 = ["{digest}"]\n\n[compression]\nmode = "off"\n'
    )
    env = {**os.environ, "LINGUAGATE_UPSTREAM_API_KEY": "sk-bench-org"}
    upstream = subprocess.Popen(
        [sys.executable, __file__, "--role", "upstream", "--port", str(up_port)]
    )
    serve = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--port",
        str(proxy_port),
        "--upstream",
        f"http://127.0.0.1:{up_port}/v1",
        "--policies",
        str(policies),
        "--log-level",
        "warning",
    ]
    if not args.access_log:
        serve.append("--no-access-log")
    proxy = subprocess.Popen(serve, env=env)
    try:
        _wait_http(f"http://127.0.0.1:{proxy_port}/healthz")
        _wait_http(f"http://127.0.0.1:{up_port}/v1/models")
        rows = _measure(up_port, proxy_port, proxy.pid, counts)
    finally:
        for process in (proxy, upstream):
            process.terminate()
            process.wait(timeout=10)
    print(_table(rows, args.access_log, load_before))
    return 0


def _measure(
    up_port: int, proxy_port: int, proxy_pid: int, counts: dict[int, int]
) -> list[dict[str, object]]:
    direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    proxy_url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
    rows: list[dict[str, object]] = []
    for stream in (False, True):
        body = STREAM_REQUEST if stream else REQUEST
        asyncio.run(_load(proxy_url, body, 8, 200, stream))  # warm-up: pools, caches
        asyncio.run(_load(direct_url, body, 8, 200, stream))
        for concurrency, count in counts.items():
            # Alternate direct and proxied rounds so that both see the same background load.
            direct, proxied = Sample([], [], 0, 0.0), Sample([], [], 0, 0.0)
            cpu_ms = 0.0
            for _ in range(_ROUNDS):
                _merge(
                    direct,
                    asyncio.run(_load(direct_url, body, concurrency, count // _ROUNDS, stream)),
                )
                cpu_before = _cpu_ms(proxy_pid)
                _merge(
                    proxied,
                    asyncio.run(_load(proxy_url, body, concurrency, count // _ROUNDS, stream)),
                )
                cpu_ms += _cpu_ms(proxy_pid) - cpu_before
            cpu_ms /= count
            rows.append(
                {
                    "stream": stream,
                    "c": concurrency,
                    "n": count,
                    "direct": direct,
                    "proxied": proxied,
                    "cpu_ms": cpu_ms,
                }
            )
    return rows


def _table(rows: list[dict[str, object]], access_log: bool, load_before: float) -> str:
    lines = [
        f"Proxy overhead, {os.cpu_count()} CPUs, 1 uvicorn worker (uvloop, httptools), "
        f"access log {'on' if access_log else 'off'}; load average before the run "
        f"{load_before:.2f}; times in ms",
        "",
        "| mode | c | n | metric | direct p50 | direct p99 | proxy p50 | proxy p99 "
        "| added p50 | added p99 | errors | proxy CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        direct: Sample = row["direct"]  # type: ignore[assignment]
        proxied: Sample = row["proxied"]  # type: ignore[assignment]
        metrics = [("total", "total")] + ([("TTFB", "ttfb")] if row["stream"] else [])
        for label, attr in metrics:
            d, p = getattr(direct, attr), getattr(proxied, attr)
            d50, d99, p50, p99 = _pct(d, 0.5), _pct(d, 0.99), _pct(p, 0.5), _pct(p, 0.99)
            lines.append(
                f"| {'stream' if row['stream'] else 'json'} | {row['c']} | {row['n']} | {label} "
                f"| {d50:.2f} | {d99:.2f} | {p50:.2f} | {p99:.2f} "
                f"| {p50 - d50:+.2f} | {p99 - d99:+.2f} "
                f"| {proxied.errors + direct.errors} | {row['cpu_ms']:.3f} |"
            )
    mean = statistics.fmean(float(r["cpu_ms"]) for r in rows)  # type: ignore[arg-type]
    lines += ["", f"Mean proxy CPU per request: {mean:.3f} ms"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
