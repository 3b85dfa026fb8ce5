"""Cross-request batching: same bytes as unbatched, no leaks between requests, bounded queue,
deadlines fail open, nothing retained after a request.

The tiny random model exercises every path (padded score rows, padded per-request KV
caches, the engine thread, the service wiring) in a few seconds.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from proxy.compress import Compressor
from proxy.compress.batching import BatchEngine, BatchSettings, Job
from proxy.compress.forward import ScoreJob, StepJob, StepResult, shape_class
from proxy.compress.scoring import Scorer, Stream
from proxy.compression.service import Batching, CompressorService, batching_for
from proxy.core.executor import DeadlineExceeded, QueueFull
from proxy.core.settings import Settings
from tests.support.tiny_lm import build_tiny_model, sample_text

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# (instruction, demonstrations, question, rate, question_aware): mixed lengths and rates.
CASES = [
    (
        "Instruction " + sample_text(12 + 5 * i, i),
        [sample_text(30 + 23 * i + 11 * j, 10 * i + j) for j in range(2 + i % 3)],
        sample_text(10 + 3 * i, 90 + i),
        rate,
        i % 3 == 2,
    )
    for i, rate in enumerate([0.3, 0.5, 0.4, 0.2, 0.6, 0.35, 0.45, 0.25])
]


@pytest.fixture(scope="module")
def plain(tiny_tokenizer: PreTrainedTokenizerFast) -> Compressor:
    model = build_tiny_model(tiny_tokenizer)
    return Compressor.from_pretrained_objects(model, tiny_tokenizer, model_id="tiny@batching")


@pytest.fixture
def engine() -> Iterator[BatchEngine]:
    eng = BatchEngine(BatchSettings(max_wait_ms=20))
    yield eng
    eng.close()


def _outputs(result: Any) -> tuple[str, tuple[str, ...], str, int]:
    return result.instruction, result.demonstrations, result.question, result.compressed_tokens


def _compress(c: Any, case: tuple[Any, ...]) -> Any:
    instruction, demos, question, rate, aware = case
    return c.compress(instruction, demos, question, rate, question_aware=aware)


def test_shape_classes_depend_only_on_length_and_pad_little() -> None:
    for per_octave in (4, 8, 16):
        last = 0
        for n in range(0, 3000):
            c = shape_class(n, per_octave)
            assert c >= n and c >= last  # never truncates; monotone
            if n > 16:
                assert (c - n) / n < 1 / per_octave * 2  # bounded waste
            last = c
    assert shape_class(0, 8) == 0 and shape_class(5, 8) == 16 and shape_class(100, 8) == 104


def test_concurrent_batched_compressions_are_byte_identical_to_unbatched(
    plain: Compressor, engine: BatchEngine
) -> None:
    want = [_outputs(_compress(plain, case)) for case in CASES]
    batched = plain.with_batcher(engine)
    got: list[Any] = [None] * len(CASES)
    start = threading.Barrier(len(CASES))

    def work(i: int) -> None:
        with engine.client():
            start.wait()
            got[i] = _outputs(_compress(batched, CASES[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(CASES))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want
    stats = engine.stats()
    assert stats.largest > 1 and stats.forwards < stats.jobs  # forwards really were shared
    assert stats.queued == 0 and stats.clients == 0


def _stream_state(sc: Scorer, ids: np.ndarray, kept: int) -> tuple[Any, int, torch.Tensor | None]:
    """A request's real ITPC state: a cache holding a start token + ``kept`` tokens."""
    stream = Stream(sc)
    seg = ids[kept : kept + 8]
    stream.step(ids[:kept], seg, np.ones(len(seg), bool))
    assert stream.past is not None
    return stream.past, int(stream.past.shape[3]), stream.last_hidden


def _step_job(sc: Scorer, seed: int, kept: int, n_prefix: int, seg: int) -> StepJob:
    ids = sc.encode(sample_text(120, seed)).ids
    past, past_len, last = _stream_state(sc, ids, kept)
    inputs = ids[kept + 8 : kept + 8 + n_prefix + seg]
    assert len(inputs) == n_prefix + seg
    need = np.arange(0, seg, 2, dtype=np.int64)
    return StepJob(sc, past, past_len, inputs, n_prefix, need, last)


