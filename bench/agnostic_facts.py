"""Question-agnostic document compression: how often the answer survives, over many prompts.

    python -m bench.agnostic_facts [--size 1000] [--count 24] [--rate 0.33] [--threads 1]

Without the question nothing tells a compressor which document holds the answer, so every
question-agnostic method keeps it by chance, about as often as the rate; six prompts (the
main benchmark's retrieval row) cannot tell such methods apart. This runs many prompts of
``bench/data_retrieval.py`` (needles spread evenly) through our compressor's fills without
the question — "rank" (the default: best-ranked documents whole), "uniform" with
k = 1/rate (the paper's coarse stage keeping about everything, every document cut alike)
— and head truncation to the same size, and prints the share of prompts whose needle value
and facility name both survive, with a 95% interval. No reference package, no judge.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if not n:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--rate", type=float, default=0.33)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from bench.data_retrieval import make_retrieval_cases
    from proxy.compress import Compressor
    from proxy.core.tokens import encoding_for_model

    enc = encoding_for_model(None)
    comp = Compressor(None, "cpu")
    methods = {
        "ours, fill rank (default)": {"fill": "rank"},
        "ours, fill uniform k=1/rate": {"fill": "uniform", "granularity_k": 1.0 / args.rate},
    }
    kept: dict[str, int] = {name: 0 for name in [*methods, "head truncation"]}
    ratios: dict[str, list[float]] = {name: [] for name in kept}
    started = time.time()
    cases = make_retrieval_cases(args.size, args.count)
    for i, rc in enumerate(cases):

        def survives(text: str, rc: object = rc) -> bool:
            return bool(re.search(rf"\b{rc.answer}\b", text)) and rc.entity in text  # type: ignore[attr-defined]

        size = 0
        for name, knobs in methods.items():
            r = comp.compress(rc.instruction, list(rc.documents), rc.question, args.rate, **knobs)
            context = "\n\n".join(d for d in r.demonstrations if d)
            kept[name] += survives(context)
            ratios[name].append(r.rate / args.rate)
            size = size or len(enc.encode(context))
        head = enc.decode(enc.encode("\n\n".join(rc.documents))[:size])
        kept["head truncation"] += survives(head)
        print(f"[{time.time() - started:5.0f}s] {i + 1}/{len(cases)}", file=sys.stderr)
    n = len(cases)
    print(
        f"Retrieval {args.size} tokens, rate {args.rate}, {n} prompts (needles spread evenly), "
        f"question-agnostic; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"torch threads {args.threads}\n"
    )
    print("| method | answer kept | 95% interval | achieved/requested rate (min–max) |")
    print("|---|---|---|---|")
    for name, k in kept.items():
        lo, hi = _wilson(k, n)
        rr = ratios[name]
        span = f"{min(rr):.2f}–{max(rr):.2f}" if rr else "same size as rank"
        print(f"| {name} | {k}/{n} = {k / n:.2f} | {lo:.2f}–{hi:.2f} | {span} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
