"""``linguagate compress``: compress one chat-completions request body, offline.

Reads the JSON body on stdin, writes the body that would be forwarded upstream on
stdout: only the compressed message strings change, every other byte (fields,
key order, number forms) is kept. The messages map onto the method's components
as in ``proxy.compression.messages`` and ``proxy.compression.layouts`` (the question and the
context wherever a framework's template puts them; ``--stats`` names the rules that fired).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.policy.model import Fill, QuestionAware

__all__ = ["add_subcommand"]


@dataclass(frozen=True)
class _Settings:
    rate: float
    instruction_rate: float = 1.0
    question_rate: float = 1.0
    question_aware: QuestionAware = "auto"
    segment_tokens: int = 128
    fill: Fill = "rank"
    granularity_k: float = 1.0
    compress_json_tool_results: bool = False
    protect: dict[str, Any] | None = None


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "compress",
        help="compress a chat-completions request body (stdin -> stdout)",
        description="Read an OpenAI chat-completions request body on stdin and write the body "
        "LinguaGate would forward, with the prompt compressed. With --policy, the tenant file's "
        "[compression] settings apply (its mode and model globs are ignored: "
        "this always compresses).",
    )
    parser.add_argument(
        "--rate", type=float, help="target rate (compressed/original target tokens)"
    )
    parser.add_argument("--policy", type=Path, metavar="FILE", help="tenant policy TOML file")
    parser.add_argument(
        "--model", metavar="M", help="small LM (HF id or folder; default SmolLM2-135M)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument(
        "--cpu-precision", choices=["auto", "fp32", "bf16", "bf16-matmul"], default="auto",
        help="numerics on a CPU, as `serve --cpu-precision` (default auto, as the proxy: bf16 "
        "where the CPU does it natively)",
    )
    parser.add_argument(
        "--stats", action="store_true", help="print a JSON line of token counts on stderr"
    )
    parser.set_defaults(func=_run)


def _policy_settings(path: Path, model: str | None) -> _Settings:
    from proxy.policy.schema import parse_policy

    tenant, problems = parse_policy(path, path.read_bytes())
    if problems or tenant is None:
        raise ValueError("\n".join(str(p) for p in problems) or f"{path}: no tenant")
    policy = tenant.policy_for(model)
    protect = policy.protect
    return _Settings(
        rate=policy.rate,
        instruction_rate=policy.instruction_rate,
        question_rate=policy.question_rate,
        question_aware=policy.question_aware,
        segment_tokens=policy.segment_tokens,
        fill=policy.fill,
        granularity_k=policy.granularity_k,
        compress_json_tool_results=policy.compress_json_tool_results,
        protect={
            "number": protect.number,
            "code": protect.code,
            "json": protect.json,
            "url": protect.url,
            "quoted": protect.quoted,
            "regexes": tuple(protect.regexes),
            "keep_tags": protect.keep_tags,
        },
    )


def _run(args: argparse.Namespace) -> int:
    raw = sys.stdin.buffer.read()
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        model = body.get("model") if isinstance(body.get("model"), str) else None
        settings = _policy_settings(args.policy, model) if args.policy else _Settings(rate=0.5)
        if args.rate is not None:
            if not 0 < args.rate <= 1:
                raise ValueError("--rate must be in (0, 1]")
            settings = _Settings(**{**settings.__dict__, "rate": args.rate})
    except (OSError, ValueError) as exc:
        print(f"linguagate compress: {exc}", file=sys.stderr)
        return 2
    out, stats = _compress_body(
        raw, body, model, settings, args.model, args.device, args.cpu_precision
    )
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    if args.stats:
        print(json.dumps(stats, sort_keys=True), file=sys.stderr)
    return 0


def _compress_body(
    raw: bytes,
    body: dict[str, Any],
    target_model: str | None,
    settings: _Settings,
    lm: str | None,
    device: str | None,
    cpu_precision: str = "auto",
) -> tuple[bytes, dict[str, Any]]:
    from proxy.compress import Compressor, ProtectRules
    from proxy.compression.messages import compressor_inputs, replacements_for, split_chat
    from proxy.compression.plan import ranks_by_question
    from proxy.compression.rewrite import replace_strings

    components = split_chat(body, compress_json_tool_results=settings.compress_json_tool_results)
    inputs = compressor_inputs(components)
    fields = dict(settings.protect or {})
    fields["regexes"] = (*fields.get("regexes", ()), *components.protect_regexes)
    protect = ProtectRules(**fields)
    started = time.perf_counter()
    compressor = Compressor(lm, device, cpu_precision=cpu_precision)
    load_ms = (time.perf_counter() - started) * 1000.0
    result = compressor.compress(
        inputs.instruction,
        inputs.demonstrations,
        inputs.question,
        settings.rate,
        instruction_rate=settings.instruction_rate,
        question_rate=settings.question_rate,
        question_aware=ranks_by_question(settings.question_aware, inputs.demonstration_items),
        target_model=target_model,
        segment_tokens=settings.segment_tokens,
        fill=settings.fill,
        granularity_k=settings.granularity_k,
        protect=protect,
    )
    replacements = replacements_for(components, inputs.assign(result))
    out = replace_strings(raw, replacements) if replacements else raw
    stats = {
        "model_id": compressor.model_id,
        "numerics": compressor.numerics,
        "requested_rate": settings.rate,
        "original_tokens": result.original_tokens,
        "compressed_tokens": result.compressed_tokens,
        "rate": round(result.rate, 4),
        "component_tokens": {k: list(v) for k, v in result.component_tokens.items()},
        "compress_ms": round(result.elapsed_ms, 1),
        "load_ms": round(load_ms, 1),
        # How the messages were mapped: the x-linguagate-mapping header's value.
        "mapping": components.mapping(),
    }
    return out, stats
