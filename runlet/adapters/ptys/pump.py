"""The Pump: a `Pty` driven by an asyncio loop, on the loop thread only.

It reads the PTY as the loop says it is readable and coalesces the reads by size and time:
output after a quiet spell or after typed input (a keystroke's echo) leaves at once, other
output within the idle time of the last chunk waits COALESCE_SECONDS for more, a flood
leaves in whole MAX_CHUNK chunks (what is left over waits for its timer, so chunks stay
full). Chunks are numbered and handed to `emit`. It stops
reading while more than HIGH_WATER bytes are unstored (`credit`) or unsent (`sent`) and
resumes below LOW_WATER, so nothing downstream grows without bound.

Input is written at once, or queued in order and written when the PTY can take it.

The exit is watched where the PTY gives an exit fd (a pidfd on Linux), else polled every
EXIT_POLL_SECONDS. Once it is seen, what the PTY still holds is read to its end (not waiting
more than EXIT_DRAIN_SECONDS for it), a FINAL chunk closes the output and `exited` is called.

It keeps time by its loop's clock (`loop.time()`), so a test's loop decides when its timers
are due. It must never block the loop: closing a PTY whose child still runs (which kills it
and waits for it to go) happens on a thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from runlet import metrics
from runlet.adapters.ptys import Pty
from runlet.errors import JobError
from runlet.protocol.messages import MAX_CHUNK
from runlet.protocol.states import ExitStatus

__all__ = [
    "COALESCE_SECONDS",
    "EXIT_DRAIN_SECONDS",
    "EXIT_POLL_SECONDS",
    "HIGH_WATER",
    "IDLE_SECONDS",
    "LOW_WATER",
    "Pump",
]

COALESCE_SECONDS = 0.002  # wait this long for more output once a burst has started
IDLE_SECONDS = 0.005  # output after this much quiet is sent at once (keystroke echo)
HIGH_WATER = 4 * 1024 * 1024  # bytes unstored (or unsent) before the pump stops reading
LOW_WATER = 1024 * 1024
EXIT_POLL_SECONDS = 0.05  # where there is no exit fd to watch
EXIT_DRAIN_SECONDS = 0.05  # after the exit, how long output is awaited until its end


class Pump:
    """Moves bytes between the PTY and the rest of the daemon; lives on the I/O loop only."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pty: Pty,
        *,
        emit: Callable[[int, bytes, bool], None],
        exited: Callable[[ExitStatus], None],
    ) -> None:
        self.loop = loop
        self.pty = pty
        self.emit = emit
        self.exited = exited
        self.seq = 0
        self.buf = bytearray()
        self.pending_writes = bytearray()
        self.owed = 0  # bytes emitted and not yet stored (credit())
        self.unsent = 0  # bytes emitted and not yet published (sent())
        self.reading = False
        self.eof = False
        self.closed = False
        self.status: ExitStatus | None = None  # the exit, once seen
        self.finished = False  # the FINAL chunk and the exit have been reported
        self.last_flush = 0.0
        self.flush_timer: asyncio.TimerHandle | None = None
        self.exit_timer: asyncio.TimerHandle | None = None
        self.exit_fd: int | None = None  # watched for the exit (a pidfd)
        self.typed_at: float | None = None  # when the last keystrokes went in, until echoed

    def start(self) -> None:
        self._resume()
        self.exit_fd = self.pty.exit_fd()
        if self.exit_fd is None:
            self.exit_timer = self.loop.call_later(EXIT_POLL_SECONDS, self._poll_exit)
        else:
            self.loop.add_reader(self.exit_fd, self._exit_seen)

    def _resume(self) -> None:
        if not self.reading and not self.eof and not self.closed:
            self.loop.add_reader(self.pty.fd, self._readable)
            self.reading = True

    def _pause(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.pty.fd)
            self.reading = False

    def _readable(self) -> None:
        try:
            data = self.pty.read(MAX_CHUNK)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            self._pause()
            self._flush()
            if self.status is not None:
                self._finish()
            return
        self.buf += data
        if len(self.buf) >= MAX_CHUNK:
            self._flush(whole=True)
        elif self.flush_timer is None:
            # an answer to typing (the echo) or output after a quiet spell: no waiting
            if self.typed_at is not None or self.loop.time() - self.last_flush > IDLE_SECONDS:
                self._flush()
            else:
                self.flush_timer = self.loop.call_later(COALESCE_SECONDS, self._flush)

    def _flush(self, *, final: bool = False, whole: bool = False) -> None:
        """Emit what is buffered (`whole`: only full chunks; the rest waits for its timer)."""
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
        self.last_flush = self.loop.time()
        if self.typed_at is not None and self.buf:
            metrics.INPUT_ROUNDTRIP.observe(self.last_flush - self.typed_at)
            self.typed_at = None
        while self.buf or final:
            if whole and len(self.buf) < MAX_CHUNK:
                self.flush_timer = self.loop.call_later(COALESCE_SECONDS, self._flush)
                break
            if len(self.buf) <= MAX_CHUNK:
                piece = bytes(self.buf)
                self.buf.clear()
            else:
                piece = bytes(memoryview(self.buf)[:MAX_CHUNK])
                del self.buf[:MAX_CHUNK]
            last = final and not self.buf
            self.owed += len(piece)
            self.unsent += len(piece)
            self.emit(self.seq, piece, last)
            metrics.OUTPUT_BYTES.inc(len(piece))
            self.seq += 1
            if last:
                break
        if (self.owed > HIGH_WATER or self.unsent > HIGH_WATER) and self.status is None:
            self._pause()

    def credit(self, size: int) -> None:
        """`size` bytes were stored."""
        self.owed -= size
        self._maybe_resume()

    def sent(self, size: int) -> None:
        """`size` bytes were published (or given up)."""
        self.unsent -= size
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if self.owed < LOW_WATER and self.unsent < LOW_WATER:
            self._resume()

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        was_idle = not self.pending_writes
        self.pending_writes += data
        self.typed_at = self.loop.time()
        if was_idle:
            self._drain()

    def _drain(self) -> None:
        while self.pending_writes:
            try:
                n = self.pty.write(bytes(self.pending_writes))
            except BlockingIOError:
                self.loop.add_writer(self.pty.fd, self._writable)
                return
            except OSError:
                self.pending_writes.clear()  # the child is gone; its exit is reported
                return
            del self.pending_writes[:n]

    def _writable(self) -> None:
        self.loop.remove_writer(self.pty.fd)
        self._drain()

    def _exit_seen(self) -> None:
        self._unwatch_exit()
        self._poll_exit()

    def _unwatch_exit(self) -> None:
        if self.exit_fd is not None:
            self.loop.remove_reader(self.exit_fd)
            self.exit_fd = None

    def _poll_exit(self) -> None:
        self.exit_timer = None
        if self.closed or self.status is not None:
            return
        status = self.pty.poll()
        if status is None:
            self.exit_timer = self.loop.call_later(EXIT_POLL_SECONDS, self._poll_exit)
            return
        self.status = status
        self._drain_output()
        if self.eof:
            self._finish()
            return
        # Seen at once (a pidfd), the exit may come before the kernel has moved the child's
        # last output into the terminal: read on, whatever the backpressure, until the end of
        # output, but not for long (a background process may hold the terminal open).
        self._resume()
        self.exit_timer = self.loop.call_later(EXIT_DRAIN_SECONDS, self._finish)

    def _drain_output(self) -> None:
        while not self.eof:
            try:
                data = self.pty.read(MAX_CHUNK)
            except (BlockingIOError, OSError):
                return
            if not data:
                self.eof = True
                return
            self.buf += data

    def _finish(self) -> None:
        if self.closed or self.finished or self.status is None:
            return
        self.finished = True
        if self.exit_timer is not None:
            self.exit_timer.cancel()
            self.exit_timer = None
        self._pause()
        self._flush(final=True)
        self.exited(self.status)

    def close(self) -> None:
        """Stop watching the PTY and close it; off the loop if closing it could block."""
        if self.closed:
            return
        self._pause()
        self._unwatch_exit()
        self.loop.remove_writer(self.pty.fd)
        self.closed = True
        for timer in (self.flush_timer, self.exit_timer):
            if timer is not None:
                timer.cancel()
        try:
            reaped = self.pty.poll() is not None
        except JobError:  # reaped by someone else: nothing to wait for either
            reaped = True
        if reaped:
            self.pty.close()
        else:  # kills the child and waits for it to go, which takes moments
            threading.Thread(target=self.pty.close, name="pty-close", daemon=True).start()
