import asyncio
import threading

import pytest

from proxy.core.executor import BoundedExecutor, DeadlineExceeded, QueueFull


async def test_runs_off_the_event_loop_thread() -> None:
    ex = BoundedExecutor(max_workers=1, max_pending=2)
    loop_thread = threading.get_ident()
    worker_thread = await ex.run(threading.get_ident, deadline_s=5)
    assert worker_thread != loop_thread
    assert ex.pending == 0
    ex.shutdown()


async def test_queue_bound_fails_fast_and_recovers() -> None:
    ex = BoundedExecutor(max_workers=1, max_pending=2)
    gate = threading.Event()
    first = asyncio.ensure_future(ex.run(lambda: gate.wait(5), deadline_s=5))
    second = asyncio.ensure_future(ex.run(lambda: gate.wait(5), deadline_s=5))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull):
        await ex.run(lambda: 1, deadline_s=5)
    gate.set()
    assert await first is True and await second is True
    assert await ex.run(lambda: 7, deadline_s=5) == 7
    ex.shutdown()


async def test_deadline_raises_and_late_result_is_delivered() -> None:
    ex = BoundedExecutor(max_workers=1, max_pending=4)
    gate = threading.Event()
    late: list[str] = []
    delivered = asyncio.Event()

    def on_late(value: str) -> None:
        late.append(value)
        delivered.set()

    def job() -> str:
        gate.wait(5)
        return "done"

    with pytest.raises(DeadlineExceeded):
        await ex.run(job, deadline_s=0.05, on_late_result=on_late)
    gate.set()
    await asyncio.wait_for(delivered.wait(), 5)
    assert late == ["done"]
    assert ex.pending == 0
    ex.shutdown()


async def test_exceptions_propagate_and_release_the_slot() -> None:
    ex = BoundedExecutor(max_workers=1, max_pending=1)

    def boom() -> None:
        raise ValueError("compressor failed")

    with pytest.raises(ValueError, match="compressor failed"):
        await ex.run(boom, deadline_s=5)
    assert await ex.run(lambda: "ok", deadline_s=5) == "ok"
    ex.shutdown()
