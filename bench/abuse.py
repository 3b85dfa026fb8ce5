"""The abuse probe of issue 13: hostile and clumsy clients against `linguagate serve`.

    python bench/abuse.py [--bodies 6000] [--slow 1000] [--header-timeout S] [--body-timeout S]

Starts a recording fake upstream and two proxies (org-key mode and bring-your-own-key mode,
one uvicorn worker each, default limits unless given) in their own processes, then runs:

* fuzzed bodies (seeded): valid requests with hostile values, random JSON, byte mutations,
  truncations, deep nesting, to both endpoints in both modes, the proxy key in every header a
  client may use. Failed: a 5xx, a proxy error that is not the OpenAI envelope, a 2xx whose
  upstream body differs from the bytes sent, or a proxy key seen by the upstream;
* dot-segment paths (`/v1/../x`, `%2e%2e`, `..%2f`): failed unless 400 and not forwarded;
* huge headers (8 MB, 100,000 headers, 101 headers, 65 KiB): failed unless 431 and not
  forwarded; malformed HTTP: failed unless a 400 in the OpenAI envelope;
* slow clients (`--slow` half-sent requests at once: silent, headers unfinished, body
  unfinished): failed unless cut off (408) within the timeout + 2 s;
* a 32 MB body beside small requests: `/healthz` and a small chat request are timed in a
  loop while the big body is read, parsed, counted and forwarded (target: p99 <= 50 ms).

Prints a Markdown table of tried / failed per kind, and the latency figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

KEY = "sk-lg-abuse-tenant"
ORG_KEY = "sk-org-abuse"
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- fake upstream (subprocess)
def _upstream_app(keys: list[bytes]) -> Any:
    stats = {"requests": 0, "leaks": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer: dict[str, Any]
        if scope["path"] == "/__stats":
            answer = dict(stats)
        else:
            leak = any(k in v for _, v in scope["headers"] for k in keys)
            stats["requests"] += 1
            stats["leaks"] += leak
            answer = {"sha": hashlib.sha256(body).hexdigest(), "leak": leak,
                      "path": scope["path"]}
        payload = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    return app


def _run_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(_upstream_app([KEY.encode()]), host="127.0.0.1", port=port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False, backlog=4096)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


# ---------------------------------------------------------------- fuzzed bodies (seeded)
def _text(rng: random.Random) -> str:
    pools = ["hello", "ünïcødé", "\u0000\u001f", "\U0001f600", "\\", '"', "a" * 300]
    parts = [rng.choice(pools) if rng.random() < 0.6 else chr(rng.randrange(0x110000))
             for _ in range(rng.randrange(4))]
    if rng.random() < 0.2:
        parts.append(chr(rng.randrange(0xD800, 0xE000)))  # a lone surrogate (escaped in JSON)
    return "".join(parts)


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice([None, True, False, 0, -1, 2**70, 1e308, -0.0, 0.5, _text(rng),
                           _text(rng), ""])
    if roll < 0.75:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_text(rng): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _request(rng: random.Random, chat: bool) -> dict[str, Any]:
    model = rng.choice(["gpt-4o-mini", "gpt-4o", "gpt-4o\ud800", _text(rng)])
    body: dict[str, Any] = {"model": model if rng.random() < 0.9 else _value(rng)}
    roles = ["system", "developer", "user", "assistant", "tool", "function", _text(rng)]
    if chat:
        body["messages"] = [
            {"role": rng.choice(roles),
             "content": _text(rng) if rng.random() < 0.7 else
             [{"type": "text", "text": _text(rng)}, {"type": "image_url", "image_url": {}}]}
            for _ in range(rng.randrange(1, 4))
        ] if rng.random() < 0.9 else _value(rng)
    else:
        body["prompt"] = _text(rng) if rng.random() < 0.8 else _value(rng)
    for name in rng.sample(["stream", "temperature", "n", "tools", "metadata", "x_unknown"], 2):
        body[name] = rng.choice([True, False]) if name == "stream" else _value(rng)
    return body


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randrange(1, 6)):
        op, at = rng.random(), rng.randrange(len(data) + 1)
        if op < 0.4 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op < 0.7:
            data[at:at] = rng.randbytes(rng.randrange(1, 8))
        else:
            del data[at:at + rng.randrange(1, 16)]
    return bytes(data)


def fuzzed_body(rng: random.Random, chat: bool) -> bytes:
    valid = json.dumps(_request(rng, chat)).encode()
    roll = rng.random()
    if roll < 0.45:
        return valid
    if roll < 0.55:
        return json.dumps(_request(rng, chat), ensure_ascii=False).encode("utf-8", "replace")
    if roll < 0.75:
        return _mutate(rng, valid)
    if roll < 0.83:
        return valid[: rng.randrange(len(valid))]
    if roll < 0.9:
        return json.dumps(_value(rng)).encode()
    if roll < 0.95:
        depth = rng.choice([129, 1000, 5000, 100_000])
        return b'{"model":"m","messages":[],"prompt":"p","x":' + b"[" * depth + b"]" * depth + b"}"
    return rng.choice([b"", b"null", b"1" * 5000, b'{"model":1e999}', b"\xff\xfe{}",
                       b'{"model":"m","messages":[],"n":' + b"9" * 4400 + b"}"])


# ---------------------------------------------------------------- checks
@dataclass
class Row:
    kind: str
    tried: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    def fail(self, note: str) -> None:
        self.failed += 1
        if len(self.notes) < 3:
            self.notes.append(note[:120])


def _is_envelope(content: bytes) -> bool:
    try:
        error = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


def _key_headers(rng: random.Random, byo: bool) -> dict[str, str]:
    place = rng.choice(["authorization", "api-key", "x-linguagate-key", "both"]
                       + (["anonymous"] if byo else []))
    if place == "authorization":
        return {"authorization": f"Bearer {KEY}"}
    if place == "both":
        return {"authorization": "Bearer sk-team-upstream", "x-linguagate-key": KEY,
                "api-key": KEY}
    if place == "anonymous":
        return {"authorization": "Bearer sk-team-upstream"}
    return {place: KEY}


async def fuzz(proxies: dict[str, str], count: int, seed: int) -> Row:
    row = Row(f"fuzzed bodies (seed {seed})")
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        mode = ("org", "byo")[i % 2]
        chat = (i // 2) % 2 == 0
        jobs.append((mode, chat, fuzzed_body(rng, chat), _key_headers(rng, mode == "byo")))
    limit = asyncio.Semaphore(32)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:

        async def one(mode: str, chat: bool, body: bytes, headers: dict[str, str]) -> None:
            url = proxies[mode] + ("/v1/chat/completions" if chat else "/v1/completions")
            async with limit:
                try:
                    r = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    row.fail(f"{mode}: {type(exc).__name__}")
                    return
            if r.status_code >= 500:
                row.fail(f"{mode}: HTTP {r.status_code} {r.text[:60]}")
            elif r.status_code >= 300:  # the upstream only answers 200: this is the proxy's
                if not _is_envelope(r.content):
                    row.fail(f"{mode}: HTTP {r.status_code} not OpenAI-shaped")
            else:
                seen = r.json()
                if seen.get("leak"):
                    row.fail(f"{mode}: proxy key upstream ({sorted(headers)})")
                if seen.get("sha") != hashlib.sha256(body).hexdigest():
                    row.fail(f"{mode}: forwarded body differs")

        row.tried = count
        await asyncio.gather(*(one(*job) for job in jobs))
    return row


def _raw(port: int, request: bytes, timeout: float = 15.0) -> tuple[bytes, float]:
    """Send raw bytes; the answer until the proxy closes, and how long that took."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks), time.perf_counter() - started


