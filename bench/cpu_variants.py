"""CPU variants of the scoring model (issue 6: "optional and measured, not assumed").

Each variant of the default SmolLM2-135M-Instruct runs in its own subprocess (clean peak
RSS, no compile caches or quantised modules leaking between variants) and reports:
(a) one scoring pass (``Scorer.score``: base model to hidden states, then our chunked
output head) at ~500 / ~1,200 / ~2,400 tokens, median/min/max over ``--runs`` runs after
a warm-up, and whether repeated passes give bit-identical NLLs; (b) end-to-end
``Compressor.compress`` on the GSM8K 8-shot prompt (rate 0.33, instruction and question
whole, as in ``bench.compress_bench``), each question once and the first one again (same
bytes run after run?), outputs compared with the baseline's; (c) peak RSS. Lengths are
exact shape-class widths minus the start token, so no variant pays for padding. bf16 and
torchao int8 are probes: one pass at the first length, no end-to-end.

    .venv/bin/python -m bench.cpu_variants                  # full run, ~25-30 min at 1 thread
    .venv/bin/python -m bench.cpu_variants --quick          # baseline + int8, 1 length, 1 question
    .venv/bin/python -m bench.cpu_variants --variants baseline,int8-dynamic
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runnable as `python bench/cpu_variants.py`
    sys.path.insert(0, str(ROOT))

# "sdpa" is also accepted; it is what the product's loader picks, i.e. the baseline.
ALL_VARIANTS = ("baseline", "eager", "int8-dynamic", "torchao-int8", "compile", "bf16")
# Measured once at the first length only (no end-to-end): known or found to be far slower.
PROBES = ("bf16", "torchao-int8")
# --quick fits ~2 min on an idle core: compile alone costs minutes (cold cache).
QUICK_VARIANTS = ("baseline", "int8-dynamic")
LENGTHS = (500, 1200, 2400)
_WORD = re.compile(r"\w+|[^\w\s]+")


@dataclass(frozen=True)
class Timing:
    tokens: int
    first_s: float  # the warm-up pass (for compile: includes compiling this shape)
    runs_s: tuple[float, ...]
    repeat_identical: bool  # every pass gave bit-identical NLLs

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)


@dataclass(frozen=True)
class E2E:
    question: int
    seconds: tuple[float, ...]
    text: str  # the compressed prompt of the first run
    rate: float
    repeat_identical: bool


# ---------------------------------------------------------------- building variants (worker)


def _load(variant: str) -> tuple[Any, Any, str]:
    """Model, tokenizer and a note; the baseline exactly as the product loads it."""
    import torch
    from transformers import AutoModelForCausalLM

    from proxy.compress.lm import ensure_default_model_dir, load_causal_lm

    lm = load_causal_lm(device="cpu")
    if variant in ("eager", "sdpa", "bf16"):
        dtype = torch.bfloat16 if variant == "bf16" else torch.float32
        attn = "sdpa" if variant == "bf16" else variant
        alt: Any = AutoModelForCausalLM.from_pretrained(
            ensure_default_model_dir(), attn_implementation=attn, dtype=dtype
        )
        alt.eval()
        alt.requires_grad_(False)
        return alt, lm.tokenizer, f"{dtype}".replace("torch.", "")
    model = lm.model
    if variant == "compile":
        # The Scorer calls the base model directly, so that is what gets compiled (in place:
        # ``model.compile()`` would compile only the LM wrapper's forward, which is never run).
        model.base_model.compile()
        return model, lm.tokenizer, "inductor, default mode, base model"
    if variant == "int8-dynamic":
        from torch.ao.quantization import quantize_dynamic

        # The head stays fp32: it is tied to the embedding and head_nll reads head.weight.
        quantize_dynamic(  # type: ignore[no-untyped-call]
            model.base_model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )
        return model, lm.tokenizer, "torch.ao quantize_dynamic, decoder Linear only"
    if variant == "torchao-int8":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model.base_model, Int8DynamicActivationInt8WeightConfig())
        return model, lm.tokenizer, "torchao w8a8 dynamic, decoder Linear only"
    return model, lm.tokenizer, "fp32, as load_causal_lm()"


def _time_forward(scorer: Any, ids: Any, runs: int) -> Timing:
    import numpy as np

    t0 = time.perf_counter()
    ref = scorer.score([ids])[0]  # warm-up; for compile it compiles (or recompiles) this shape
    first = time.perf_counter() - t0
    times, same = [], True
    for _ in range(runs):
        t0 = time.perf_counter()
        out = scorer.score([ids])[0]
        times.append(time.perf_counter() - t0)
        same = same and bool(np.array_equal(out, ref, equal_nan=True))
    return Timing(len(ids), first, tuple(times), same)


def _lengths(targets: Sequence[int]) -> list[int]:
    from proxy.compress.forward import shape_class

    # n tokens + the start token fill a shape class exactly: no padding in the measured pass.
    return [shape_class(t + 1, 16) - 1 for t in targets]


def _e2e(comp: Any, n_questions: int, reps: int) -> Iterator[E2E]:
    """Each question once, the first one ``reps`` times (the same-bytes-again check)."""
    from bench.compress_bench import DATA, gsm8k_samples

    for s in gsm8k_samples(DATA, n_questions, ["0.33"]):
        texts, secs, rate = [], [], 0.0
        for _ in range(reps if s.idx == 0 else 1):
            t0 = time.perf_counter()
            res = comp.compress(s.instruction, list(s.documents), s.question, s.rate or 1.0)
            secs.append(time.perf_counter() - t0)
            texts.append(json.dumps([res.instruction, list(res.demonstrations), res.question]))
            rate = res.rate
        yield E2E(s.idx, tuple(secs), texts[0], rate, len(set(texts)) == 1)


def _dynamo_stats() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def worker(
    variant: str, args: argparse.Namespace, save: Callable[[dict[str, Any]], object]
) -> None:
    """Measure one variant; ``save`` gets the results so far after every phase, so a run
    cut short by the parent's timeout still reports what it measured."""
    import torch

    from proxy.compress.compressor import Compressor
    from proxy.compress.scoring import Scorer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, tok, note = _load(variant)
    setup_s = time.perf_counter() - t0
    scorer = Scorer(model, tok)
    text = (ROOT.parent / "shared" / "data" / "gsm8k_prompt_hardest.txt").read_text()
    ids = scorer.encode(text).ids  # real text: the GSM8K demonstrations (~2,700 tokens)
    lengths = _lengths(args.lengths)
    if variant in PROBES:
        lengths, runs = lengths[:1], 1
    else:
        runs = args.runs
    result: dict[str, Any] = {
        "variant": variant,
        "attn": str(model.config._attn_implementation),
        "note": note,
        "setup_s": setup_s,
        "forward": [],
    }
    for n in lengths:
        t = _time_forward(scorer, ids[:n], runs)
        result["forward"].append(asdict(t) | {"median_s": t.median_s})
        _progress(result, save, variant == "compile")
    if variant not in PROBES and args.questions:
        comp = Compressor.from_pretrained_objects(model, tok, model_id=f"cpu-variant-{variant}")
        result["e2e"] = []
        for e in _e2e(comp, args.questions, args.reps):
            result["e2e"].append(asdict(e))
            _progress(result, save, variant == "compile")


