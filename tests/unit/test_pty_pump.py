"""The Pump on a SteppedLoop over a FakePty: coalescing, backpressure, exit, input, close.

The loop runs only when the test steps it and its clock moves only when the test advances it,
so "sent at once" and "sent after the coalescing delay" are exact, not a matter of timing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runlet.adapters.ptys.pump import (
    COALESCE_SECONDS,
    EXIT_DRAIN_SECONDS,
    EXIT_POLL_SECONDS,
    HIGH_WATER,
    IDLE_SECONDS,
    LOW_WATER,
    Pump,
)
from runlet.protocol.messages import MAX_CHUNK
from runlet.protocol.states import ExitStatus
from tests.unit.fake_pty import FakePty, SteppedLoop
from tests.unit.fakes import FakeClock

NOW = 1_000_000.0
EXITED_3 = ExitStatus(code=3, signal=None)


class Bench:
    """A Pump on a SteppedLoop over a FakePty, recording what it emits and the exit it sees."""

    def __init__(self, *, read_size: int | None = None, watch_exit: bool = False) -> None:
        self.clock = FakeClock(NOW)
        self.loop = SteppedLoop(self.clock)
        self.pty = FakePty(read_size=read_size, watch_exit=watch_exit)
        self.chunks: list[tuple[int, bytes, bool]] = []
        self.exits: list[ExitStatus] = []
        self.pump = Pump(self.loop, self.pty, emit=self._emit, exited=self.exits.append)
        self.pump.start()

    def _emit(self, seq: int, data: bytes, final: bool) -> None:
        self.chunks.append((seq, data, final))

    def quiet(self) -> None:
        """Let more than the idle time pass (timers due by then run too)."""
        self.clock.advance(IDLE_SECONDS * 2)
        self.loop.step()

    def drain(self) -> None:
        """Step until the pump has read all the PTY's output (or stopped reading it)."""
        for _ in range(10_000):
            reads = self.pty.reads
            self.loop.step()
            if self.pty.pending == 0 or self.pty.reads == reads:
                return
        raise AssertionError("the pump kept reading")

    def close(self) -> None:
        self.pump.close()
        self.pty.calls.wait(lambda calls: ("close",) in calls, what="the PTY closed")
        self.loop.close()
        self.pty.dispose()


@pytest.fixture
def bench() -> Iterator[Bench]:
    bench = Bench()
    yield bench
    bench.close()


@pytest.fixture
def small_reads() -> Iterator[Bench]:
    bench = Bench(read_size=4096)
    yield bench
    bench.close()


@pytest.fixture
def watched() -> Iterator[Bench]:
    bench = Bench(watch_exit=True)
    yield bench
    bench.close()


def test_a_lone_keystrokes_echo_leaves_at_once(bench: Bench) -> None:
    """Output after a quiet spell is sent in the round it is read, without waiting for a timer."""
    bench.pty.output(b"l")
    bench.loop.step()
    assert bench.chunks == [(0, b"l", False)]
    bench.quiet()
    bench.pty.output(b"s")
    bench.loop.step()
    assert bench.chunks[1:] == [(1, b"s", False)]


def test_output_right_after_a_chunk_waits_briefly_for_more(bench: Bench) -> None:
    """Output within the idle time of the last chunk is held COALESCE_SECONDS and sent as one."""
    bench.pty.output(b"first")
    bench.loop.step()
    bench.pty.output(b"sec")
    bench.loop.step()
    bench.pty.output(b"ond")
    bench.loop.step()
    bench.clock.advance(COALESCE_SECONDS / 2)
    bench.loop.step()
    assert bench.chunks == [(0, b"first", False)]
    bench.clock.advance(COALESCE_SECONDS / 2)
    bench.loop.step()
    assert bench.chunks == [(0, b"first", False), (1, b"second", False)]