def _status(answer: bytes) -> int:
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def _body(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


def raw_probe(kind: str, port: int, requests: list[bytes], expect: int, repeat: int,
              upstream_count: Callable[[], int]) -> Row:
    row = Row(kind)
    for request in requests * repeat:
        row.tried += 1
        before = upstream_count()
        answer, _ = _raw(port, request)
        if upstream_count() != before:
            row.fail(f"forwarded upstream (HTTP {_status(answer)})")
        elif _status(answer) != expect or not _is_envelope(_body(answer)):
            first_line = answer.split(b"\r\n")[0]
            row.fail(f"HTTP {_status(answer)}: {first_line!r}")
    return row


# ---------------------------------------------------------------- slow clients
async def slow_clients(port: int, count: int, header_timeout: float,
                       body_timeout: float) -> list[Row]:
    kinds = {
        "silent": (b"", header_timeout),
        "headers unfinished": (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n",
                               header_timeout),
        "body unfinished": (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                            b"authorization: Bearer " + KEY.encode() + b"\r\n"
                            b"content-length: 1000\r\n\r\n{\"model\":", body_timeout),
    }

    async def one(prefix: bytes, timeout: float) -> tuple[int, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.perf_counter()
        writer.write(prefix)
        try:
            answer = await asyncio.wait_for(reader.read(), timeout + 5)
        except (TimeoutError, OSError):
            answer = b""
        elapsed = time.perf_counter() - started
        writer.close()
        return _status(answer), elapsed

    per_kind = max(count // len(kinds), 1)
    tasks = {name: [asyncio.ensure_future(one(prefix, timeout)) for _ in range(per_kind)]
             for name, (prefix, timeout) in kinds.items()}
    rows = []
    for name, futures in tasks.items():
        timeout = kinds[name][1]
        results = await asyncio.gather(*futures)
        row = Row(f"slow clients: {name} (cut off at {timeout:g} s)", tried=len(results))
        for status, elapsed in results:
            if status != 408 or not timeout - 0.5 <= elapsed <= timeout + 2:
                row.fail(f"HTTP {status} after {elapsed:.1f} s")
        worst = max(e for _, e in results)
        row.notes.insert(0, f"closed after {min(e for _, e in results):.1f}-{worst:.1f} s")
        rows.append(row)
    return rows


# ---------------------------------------------------------------- big body beside small
def big_body_beside_small(base: str, size: int) -> tuple[Row, dict[str, float]]:
    content = "a" * (size - 100)
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})
    raw = body.encode()
    result: dict[str, Any] = {}

    def send() -> None:
        started = time.perf_counter()
        with httpx.Client(timeout=300) as client:
            r = client.post(base + "/v1/chat/completions", content=raw)
        result["status"], result["seconds"] = r.status_code, time.perf_counter() - started
        result["sha_ok"] = r.json().get("sha") == hashlib.sha256(raw).hexdigest()

    healthz: list[float] = []
    small: list[float] = []
    small_body = json.dumps({"model": "gpt-4o-mini",
                             "messages": [{"role": "user", "content": "hi"}]}).encode()
    sender = threading.Thread(target=send)
    # A generous timeout: on a build that blocks its event loop, one probe waits that long.
    with httpx.Client(base_url=base, timeout=600) as probe:
        probe.get("/healthz")
        sender.start()
        while sender.is_alive():
            started = time.perf_counter()
            probe.get("/healthz")
            healthz.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            probe.post("/v1/chat/completions", content=small_body)
            small.append((time.perf_counter() - started) * 1000)
    sender.join()
    row = Row(f"{size / 1e6:.0f} MB body beside small requests", tried=len(healthz) + len(small))
    slow = [ms for ms in healthz + small if ms > 50]
    for ms in slow:
        row.fail(f"{ms:.0f} ms")
    if result.get("status") != 200 or not result.get("sha_ok"):
        row.fail(f"big body: HTTP {result.get('status')}, forwarded intact: {result.get('sha_ok')}")
    figures = {"big_s": result.get("seconds", float("nan")),
               "healthz_p50": _pct(healthz, 50), "healthz_p99": _pct(healthz, 99),
               "healthz_max": max(healthz, default=float("nan")),
               "small_p50": _pct(small, 50), "small_p99": _pct(small, 99),
               "probes": float(len(healthz))}
    return row, figures


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


# ---------------------------------------------------------------- main
def _start(args: argparse.Namespace) -> tuple[list[subprocess.Popen[bytes]], dict[str, int],
                                               int]:
    up_port = _free_port()
    policies = Path(tempfile.mkdtemp(prefix="lg-abuse-"))
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    (policies / "tenant.toml").write_text(
        f'[tenant]\nname = "abuse"\napi_key_sha256 = ["{digest}"]\n\n[compression]\nmode = "off"\n')
    (policies / "default.toml").write_text(
        '[tenant]\nname = "default"\nanonymous = true\n\n[compression]\nmode = "off"\n')
    processes = [subprocess.Popen([sys.executable, __file__, "--role", "upstream", "--port",
                                   str(up_port)], cwd=ROOT)]
    ports = {}
    limits = {"LINGUAGATE_HEADER_TIMEOUT": str(args.header_timeout),
              "LINGUAGATE_BODY_TIMEOUT": str(args.body_timeout)}
    for mode in ("org", "byo"):
        ports[mode] = _free_port()
        env = {**os.environ, **limits}
        env.pop("LINGUAGATE_UPSTREAM_API_KEY", None)
        if mode == "org":
            env["LINGUAGATE_UPSTREAM_API_KEY"] = ORG_KEY
        serve = [sys.executable, "-m", "proxy", "serve", "--port", str(ports[mode]),
                 "--upstream", f"http://127.0.0.1:{up_port}/v1", "--policies", str(policies),
                 "--log-level", "error", "--no-access-log"]
        processes.append(subprocess.Popen(serve, env=env, cwd=ROOT))
    for port in (*ports.values(),):
        _wait_http(f"http://127.0.0.1:{port}/healthz")
    _wait_http(f"http://127.0.0.1:{up_port}/__stats")
    return processes, ports, up_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", default="bench")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bodies", type=int, default=6000)
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--big-mb", type=float, default=32.0)
    parser.add_argument("--header-timeout", type=float, default=10.0,
                        help="passed to the proxies (default: the documented 10 s)")
    parser.add_argument("--body-timeout", type=float, default=30.0,
                        help="passed to the proxies (default: the documented 30 s)")
    args = parser.parse_args()
    if args.role == "upstream":
        _run_upstream(args.port)
        return 0
    processes, ports, up_port = _start(args)

    def upstream_count() -> int:
        return int(httpx.get(f"http://127.0.0.1:{up_port}/__stats").json()["requests"])

    try:
        result = _run(args, ports, upstream_count)
        upstream = httpx.get(f"http://127.0.0.1:{up_port}/__stats").json()
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)
    _print(args, result, upstream)
    return 1 if any(row.failed for row in result[0]) else 0


