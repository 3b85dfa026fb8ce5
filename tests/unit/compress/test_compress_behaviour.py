"""Compressor behaviour on a tiny random model: edge inputs, protection, unicode, windows,
determinism and thread safety."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.compress import CompressionResult, Compressor, ProtectRules
from proxy.core.tokens import count_tokens
from tests.support.tiny_lm import sample_text

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DOC = sample_text(400, 11)


def _is_subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(ch in it for ch in small)


@pytest.mark.parametrize(
    ("instruction", "demos", "question"),
    [("", [], ""), ("", ["", ""], ""), ("Be brief.", [], "Hi"), ("", ["ok"], "why?")],
)
def test_empty_and_tiny_inputs_come_back_unchanged(
    tiny_compressor: Compressor, instruction: str, demos: list[str], question: str
) -> None:
    result = tiny_compressor.compress(instruction, demos, question, 0.3)
    assert (result.instruction, result.demonstrations, result.question) == (
        instruction,
        tuple(demos),
        question,
    )
    assert result.rate == (1.0 if result.original_tokens == 0 else result.rate)
    assert result.compressed_tokens == result.original_tokens


def test_rate_one_returns_input(tiny_compressor: Compressor) -> None:
    result = tiny_compressor.compress("sys", [DOC], "q", 1.0)
    assert result.demonstrations == (DOC,)


def test_rejects_nonpositive_rate(tiny_compressor: Compressor) -> None:
    with pytest.raises(ValueError):
        tiny_compressor.compress("", [DOC], "", 0.0)


def test_result_shape_and_word_level_edits(tiny_compressor: Compressor) -> None:
    demos = [sample_text(150, s) for s in range(6)]
    result = tiny_compressor.compress("You are a tutor.", demos, "How many hours?", 0.3)
    assert isinstance(result, CompressionResult)
    assert len(result.demonstrations) == len(demos)
    assert "" in result.demonstrations  # the coarse pass dropped whole demonstrations
    assert result.instruction == "You are a tutor." and result.question == "How many hours?"
    assert result.component_tokens["demonstrations"][0] == sum(count_tokens(d) for d in demos)
    assert 0 < result.elapsed_ms
    latin = r"[A-Za-z\u00c0-\u024f0-9']+"
    vocab = set(re.findall(latin, " ".join(demos)))
    for kept in result.demonstrations:
        assert set(re.findall(latin, kept)) <= vocab  # whole words only, never pieces
        assert _is_subsequence(kept.replace(" ", ""), "".join(demos).replace(" ", ""))


def test_line_breaks_kept_by_default_and_optional(tiny_compressor: Compressor) -> None:
    kept = tiny_compressor.compress("", [DOC], "", 0.3).demonstrations[0]
    assert kept.count("\n") == DOC.count("\n")
    flat = tiny_compressor.compress("", [DOC], "", 0.3, keep_line_breaks=False).demonstrations[0]
    assert flat.count("\n") < DOC.count("\n")


def test_protected_text_survives_verbatim(tiny_compressor: Compressor) -> None:
    doc = (
        f"{sample_text(120, 1)} Invoice ORD-5531 total 1,234.50 EUR, due 2024-06-30.\n"
        "See https://example.com/invoices/5531?x=1 for details and run `pay --now`.\n"
        '<keep>Never change this line: "exact" 7.</keep>\n'
        f'{sample_text(120, 2)} Config {{"retries": 3, "mode": "fast"}} end.'
    )
    rules = ProtectRules(number=True, regexes=(r"ORD-\d+",))
    out = tiny_compressor.compress("", [doc], "", 0.25, protect=rules).demonstrations[0]
    for needle in [
        "ORD-5531",
        "1,234.50",
        "2024-06-30",
        "https://example.com/invoices/5531?x=1",
        "`pay --now`",
        'Never change this line: "exact" 7.',
        '{"retries": 3, "mode": "fast"}',
    ]:
        assert needle in out
    assert "<keep>" not in out and "</keep>" not in out
    assert len(out) < len(doc)


def test_cjk_and_combining_characters_are_never_split(tiny_compressor: Compressor) -> None:
    doc = (
        "日本語のテキストも少し含まれています。中文文本也在这里。 "
        "café crème e\u0301te 👨\u200d👩\u200d👧 " * 12
    )
    out = tiny_compressor.compress("", [doc], "", 0.4).demonstrations[0]
    assert "\ufffd" not in out
    out.encode("utf-8")
    assert _is_subsequence(out.replace(" ", ""), doc.replace(" ", ""))
    assert "e\u0301" in out or "\u0301" not in out  # an accent never loses its letter
    assert out.count("\u200d") % 2 == 0  # emoji ZWJ sequences stay whole
    assert 0 < count_tokens(out) < count_tokens(doc)


def test_inputs_longer_than_the_model_context(tiny_short_context_compressor: Compressor) -> None:
    demos = [sample_text(300, s) for s in range(4)]  # ~1.7k tokens vs a 64-token context
    result = tiny_short_context_compressor.compress("", demos, "", 0.4)
    wanted = 0.4 * result.original_tokens
    assert abs(result.compressed_tokens - wanted) <= 0.1 * wanted
    nll = tiny_short_context_compressor.mean_nll(" ".join(demos))
    assert 0 < nll < 50


def test_question_aware_ranking_runs_and_keeps_the_rate(tiny_compressor: Compressor) -> None:
    demos = [sample_text(200, s) for s in range(8)]
    result = tiny_compressor.compress("", demos, "Which day?", 0.2, question_aware=True)
    assert result.question == "Which day?"
    dem_orig, dem_comp = result.component_tokens["demonstrations"]
    wanted = 0.2 * result.original_tokens - count_tokens("Which day?")
    assert abs(dem_comp - wanted) <= max(8, 0.1 * wanted)


def test_same_bytes_every_call_and_from_many_threads(tiny_compressor: Compressor) -> None:
    demos = [sample_text(180, s) for s in range(5)]

    def run(_: int) -> CompressionResult:
        return tiny_compressor.compress("Solve it.", demos, "How much?", 0.33, question_aware=True)

    first = run(0)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(8)))
    for r in results:
        assert (r.instruction, r.demonstrations, r.question) == (
            first.instruction,
            first.demonstrations,
            first.question,
        )


def test_same_bytes_in_another_process(tiny_compressor: Compressor) -> None:
    demos = [sample_text(150, s) for s in range(3)]
    here = tiny_compressor.compress("", demos, "", 0.3).demonstrations
    script = textwrap.dedent(
        """
        import json, torch
        torch.set_num_threads(1)
        from proxy.compress import Compressor
        from tests.support.tiny_lm import build_tiny_model, build_tiny_tokenizer, sample_text
        tok = build_tiny_tokenizer()
        c = Compressor.from_pretrained_objects(build_tiny_model(tok), tok, model_id="t")
        demos = [sample_text(150, s) for s in range(3)]
        print(json.dumps(c.compress("", demos, "", 0.3).demonstrations))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    import json

    assert tuple(json.loads(out.stdout.strip().splitlines()[-1])) == here


def test_protected_text_survives_in_demonstrations_the_budget_drops(
    tiny_compressor: Compressor,
) -> None:
    # Eight demonstrations at rate 0.25: the rank fill drops most of them whole, but the
    # protected order code in each is never dropped with them.
    demos = [f"{sample_text(70, 40 + i)} ORD-{1000 + i} {sample_text(30, 90 + i)}"
             for i in range(8)]
    only_codes = ProtectRules(code=False, json=False, url=False, regexes=(r"ORD-\d+",))
    result = tiny_compressor.compress("", demos, "", 0.25, protect=only_codes)
    for i, out in enumerate(result.demonstrations):
        assert f"ORD-{1000 + i}" in out
    pairs = zip(result.demonstrations, demos, strict=True)
    assert any(len(out) < len(d) / 4 for out, d in pairs)  # some were cut to little but the code
    target = 0.25 * result.original_tokens
    assert abs(result.compressed_tokens - target) <= max(8, 0.1 * target)
