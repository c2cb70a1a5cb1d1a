"""A fake PTY for the PTY Session's tests, and a loop that runs only when a test steps it.

`FakePty` has no process behind it: the test writes its output and decides its exit, and it
records what was done to it. `SteppedLoop` is an asyncio loop whose clock is a `FakeClock`, so a
test says exactly when a timer is due.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from runlet.errors import ClosedError
from runlet.protocol.states import ExitStatus
from tests.unit.fakes import FakeClock, Inbox


class FakePty:
    """A Pty with no process: the test feeds its output and ends it; it records the rest.

    `fd` is one end of a socket pair, readable exactly while output (or its end) is waiting
    and always writable, so a loop watches it as it watches a real PTY's master. With
    `watch_exit`, `exit_fd()` is another, readable once the job has ended (as a pidfd is);
    without it there is none and the exit must be polled.
    """

    def __init__(
        self, pid: int = 4242, *, read_size: int | None = None, watch_exit: bool = False
    ) -> None:
        self.pid = pid
        self.read_size = read_size  # at most this much per read (a real PTY gives 1-4 KiB)
        self.calls = Inbox()  # ("write", data), ("resize", rows, cols), ("signal", sig), ("close",)
        self.blocked_writes = 0  # how many writes to refuse with BlockingIOError
        self.accept: int | None = None  # the most one write takes
        self.write_error: OSError | None = None
        self._watched, self._poke = socket.socketpair()
        self._watched.setblocking(False)
        self._exit_pair = socket.socketpair() if watch_exit else None
        self._lock = threading.Lock()
        self._output = bytearray()
        self._eof = False
        self._ready = False
        self._status: ExitStatus | None = None
        self._closed = False
        self._reads = 0

    # -- what the test does ------------------------------------------------------------

    def output(self, data: bytes) -> None:
        """The job writes `data` to its terminal."""
        with self._lock:
            self._output += data
            self._update()

    def exit(self, status: ExitStatus, *, output_ends: bool = True) -> None:
        """The job ends: poll() reports `status`, and its output ends (once read) unless
        something else still holds the terminal open (`output_ends` False: `end_output()`)."""
        with self._lock:
            self._status = status
            self._eof = self._eof or output_ends
            self._update()
            if self._exit_pair is not None:
                self._exit_pair[1].send(b"!")

    def end_output(self) -> None:
        """The last holder of the terminal closes it: the output ends once read."""
        with self._lock:
            self._eof = True
            self._update()

    @property
    def pending(self) -> int:
        """Output bytes written by the job and not read yet."""
        with self._lock:
            return len(self._output)

    @property
    def reads(self) -> int:
        with self._lock:
            return self._reads

    def writes(self) -> list[bytes]:
        calls = [call for call in self.calls.all() if isinstance(call, tuple)]
        return [call[1] for call in calls if call[0] == "write"]

    def dispose(self) -> None:
        self._watched.close()
        self._poke.close()
        for end in self._exit_pair or ():
            end.close()

    def _update(self) -> None:  # under the lock: readable iff something is waiting
        ready = bool(self._output) or self._eof
        if ready and not self._ready:
            self._poke.send(b"!")
        elif self._ready and not ready:
            self._watched.recv(1)
        self._ready = ready

    # -- the Pty interface -------------------------------------------------------------

    @property
    def fd(self) -> int:
        return -1 if self._closed else self._watched.fileno()

    def read(self, size: int = 65536) -> bytes:
        with self._lock:
            self._check_open()
            self._reads += 1
            if not self._output:
                if self._eof:
                    return b""
                raise BlockingIOError
            piece = bytes(self._output[: min(size, self.read_size or size)])
            del self._output[: len(piece)]
            self._update()
            return piece

    def write(self, data: bytes) -> int:
        self._check_open()
        if self.write_error is not None:
            raise self.write_error
        if self.blocked_writes:
            self.blocked_writes -= 1
            raise BlockingIOError
        taken = data[: self.accept or len(data)]
        self.calls.put(("write", taken))
        return len(taken)

    def resize(self, rows: int, cols: int) -> None:
        self._check_open()
        self.calls.put(("resize", rows, cols))

    def signal(self, sig: int) -> None:
        self.calls.put(("signal", sig))

    def poll(self) -> ExitStatus | None:
        with self._lock:
            return self._status

    def exit_fd(self) -> int | None:
        return None if self._exit_pair is None or self._closed else self._exit_pair[0].fileno()

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        raise AssertionError("nothing in a session may block on wait()")

    def close(self) -> None:
        self._closed = True
        self.calls.put(("close",))

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the fake PTY is closed")


class SteppedLoop(asyncio.SelectorEventLoop):
    """An asyncio loop that runs only when stepped, and whose clock is a FakeClock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        super().__init__()

    def time(self) -> float:
        return self.clock()

    def step(self, rounds: int = 1) -> None:
        """Go round `rounds` times: each runs every ready fd's callback once and due timers."""
        for _ in range(rounds):
            self.call_soon(self.stop)
            self.run_forever()
