"""The asyncio loop thread: results come back through callbacks, never by blocking the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from runlet.errors import ClosedError
from runlet.runtime.loop import LoopThread
from tests.unit.fakes import DEADLINE


@pytest.fixture
def aio() -> Iterator[LoopThread]:
    loop = LoopThread("test-aio")
    yield loop
    loop.close()


async def _double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


def test_submit_reports_the_result_through_on_done(aio: LoopThread) -> None:
    """A submitted coroutine runs on the loop thread and `on_done` gets its settled future."""
    done = threading.Event()
    on_loop: list[bool] = []
    results: list[int] = []

    async def job() -> int:
        on_loop.append(aio.in_loop())
        return await _double(21)

    def on_done(future: concurrent.futures.Future[int]) -> None:
        # it may run on the loop thread, or at once in submit() if the coroutine already ended
        results.append(future.result())
        done.set()

    aio.submit(job(), on_done)
    assert done.wait(DEADLINE)
    assert on_loop == [True]
    assert results == [42]


def test_submit_reports_a_failure_through_on_done(aio: LoopThread) -> None:
    """A coroutine that raises settles its future with that exception; nothing is lost."""
    done = threading.Event()
    errors: list[BaseException | None] = []

    async def failing() -> int:
        raise ValueError("no such thing")

    def on_done(future: concurrent.futures.Future[int]) -> None:
        errors.append(future.exception())
        done.set()

    aio.submit(failing(), on_done)
    assert done.wait(DEADLINE)
    assert isinstance(errors[0], ValueError)
    assert str(errors[0]) == "no such thing"


def test_run_sync_from_another_thread_returns_the_result(aio: LoopThread) -> None:
    """`run_sync` from a non-loop thread blocks until the coroutine's result is there."""
    assert not aio.in_loop()
    assert aio.run_sync(_double(5), timeout=DEADLINE) == 10


def test_run_sync_on_the_loop_thread_refuses_instead_of_deadlocking(aio: LoopThread) -> None:
    """`run_sync` called on the loop thread raises RuntimeError at once (and closes the coro)."""

    async def nested() -> str:
        try:
            aio.run_sync(_double(1), timeout=DEADLINE)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "deadlock" in aio.run_sync(nested(), timeout=DEADLINE)


def test_call_runs_a_callable_on_the_loop_thread(aio: LoopThread) -> None:
    """`call(fn, *args)` runs `fn(*args)` on the loop thread."""
    done = threading.Event()
    seen: list[tuple[str, bool]] = []

    def record(word: str) -> None:
        seen.append((word, aio.in_loop()))
        done.set()

    aio.call(record, "hello")
    assert done.wait(DEADLINE)
    assert seen == [("hello", True)]


def test_a_failing_callback_is_logged_and_the_loop_goes_on(aio: LoopThread) -> None:
    """An exception in a loop callback is logged as aio_callback_failed; the loop keeps working."""

    def explode() -> None:
        raise ZeroDivisionError("bad callback")

    with capture_logs() as logs:
        aio.call(explode)
        assert aio.run_sync(_double(4), timeout=DEADLINE) == 8
    failures = [e for e in logs if e["event"] == "aio_callback_failed"]
    assert len(failures) == 1
    assert "bad callback" in failures[0]["error"]


def test_close_is_idempotent_and_stops_the_thread() -> None:
    """close() twice is fine; the loop is closed and its thread gone afterwards."""
    aio = LoopThread("test-aio-close")
    aio.close()
    aio.close()
    assert aio.closed
    assert aio.loop.is_closed()
    assert not aio._thread.is_alive()


def test_close_cancels_what_is_still_running() -> None:
    """A coroutine still waiting when the loop closes is cancelled, and its on_done says so."""
    aio = LoopThread("test-aio-cancel")
    started = threading.Event()
    done = threading.Event()
    cancelled: list[bool] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    def on_done(future: concurrent.futures.Future[None]) -> None:
        cancelled.append(future.cancelled())
        done.set()

    aio.submit(forever(), on_done)
    assert started.wait(DEADLINE)
    aio.close()
    assert done.wait(DEADLINE)
    assert cancelled == [True]


def test_submit_after_close_raises_closed_error() -> None:
    """Submitting to a closed loop raises ClosedError, and the coroutine is closed, not leaked."""
    aio = LoopThread("test-aio-closed")
    aio.close()
    coro = _double(1)
    with pytest.raises(ClosedError):
        aio.submit(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited" later


def test_call_after_close_does_nothing() -> None:
    """`call` on a closed loop is silently dropped instead of raising."""
    aio = LoopThread("test-aio-call-closed")
    aio.close()
    aio.call(print, "never")
