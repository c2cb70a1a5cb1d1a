"""The one asyncio loop thread that does all network I/O of a process.

Actors are threads (pykka); aio-pika needs an event loop. The seam has one rule each way:

- an actor hands the loop a coroutine with `submit(coro, on_done)`; the result comes back
  through `on_done`, which should `tell` the actor — an actor never blocks on the loop;
- code on the loop talks to actors only with `tell`; it never waits on a pykka future.

`run_sync` exists for the composition roots, an actor's `on_stop` (closing its adapter) and
tests, never for message handlers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

from runlet.errors import ClosedError

T = TypeVar("T")
log = structlog.get_logger(__name__)


class LoopThread:
    """An asyncio event loop running forever on its own daemon thread."""

    def __init__(self, name: str = "runlet-aio") -> None:
        self.loop = asyncio.new_event_loop()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.set_exception_handler(_log_loop_exception)
        self.loop.run_forever()

    @property
    def closed(self) -> bool:
        return self._closed

    def in_loop(self) -> bool:
        """True when called from the loop thread itself."""
        return threading.current_thread() is self._thread

    def submit(
        self,
        coro: Coroutine[Any, Any, T],
        on_done: Callable[[concurrent.futures.Future[T]], None] | None = None,
    ) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop; `on_done(future)` runs when it settles."""
        if self._closed:
            coro.close()
            raise ClosedError("the I/O loop is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        if on_done is not None:
            future.add_done_callback(on_done)
        return future

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a plain callable on the loop soon (thread-safe)."""
        if not self._closed:
            self.loop.call_soon_threadsafe(fn, *args)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> LoopTimer:
        """Run a plain callable on the loop after `delay` seconds (thread-safe); cancellable.

        Timers live on the loop, not in a thread each: a daemon with a thousand jobs waiting
        on a timeout holds a thousand heap entries, not a thousand threads.
        """
        timer = LoopTimer()
        if not self._closed:
            self.loop.call_soon_threadsafe(timer.arm, self.loop, delay, fn, args)
        return timer

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Block the calling (non-loop) thread until `coro` finishes on the loop."""
        if self.in_loop():
            coro.close()
            raise RuntimeError("run_sync called from the loop thread: it would deadlock")
        return self.submit(coro).result(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what is left, stop the loop and join its thread; idempotent."""
        if self._closed:
            return
        self._closed = True

        async def _drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(_drain(), self.loop).result(timeout)
            except (concurrent.futures.TimeoutError, RuntimeError):
                log.warning("aio_drain_timed_out")
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self.loop.is_running():
            self.loop.close()


class LoopTimer:
    """A `call_later` that may be cancelled from any thread, even before the loop has armed it."""

    __slots__ = ("_cancelled", "_handle", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._handle: asyncio.TimerHandle | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def arm(
        self,
        loop: asyncio.AbstractEventLoop,
        delay: float,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        """On the loop: schedule `fn(*args)` unless the timer was cancelled meanwhile."""
        with self._lock:
            if not self._cancelled:
                self._handle = loop.call_later(delay, self._fire, fn, args)

    def _fire(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._handle = None
        fn(*args)

    def cancel(self) -> None:
        """Stop the timer from firing; idempotent, from any thread."""
        with self._lock:
            self._cancelled = True
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()  # TimerHandle.cancel only marks it: safe off the loop


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    log.error("aio_callback_failed", message=context.get("message"), error=repr(exc))
