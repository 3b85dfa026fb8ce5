"""Capture pieces: answer reassembly, deterministic sampling, the writer's caps and rotation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from proxy.alignment.capture import AnswerCollector, CaptureWriter, PendingCapture, sampled
from proxy.alignment.pairs import read_pairs
from tests.support.upstream import chat_chunk, chat_completion


def _stream(*chunks: bytes) -> AnswerCollector:
    collector = AnswerCollector()
    for chunk in chunks:
        collector.on_events(chunk)
    return collector


def test_json_answer_is_choice_zero() -> None:
    collector = AnswerCollector()
    body = json.dumps(chat_completion(text="Fifteen hours.", n=2)).encode()
    collector.on_body(body[:10])
    collector.on_body(body[10:])
    assert collector.answer() == "Fifteen hours."
    empty = AnswerCollector()
    empty.on_body(json.dumps({"choices": [{"index": 0, "message": {"content": None}}]}).encode())
    assert empty.answer() is None  # tool calls only: nothing to learn from


def test_stream_deltas_of_choice_zero_are_reassembled() -> None:
    collector = _stream(
        chat_chunk({"role": "assistant", "content": ""}) + chat_chunk({"content": "Hel"}),
        chat_chunk({"content": "xx"}, index=1),
        chat_chunk({"content": "lo, 日本"}) + chat_chunk({}, finish="stop"),
        chat_chunk({}, index=1, finish="stop") + b"data: [DONE]\n\n",
    )
    assert collector.answer() == "Hello, 日本"


def test_unfinished_or_failed_streams_are_not_captured() -> None:
    assert _stream(chat_chunk({"content": "Hel"})).answer() is None
    failed = _stream(chat_chunk({"content": "Hel"}),
                     b'data: {"error": {"message": "upstream went away"}}\n\n',
                     chat_chunk({}, finish="stop"))
    assert failed.answer() is None


def test_sampling_is_deterministic_per_request_id() -> None:
    ids = [f"lg-{i}" for i in range(2000)]
    picked = [i for i in ids if sampled(i, 0.1)]
    assert 100 < len(picked) < 300
    assert picked == [i for i in ids if sampled(i, 0.1)]
    assert not any(sampled(i, 0.0) for i in ids) and all(sampled(i, 1.0) for i in ids)


def _pending(writer: CaptureWriter, text: str, *, max_bytes: int = 1 << 20,
             max_files: int = 2) -> PendingCapture:
    pending = PendingCapture(writer, "team-a", [{"role": "user", "content": text}], "gpt-4o",
                             True, "lg-1", max_bytes, max_files)
    pending.collector.on_body(json.dumps(chat_completion(text="An answer.")).encode())
    return pending


def test_lines_feed_align_and_files_are_private(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path / "captures")
    assert _pending(writer, "What is 2 + 2?").finish()
    writer.close()
    path = tmp_path / "captures" / "team-a.jsonl"
    line = json.loads(path.read_text())
    assert line["response"] == "An answer." and line["tenant"] == "team-a"
    assert line["compressed"] is True and line["model"] == "gpt-4o" and line["time"].endswith("Z")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    [pair] = read_pairs([path])  # the capture format is the training format
    assert pair.messages == (("user", "What is 2 + 2?"),)


def test_size_cap_rotates_and_keeps_max_files(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path)
    for i in range(12):
        assert _pending(writer, f"{i:02d} " + "x" * 900, max_bytes=4096, max_files=2).finish()
    writer.flush()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["team-a.jsonl", "team-a.jsonl.1", "team-a.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    live = [json.loads(x)["messages"][0]["content"][:2] for x in
            (tmp_path / "team-a.jsonl").read_text().splitlines()]
    assert live[-1] == "11"  # the newest line is in the live file
    # A line larger than the cap is dropped and counted, never written.
    assert _pending(writer, "y" * 5000, max_bytes=4096).finish()
    writer.close()
    assert writer.dropped == 1 and writer.written == 12


def test_a_full_queue_drops_instead_of_blocking(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    writer = CaptureWriter(tmp_path, queue_size=1)
    monkeypatch.setattr(writer, "_ensure_thread", lambda: None)  # nobody drains the queue
    assert _pending(writer, "one").finish()
    assert not _pending(writer, "two").finish()
    assert writer.dropped == 1
    writer.close(timeout=0.01)
    assert not _pending(writer, "three").finish() and writer.dropped == 2
