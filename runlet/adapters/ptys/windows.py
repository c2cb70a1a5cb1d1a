"""The Windows backend of the PTY adapter (pywinpty). NOT TESTED HERE: there is no Windows.

It is imported and type-checked on every platform (pywinpty itself is imported only when a
job is spawned), so a change to the interface shows up here too.

pywinpty speaks str, so input is decoded from and output encoded to UTF-8. Its reads block
and the Proactor loop has no `add_reader`, so a reader thread copies output into one end of
a `socket.socketpair()`; `fd` is the other end (`sock` gives it as a socket for
`loop.sock_recv`). Windows has no process groups or POSIX signals: `signal(SIGINT)` types
Ctrl-C into the console, any other signal terminates the child process only (not what it
started), and exit statuses are always codes.
"""

from __future__ import annotations

import codecs
import os
import signal
import socket
import threading
import time
from contextlib import suppress
from typing import Any

from runlet.adapters.ptys import REAP_TIMEOUT
from runlet.errors import ClosedError, SpawnFailed
from runlet.protocol.states import ExitStatus

__all__ = ["WindowsPty", "spawn_windows"]


class WindowsPty:
    """A job in a Windows pseudo-console through pywinpty (see the module docstring)."""

    def __init__(self, proc: Any) -> None:
        self._proc = proc
        self._pid = int(proc.pid)
        self._status: ExitStatus | None = None
        self._closed = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._sock, sink = socket.socketpair()
        self._sock.setblocking(False)
        self._reader = threading.Thread(
            target=self._pump, args=(sink,), name=f"winpty-reader-{self._pid}", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def fd(self) -> int:
        return -1 if self._closed else self._sock.fileno()

    @property
    def sock(self) -> socket.socket:
        """The reading end as a socket, for `loop.sock_recv` on the Proactor loop."""
        return self._sock

    def read(self, size: int = 65536) -> bytes:
        self._check_open()
        return self._sock.recv(size)

    def write(self, data: bytes) -> int:
        self._check_open()
        text = self._decoder.decode(data)
        if text:
            with suppress(EOFError):  # the job is gone: its input goes nowhere, as on POSIX
                self._proc.write(text)
        return len(data)

    def resize(self, rows: int, cols: int) -> None:
        self._check_open()
        self._proc.setwinsize(rows, cols)

    def signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        if sig == signal.SIGINT:
            with suppress(EOFError):
                self._proc.write("\x03")
            return
        with suppress(OSError):
            os.kill(self._pid, sig)  # TerminateProcess, with exit code `sig`

    def poll(self) -> ExitStatus | None:
        if self._status is None and not self._proc.isalive():
            code = self._proc.exitstatus
            if code is not None:
                self._status = ExitStatus(code=int(code), signal=None)
        return self._status

    def exit_fd(self) -> int | None:
        return None  # pywinpty gives no handle a selector loop could watch: poll()

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.05)  # pywinpty offers nothing to block on
        return status

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        if self.poll() is None:
            with suppress(OSError):
                os.kill(self._pid, signal.SIGTERM)
        self._proc.close(force=True)
        self._reader.join(timeout=REAP_TIMEOUT)
        self.wait(REAP_TIMEOUT)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the PTY of pid {self._pid} is closed")

    def _pump(self, sink: socket.socket) -> None:
        with sink:
            while True:
                try:
                    text = self._proc.read(4096)
                    if text:
                        sink.sendall(text.encode("utf-8"))
                except (EOFError, OSError):  # the job's output ended, or we closed our end
                    return


def spawn_windows(
    args: list[str], env: dict[str, str], cwd: str | None, rows: int, cols: int
) -> WindowsPty:
    """Start `args` in a new pseudo-console; `ptys.spawn` has checked the arguments."""
    from winpty import PtyProcess as WinPtyProcess

    try:
        proc = WinPtyProcess.spawn(args, cwd=cwd, env=env, dimensions=(rows, cols))
    except OSError as exc:
        raise SpawnFailed(f"cannot start {args[0]!r}: {exc}") from exc
    return WindowsPty(proc)