def _same_step(a: StepResult, b: StepResult) -> bool:
    if not np.array_equal(a.nll, b.nll, equal_nan=True):
        return False
    if not torch.equal(a.past, b.past):
        return False
    return (
        a.last_hidden is not None
        and b.last_hidden is not None
        and torch.equal(a.last_hidden, b.last_hidden)
    )


def test_a_step_is_independent_of_what_it_is_batched_with(plain: Compressor) -> None:
    sc = plain._scorer
    with torch.inference_mode():
        me = _step_job(sc, seed=1, kept=36, n_prefix=5, seg=30)
        # Partners in the same shape class, with other texts, cache lengths and prefixes.
        pool = [
            _step_job(sc, seed=s, kept=k, n_prefix=p, seg=q)
            for s, k, p, q in [(2, 37, 7, 28), (3, 39, 0, 36), (4, 36, 3, 33), (5, 38, 6, 29)]
        ]
        partners = [j for j in pool if j.key == me.key]
        assert len(partners) == len(pool)
        alone = me.run_batch([me])[0]
        for group in ([me, *partners], [*partners, me], [partners[0], me]):
            together = me.run_batch(group)
            assert _same_step(together[group.index(me)], alone)
    # The request's cache grows by its own prefix tokens only.
    assert alone.past.shape[3] == me.past_len + me.n_prefix
    assert np.isnan(alone.nll[1::2]).all() and np.isfinite(alone.nll[::2]).all()


def test_a_score_row_is_independent_of_what_it_is_batched_with(plain: Compressor) -> None:
    sc = plain._scorer
    mine = sc.encode(sample_text(50, 7)).ids
    me = ScoreJob(sc, mine, 4)
    others = [
        ScoreJob(sc, sc.encode(sample_text(n, s)).ids[: len(mine) - d], 0)
        for n, s, d in [(60, 8, 0), (55, 9, 1), (70, 10, 2)]
    ]
    partners = [j for j in others if j.key == me.key]
    assert partners
    with torch.inference_mode():
        alone = me.run_batch([me])[0]
        together = me.run_batch([*partners, me])[-1]
    assert np.array_equal(alone, together) and len(alone) == len(mine) - 4


def test_caches_are_released_when_a_compression_ends(plain: Compressor) -> None:
    eng = BatchEngine(BatchSettings(max_wait_ms=0))
    seen: list[weakref.ref[torch.Tensor]] = []
    real_submit = eng.submit_many

    def spy(jobs: Sequence[Job[Any]]) -> list[Future[Any]]:
        for job in jobs:
            if isinstance(job, StepJob) and job.past is not None:
                seen.append(weakref.ref(job.past))
        return real_submit(jobs)

    eng.submit_many = spy  # type: ignore[method-assign]
    try:
        with eng.client():
            _compress(plain.with_batcher(eng), CASES[3])
        gc.collect()
        assert seen and all(ref() is None for ref in seen)
        assert eng.stats().queued == 0
    finally:
        eng.close()


@dataclass(frozen=True, eq=False)
class _Gate:
    """A job that blocks the engine thread until ``release`` is set."""

    release: threading.Event
    started: threading.Event

    @property
    def key(self) -> Hashable:
        return ("gate", id(self))

    @property
    def cost(self) -> int:
        return 1

    @property
    def tokens(self) -> int:
        return 1

    def run_batch(self, group: Sequence[Any]) -> list[str]:
        self.started.set()
        self.release.wait(10)
        return ["done"] * len(group)


@dataclass(frozen=True, eq=False)
class _Echo:
    value: int
    fail: bool = False

    @property
    def key(self) -> Hashable:
        return "echo"

    @property
    def cost(self) -> int:
        return 1

    @property
    def tokens(self) -> int:
        return 1

    def run_batch(self, group: Sequence[Any]) -> list[tuple[int, int]]:
        if any(j.fail for j in group):
            raise ValueError("boom")
        return [(j.value, len(group)) for j in group]


def test_queue_bound_refuses_at_once_and_recovers() -> None:
    eng = BatchEngine(BatchSettings(max_queue=2, max_wait_ms=0))
    gate = _Gate(threading.Event(), threading.Event())
    try:
        blocked = eng.submit_many([gate])[0]
        assert gate.started.wait(5)
        waiting = eng.submit_many([_Echo(1), _Echo(2)])
        with pytest.raises(QueueFull):
            eng.submit_many([_Echo(3)])
        assert eng.stats().rejected == 1
        gate.release.set()
        assert blocked.result(5) == "done"
        assert [f.result(5) for f in waiting] == [(1, 2), (2, 2)]  # ran as one batch
        assert eng.submit_many([_Echo(4)])[0].result(5) == (4, 1)
    finally:
        gate.release.set()
        eng.close()


