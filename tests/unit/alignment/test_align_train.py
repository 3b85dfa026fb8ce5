"""`linguagate align` on the tiny random model: it learns, saves a loadable folder, resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.alignment.examples import collate, encode_pair
from proxy.alignment.pairs import Pair
from proxy.alignment.train import ALIGNMENT_FILE, AlignConfig, AlignError, train
from proxy.cli.commands import main
from tests.support.alignment import write_pairs

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class _Log:
    """A progress sink; ``stop_at`` interrupts the run when that step is reported."""

    def __init__(self, stop_at: str | None = None) -> None:
        self.lines: list[str] = []
        self.stop_at = stop_at

    def write(self, text: str) -> None:
        self.lines.append(text)
        if self.stop_at is not None and self.stop_at in text:
            raise KeyboardInterrupt

    def flush(self) -> None:
        pass


def _config(data: Path, out: Path, base: Path, **kw: Any) -> AlignConfig:
    values: dict[str, Any] = {"epochs": 3, "lr": 3e-3, "batch_size": 4, "holdout": 0.2,
                              "seed": 1, "max_tokens": 96}
    values.update(kw)
    return AlignConfig(data=(data,), out=out, base=str(base), **values)


@pytest.fixture(scope="module")
def aligned(tiny_base_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("aligned")
    data = write_pairs(root / "pairs.jsonl", 16)
    record = train(_config(data, root / "out", tiny_base_dir), log=_Log())
    return root / "out", record


def test_training_lowers_the_loss_and_records_the_run(aligned: tuple[Path, dict[str, Any]],
                                                      tiny_base_dir: Path) -> None:
    out, record = aligned
    assert record["train_loss_last"] < record["train_loss_first"]
    assert record["heldout_loss_after"] < record["heldout_loss_before"]
    saved = json.loads((out / ALIGNMENT_FILE).read_text())
    assert saved == record
    assert saved["base_model"] == str(tiny_base_dir)
    assert saved["pairs"] == 16 and saved["train_pairs"] + saved["heldout_pairs"] == 16
    assert saved["heldout_pairs"] >= 1 and len(saved["data_sha256"]) == 64
    assert (saved["epochs"], saved["lr"], saved["seed"], saved["lora"]) == (3, 3e-3, 1, False)
    assert saved["steps"] == 3 * -(-saved["train_pairs"] // 4)
    assert not (out / ".align-checkpoint").exists()


def test_the_folder_loads_with_transformers_and_as_a_compressor(
        aligned: tuple[Path, dict[str, Any]], tiny_base_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from proxy.compress import Compressor

    out, _ = aligned
    model = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out) is not None
    assert model.config.vocab_size > 0
    engine = Compressor(str(out), "cpu")
    base = Compressor(str(tiny_base_dir), "cpu")
    assert engine.model_id != base.model_id  # cache keys change with the aligned model
    text = " ".join(["Fuel dilution happens when unburnt fuel reaches the engine oil."] * 8)
    result = engine.compress("", [text], "", 0.5)
    assert 0 < result.compressed_tokens < result.original_tokens


def test_an_interrupted_run_resumes_to_the_same_weights(tiny_base_dir: Path,
                                                        tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    data = write_pairs(tmp_path / "pairs.jsonl", 10)
    straight = tmp_path / "straight"
    train(_config(data, straight, tiny_base_dir, epochs=2, checkpoint_every=1), log=_Log())
    resumed = tmp_path / "resumed"
    config = _config(data, resumed, tiny_base_dir, epochs=2, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        train(config, log=_Log(stop_at="step 4/"))
    assert (resumed / ".align-checkpoint" / "state.pt").exists()
    with pytest.raises(AlignError, match="--resume"):
        train(config, log=_Log())
    log = _Log()
    record = train(AlignConfig(**{**config.__dict__, "resume": True}), log=log)
    assert any("resuming at" in line for line in log.lines)
    a = AutoModelForCausalLM.from_pretrained(straight).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert record["steps"] == json.loads((straight / ALIGNMENT_FILE).read_text())["steps"]


def test_loss_counts_only_answer_tokens_with_the_chat_template(tiny_base_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    pair = Pair((("user", "Question: how many hours?"),), "15 hours")
    example = encode_pair(tokenizer, pair, 512)
    answer = tokenizer.decode(list(example.ids[example.answer_start:]))
    assert answer == "15 hours</s>\n"  # the end-of-turn marker is learnt too
    _, mask, labels = collate([example, encode_pair(tokenizer, pair, 8)], 0, "cpu")
    assert int((labels[0] != -100).sum()) == example.answer_tokens
    assert int(mask[1].sum()) == 8  # cut to max_tokens, keeping the answer's start


def _cli(*args: str) -> int:
    return main(["align", *args])


def test_cli_errors_are_clear_and_exit_2(tiny_base_dir: Path, tmp_path: Path,
                                         aligned: tuple[Path, dict[str, Any]],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 6)
    assert _cli("--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "x", "response": "y"}\n')
    assert _cli("--data", str(bad), "--base", str(tiny_base_dir), "--out",
                str(tmp_path / "o")) == 2
    assert f"{bad}:1:" in capsys.readouterr().err
    assert _cli("--data", str(data), "--base", str(tmp_path / "no-model"), "--out",
                str(tmp_path / "o2")) == 2
    assert "cannot load base model" in capsys.readouterr().err
    out, _ = aligned
    assert _cli("--data", str(data), "--base", str(tiny_base_dir), "--out", str(out)) == 2
    assert "already holds an aligned model" in capsys.readouterr().err
    assert _cli("--data", str(data), "--out", str(tmp_path / "o3"), "--epochs", "0") == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_lora_without_peft_is_a_clear_error(tiny_base_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails, as if absent
    data = write_pairs(tmp_path / "pairs.jsonl", 6)
    assert _cli("--data", str(data), "--base", str(tiny_base_dir), "--out", str(tmp_path / "o"),
                "--lora") == 2
    assert "peft" in capsys.readouterr().err


def test_eval_only_prints_the_table(aligned: tuple[Path, dict[str, Any]], tiny_base_dir: Path,
                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, record = aligned
    data = Path(record["data"][0])
    report = tmp_path / "eval.json"
    assert _cli("--data", str(data), "--out", str(out), "--eval-only", "--rate", "0.5",
                "--max-tokens", "96", "--report", str(report)) == 0
    printed = capsys.readouterr().out
    assert "answer perplexity under aligned small LM" in printed
    assert "compressed by aligned" in printed and f"judge: {tiny_base_dir}" in printed
    result = json.loads(report.read_text())
    assert result["aligned_answer_nll"] < result["base_answer_nll"]
    assert result["heldout_pairs"] == record["heldout_pairs"]


def test_lora_adapter_is_merged_into_a_plain_folder(tiny_base_dir: Path, tmp_path: Path) -> None:
    from proxy.compress import Compressor

    data = write_pairs(tmp_path / "pairs.jsonl", 10)
    out = tmp_path / "lora"
    record = train(_config(data, out, tiny_base_dir, lora=True, lora_rank=4), log=_Log())
    assert record["lora"] is True and record["lora_rank"] == 4
    assert record["train_loss_last"] < record["train_loss_first"]
    assert not (out / "adapter_config.json").exists()  # merged: loads like any model folder
    assert Compressor(str(out), "cpu").model_id.startswith(str(out))