def _run(args: argparse.Namespace, ports: dict[str, int],
         upstream_count: Callable[[], int]) -> tuple[list[Row], dict[str, float]]:
    urls = {mode: f"http://127.0.0.1:{port}" for mode, port in ports.items()}
    rows = [asyncio.run(fuzz(urls, args.bodies, args.seed))]
    auth = b"authorization: Bearer " + KEY.encode() + b"\r\n"
    dots = [b"/v1/../admin/secret", b"/v1/%2e%2e/admin", b"/v1/..%2fadmin", b"/v1/%2E%2e%2Fx",
            b"/v1/models/..%5c..%5cadmin", b"/v1/./models", b"/v1/%252e%252e/admin"]
    for mode in ("org", "byo"):
        rows.append(raw_probe(f"dot-segment paths ({mode})", ports[mode],
                              [b"GET " + p + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                               + auth + b"\r\n"
                               for p in dots], 400, 3, upstream_count))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + auth
    chat = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    tail = b"content-length: %d\r\n\r\n" % len(chat) + chat
    huge = [head + b"x-big: " + b"a" * 8_000_000 + b"\r\n" + tail,
            head + b"".join(b"x-h%d: v\r\n" % i for i in range(100_000)) + tail,
            head + b"".join(b"x-h%d: v\r\n" % i for i in range(101)) + tail,
            head + b"x-big: " + b"a" * (65 * 1024) + b"\r\n" + tail]
    rows.append(raw_probe("huge headers (8 MB, 100k, 101, 65 KiB)", ports["org"], huge, 431, 5,
                          upstream_count))
    malformed = [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00",
                 b"GET /v1/models HTTP/1.1\r\nbad header line\r\n\r\n",
                 b"GET /v1/models HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
                 head + b"transfer-encoding: chunked\r\n\r\nzz\r\n"]
    rows.append(raw_probe("malformed HTTP", ports["org"], malformed, 400, 5, upstream_count))
    rows += asyncio.run(slow_clients(ports["byo"], args.slow, args.header_timeout,
                                     args.body_timeout))
    big_row, figures = big_body_beside_small(urls["byo"], int(args.big_mb * 1_000_000))
    rows.append(big_row)
    return rows, figures


