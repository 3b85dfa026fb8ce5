"""Net billed cost through the proxy against sending direct, with the provider's prompt cache.

    python bench/conversation_cost.py [--rate 0.5] [--chat-turns 20] [--agent-steps 15]
                                      [--rag 50] [--only chat,agent,rag]

Three scenarios are replayed turn by turn the way real clients send them (the whole
original history every turn) through the real proxy (the default small LM compressing on
this CPU, every policy knob at its default except ``rate``), and the same requests are sent
straight to the same upstream under another API key:

* **chat**: a tutoring chat, 20 turns, behind a long system prompt (the GSM8K 8-shot
  chain-of-thought prompt as worked examples); user turns are GSM8K test questions and
  assistant turns their reference solutions;
* **agent**: a 15-step tool loop: one task, then per step an assistant ``search`` call and a
  tool result of 1-3k tokens of documents;
* **rag**: 50 single-turn requests sharing one system prompt, each with ~1k tokens of
  retrieved documents and a question.

The upstream is the tests' fake OpenAI server, which bills like OpenAI's automatic prompt
caching (per API key, prompts of 1,024+ tokens, 128-token steps, ``cached_tokens`` in
``usage``): ``tests/support/provider_cache.py``. Per scenario the table shows billed input
through the proxy divided by sending direct at cached prices of 10%, 25% and 50% of the
input price (GPT-5, GPT-4.1, GPT-4o), the share of prompt tokens served from the cache
both ways, and the compression time of turn 2 and of the last turn. Runs in ~10 minutes on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.core.settings import Settings  # noqa: E402
from tests.layouts.corpus import make_items  # noqa: E402
from tests.support.servers import ServerThread, run_proxy  # noqa: E402
from tests.support.upstream import FakeUpstream  # noqa: E402

DATA = Path(os.environ.get("LINGUAGATE_BENCH_DATA", ROOT.parent / "shared" / "data"))
MODEL = "gpt-5-mini"
PROXY_KEY = "sk-bench-proxy"
DIRECT_KEY = "sk-bench-direct"
UPSTREAM_ORG_KEY = "sk-bench-org"
CACHED_PRICES = (0.10, 0.25, 0.50)
Messages = list[dict[str, Any]]


# --- scenarios ---------------------------------------------------------------------------


def chat_requests(turns: int) -> list[Messages]:
    worked = (DATA / "gsm8k_prompt_hardest.txt").read_text()
    system = ("You are a patient math tutor. Explain each step, then give the answer as "
              "'The answer is N'. Worked examples of the expected style follow.\n\n" + worked)
    rows = [json.loads(line) for line in (DATA / "gsm8k_test_sample.jsonl").read_text()
            .splitlines()[:turns]]
    history: Messages = [{"role": "system", "content": system}]
    requests = []
    for row in rows:
        history.append({"role": "user", "content": row["question"]})
        requests.append([dict(m) for m in history])
        solution = row["answer"].replace("####", "The answer is")
        history.append({"role": "assistant", "content": solution})
    return requests


def agent_requests(steps: int) -> list[Messages]:
    sizes = [1000, 2000, 3000]
    items = [make_items(1, sizes[i % 3], seed=900 + i)[0] for i in range(steps)]
    history: Messages = [
        {"role": "system", "content": "You are a research agent. Use the search tool until "
         "you can answer, then answer with the facts and their sources."},
        {"role": "user", "content": "Compile the access codes, permits and serial numbers "
         "our facilities reported this quarter, with the document each comes from."},
    ]
    requests = []
    for step, item in enumerate(items):
        call_id = f"call_{step:03d}"
        history.append({"role": "assistant", "content": None, "tool_calls": [{
            "id": call_id, "type": "function",
            "function": {"name": "search", "arguments": json.dumps({"query": item.query})}}]})
        result = "\n\n".join(f"[{n + 1}] {d.title}\n{d.text}" for n, d in
                             enumerate(item.documents))
        history.append({"role": "tool", "tool_call_id": call_id, "content": result})
        requests.append([dict(m) for m in history])
    return requests


def rag_requests(count: int) -> list[Messages]:
    system = (DATA.parent / "seeds" / "llmlingua-explainer.txt").read_text()
    system = ("You answer questions about our facilities from the documents the user pastes. "
              "Quote the exact code or number. Background for staff:\n\n" + system)
    out = []
    for item in make_items(count, 1000, seed=4242):
        docs = "\n\n".join(f"Document [{n + 1}] {d.title}\n{d.text}"
                           for n, d in enumerate(item.documents))
        out.append([{"role": "system", "content": system},
                    {"role": "user", "content": f"{docs}\n\nQuestion: {item.question}"}])
    return out


# --- running -----------------------------------------------------------------------------


@dataclass
class Bill:
    prompt: int = 0
    cached: int = 0

    def add(self, usage: Any) -> None:
        self.prompt += usage.prompt_tokens
        details = usage.prompt_tokens_details
        self.cached += (details.cached_tokens or 0) if details else 0

    def cost(self, cached_price: float) -> float:
        return (self.prompt - self.cached) + cached_price * self.cached


@dataclass
class Result:
    name: str
    proxy: Bill = field(default_factory=Bill)
    direct: Bill = field(default_factory=Bill)
    last_proxy: Bill = field(default_factory=Bill)
    last_direct: Bill = field(default_factory=Bill)
    compression_ms: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)


def _policy(directory: Path, rate: float) -> None:
    digest = hashlib.sha256(PROXY_KEY.encode()).hexdigest()
    (directory / "bench.toml").write_text(
        f'[tenant]\nname = "bench"\napi_key_sha256 = ["{digest}"]\n\n'
        f'[compression]\nmode = "enforce"\nrate = {rate}\n')


@contextmanager
def stack(rate: float) -> Iterator[tuple[FakeUpstream, str]]:
    upstream = FakeUpstream()
    with tempfile.TemporaryDirectory() as tmp, ServerThread(upstream, name="upstream") as up:
        upstream.url = up.url
        policies = Path(tmp)
        _policy(policies, rate)
        settings = Settings(upstream_url=upstream.base_url, upstream_api_key=UPSTREAM_ORG_KEY,
                            policies_dir=policies)
        with run_proxy(settings) as proxy:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:  # the model loads in the background
                ready = httpx.get(proxy.url + "/readyz").json()
                if ready.get("components", ready).get("model", {}).get("status") == "ok":
                    break
                time.sleep(1)
            yield upstream, proxy.base_url


def replay(name: str, requests: list[Messages], upstream: FakeUpstream, base_url: str
           ) -> Result:
    result = Result(name)
    proxy = openai.OpenAI(base_url=base_url, api_key=PROXY_KEY, max_retries=0, timeout=600)
    direct = openai.OpenAI(base_url=upstream.base_url, api_key=DIRECT_KEY, max_retries=0)
    for n, messages in enumerate(requests):
        raw = proxy.chat.completions.with_raw_response.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        via = raw.parse().usage
        sent = direct.chat.completions.create(model=MODEL, messages=messages).usage  # type: ignore[arg-type]
        result.proxy.add(via)
        result.direct.add(sent)
        if n == len(requests) - 1:
            result.last_proxy.add(via)
            result.last_direct.add(sent)
        outcome = raw.headers["x-linguagate-compression"]
        result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1
        result.compression_ms.append(float(raw.headers.get("x-linguagate-compression-ms", 0)))
        print(f"  {name} {n + 1}/{len(requests)}: {outcome}, prompt {via.prompt_tokens} "
              f"(cached {via.prompt_tokens_details.cached_tokens}) vs direct "
              f"{sent.prompt_tokens} (cached {sent.prompt_tokens_details.cached_tokens}), "
              f"{result.compression_ms[-1]:.0f} ms", file=sys.stderr, flush=True)
    return result


def table(results: list[Result], rate: float) -> str:
    head = ("| scenario | requests | proxy ÷ direct @10% | @25% | @50% | last turn @10% | "
            "cached share proxy / direct | compression s turn 2 / last | outcomes |")
    lines = [head, "|" + "---|" * 9]
    for r in results:
        ratios = [r.proxy.cost(c) / r.direct.cost(c) for c in CACHED_PRICES]
        last = r.last_proxy.cost(0.1) / r.last_direct.cost(0.1)
        share = (f"{r.proxy.cached / r.proxy.prompt:.0%} / {r.direct.cached / r.direct.prompt:.0%}")
        ms = r.compression_ms
        times = f"{ms[1] / 1000:.1f} / {ms[-1] / 1000:.1f}" if len(ms) > 1 else "-"
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items()))
        lines.append(f"| {r.name} | {len(ms)} | {ratios[0]:.2f} | {ratios[1]:.2f} | "
                     f"{ratios[2]:.2f} | {last:.2f} | {share} | {times} | {outcomes} |")
    return f"rate {rate}, model {MODEL} (prices as fractions of the input price)\n\n" + \
        "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--chat-turns", type=int, default=20)
    parser.add_argument("--agent-steps", type=int, default=15)
    parser.add_argument("--rag", type=int, default=50)
    parser.add_argument("--only", default="chat,agent,rag")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    scenarios = [(n, f) for n, f in (
        ("chat", lambda: chat_requests(args.chat_turns)),
        ("agent", lambda: agent_requests(args.agent_steps)),
        ("rag", lambda: rag_requests(args.rag)),
    ) if n in wanted]
    results = []
    with stack(args.rate) as (upstream, base_url):
        for name, build in scenarios:
            results.append(replay(name, build(), upstream, base_url))
    print(table(results, args.rate))


if __name__ == "__main__":
    main()