def test_the_echo_of_keystrokes_leaves_at_once_even_right_after_a_chunk(bench: Bench) -> None:
    """Output that follows typed input is not held for coalescing, however recent the last
    chunk; output after that, with nothing typed, is coalesced again."""
    bench.pty.output(b"$ ")
    bench.loop.step()
    bench.pump.write(b"l")
    bench.pty.output(b"l")
    bench.loop.step()
    assert bench.chunks == [(0, b"$ ", False), (1, b"l", False)]
    bench.pty.output(b"more")
    bench.loop.step()
    assert len(bench.chunks) == 2
    bench.clock.advance(COALESCE_SECONDS)
    bench.loop.step()
    assert bench.chunks[2:] == [(2, b"more", False)]


def test_a_flood_is_coalesced_into_chunks_of_the_limit(small_reads: Bench) -> None:
    """Many small reads in a burst go out as MAX_CHUNK chunks; the rest after the delay."""
    flood = bytes(range(256)) * 800 + b"tail"
    small_reads.pty.output(flood)
    small_reads.drain()
    small_reads.clock.advance(COALESCE_SECONDS)
    small_reads.loop.step()
    sizes = [len(data) for _, data, _ in small_reads.chunks]
    assert sizes == [4096, MAX_CHUNK, MAX_CHUNK, MAX_CHUNK, len(flood) - 4096 - 3 * MAX_CHUNK]
    assert [seq for seq, _, _ in small_reads.chunks] == list(range(5))
    assert b"".join(data for _, data, _ in small_reads.chunks) == flood
    assert not any(final for _, _, final in small_reads.chunks)


def test_a_flood_in_reads_that_do_not_divide_the_limit_still_leaves_in_whole_chunks() -> None:
    """Past MAX_CHUNK only whole chunks leave; the rest waits for more, or for its timer."""
    bench = Bench(read_size=40_000)
    try:
        flood = b"y" * 200_000
        bench.pty.output(flood)
        bench.drain()
        sizes = [len(data) for _, data, _ in bench.chunks]
        assert sizes == [40_000, MAX_CHUNK, MAX_CHUNK]  # the first read left at once (idle)
        bench.clock.advance(COALESCE_SECONDS)
        bench.loop.step()
        sizes = [len(data) for _, data, _ in bench.chunks]
        assert sizes == [40_000, MAX_CHUNK, MAX_CHUNK, 200_000 - 40_000 - 2 * MAX_CHUNK]
    finally:
        bench.close()


def test_reading_stops_while_too_much_is_unsent_and_resumes_once_it_has_left(
    bench: Bench,
) -> None:
    """Stored but not yet published past HIGH_WATER: the pump waits for `sent` under LOW_WATER."""
    bench.pty.output(b"z" * (HIGH_WATER + 4 * MAX_CHUNK))
    bench.drain()
    emitted = sum(len(data) for _, data, _ in bench.chunks)
    assert emitted == HIGH_WATER + MAX_CHUNK  # the chunk that crossed the mark, then a stop
    bench.pump.credit(emitted)  # all stored: still unsent
    bench.drain()
    assert sum(len(data) for _, data, _ in bench.chunks) == emitted
    bench.pump.sent(emitted - LOW_WATER)  # exactly LOW_WATER unsent: not enough
    bench.drain()
    assert sum(len(data) for _, data, _ in bench.chunks) == emitted
    bench.pump.sent(1)
    bench.drain()
    assert sum(len(data) for _, data, _ in bench.chunks) == HIGH_WATER + 4 * MAX_CHUNK


def test_a_watched_exit_is_seen_at_once_without_any_timer(watched: Bench) -> None:
    """With an exit fd, the exit ends the output in the loop round it happens in."""
    watched.pty.output(b"bye")
    watched.loop.step()
    watched.pty.exit(EXITED_3)
    watched.loop.step()
    assert watched.chunks == [(0, b"bye", False), (1, b"", True)]
    assert watched.exits == [EXITED_3]


def test_output_after_a_watched_exit_is_awaited_until_the_terminal_closes(
    watched: Bench,
) -> None:
    """An exit seen before the output's end waits for it: late output goes before FINAL."""
    watched.pty.exit(EXITED_3, output_ends=False)
    watched.loop.step()
    assert (watched.chunks, watched.exits) == ([], [])
    watched.pty.output(b"late")
    watched.loop.step()
    watched.pty.end_output()
    watched.loop.step()
    assert watched.chunks == [(0, b"late", False), (1, b"", True)]
    assert watched.exits == [EXITED_3]