def _progress(
    result: dict[str, Any], save: Callable[[dict[str, Any]], object], dynamo: bool
) -> None:
    if dynamo:
        result["dynamo"] = _dynamo_stats()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save(result)


# ---------------------------------------------------------------- comparing (parent)


def _keep_mask(original: str, compressed: str) -> list[bool]:
    """Which word tokens of ``original`` survive in ``compressed`` (greedy in-order match).

    Compression only drops units, so the output is a subsequence of the input's words.
    """
    words, kept = _WORD.findall(original), _WORD.findall(compressed)
    mask, j = [False] * len(words), 0
    for i, w in enumerate(words):
        if j < len(kept) and kept[j] == w:
            mask[i], j = True, j + 1
    return mask


def word_disagreement(original: Sequence[str], a: str, b: str) -> float:
    """Fraction of the original's word tokens kept by one output and dropped by the other."""
    pa, pb = json.loads(a), json.loads(b)
    parts_a = [pa[0], *pa[1], pa[2]]
    parts_b = [pb[0], *pb[1], pb[2]]
    differ = total = 0
    for orig, x, y in zip(original, parts_a, parts_b, strict=True):
        ma, mb = _keep_mask(orig, x), _keep_mask(orig, y)
        differ += sum(u != v for u, v in zip(ma, mb, strict=True))
        total += len(ma)
    return differ / total if total else 0.0


def _originals(n_questions: int) -> list[list[str]]:
    from bench.compress_bench import DATA, gsm8k_samples

    return [
        [s.instruction, *s.documents, s.question]
        for s in gsm8k_samples(DATA, n_questions, ["0.33"])
    ]


def _ms(t: dict[str, Any]) -> str:
    runs = t["runs_s"]
    return f"{t['median_s'] * 1e3:.0f} ({min(runs) * 1e3:.0f}-{max(runs) * 1e3:.0f})"


def _ratio(x: float | None, base: float | None) -> str:
    return f"{x / base:.2f}" if x and base else "-"


