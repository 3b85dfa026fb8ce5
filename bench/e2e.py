"""End-to-end benchmark: the proxy compressing a long few-shot prompt before the local upstream.

    python bench/e2e.py [--rate 0.5] [--requests 3] [--concurrent-requests 8] [--threads 1]

Everything runs offline in this process: the packaged SmolLM2-135M-Instruct is loaded once
and serves both as the compressor (LLMLingua scoring) and as the embedded local upstream
(`proxy.local.upstream`, the `serve --upstream local` path). The proxy is the real app under
uvicorn on a loopback port; the client is the `openai` SDK.

The prompt is GSM8K 8-shot chain-of-thought (`gsm8k_prompt_hardest.txt`) as chat turns
(each exemplar a user question and an assistant answer) plus one test question; the
answer is capped at `max_tokens=8` so the upstream's prefill, not its decoding, dominates.
Measured, each against the uncompressed baseline of the same run:

* tokens forwarded (tiktoken count of message text, from the proxy's headers);
* end-to-end latency with compression off, on with a cold cache (first request of a
  tenant: the compressor runs), on with a warm cache (the same request again);
* throughput (requests/s) at concurrency 4, compression off vs on (warm cache).

Prints a Markdown table. Runs in about 5-6 minutes on 2 (shared) CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.app import create_app
from proxy.core.settings import Settings
from proxy.services import open_services

DATA = Path(os.environ.get("LINGUAGATE_BENCH_DATA", "/work/shared/data"))
MODEL = "gpt-4o-mini"  # any name: the local upstream answers it; tiktoken counts for it
OFF_KEY = "sk-bench-off"
MAX_TOKENS = 8


def few_shot_messages(question: str) -> list[dict[str, str]]:
    """The 8-shot prompt as alternating user/assistant turns, then ``question``."""
    text = (DATA / "gsm8k_prompt_hardest.txt").read_text()
    blocks = [b.strip() for b in text.split("Question:") if b.strip()]
    messages: list[dict[str, str]] = [
        {
            "role": "system",
            "content": "Solve the math problem. Think step by step, then give "
            "the answer as 'The answer is N'.",
        },
    ]
    for block in blocks:
        q, _, a = block.partition("\n")
        messages.append({"role": "user", "content": "Question: " + q.strip()})
        messages.append({"role": "assistant", "content": a.strip()})
    messages.append({"role": "user", "content": "Question: " + question})
    return messages


def test_questions(count: int) -> list[str]:
    lines = (DATA / "gsm8k_test_sample.jsonl").read_text().splitlines()
    return [json.loads(line)["question"] for line in lines[:count]]


def _tenant(directory: Path, name: str, key: str, mode: str, rate: float) -> None:
    digest = hashlib.sha256(key.encode()).hexdigest()
    (directory / f"{name}.toml").write_text(
        f'[tenant]\nname = "{name}"\napi_key_sha256 = ["{digest}"]\n\n'
        f'[compression]\nmode = "{mode}"\nrate = {rate}\nmin_tokens = 200\n'
        # Generous deadline: the cold row should show the compressor's time, not a skip.
        "max_compression_ms = 600000\n"
    )


class _Server:
    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("proxy did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def running_stack(rate: float, tenants: int) -> Iterator[str]:
    """Local upstream + proxy sharing one SmolLM2; yields the proxy's base URL."""
    from proxy.compress import Compressor
    from proxy.compress.lm import load_causal_lm
    from proxy.compression.service import CompressorService
    from proxy.local.model import LocalChatModel
    from proxy.local.upstream import start_local_upstream_server

    started = time.perf_counter()
    loaded = load_causal_lm(None, "cpu")
    engine = Compressor.from_pretrained_objects(
        loaded.model, loaded.tokenizer, model_id=loaded.model_id
    )
    print(
        f"model {loaded.model_id} loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr
    )
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_local_upstream_server(
            model=LocalChatModel.from_loaded(loaded), max_concurrent=1, log_level="warning"
        ) as upstream,
    ):
        policies = Path(tmp)
        _tenant(policies, "bench-off", OFF_KEY, "off", rate)
        for i in range(tenants):
            _tenant(policies, f"bench-on-{i}", f"sk-bench-on-{i}", "enforce", rate)
        settings = Settings(
            upstream_url=upstream.base_url, upstream_api_key="sk-local", policies_dir=policies
        )
        compressor = CompressorService.ready(engine, max_workers=1, max_pending=32)

        @asynccontextmanager
        async def services(s: Settings) -> Any:
            async with open_services(s, compressor=compressor) as built:
                yield built

        def factory(s: Settings) -> Any:
            return services(s)

        app = create_app(settings, services=factory)
        with _Server(app) as base_url:
            yield base_url


