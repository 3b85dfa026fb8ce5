"""Opt-in capture of (messages as sent upstream, upstream answer) pairs, for alignment.

For tenants whose policy says ``[alignment] capture = true``, a deterministic sample of
successful chat completions (chosen by request id, ``sample`` of them) is written as one
JSON line per pair in the pair format of :mod:`proxy.alignment.pairs`::

    {"messages": [...], "response": "...", "model": "...", "tenant": "...",
     "time": "2026-...Z", "compressed": true, "request_id": "..."}

``messages`` are exactly the forwarded ones (compressed, when the proxy compressed them);
the answer is choice 0's text (for ``n > 1`` the other choices are not captured), streamed
answers reassembled from their deltas. A stream that did not finish (no ``finish_reason``),
an error answer, or an answer without text (tool calls only) is not captured.

The files hold prompt and answer text (never keys or headers): one per tenant,
``<dir>/<tenant>.jsonl``, mode 0600, rotated to ``.1``, ``.2`` ... past ``max_bytes`` with
``max_files`` rotated files kept. Writing happens on one background thread fed by a bounded
queue: a request never waits for the disk, and when the queue is full the pair is dropped
and counted instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.policy.model import PolicySnapshot

__all__ = ["AnswerCollector", "CaptureWriter", "PendingCapture", "sampled"]

_log = logging.getLogger("linguagate.capture")
_MAX_ANSWER_BYTES = 4 * 1024 * 1024
_STOP = object()


def sampled(request_id: str, fraction: float) -> bool:
    """Whether ``request_id`` falls in the ``fraction`` sample (the same answer every time)."""
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(request_id.encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class AnswerCollector:
    """Reassembles choice 0's text from a relayed JSON body or SSE event blocks (copies)."""

    def __init__(self) -> None:
        self._body: list[bytes] = []
        self._size = 0
        self._deltas: list[str] = []
        self._finished = False
        self._failed = False
        self._streamed = False

    def on_body(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= _MAX_ANSWER_BYTES:
            self._body.append(chunk)
        else:
            self._failed = True

    def on_events(self, block: bytes) -> None:
        self._streamed = True
        for line in block.splitlines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]" or not data:
                continue
            try:
                event = json.loads(data)
            except ValueError:
                continue
            self._event(event)

    def _event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        if "error" in event:
            self._failed = True
            return
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                self._size += len(content)
                if self._size > _MAX_ANSWER_BYTES:
                    self._failed = True
                    return
                self._deltas.append(content)
            if choice.get("finish_reason") is not None:
                self._finished = True

    def answer(self) -> str | None:
        """Choice 0's text, or None when there is none to capture."""
        if self._failed:
            return None
        if self._streamed:
            text = "".join(self._deltas)
            return text if self._finished and text.strip() else None
        try:
            body = json.loads(b"".join(self._body))
        except ValueError:
            return None
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list):
            return None
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                message = choice.get("message")
                content = message.get("content") if isinstance(message, dict) else None
                return content if isinstance(content, str) and content.strip() else None
        return None


@dataclass(frozen=True)
class _Line:
    tenant: str
    data: bytes
    max_bytes: int
    max_files: int


@dataclass
class PendingCapture:
    """One sampled request: what was forwarded, waiting for the answer."""

    writer: CaptureWriter
    tenant: str
    messages: list[Any]
    model: str | None
    compressed: bool
    request_id: str
    max_bytes: int
    max_files: int
    collector: AnswerCollector = field(default_factory=AnswerCollector)

    def finish(self) -> bool:
        """Queue the pair when the answer is complete and has text; True when queued."""
        answer = self.collector.answer()
        if answer is None:
            return False
        record = {
            "messages": self.messages,
            "response": answer,
            "model": self.model,
            "tenant": self.tenant,
            "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "compressed": self.compressed,
            "request_id": self.request_id,
        }
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        return self.writer.submit(_Line(self.tenant, data, self.max_bytes, self.max_files))


class CaptureWriter:
    """Appends captured lines to per-tenant files from one daemon thread (started lazily)."""

    def __init__(self, directory: Path, *, queue_size: int = 1024) -> None:
        self.directory = Path(directory)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.written = 0
        self.dropped = 0  # queue full, closed, or a line larger than the file cap
        self.errors = 0

    def begin(self, snapshot: PolicySnapshot, tenant_name: str, request_id: str,
              forwarded: bytes, *, compressed: bool) -> PendingCapture | None:
        """A pending capture when ``tenant_name`` opted in and ``request_id`` is sampled."""
        tenant = snapshot.tenant(tenant_name)
        if tenant is None or not tenant.alignment.capture or self._closed:
            return None
        if not sampled(request_id, tenant.alignment.sample):
            return None
        try:
            body = json.loads(forwarded)
        except ValueError:
            return None
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return None  # legacy /v1/completions prompts are not captured
        model = body.get("model") if isinstance(body.get("model"), str) else None
        policy = tenant.alignment
        return PendingCapture(self, tenant.name, messages, model, compressed, request_id,
                              policy.max_bytes, policy.max_files)

    def submit(self, line: _Line) -> bool:
        """Queue one line without ever blocking; False (and counted) when it is dropped."""
        if self._closed:
            self.dropped += 1
            return False
        self._ensure_thread()
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="linguagate-capture",
                                                daemon=True)
                self._thread.start()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued line is written (tests, shutdown)."""
        done = threading.Event()
        if self._thread is None:
            return
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return
        done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        thread.join(timeout)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            assert isinstance(item, _Line)
            try:
                self._write(item)
            except OSError as exc:  # never the content: the error type and errno only
                self.errors += 1
                _log.warning("capture write failed for tenant %s: %s (errno %s)",
                             item.tenant, type(exc).__name__, exc.errno)

    def _write(self, line: _Line) -> None:
        if len(line.data) > line.max_bytes:
            self.dropped += 1
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"{line.tenant}.jsonl"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line.data) > line.max_bytes:
            _rotate(path, line.max_files)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.data)
        finally:
            os.close(fd)
        self.written += 1


def _rotate(path: Path, keep: int) -> None:
    """``x.jsonl`` -> ``x.jsonl.1`` -> ... -> ``x.jsonl.<keep>``; the oldest is deleted."""
    oldest = path.with_name(f"{path.name}.{keep}")
    oldest.unlink(missing_ok=True)
    for index in range(keep - 1, 0, -1):
        src = path.with_name(f"{path.name}.{index}")
        if src.exists():
            os.replace(src, path.with_name(f"{path.name}.{index + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
