"""Layout benchmark (issue 16): does the answer survive compression in real framework layouts?

Each needle item of ``tests/layouts/corpus.py`` (7-12 documents that all mention the
question's entities, one states the answer, some hold near-miss facts of the same shape) is
rendered in every layout of the corpus, as that framework's default template sends it, and
goes through the proxy's own request-side path with a default policy at ``rate``: the message
mapping (``proxy.compression.messages``/``layouts``), the planner (``plan_units``), the
compressor call of the compression step, the rewrite. Per layout it prints:

* **answer kept**: the share of items whose answer reaches the upstream;
* **question intact**: the share whose question reaches it verbatim;
* **applied**: the share where anything was compressed (not skipped);
* **rate**: forwarded / original tokens of the context (the items compressed), cl100k;

and the same for two baselines on the same items and the same context budget
(``rate`` x the documents' tokens): the reference package ``llmlingua`` 0.2.2 with
LongLLMLingua's settings (its README: question-conditioned ranking, ``sort`` reordering,
dynamic ratio 0.3, ``context_budget="+100"``), given the documents as a list and the question
(the best input it can get: a proxy using it would need this mapping first), run in its own
venv behind ``bench/_reference_worker.py`` as in ``bench/compress_bench.py``; and head
truncation of the joined documents. Both baselines see the documents, not the layout, so
their figures are the same in every layout row.

    .venv/bin/python -m bench.layouts --sizes 1000 --rates 0.33   # one slice -> bench/out/
    .venv/bin/python -m bench.layouts --report                    # table of every slice

Run slices under ``flock /tmp/lg-model.lock``; each writes ``bench/out/layouts_<size>_<rate>.json``
and ``--report`` prints (``--write``: into bench/RESULTS.md) the table of those found.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SEED = 2026  # not the seeds of tests/: the bench items are held out from the unit tests
sys.path.insert(0, str(ROOT))  # tests.layouts is not an installed package

from bench.compress_bench import REF_LONG, Reference  # noqa: E402
from tests.layouts.corpus import LAYOUTS, Item, make_items  # noqa: E402


@dataclass
class Row:
    layout: str
    size: int
    rate: float
    item: str
    answer_kept: bool
    question_intact: bool
    applied: bool
    context_rate: float
    mapping: str
    ref_answer_kept: bool | None = None
    ref_question_intact: bool | None = None
    ref_rate: float | None = None
    head_answer_kept: bool = False
    seconds: float = 0.0
    ref_seconds: float | None = None


def _body(rendered: list[dict[str, Any]] | str) -> dict[str, Any]:
    if isinstance(rendered, str):
        return {"model": "gpt-4", "prompt": rendered}
    return {"model": "gpt-4", "messages": rendered}


class Ours:
    """The compression step's path, without HTTP: split, plan, compress each unit, rewrite.

    Units are memoised by their cache key, as the proxy's cache would: layouts that give the
    compressor the same texts share one call.
    """

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        from proxy.compress import Compressor

        self.comp = Compressor(None, "cpu")
        self.memo: dict[str, Any] = {}

    def run(self, body: dict[str, Any], rate: float) -> tuple[str, str, bool, float, str]:
        """(original text, forwarded text, applied, context rate, mapping)."""
        from proxy.compression.messages import (
            replacements_for,
            split_chat,
            split_completion,
            text_token_count,
        )
        from proxy.compression.plan import plan_units
        from proxy.compression.step import _compress_unit
        from proxy.core.tokens import count_tokens
        from proxy.policy.model import CompressionPolicy

        policy = CompressionPolicy(mode="enforce", rate=rate)
        comps = split_chat(body) if "messages" in body else split_completion(body)
        texts = dict(comps.texts)
        plan = plan_units(comps, policy, rate=rate, original_tokens=text_token_count(comps),
                          tenant="bench", model_id=self.comp.model_id)
        assigned: dict[Any, str] = {}
        for unit in plan.units:
            if unit.key not in self.memo:
                self.memo[unit.key] = _compress_unit(self.comp, unit, plan, policy, "gpt-4")
            res = self.memo[unit.key]
            if res.texts is not None:
                assigned.update(zip(unit.items, res.texts, strict=True))
        new = replacements_for(comps, assigned)
        demos = [d for d in comps.demonstrations if d.compressible]
        before = sum(count_tokens(d.text, "gpt-4") for d in demos)
        after = sum(count_tokens(assigned.get(d, d.text), "gpt-4") for d in demos)
        original = "\n".join(texts.values())
        forwarded = "\n".join(new.get(p, t) for p, t in texts.items())
        return original, forwarded, bool(new), after / before if before else 1.0, comps.mapping()


def _head(item: Item, budget: int) -> str:
    from proxy.core.tokens import encoding_for_model

    enc = encoding_for_model("gpt-4")  # cl100k, what the reference counts in
    ids = enc.encode("\n\n".join(d.text for d in item.documents))
    return enc.decode(ids[:budget])


def run_slice(size: int, rate: float, items: Sequence[Item], layouts: Sequence[str],
              threads: int, reference: bool) -> list[Row]:
    from proxy.core.tokens import count_tokens

    ours = Ours(threads)
    ref = None
    if reference:
        python = shutil.which(str(ROOT / ".bench-venv" / "bin" / "python"))
        if not python:
            raise SystemExit(".bench-venv missing: run bench/setup_bench_env.sh")
        from proxy.compress.lm import ensure_default_model_dir

        ref = Reference(Path(python), ensure_default_model_dir(), "cpu", "float32", threads)
    rows: list[Row] = []
    for item in items:
        docs = [d.text for d in item.documents]
        ctx_tokens = sum(count_tokens(d, "gpt-4") for d in docs)
        budget = round(rate * ctx_tokens)
        ref_fields: dict[str, Any] = {}
        if ref is not None:
            q_tokens = count_tokens(item.question, "gpt-4")
            started = time.perf_counter()
            res = ref.call({
                "op": "compress", "context": docs, "instruction": "", "question": item.question,
                # The same context budget; the question is kept whole by both.
                "kwargs": {**REF_LONG, "target_token": budget + q_tokens},
            })
            prompt = res["compressed_prompt"]
            ctx = prompt.replace(item.question, "")
            ref_fields = {
                "ref_answer_kept": item.answer in prompt,
                "ref_question_intact": item.question in prompt,
                "ref_rate": count_tokens(ctx.strip(), "gpt-4") / ctx_tokens,
                "ref_seconds": time.perf_counter() - started,
            }
        head = item.answer in _head(item, budget)
        for name in layouts:
            started = time.perf_counter()
            original, forwarded, applied, ctx_rate, mapping = ours.run(
                _body(LAYOUTS[name].render(item)), rate)
            assert item.answer in original
            rows.append(Row(
                name, size, rate, item.id, item.answer in forwarded, item.question in forwarded,
                applied, ctx_rate, mapping, head_answer_kept=head,
                seconds=time.perf_counter() - started, **ref_fields,
            ))
        print(f"  {item.id}: {sum(r.answer_kept for r in rows[-len(layouts):])}/{len(layouts)}"
              f" layouts kept the answer; reference {ref_fields.get('ref_answer_kept')}, "
              f"head {head}", file=sys.stderr, flush=True)
    if ref is not None:
        ref.close()
    return rows


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def table(rows: Sequence[Row]) -> str:
    groups: dict[tuple[int, float], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.size, r.rate), []).append(r)
    lines: list[str] = []
    for (size, rate), group in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        n = len({r.item for r in group})
        target = 0.95 if rate >= 0.33 else 0.90
        lines += [
            "",
            f"**{size} tokens, rate {rate}** ({n} items; target: answer kept >= {target:.2f} "
            "and >= LongLLMLingua's)",
            "",
            "| layout | answer kept | question intact | applied | rate | LongLLMLingua kept "
            "| its rate | head trunc. kept | rules |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        by_layout: dict[str, list[Row]] = {}
        for r in group:
            by_layout.setdefault(r.layout, []).append(r)
        for name in LAYOUTS:
            rs = by_layout.get(name)
            if not rs:
                continue
            refs = [r for r in rs if r.ref_answer_kept is not None]
            ref_kept = _mean([float(bool(r.ref_answer_kept)) for r in refs])
            ref_rate = _mean([r.ref_rate or 0.0 for r in refs])
            kept = _mean([float(r.answer_kept) for r in rs])
            flag = "" if kept >= target and (not refs or kept >= ref_kept) else " ✗"
            rules = rs[0].mapping.split("rules=")[-1]
            lines.append(
                f"| {name} | {kept:.2f}{flag} | {_mean([float(r.question_intact) for r in rs]):.2f}"
                f" | {_mean([float(r.applied) for r in rs]):.2f}"
                f" | {_mean([r.context_rate for r in rs]):.2f}"
                f" | {ref_kept:.2f} | {ref_rate:.2f}"
                f" | {_mean([float(r.head_answer_kept) for r in rs]):.2f} | {rules} |"
            )
    return "\n".join(lines)


def _slice_path(size: int, rate: float, start: int, n: int) -> Path:
    return OUT / f"layouts_{size}_{rate}_{start}-{start + n}.json"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.33, 0.2])
    ap.add_argument("--items", type=int, default=24, help="items per size")
    ap.add_argument("--start", type=int, default=0, help="first item (to run a size in parts)")
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--report", action="store_true", help="print the table of saved slices")
    ap.add_argument("--write", action="store_true", help="with --report: into bench/RESULTS.md")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.report:
        rows = [Row(**r) for p in sorted(OUT.glob("layouts_*.json"))
                for r in json.loads(p.read_text())["rows"]]
        text = table(rows)
        print(text)
        if args.write:
            _write(text, sorted(OUT.glob("layouts_*.json")))
        return 0
    for size in args.sizes:
        for rate in args.rates:
            started = time.perf_counter()
            items = make_items(args.start + args.items, size, SEED)[args.start:]
            rows = run_slice(size, rate, items, args.layouts, args.threads,
                             not args.skip_reference)
            meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "command": " ".join(sys.argv), "machine": _machine(),
                    "minutes": round((time.perf_counter() - started) / 60, 1)}
            _slice_path(size, rate, args.start, args.items).write_text(
                json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
            print(table(rows))
    return 0


def _machine() -> str:
    import platform

    return f"{platform.node() or 'host'}, {os.cpu_count()} CPUs, {platform.platform()}"


def _write(text: str, slices: Sequence[Path]) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    begin, end = "<!-- layouts:begin -->", "<!-- layouts:end -->"
    metas = [json.loads(p.read_text())["meta"] for p in slices]
    runs = "\n".join(f"- `{m['command']}`: {m['date']}, {m['minutes']} min, {m['machine']}"
                     for m in metas)
    block = f"{begin}\n{runs}\n{text}\n{end}"
    body = path.read_text()
    if begin in body:
        body = body[: body.index(begin)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip() + "\n\n## Prompt layouts (bench/layouts.py)\n\n" + block + "\n"
    path.write_text(body)


if __name__ == "__main__":
    raise SystemExit(main())
