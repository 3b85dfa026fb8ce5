"""CPU numerics of the compressor (issue 14): time per compression and agreement with fp32.

Succeeds ``bench/cpu_variants.py`` for the question "which numerics on this CPU". Each
variant runs in its own subprocess (``bf16-matmul`` sets a process-wide oneDNN flag, so no
two variants may share a process), loads the default SmolLM2-135M-Instruct the way the proxy
does (``Compressor(cpu_precision=...)``), compresses once to warm up, then times
``Compressor.compress`` on:

- the GSM8K 8-shot prompt at rate 0.33, instruction and question whole (as
  ``bench.compress_bench``), ``--questions`` questions, the first one twice (same bytes?),
  question-agnostic and question-aware (documents ranked by p(question | demonstration));
- a ~1k-token retrieval prompt (``bench/data_retrieval.py``, rate 0.33), question-agnostic
  and question-aware.

Agreement is against the ``fp32`` variant of the same run: outputs byte-identical, and the
share of the words either keeps that only one of them keeps. ``fp32-score-all``
is fp32 with the savings of "score only what a decision reads" undone (every segment token
and every document token through the output head): the head rows and the time it adds.

    .venv/bin/python -m bench.cpu_numerics                       # ~5 min at 1 thread
    .venv/bin/python -m bench.cpu_numerics --variants fp32,bf16 --questions 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runnable as `python bench/cpu_numerics.py`
    sys.path.insert(0, str(ROOT))

VARIANTS = ("fp32", "bf16-matmul", "bf16", "fp32-score-all")
_RATE = 0.33


def _cases(questions: int) -> list[tuple[str, int, Any, bool]]:
    """(case, index, sample, question-aware), the GSM8K ones first."""
    from bench.compress_bench import DATA, gsm8k_samples, retrieval_samples

    gsm = gsm8k_samples(DATA, questions, [str(_RATE)])
    ret = retrieval_samples([1000], [1], _RATE)[0]
    return [*(("GSM8K 0.33", s.idx, s, False) for s in gsm),
            *(("GSM8K 0.33 qa", s.idx, s, True) for s in gsm),
            ("retrieval 1k", 0, ret, False), ("retrieval 1k qa", 0, ret, True)]


def _undo_skipping(counter: dict[str, int]) -> None:
    """Score every token the forwards see (the behaviour before rows were skipped)."""
    import numpy as np

    from proxy.compress.scoring import Scorer, Stream

    step, score = Stream.step, Scorer.score

    def step_all(self: Stream, append: Any, segment: Any, need: Any) -> Any:
        return step(self, append, segment, np.ones_like(need))

    def score_all(self: Scorer, seqs: Any, skip: Any = None) -> Any:
        out = score(self, seqs)
        return [o[k:] for o, k in zip(out, skip, strict=True)] if skip is not None else out

    Stream.step = step_all  # type: ignore[method-assign]
    Scorer.score = score_all  # type: ignore[method-assign]
    counter["patched"] = 1


def _count_head_rows(counter: dict[str, int]) -> None:
    from proxy.compress.scoring import Scorer

    head = Scorer.head_nll

    def counted(self: Scorer, hidden: Any, targets: Any) -> Any:
        counter["rows"] += int(targets.shape[0])
        return head(self, hidden, targets)

    Scorer.head_nll = counted  # type: ignore[method-assign]


def worker(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from proxy.compress import Compressor

    torch.set_num_threads(args.threads)  # the proxy's --torch-threads 1 by default
    counter = {"rows": 0}
    _count_head_rows(counter)
    if variant == "fp32-score-all":
        _undo_skipping(counter)
    t0 = time.perf_counter()
    comp = Compressor(None, "cpu", cpu_precision=variant.removesuffix("-score-all"))
    load_s = time.perf_counter() - t0
    cases = _cases(args.questions)
    first = cases[0][2]
    t0 = time.perf_counter()
    comp.compress(first.instruction, list(first.documents), first.question, _RATE)
    warm_s = time.perf_counter() - t0
    runs: list[dict[str, Any]] = []
    for case, idx, s, qa in cases:
        reps = args.reps if idx == 0 else 1
        texts, secs, rows = [], [], []
        for _ in range(reps):
            counter["rows"] = 0
            t0 = time.perf_counter()
            res = comp.compress(s.instruction, list(s.documents), s.question, _RATE,
                                question_aware=qa)
            secs.append(time.perf_counter() - t0)
            rows.append(counter["rows"])
            texts.append(json.dumps([res.instruction, list(res.demonstrations), res.question]))
        runs.append({"case": case, "idx": idx, "seconds": secs, "text": texts[0],
                     "repeat_identical": len(set(texts)) == 1, "rate": res.rate,
                     "head_rows": rows[0], "original": [s.instruction, *s.documents, s.question]})
    return {"variant": variant, "model_id": comp.model_id, "numerics": comp.numerics,
            "load_s": load_s, "warm_s": warm_s, "runs": runs}


def _run_worker(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.cpu_numerics", "--worker", variant, "--out", str(out),
               f"--threads={args.threads}", f"--questions={args.questions}", f"--reps={args.reps}"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              timeout=args.variant_timeout)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
            return {"variant": variant, "error": tail}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def _median(runs: Sequence[dict[str, Any]], case: str) -> float | None:
    secs = [s for r in runs if r["case"] == case for s in r["seconds"]]
    return statistics.median(secs) if secs else None


def kept_words_differ(original: Sequence[str], a: str, b: str) -> float:
    """Of the words either output keeps, the share only one of them keeps (0: same choice)."""
    from bench.cpu_variants import _keep_mask

    pa, pb = json.loads(a), json.loads(b)
    differ = either = 0
    for orig, x, y in zip(original, [pa[0], *pa[1], pa[2]], [pb[0], *pb[1], pb[2]], strict=True):
        for u, v in zip(_keep_mask(orig, x), _keep_mask(orig, y), strict=True):
            differ += u != v
            either += u or v
    return differ / either if either else 0.0


def table(results: Sequence[dict[str, Any]]) -> str:
    base = next((r for r in results if r["variant"] == "fp32" and "runs" in r), None)
    cases = list(dict.fromkeys(r["case"] for r in base["runs"])) if base else []
    head = ["variant", "numerics", "load s"]
    for case in cases:
        head += [f"{case} s med", "x fp32"]
    head += ["head rows / compression (per case)", "same bytes as fp32",
             "kept words differ (mean, max)", "repeat same bytes", "model id suffix"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "runs" not in r:
            lines.append(f"| {r['variant']} | failed: {r.get('error', '?')} |")
            continue
        cells = [r["variant"], r["numerics"], f"{r['load_s']:.1f}"]
        for case in cases:
            med, bmed = _median(r["runs"], case), _median(base["runs"], case) if base else None
            cells += [f"{med:.2f}" if med else "-", f"{bmed / med:.2f}" if med and bmed else "-"]
        firsts: dict[str, int] = {}
        for run in r["runs"]:
            firsts.setdefault(run["case"], run["head_rows"])
        cells.append(", ".join(str(v) for v in firsts.values()))
        pairs = list(zip(r["runs"], base["runs"] if base else [], strict=False))
        same = sum(a["text"] == b["text"] for a, b in pairs)
        dis = [kept_words_differ(a["original"], a["text"], b["text"]) for a, b in pairs]
        cells += [f"{same}/{len(pairs)}",
                  f"{statistics.mean(dis):.2%}, {max(dis):.2%}" if dis else "-",
                  f"{sum(x['repeat_identical'] for x in r['runs'])}/{len(r['runs'])}",
                  r["model_id"].partition("~")[2] or "(none)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _header(threads: int, when: str) -> str:
    import torch

    from proxy.compress.numerics import read_cpu_features

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
            f"{threads} torch thread(s), {os.cpu_count()} CPUs, CPU flags: "
            f"{read_cpu_features().describe()}; load average at {when}: {load}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--questions", type=int, default=2, help="GSM8K questions")
    ap.add_argument("--reps", type=int, default=2, help="compressions of each case's first")
    ap.add_argument("--variant-timeout", type=float, default=600)
    ap.add_argument("--json", type=Path, help="also write all results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.out.write_text(json.dumps(worker(args.worker, args)))
        return 0
    started = time.time()
    print(_header(args.threads, "start"), flush=True)
    results = []
    for variant in args.variants.split(","):
        t0 = time.time()
        results.append(_run_worker(variant, args))
        print(f"  {variant}: {time.time() - t0:.0f} s", flush=True)
    print(table(results))
    print(_header(args.threads, "end") + f"; wall {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
