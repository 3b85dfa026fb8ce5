"""Distribution alignment, measured: build offline pairs, run `linguagate align`, evaluate.

    nice -n 10 python bench/align_eval.py [--out bench/out/align] [--epochs 2] [--rate 0.5]

Data (all offline, written to OUT/pairs-*.jsonl):
* gsm8k: the 100 GSM8K test questions in ../shared/data/gsm8k_test_sample.jsonl, each with
  its reference answer (worked solution with <<calculator>> annotations and "#### N");
* gsm8k-demos: the 8 worked examples of ../shared/data/gsm8k_prompt_hardest.txt;
* retrieval: 100 synthetic ~300-token facility-record prompts (bench/data_retrieval.py), the
  answer being the exact access code asked for (the terse "reply with the value" style).
The held-out split is the seeded hash split of `linguagate align` (--holdout, default 0.2).
The evaluation (`linguagate align --eval-only`) prints held-out answer perplexity under the
base and aligned small LM, and the judge's (base model) answer likelihood given prompts
compressed at --rate by each compressor. One torch thread: run it niced on a shared box.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DATA = ROOT.parent / "shared" / "data"


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def build_pairs(out: Path, retrieval: int) -> list[Path]:
    from data_retrieval import INSTRUCTION, make_retrieval_cases

    out.mkdir(parents=True, exist_ok=True)
    gsm = [json.loads(line) for line in (DATA / "gsm8k_test_sample.jsonl").read_text().splitlines()
           if line.strip()]
    files = [_write(out / "pairs-gsm8k.jsonl", [
        {"messages": [{"role": "user", "content": g["question"]}], "response": g["answer"]}
        for g in gsm])]
    text = (DATA / "gsm8k_prompt_hardest.txt").read_text()
    demos = []
    for block in re.split(r"\n(?=Question: )", text):
        head, _, rest = block.partition("\nLet's think step by step\n")
        if head.startswith("Question: ") and rest.strip():
            demos.append({"messages": [{"role": "user", "content": head[len("Question: "):]
                                        + "\nLet's think step by step"}],
                          "response": rest.strip()})
    files.append(_write(out / "pairs-gsm8k-demos.jsonl", demos))
    if retrieval <= 0:
        return files
    cases = make_retrieval_cases(300, retrieval, seed=1000)
    files.append(_write(out / "pairs-retrieval.jsonl", [
        {"messages": [{"role": "system", "content": INSTRUCTION},
                      {"role": "user", "content": "\n\n".join([*c.documents, c.question])}],
         "response": c.answer} for c in cases]))
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "align")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--retrieval", type=int, default=100)
    ap.add_argument("--eval-only", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from proxy.alignment.train import AlignConfig, train
    from proxy.cli.align import run_eval

    files = build_pairs(args.out, args.retrieval)
    model_dir = args.out / "model"
    started = time.perf_counter()
    if not args.eval_only:
        config = AlignConfig(data=tuple(files), out=model_dir, epochs=args.epochs, lr=args.lr,
                             batch_size=args.batch_size, holdout=args.holdout, seed=0,
                             resume=(model_dir / ".align-checkpoint").exists())
        record = train(config)
        print(json.dumps(record, indent=2))
    trained = time.perf_counter()
    report = run_eval(model_dir, tuple(files), rate=args.rate, judge=None, device=None,
                      max_tokens=512, batch_size=args.batch_size)
    report["train_wall_s"] = round(trained - started, 1)
    report["eval_wall_s"] = round(time.perf_counter() - trained, 1)
    (args.out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
