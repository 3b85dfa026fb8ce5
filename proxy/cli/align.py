"""``linguagate align``: tune the small LM on (prompt, target answer) pairs, or evaluate it.

Exit status: 0 done, 2 a problem the user must fix (bad base model, data or folder),
printed as one clear message, never a silent fallback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_subcommand", "run_eval"]


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "align",
        help="instruction-tune the small LM on target-LLM answers (distribution alignment)",
        description="Fine-tune the compressor's small LM so that the target LLM's answers are "
        "likely given their prompts (loss on answer tokens only). Data: JSONL lines "
        '{"messages": [...], "response": "..."}, as written by capture. Writes a transformers '
        "folder plus alignment.json to --out; use it as [compression] model = \"DIR\".",
    )
    p.add_argument("--data", type=Path, action="append", required=True, metavar="FILE",
                   help="pairs JSONL (repeatable)")
    p.add_argument("--base", metavar="MODEL",
                   help="base small LM: HF id or folder (default: packaged SmolLM2-135M-Instruct)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--epochs", type=int, default=2, metavar="N", help="(default 2)")
    p.add_argument("--lr", type=float, default=5e-5, metavar="X", help="(default 5e-5)")
    p.add_argument("--lora", action="store_true",
                   help="train a LoRA adapter (needs peft) and merge it into the saved model")
    p.add_argument("--lora-rank", type=int, default=16, metavar="R", help="(default 16)")
    p.add_argument("--seed", type=int, metavar="S",
                   help="(default 0; with --eval-only: the model's own)")
    p.add_argument("--holdout", type=float, metavar="F",
                   help="held-out fraction, chosen by a seeded hash of each pair "
                   "(default 0.1; with --eval-only: the model's own)")
    p.add_argument("--max-tokens", type=int, default=512, metavar="N",
                   help="longest prompt+answer in small-LM tokens (default 512)")
    p.add_argument("--batch-size", type=int, default=4, metavar="B", help="(default 4)")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="STEPS",
                   help="save a resumable checkpoint every STEPS steps (default 50)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the aligned model in --out against its base on the held-out "
                   "pairs of --data; no training")
    p.add_argument("--rate", type=float, default=0.5,
                   help="compression rate for the evaluation (default 0.5)")
    p.add_argument("--judge", metavar="MODEL",
                   help="model scoring answers given compressed prompts (default: the base)")
    p.add_argument("--report", type=Path, metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from proxy.alignment.train import AlignConfig, AlignError, train

    errors = _check_args(args)
    if errors:
        for e in errors:
            print(f"linguagate align: {e}", file=sys.stderr)
        return 2
    try:
        if args.eval_only:
            report = run_eval(args.out, tuple(args.data), rate=args.rate, judge=args.judge,
                              device=args.device, max_tokens=args.max_tokens,
                              batch_size=args.batch_size, seed=args.seed, holdout=args.holdout)
        else:
            config = AlignConfig(
                data=tuple(args.data), out=args.out, base=args.base, epochs=args.epochs,
                lr=args.lr, lora=args.lora, lora_rank=args.lora_rank,
                seed=0 if args.seed is None else args.seed,
                holdout=0.1 if args.holdout is None else args.holdout,
                max_tokens=args.max_tokens, batch_size=args.batch_size,
                device=args.device, resume=args.resume, checkpoint_every=args.checkpoint_every,
            )
            report = train(config)
            print(f"aligned model written to {args.out}: held-out loss "
                  f"{_fmt(report['heldout_loss_before'])} -> {_fmt(report['heldout_loss_after'])}")
    except AlignError as exc:
        print(f"linguagate align: {exc}", file=sys.stderr)
        return 2
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _check_args(args: argparse.Namespace) -> list[str]:
    errors = []
    if args.epochs < 1:
        errors.append("--epochs must be >= 1")
    if not args.lr > 0:
        errors.append("--lr must be > 0")
    if args.holdout is not None and not 0.0 <= args.holdout < 1.0:
        errors.append("--holdout must be in [0, 1)")
    if args.max_tokens < 8:
        errors.append("--max-tokens must be >= 8")
    if args.batch_size < 1 or args.checkpoint_every < 1 or args.lora_rank < 1:
        errors.append("--batch-size, --checkpoint-every and --lora-rank must be >= 1")
    if not 0.0 < args.rate <= 1.0:
        errors.append("--rate must be in (0, 1]")
    for path in args.data:
        if not path.is_file():
            errors.append(f"--data {path}: no such file")
    return errors


def run_eval(out: Path, data: tuple[Path, ...], *, rate: float, judge: str | None,
             device: str | None, max_tokens: int, batch_size: int, seed: int | None = None,
             holdout: float | None = None, log: Any = None) -> dict[str, Any]:
    """Base vs aligned on the held-out pairs: answer perplexity, and the judge's answer
    likelihood given prompts compressed at ``rate`` by each. Prints a table."""
    from proxy.alignment.evaluate import (
        _pad_id,
        answer_nll,
        compress_prompt,
        compressed_answer_nll,
        format_table,
        ppl,
    )
    from proxy.alignment.examples import encode_pairs
    from proxy.alignment.pairs import Pair, PairsError, read_pairs, split_holdout
    from proxy.alignment.train import ALIGNMENT_FILE, AlignError, load_model
    from proxy.compress import Compressor
    from proxy.core.tokens import count_tokens

    log = log if log is not None else sys.stdout
    meta_path = out / ALIGNMENT_FILE
    if not meta_path.is_file():
        raise AlignError(f"{out} holds no aligned model ({ALIGNMENT_FILE} missing)")
    meta = json.loads(meta_path.read_text())
    # The split the model was trained with, unless asked otherwise.
    seed = seed if seed is not None else int(meta.get("seed", 0))
    holdout = holdout if holdout is not None else float(meta.get("holdout_fraction", 0.1))
    base = None if str(meta.get("base_model", "")).endswith("(packaged)") else meta["base_model"]
    try:
        pairs = read_pairs(data)
    except PairsError as exc:
        raise AlignError(str(exc)) from None
    _, held = split_holdout(pairs, holdout, seed)
    if not held:
        raise AlignError("no held-out pairs to evaluate on (--holdout is 0?)")
    rows: list[list[str]] = []
    report: dict[str, Any] = {"heldout_pairs": len(held), "rate": rate, "seed": seed}
    for label, name in (("base", base), ("aligned", str(out))):
        lm = load_model(name, device)
        nll = answer_nll(lm.model, encode_pairs(lm.tokenizer, held, max_tokens),
                         pad_id=_pad_id(lm.tokenizer), batch_size=batch_size)
        report[f"{label}_answer_nll"] = nll
        rows.append([f"answer perplexity under {label} small LM", ppl(nll),
                     "n/a" if nll is None else f"{nll:.4f}", "1.00"])
        del lm
    try:
        engines = {"base": Compressor(base, device), "aligned": Compressor(str(out), device)}
    except Exception as exc:
        raise AlignError(f"cannot load a compressor: {type(exc).__name__}: {exc}") from None
    judge_lm = load_model(judge if judge is not None else base, device)
    judge_name = judge or meta.get("base_model", "base")

    def text_tokens(p: Pair) -> int:
        return sum(count_tokens(t) for _, t in p.messages)

    def rate_of(original: Pair, compressed: Pair) -> float:
        return text_tokens(compressed) / max(1, text_tokens(original))

    outputs: dict[str, list[Pair]] = {"base": [], "aligned": []}

    def by(label: str) -> Any:
        def compress(p: Pair) -> Pair:
            out = compress_prompt(engines[label], p, rate)
            outputs[label].append(out)
            return out

        return compress

    scores = compressed_answer_nll(
        judge_lm.model, judge_lm.tokenizer, held,
        [("original prompt", None), ("compressed by base", by("base")),
         ("compressed by aligned", by("aligned"))],
        rate_of=rate_of, max_tokens=max_tokens, batch_size=batch_size)
    for s in scores:
        rows.append([f"judge NLL of answer, {s.label}", ppl(s.nll),
                     "n/a" if s.nll is None else f"{s.nll:.4f}", f"{s.rate:.2f}"])
        report[f"judge_nll_{s.label.replace(' ', '_')}"] = s.nll
        report[f"rate_{s.label.replace(' ', '_')}"] = s.rate
    differ = sum(a != b for a, b in zip(outputs["base"], outputs["aligned"], strict=True))
    report["judge"] = judge_name
    report["compressed_prompts_that_differ"] = differ
    log.write(f"held-out pairs: {len(held)} (seed {seed}, holdout {holdout}); "
              f"judge: {judge_name}; compression rate {rate}\n")
    log.write(format_table(rows, ["measure", "perplexity", "mean NLL (nats/token)",
                                  "prompt rate"]) + "\n")
    log.write(f"compressed prompts that differ between base and aligned: {differ}/{len(held)}\n")
    return report
