"""Loop timers and the data plane's table, on a real loop thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from runlet.protocol.messages import InputSent
from runlet.runtime.local_messages import Publish
from runlet.runtime.loop import LoopThread
from runlet.runtime.plane import DataPlane
from tests.unit.fakes import DEADLINE


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread("test-plane")
    yield thread
    thread.close()


def barrier(loop: LoopThread) -> None:
    """Return once the loop has run everything scheduled on it before this call."""
    done = threading.Event()
    loop.call(done.set)
    assert done.wait(DEADLINE)


def test_a_loop_timer_fires_once_with_its_arguments(loop: LoopThread) -> None:
    """call_later runs the callable on the loop thread, once, after the delay."""
    fired: list[tuple[str, bool]] = []
    done = threading.Event()

    def fire(what: str) -> None:
        fired.append((what, loop.in_loop()))
        done.set()

    loop.call_later(0.01, fire, "due")
    assert done.wait(DEADLINE)
    barrier(loop)
    assert fired == [("due", True)]


def test_a_loop_timer_cancelled_before_the_loop_armed_it_never_fires(loop: LoopThread) -> None:
    """Cancelling from another thread at once (before the loop saw it) still stops it."""
    fired: list[str] = []
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # keeps the loop busy until the timer is cancelled
        held.set()
        release.wait(DEADLINE)

    loop.call(hold)
    assert held.wait(DEADLINE)
    timer = loop.call_later(0.0, fired.append, "never")
    timer.cancel()
    timer.cancel()  # idempotent
    release.set()
    later = threading.Event()
    loop.call_later(0.05, later.set)
    assert later.wait(DEADLINE)
    assert timer.cancelled
    assert fired == []


def test_a_loop_timer_cancelled_after_it_was_armed_never_fires(loop: LoopThread) -> None:
    """Cancelling an armed timer from another thread stops it too."""
    fired: list[str] = []
    timer = loop.call_later(0.2, fired.append, "never")
    barrier(loop)  # armed by now
    timer.cancel()
    later = threading.Event()
    loop.call_later(0.3, later.set)
    assert later.wait(DEADLINE)
    assert fired == []


def test_a_closed_loop_arms_no_timer() -> None:
    """After close(), call_later gives a timer that never fires (and does not raise)."""
    thread = LoopThread("test-plane-closed")
    thread.close()
    timer = thread.call_later(0.0, pytest.fail, "must not run")
    timer.cancel()


def sink_a(sent: InputSent) -> str | None:
    return None


def sink_b(sent: InputSent) -> str | None:
    return "b"


def test_an_input_sink_is_withdrawn_only_by_its_owner() -> None:
    """detach_input of an older sink leaves a newer one for the same job in place."""
    plane = DataPlane()
    plane.attach_input("j", sink_a)
    plane.attach_input("j", sink_b)
    plane.detach_input("j", sink_a)
    assert plane.input_sink("j") is sink_b
    plane.detach_input("j", sink_b)
    assert plane.input_sink("j") is None


def test_without_an_output_sink_publishing_says_so() -> None:
    """publish_output is False with no sink (the caller takes the mailbox); True with one."""
    plane = DataPlane()
    message = Publish("job.x.output", b"o", "x:o0", job_id="x", after_start=True)
    assert plane.publish_output(message) is False
    taken: list[Publish] = []

    def sink(publish: Publish, on_sent: object) -> None:
        taken.append(publish)

    plane.serve_output(sink)
    assert plane.publish_output(message) is True
    plane.withdraw_output(lambda publish, on_sent: None)  # someone else's: no effect
    assert plane.publish_output(message) is True
    plane.withdraw_output(sink)
    assert plane.publish_output(message) is False
    assert taken == [message, message]


def test_flush_stores_calls_every_session_flush() -> None:
    """Before a replay, every attached store flush runs; a detached one does not."""
    plane = DataPlane()
    calls: list[str] = []

    def flush_a() -> None:
        calls.append("a")

    def flush_b() -> None:
        calls.append("b")

    plane.attach_store("a", flush_a)
    plane.attach_store("b", flush_b)
    plane.flush_stores()
    plane.detach_store("a", flush_a)
    plane.flush_stores()
    assert calls == ["a", "b", "b"]
    assert plane.statistics() == {"input_sinks": 0, "store_flushes": 1, "output_sink": 0}