def test_a_failing_forward_fails_its_callers_only() -> None:
    eng = BatchEngine(BatchSettings(max_wait_ms=0))
    try:
        bad = eng.submit_many([_Echo(1, fail=True)])[0]
        with pytest.raises(ValueError, match="boom"):
            bad.result(5)
        assert eng.submit_many([_Echo(2)])[0].result(5) == (2, 1)
    finally:
        eng.close()


def test_a_lone_client_does_not_wait_for_company() -> None:
    eng = BatchEngine(BatchSettings(max_wait_ms=60_000))
    try:
        with eng.client():
            assert eng.submit_many([_Echo(5)])[0].result(10) == (5, 1)
    finally:
        eng.close()


def test_close_fails_what_is_still_queued() -> None:
    eng = BatchEngine(BatchSettings(max_wait_ms=0))
    gate = _Gate(threading.Event(), threading.Event())
    eng.submit_many([gate])
    assert gate.started.wait(5)
    queued = eng.submit_many([_Echo(1)])[0]
    threading.Timer(0.2, gate.release.set).start()
    eng.close()
    with pytest.raises(RuntimeError):
        queued.result(5)
    with pytest.raises(RuntimeError):
        eng.submit_many([_Echo(2)])


def test_settings_map_to_batching() -> None:
    assert batching_for(Settings(compress_batching="off")) is None
    auto = batching_for(Settings())
    assert auto is not None and auto.mode == "auto"
    assert not auto.applies("cpu") and auto.applies("cuda")
    on = batching_for(Settings(compress_batching="on", compress_batch_wait_ms=0.5))
    assert on is not None and on.applies("cpu") and on.settings.max_wait_ms == 0.5


def test_service_batches_only_when_it_applies(plain: Compressor) -> None:
    auto = CompressorService.ready(plain, max_pending=8, batching=Batching("auto"))
    on = CompressorService.ready(plain, max_pending=8, batching=Batching("on"))
    try:
        assert auto.batch_stats is None and auto.executor.max_workers == 1  # CPU: off
        assert on.batch_stats is not None and on.executor.max_workers == 8
        assert on.status == (
            "ok",
            f"{plain.model_id} (cpu fp32; batching: 0 forwards, 0.0 requests each, 0 refused)",
        )
    finally:
        auto.close()
        on.close()


def _deliver(into: list[Any], done: threading.Event, value: Any) -> None:
    into.append(value)
    done.set()


async def test_service_results_match_and_back_pressure_fails_open(plain: Compressor) -> None:
    want = _outputs(_compress(plain, CASES[0]))
    service = CompressorService.ready(plain, max_pending=8, batching=Batching("on"))
    tight = CompressorService.ready(
        plain, max_pending=8, batching=Batching("on", BatchSettings(max_queue=1))
    )
    engine_of = service.engine
    tight_engine = tight.engine
    assert engine_of is not None and tight_engine is not None
    try:
        got = await service.run(lambda: _compress(engine_of, CASES[0]), deadline_s=60)
        assert _outputs(got) == want
        # The coarse pass submits several rows at once: more than this queue holds.
        with pytest.raises(QueueFull):
            await tight.run(lambda: _compress(tight_engine, CASES[2]), deadline_s=60)
        late: list[Any] = []
        done = threading.Event()
        with pytest.raises(DeadlineExceeded):
            await service.run(
                lambda: _compress(engine_of, CASES[1]),
                deadline_s=0.0001,
                on_late_result=lambda r: _deliver(late, done, r),
            )
    finally:
        tight.close()
    await asyncio.to_thread(done.wait, 30)
    assert late and _outputs(late[0]) == _outputs(_compress(plain, CASES[1]))
    service.close()


def test_status_of_an_engine_without_a_device_or_batcher() -> None:
    class Bare:  # what test doubles and third-party engines may look like
        model_id = "bare@1"

    service = CompressorService.ready(Bare(), batching=Batching("on"))  # type: ignore[arg-type]
    try:
        assert service.status == ("ok", "bare@1")
        assert service.batch_stats is None and service.peak_gpu_bytes() is None
    finally:
        service.close()