def table(results: Sequence[dict[str, Any]], originals: list[list[str]]) -> str:
    base = next((r for r in results if r["variant"] == "baseline" and r.get("forward")), None)
    lens = [t["tokens"] for t in base["forward"]] if base else []
    head = ["variant", "attn / note"]
    head += [f"fwd {n} tok ms med (min-max)" for n in lens] + [f"x base {n}" for n in lens]
    head += ["setup s", "first pass s", "e2e med s", "x base", "same bytes as base"]
    head += ["words differ", "rate", "repeat same bytes", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if not r.get("forward"):
            lines.append(f"| {r['variant']} | failed: {r.get('error', '?')} |")
            continue
        fw = {t["tokens"]: t for t in r["forward"]}
        bfw = {t["tokens"]: t for t in base["forward"]} if base else {}
        cells = [
            r["variant"],
            f"{r['attn']}; {r['note']}" + (f"; {r['error']}" if "error" in r else ""),
        ]
        cells += [_ms(fw[n]) if n in fw else "-" for n in lens]
        cells += [_ratio(fw[n]["median_s"], bfw[n]["median_s"]) if n in fw else "-" for n in lens]
        cells += [f"{r['setup_s']:.1f}", f"{r['forward'][0]['first_s']:.1f}"]
        e2e, be2e = r.get("e2e"), (base or {}).get("e2e")
        if e2e:
            med = statistics.median(s for e in e2e for s in e["seconds"])
            bmed = statistics.median(s for e in be2e for s in e["seconds"]) if be2e else None
            same = sum(e["text"] == b["text"] for e, b in zip(e2e, be2e or [], strict=False))
            dis = [
                word_disagreement(originals[i], e["text"], b["text"])
                for i, (e, b) in enumerate(zip(e2e, be2e or [], strict=False))
            ]
            cells += [f"{med:.2f}", _ratio(med, bmed), f"{same}/{len(e2e)}"]
            cells += [f"{statistics.mean(dis):.1%}" if dis else "-"]
            cells += [f"{statistics.mean(e['rate'] for e in e2e):.3f}"]
            again = [e for e in e2e if len(e["seconds"]) > 1]
            cells += [f"{sum(e['repeat_identical'] for e in again)}/{len(again)}"]
        else:
            cells += ["-"] * 6
        repeat_fwd = all(t["repeat_identical"] for t in r["forward"])
        cells[-1] += "" if repeat_fwd else " (fwd NOT repeatable)"
        cells.append(f"{r['peak_rss_mib']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run_worker(variant: str, argv: Sequence[str], timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.cpu_variants", *argv, "--worker", variant]
        cmd += ["--out", str(out)]
        # A fresh inductor cache: compile time is what a new deployment pays, not a re-run.
        env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        error = None
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
            )
            if proc.returncode != 0:
                error = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        except subprocess.TimeoutExpired:
            error = f"stopped at the {timeout_s:.0f} s limit; partial results"
        data: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
        data.setdefault("variant", variant)
        if error:
            data["error"] = error
        return data


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--quick", action="store_true", help="baseline and int8 only, 1 length, 1 question"
    )
    ap.add_argument("--variants", help=f"comma list of {','.join(ALL_VARIANTS)}")
    ap.add_argument("--runs", type=int, default=5, help="timed passes per length after warm-up")
    ap.add_argument("--reps", type=int, default=2, help="compressions of the first question")
    ap.add_argument("--variant-timeout", type=float, default=600, help="seconds per variant")
    ap.add_argument("--questions", type=int, help="GSM8K questions (default 3; quick 1)")
    ap.add_argument("--lengths", help="comma list of approximate token counts")
    ap.add_argument("--json", type=Path, help="also write all results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    default_lengths = LENGTHS[:1] if args.quick else LENGTHS
    args.lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else default_lengths
    if args.questions is None:
        args.questions = 1 if args.quick else 3
    if args.quick:
        args.runs = min(args.runs, 3)
    default_variants = QUICK_VARIANTS if args.quick else ALL_VARIANTS
    args.variants = args.variants.split(",") if args.variants else list(default_variants)
    return args


def _header(threads: int, load: tuple[float, ...], when: str) -> str:
    import torch
    import transformers

    return (
        f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
        f"transformers {transformers.__version__}, {threads} torch thread(s), "
        f"{os.cpu_count()} CPUs, load average at {when}: {' '.join(f'{x:.2f}' for x in load)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parse(raw)
    if args.worker:
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices, once per module
        worker(args.worker, args, lambda r: Path(args.out).write_text(json.dumps(r)))
        return 0
    started, load0 = time.time(), os.getloadavg()
    print(_header(args.threads, load0, "start"), flush=True)
    forwarded = [f"--threads={args.threads}", f"--runs={args.runs}", f"--reps={args.reps}"]
    forwarded += [f"--questions={args.questions}", f"--lengths={','.join(map(str, args.lengths))}"]
    results = []
    for v in args.variants:
        t0 = time.time()
        results.append(_run_worker(v, forwarded, args.variant_timeout))
        print(f"  {v}: {time.time() - t0:.0f} s", flush=True)
    print(table(results, _originals(args.questions)))
    print(_header(args.threads, os.getloadavg(), "end") + f"; wall {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
