"""`linguagate compress`: request body in, forwarded body out (tiny model saved to a folder)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from proxy.cli.commands import main
from tests.support.tiny_lm import build_tiny_model, sample_text

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def model_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _body() -> bytes:
    doc = sample_text(300, 4)
    messages = [
        {"role": "system", "content": "You are a careful tutor."},
        {"role": "user", "content": sample_text(120, 5)},
        {"role": "assistant", "content": sample_text(120, 6)},
        {"role": "user", "content": f"{doc}\n\nHow many hours in total?"},
    ]
    head = '{"model": "gpt-4", "temperature": 1.0, "x_unknown": {"keep": [1, 2.50]}, "messages": '
    return (head + json.dumps(messages, ensure_ascii=False) + ', "stream": true}').encode()


def _run(
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    raw: bytes,
    *args: str,
) -> tuple[int, bytes, bytes]:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw)))
    code = main(["compress", *args])
    out, err = capsysbinary.readouterr()
    return code, out, err


def test_compresses_messages_and_keeps_every_other_byte(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    raw = _body()
    code, out, err = _run(
        monkeypatch, capsysbinary, raw, "--rate", "0.3", "--model", str(model_dir), "--stats"
    )
    assert code == 0
    assert out.startswith(
        b'{"model": "gpt-4", "temperature": 1.0, "x_unknown": {"keep": [1, 2.50]}, '
    )
    assert out.endswith(b', "stream": true}')
    sent, got = json.loads(raw), json.loads(out)
    assert [m["role"] for m in got["messages"]] == [m["role"] for m in sent["messages"]]
    assert got["messages"][0] == sent["messages"][0]  # instruction kept whole (rate 1.0)
    assert got["messages"][3]["content"].endswith("How many hours in total?")  # the question
    assert len(out) < len(raw)
    stats = json.loads(err.decode().strip().splitlines()[-1])
    assert stats["requested_rate"] == 0.3
    assert stats["compressed_tokens"] < stats["original_tokens"]
    assert {"instruction", "demonstrations", "question"} <= set(stats["component_tokens"])
    assert stats["mapping"].startswith("instruction=1; context=3; question=1; rules=")
    # auto, as the proxy: what this host's CPU does natively, named in the id when not fp32
    assert stats["numerics"].startswith("cpu ") and "(auto: " in stats["numerics"]


def test_policy_file_settings_apply(
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    policy = tmp_path / "team.toml"
    policy.write_text(
        '[tenant]\nname = "team"\nanonymous = true\n\n'
        '[compression]\nmode = "enforce"\nrate = 0.5\n\n'
        '[models."gpt-4*".compression]\nrate = 0.4\n'
    )
    code, _, err = _run(
        monkeypatch,
        capsysbinary,
        _body(),
        "--policy",
        str(policy),
        "--model",
        str(model_dir),
        "--stats",
    )
    assert code == 0
    assert json.loads(err.decode().strip().splitlines()[-1])["requested_rate"] == 0.4


def test_policy_fill_reaches_the_compressor(
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    sent = json.loads(_body())["messages"]

    def demos(fill: str) -> list[str]:
        policy = tmp_path / f"{fill}.toml"
        policy.write_text(
            f'[tenant]\nname = "{fill}"\nanonymous = true\n\n[compression]\nmode = "enforce"\n'
            f'rate = 0.3\nfill = "{fill}"\ngranularity_k = 3.0\n'
        )
        code, out, _ = _run(
            monkeypatch, capsysbinary, _body(), "--policy", str(policy), "--model", str(model_dir)
        )
        assert code == 0
        return [m["content"] for m in json.loads(out)["messages"][1:3]]

    # uniform with k 3: every demonstration kept and cut; rank: whole ones and dropped ones.
    originals = [m["content"] for m in sent[1:3]]
    assert all(0 < len(d) < len(o) for d, o in zip(demos("uniform"), originals, strict=True))
    assert any(d in ("", o) for d, o in zip(demos("rank"), originals, strict=True))


def test_bad_input_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, out, err = _run(monkeypatch, capsysbinary, b"[1, 2]", "--rate", "0.3")
    assert code == 2 and out == b"" and b"JSON object" in err