@dataclass(frozen=True)
class Shot:
    seconds: float
    headers: dict[str, str]


def ask(base_url: str, key: str, question: str) -> Shot:
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300) as sdk:
        started = time.perf_counter()
        raw = sdk.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=few_shot_messages(question),  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        raw.parse()
        elapsed = time.perf_counter() - started
    return Shot(elapsed, {k: v for k, v in raw.headers.items() if k.startswith("x-linguagate")})


def _warm_up(base_url: str) -> None:
    """One short request: first-call costs (tokenizers, pools) out of the timed rows."""
    with openai.OpenAI(base_url=base_url, api_key=OFF_KEY, max_retries=0, timeout=300) as sdk:
        sdk.chat.completions.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}]
        )


def throughput(base_url: str, key: str, questions: list[str], concurrency: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        shots = list(pool.map(lambda q: ask(base_url, key, q), questions))
    elapsed = time.perf_counter() - started
    assert all(s.headers.get("x-linguagate-compression") for s in shots)
    return len(questions) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--requests", type=int, default=1, help="timed requests per case")
    parser.add_argument("--concurrent-requests", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    n = args.requests
    questions = test_questions(n + args.concurrent_requests + 1)
    with running_stack(args.rate, tenants=n + 1) as url:
        _warm_up(url)
        off = [ask(url, OFF_KEY, questions[i]) for i in range(n)]
        # Each tenant's first request compresses (cache per tenant); its repeat hits the cache.
        cold = [ask(url, f"sk-bench-on-{i}", questions[i]) for i in range(n)]
        warm = [ask(url, f"sk-bench-on-{i}", questions[i]) for i in range(n)]
        batch = questions[n : n + args.concurrent_requests]
        tp_off = throughput(url, OFF_KEY, batch, args.concurrency)
        tp_on = throughput(url, f"sk-bench-on-{n}", batch[:1], 1)  # fill this tenant's cache
        tp_on = throughput(url, f"sk-bench-on-{n}", batch, args.concurrency)
    print(_table(args, off, cold, warm, tp_off, tp_on))
    return 0


def _med(shots: list[Shot]) -> float:
    return statistics.median(s.seconds for s in shots)


def _tokens(shots: list[Shot]) -> int:
    return int(shots[-1].headers["x-linguagate-forwarded-tokens"])


def _table(
    args: argparse.Namespace,
    off: list[Shot],
    cold: list[Shot],
    warm: list[Shot],
    tp_off: float,
    tp_on: float,
) -> str:
    base_t, base_tok = _med(off), _tokens(off)
    labels = {s.headers.get("x-linguagate-cache", "-") for s in cold}
    labels_warm = {s.headers.get("x-linguagate-cache", "-") for s in warm}
    ms = statistics.median(float(s.headers.get("x-linguagate-compression-ms", 0)) for s in cold)
    rows = [
        ("compression off (baseline)", base_tok, base_t, "-"),
        (
            f"on, cold cache ({'/'.join(sorted(labels))}; compress {ms:.0f} ms)",
            _tokens(cold),
            _med(cold),
            "-",
        ),
        (f"on, warm cache ({'/'.join(sorted(labels_warm))})", _tokens(warm), _med(warm), "-"),
    ]
    out = [
        f"rate={args.rate}, {args.requests} requests per row (median), max_tokens={MAX_TOKENS}, "
        f"torch threads={args.threads}, SmolLM2-135M compressor and local upstream on CPU",
        "",
        "| case | forwarded tokens | vs baseline | e2e latency (s) | vs baseline |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, tok, sec, _ in rows:
        out.append(f"| {name} | {tok} | {tok / base_tok:.2f} | {sec:.2f} | {sec / base_t:.2f} |")
    out += [
        "",
        f"| throughput, concurrency {args.concurrency}, {args.concurrent_requests} requests "
        "| req/s | vs baseline |",
        "|---|---:|---:|",
        f"| compression off | {tp_off:.3f} | 1.00 |",
        f"| compression on (warm cache) | {tp_on:.3f} | {tp_on / tp_off:.2f} |",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