def test_a_terminal_held_open_after_the_exit_is_waited_for_only_briefly(watched: Bench) -> None:
    """A background process keeping the terminal open delays the end by EXIT_DRAIN_SECONDS."""
    watched.pty.exit(EXITED_3, output_ends=False)
    watched.loop.step()
    watched.clock.advance(EXIT_DRAIN_SECONDS / 2)
    watched.loop.step()
    assert watched.exits == []
    watched.clock.advance(EXIT_DRAIN_SECONDS / 2)
    watched.loop.step()
    assert (watched.chunks, watched.exits) == ([(0, b"", True)], [EXITED_3])


def test_the_exit_is_polled_and_followed_by_an_empty_final_chunk(bench: Bench) -> None:
    """The exit is seen at the next poll; a FINAL chunk closes the output, then the status."""
    bench.pty.output(b"bye")
    bench.pty.exit(EXITED_3)
    bench.loop.step()
    assert (bench.chunks, bench.exits) == ([(0, b"bye", False)], [])
    bench.clock.advance(EXIT_POLL_SECONDS)
    bench.loop.step()
    assert bench.chunks == [(0, b"bye", False), (1, b"", True)]
    assert bench.exits == [EXITED_3]
    assert bench.pty.calls.all() == []  # closing the PTY is the session's call


def test_output_unread_at_the_exit_goes_in_the_final_chunks(bench: Bench) -> None:
    """Output still in the PTY when the exit is seen (reading paused) is sent, the last FINAL."""
    flood = b"x" * (HIGH_WATER + 3 * MAX_CHUNK)
    bench.pty.output(flood)
    bench.drain()  # until the owed sum stops the reading
    assert bench.pty.pending == 2 * MAX_CHUNK
    sent = len(bench.chunks)
    bench.pty.output(b"last words")
    bench.pty.exit(EXITED_3)
    bench.clock.advance(EXIT_POLL_SECONDS)
    bench.loop.step()
    tail = bench.chunks[sent:]
    assert [final for _, _, final in tail] == [False] * (len(tail) - 1) + [True]
    assert all(len(data) <= MAX_CHUNK for _, data, _ in bench.chunks)
    total = b"".join(data for _, data, _ in bench.chunks)
    assert total == flood + b"last words"
    assert bench.exits == [EXITED_3]


def test_input_the_pty_cannot_take_yet_is_kept_in_order(bench: Bench) -> None:
    """A refused or partial write is queued and finished, in order, once the PTY is writable."""
    bench.pty.blocked_writes = 1
    bench.pty.accept = 2
    bench.pump.write(b"abc")
    bench.pump.write(b"de")
    assert bench.pty.writes() == []
    bench.loop.step()
    assert bench.pty.writes() == [b"ab", b"cd", b"e"]


def test_input_for_a_job_that_is_gone_is_dropped(bench: Bench) -> None:
    """A write that fails (the child has gone) drops that input; later input is still tried."""
    bench.pty.write_error = OSError(5, "Input/output error")
    bench.pump.write(b"lost")
    bench.pty.write_error = None
    bench.pump.write(b"next")
    assert bench.pty.writes() == [b"next"]


def test_a_closed_pump_neither_reads_nor_polls_and_closes_once(bench: Bench) -> None:
    """After close() the PTY is closed once, output is not read, the exit is not reported."""
    bench.pump.close()
    bench.pump.close()
    bench.pty.calls.wait(lambda calls: ("close",) in calls, what="the PTY closed")
    bench.pump.write(b"ignored")
    bench.pty.exit(EXITED_3)
    bench.clock.advance(EXIT_POLL_SECONDS)
    bench.loop.step()
    assert (bench.chunks, bench.exits, bench.pty.reads) == ([], [], 0)
    assert bench.pty.calls.all() == [("close",)]
