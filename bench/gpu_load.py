"""Compressor under concurrent load (issue 6): cross-request batching vs one at a time.

GSM8K-sized prompts (the 8-shot prompt of ``../shared/data``, each request with its own
order and subset of the demonstrations, compressed to 200 target tokens as in LLMLingua's
GSM8K example) are compressed by C concurrent clients through the batch engine, for each C
in ``--levels``. Measured in the same run, on the same model and device:

* ``reference seq``: the reference package (llmlingua 0.2.2, its own venv) one at a time;
* ``ours seq``: our compressor without the batch engine, one at a time;
* ``ours batched C``: C client threads, every forward through one ``BatchEngine``.

Reported: compressions/s, scoring tokens/s (tokens the model really computed, padding not
counted), p50/p99 latency, requests per forward, peak GPU memory, throughput ratios to both
sequential baselines, and whether every batched output is byte-identical to the same
prompt compressed alone (the batch-invariance guarantee, checked on this device).

    .venv/bin/python -m bench.gpu_load --quick              # CPU, ~2 min: shows it works
    python3 -m bench.gpu_load --device cuda                 # the GPU run (bench/gpu_carry.sh load)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
TARGET_TOKENS = 200


@dataclass
class Row:
    mode: str
    concurrency: int
    compressions: int
    seconds: float
    per_s: float
    tokens_per_s: float | None
    p50_ms: float
    p99_ms: float
    rows_per_forward: float | None
    peak_gpu_mib: float | None
    identical: str  # "n/n" batched outputs equal to the sequential ones, "" for baselines


def prompts(data: Path, n: int, demos_per_prompt: int | None) -> list[list[str]]:
    """``n`` demonstration lists: rotations and subsets of the 8-shot prompt."""
    demos = (data / "gsm8k_prompt_hardest.txt").read_text().strip().split("\n\n")
    out = []
    for i in range(n):
        rotated = demos[i % len(demos) :] + demos[: i % len(demos)]
        keep = demos_per_prompt or len(demos) - (i % 3)
        out.append(rotated[:keep])
    return out


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))  # nearest rank
    return ordered[rank - 1]


def _peak_reset(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(cuda: bool) -> float | None:
    if not cuda:
        return None
    import torch

    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _texts(result: Any) -> tuple[str, ...]:
    return tuple(result.demonstrations)


def run_sequential(comp: Any, work: Sequence[list[str]], cuda: bool) -> tuple[Row, list[Any]]:
    _peak_reset(cuda)
    lat, outs = [], []
    t0 = time.perf_counter()
    for demos in work:
        s = time.perf_counter()
        outs.append(_texts(comp.compress("", demos, "", 1.0, target_tokens=TARGET_TOKENS)))
        lat.append((time.perf_counter() - s) * 1000)
    wall = time.perf_counter() - t0
    row = Row(
        "ours seq (no batching)",
        1,
        len(work),
        wall,
        len(work) / wall,
        None,
        _pct(lat, 0.5),
        _pct(lat, 0.99),
        None,
        _peak_mib(cuda),
        "",
    )
    return row, outs


def run_batched(
    comp: Any,
    engine: Any,
    work: Sequence[list[str]],
    want: Sequence[Any],
    clients: int,
    cuda: bool,
) -> Row:
    """``clients`` threads compress ``work`` (each item once) through the engine."""
    before = engine.stats()
    _peak_reset(cuda)
    lock = threading.Lock()
    nxt = [0]
    lat: list[float] = []
    same = [0]
    errors: list[BaseException] = []

    def client() -> None:
        with engine.client():
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= len(work):
                    return
                s = time.perf_counter()
                try:
                    out = _texts(comp.compress("", work[i], "", 1.0, target_tokens=TARGET_TOKENS))
                except BaseException as exc:  # reported, never hidden
                    errors.append(exc)
                    return
                ms = (time.perf_counter() - s) * 1000
                with lock:
                    lat.append(ms)
                    same[0] += out == want[i]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    after = engine.stats()
    forwards = after.forwards - before.forwards
    return Row(
        f"ours batched x{clients}",
        clients,
        len(work),
        wall,
        len(work) / wall,
        (after.tokens - before.tokens) / wall,
        _pct(lat, 0.5),
        _pct(lat, 0.99),
        (after.jobs - before.jobs) / forwards if forwards else None,
        _peak_mib(cuda),
        f"{same[0]}/{len(work)}",
    )


def run_reference(args: argparse.Namespace, work: Sequence[list[str]], dtype: str) -> Row | None:
    import shutil

    from bench.compress_bench import REF_GSM, Reference
    from proxy.compress.lm import ensure_default_model_dir

    python = shutil.which(args.bench_python)
    if not python:
        print(f"{args.bench_python} missing: reference skipped", file=sys.stderr)
        return None
    ref = Reference(
        Path(python),
        ensure_default_model_dir(),
        args.device,
        dtype,
        args.threads,
        args.reference_pythonpath,
    )
    try:
        job = {
            "op": "compress",
            "instruction": "",
            "question": "",
            "kwargs": {"target_token": TARGET_TOKENS, **REF_GSM},
        }
        ref.call({**job, "context": list(work[0])})  # warm-up
        lat = [ref.call({**job, "context": list(d)})["elapsed_s"] * 1000 for d in work]
    finally:
        ref.close()
    total = sum(lat) / 1000
    return Row(
        "reference seq (llmlingua 0.2.2)",
        1,
        len(work),
        total,
        len(work) / total,
        None,
        _pct(lat, 0.5),
        _pct(lat, 0.99),
        None,
        None,
        "",
    )


def table(rows: Sequence[Row], seq_tokens: float | None) -> str:
    ours = next((r for r in rows if r.mode.startswith("ours seq")), None)
    ref = next((r for r in rows if r.mode.startswith("reference")), None)
    head = (
        "| mode | clients | compressions | compressions/s | scoring tok/s | p50 ms | p99 ms "
        "| requests/forward | peak GPU MiB | x ours seq | x reference | identical |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        tok = r.tokens_per_s
        if tok is None and seq_tokens is not None and r.mode.startswith("ours seq"):
            tok = seq_tokens * r.per_s
        cells = [
            r.mode,
            str(r.concurrency),
            str(r.compressions),
            f"{r.per_s:.2f}",
            f"{tok:,.0f}" if tok is not None else "-",
            f"{r.p50_ms:.0f}",
            f"{r.p99_ms:.0f}",
            f"{r.rows_per_forward:.1f}" if r.rows_per_forward is not None else "-",
            f"{r.peak_gpu_mib:.0f}" if r.peak_gpu_mib is not None else "-",
            f"{r.per_s / ours.per_s:.2f}" if ours else "-",
            f"{r.per_s / ref.per_s:.1f}" if ref else "-",
            r.identical or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="CPU-sized: levels 1,2,4, three demonstrations per prompt",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--levels", help="comma list of concurrent clients (default 1,8,32,128)")
    ap.add_argument("--per-level", type=int, help="compressions per level: max(this, 2 x clients)")
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--max-batch-tokens", type=int, default=32768)
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--bench-python", default=str(ROOT / ".bench-venv" / "bin" / "python"))
    ap.add_argument("--reference-pythonpath")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="stop starting new levels past this many seconds",
    )
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "bench" / "out")))
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = "bfloat16" if cuda else "float32"
    from proxy.compress import Compressor
    from proxy.compress.batching import BatchEngine, BatchSettings

    levels = [int(x) for x in (args.levels or ("1,4" if args.quick else "1,8,32,128")).split(",")]
    per_level = args.per_level or (4 if args.quick else 64)
    demos = 2 if args.quick else None
    pool = prompts(args.data_dir, max(per_level, 2 * max(levels)), demos)
    comp = Compressor(None, args.device, dtype=getattr(torch, dtype))
    engine = BatchEngine(
        BatchSettings(
            max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms, max_queue=1 << 20
        )
    )
    batched = comp.with_batcher(engine)
    rows: list[Row] = []
    comp.compress("", pool[0], "", 1.0, target_tokens=TARGET_TOKENS)  # warm-up
    # Every prompt alone, without the engine: the throughput baseline and the expected bytes.
    seq_row, want = run_sequential(comp, pool, cuda)
    rows.append(seq_row)
    print(f"ours seq: {seq_row.per_s:.2f}/s p50 {seq_row.p50_ms:.0f} ms", file=sys.stderr)
    skipped = []
    for c in levels:
        if time.perf_counter() - started > args.budget_s:
            skipped.append(c)
            continue
        n = max(per_level, 2 * c)
        row = run_batched(batched, engine, pool[:n], want[:n], c, cuda)
        rows.append(row)
        print(f"x{c}: {row.per_s:.2f}/s p99 {row.p99_ms:.0f} ms {row.identical}", file=sys.stderr)
    stats = engine.stats()
    seq_tokens = stats.tokens / sum(r.compressions for r in rows[1:]) if rows[1:] else None
    engine.close()
    if not args.skip_reference:
        ref_row = run_reference(args, pool[: 3 if args.quick else 8], dtype)
        if ref_row is not None:
            rows.insert(0, ref_row)
    md = table(rows, seq_tokens)
    device = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} torch thread(s)"
    notes = [
        f"device: {device}; model: SmolLM2-135M-Instruct (real weights, packaged GGUF), {dtype}",
        f"prompts: GSM8K 8-shot variants ({demos or '6-8'} demonstrations), target "
        f"{TARGET_TOKENS} tokens; {seq_tokens or 0:,.0f} scoring tokens per compression",
        f"engine: max_wait_ms {args.max_wait_ms}, max_batch_tokens {args.max_batch_tokens}; "
        "identical = batched output bytes equal to the same prompt compressed alone without it",
        f"load average {os.getloadavg()[0]:.2f}; wall {time.perf_counter() - started:.0f} s",
    ]
    if skipped:
        notes.append(f"levels not run (time budget {args.budget_s:.0f} s): {skipped}")
    print(md + "\n\n" + "\n".join(f"- {n}" for n in notes))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_load.json").write_text(
        json.dumps(
            {"rows": [asdict(r) for r in rows], "notes": notes, "argv": sys.argv[1:]}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