def _print(args: argparse.Namespace, result: tuple[list[Row], dict[str, float]],
           upstream: dict[str, int]) -> None:
    rows, figures = result
    print(f"\nAbuse probe: seed {args.seed}, {args.bodies} fuzzed bodies, {args.slow} slow "
          f"clients, header/body timeouts {args.header_timeout:g}/{args.body_timeout:g} s\n")
    print("| kind | tried | failed | notes |\n|---|---:|---:|---|")
    for row in rows:
        print(f"| {row.kind} | {row.tried} | {row.failed} | {'; '.join(row.notes)} |")
    print(f"| **total** | {sum(r.tried for r in rows)} | {sum(r.failed for r in rows)} | |")
    print(f"\nUpstream: {upstream['requests']} requests, {upstream['leaks']} with a proxy key "
          "(both key modes)")
    print(f"{args.big_mb:g} MB body: {figures['big_s']:.2f} s through the proxy; beside it "
          f"{figures['probes']:.0f} /healthz probes: p50 {figures['healthz_p50']:.1f} ms, "
          f"p99 {figures['healthz_p99']:.1f} ms, max {figures['healthz_max']:.1f} ms "
          "(target p99 <= 50 ms); small chat requests: "
          f"p50 {figures['small_p50']:.1f} ms, p99 {figures['small_p99']:.1f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
