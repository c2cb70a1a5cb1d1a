"""The PTY adapter: run one command in a pseudo-terminal behind one small interface.

`spawn()` starts a command and returns a `Pty`; `ExitStatus` says how it ended. Two
backends sit behind the interface: POSIX (ptyprocess) and Windows (pywinpty, untested
here). Everything except `Pty.wait()` is non-blocking, so an asyncio loop can drive a
`Pty` through `loop.add_reader(pty.fd, ...)` / `loop.add_writer(pty.fd, ...)`.

OSError from spawning is translated here into `SpawnFailed`, with the OSError as its
`__cause__`; no caller sees ptyprocess or pywinpty exceptions.

This module must never:
- use ptyprocess's `read`/`isalive`/`wait`/`close`: they block or reap the child with
  their own bookkeeping, which would steal the exit status from `poll()`;
- signal a process group after its leader was reaped: the number may belong to a new
  process by then;
- let the forked child return into the caller's code if anything fails between fork and
  exec (it exits with status 127 instead).

Fork and threads: ptyprocess forks with `pty.fork()`, and the child runs a few lines of
Python before it execs. CPython 3.11 (our runtime) does not warn about this. From 3.12 on
it issues "DeprecationWarning: This process is multi-threaded, use of forkpty() may lead
to deadlocks in the child" whenever another Python thread is alive, as in a daemon full of
pykka actors. When warnings are errors, as in our pytest runs, CPython swallows that
warning: it goes quiet, not away. The child code is short and takes no lock that another
thread could hold, but spawning from a single place is what keeps it that way.
"""

from __future__ import annotations

import codecs
import errno
import os
import select
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from functools import partial
from typing import Any, Protocol

from runlet.errors import ClosedError, JobError, SpawnFailed
from runlet.protocol.states import ExitStatus

if sys.platform != "win32":
    import fcntl
    import termios

DEFAULT_TERM = "xterm-256color"
"""TERM given to a job whose environment does not set one."""

_MAX_SIZE = 0xFFFF  # struct winsize fields are unsigned short
_REAP_TIMEOUT = 5.0  # how long close() waits for a SIGKILLed child to disappear
_FAILED_BEFORE_EXEC = 127  # what a forked child exits with if it could not reach exec


class Pty(Protocol):
    """One job running in a pseudo-terminal.

    Not thread-safe for I/O: one owner (normally the event loop) reads, writes and closes
    it. `poll()`, `wait()` and `signal()` may be called from any thread.
    """

    @property
    def pid(self) -> int:
        """The child's process id (it leads its own session and process group on POSIX)."""
        ...

    @property
    def fd(self) -> int:
        """The non-blocking master fd for `loop.add_reader`/`add_writer`; -1 once closed."""
        ...

    def read(self, size: int = 65536) -> bytes:
        """Return what the job wrote, b"" at end of output, or raise BlockingIOError."""
        ...

    def write(self, data: bytes) -> int:
        """Send input; return how many bytes were taken (maybe fewer) or raise BlockingIOError."""
        ...

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal size the job sees (it gets SIGWINCH)."""
        ...

    def signal(self, sig: int) -> None:
        """Send `sig` to the job's whole process group; nothing happens if it is gone."""
        ...

    def poll(self) -> ExitStatus | None:
        """Reap the job without blocking: its status once it has ended, else None."""
        ...

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        """Block until the job ends (None if `timeout` passes first); never on the loop."""
        ...

    def close(self) -> None:
        """Close the fd, and SIGKILL and reap the job if still running. Idempotent.

        It waits for a killed job to disappear, which takes moments (at most 5 s for one
        stuck in the kernel). Once the job has been reaped, its group is not signalled.
        """
        ...


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    rows: int = 24,
    cols: int = 80,
) -> Pty:
    """Start `argv` in a new pseudo-terminal of `rows` x `cols`.

    `env` replaces the environment (None inherits ours); TERM is set to DEFAULT_TERM when
    it has none. Raises SpawnFailed when the command cannot be started: not found, not
    executable, a bad `cwd`, or an argument the OS cannot pass (a NUL byte, say).
    """
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not one string")
    args = list(argv)
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("TERM", DEFAULT_TERM)
    _check_command(args, child_env)
    for name, value in (("rows", rows), ("cols", cols)):
        if not 1 <= value <= _MAX_SIZE:
            raise ValueError(f"{name} must be between 1 and {_MAX_SIZE}, not {value}")
    if sys.platform == "win32":
        return _spawn_windows(args, child_env, cwd, rows, cols)
    return _spawn_posix(args, child_env, cwd, rows, cols)


def _check_command(args: list[str], env: Mapping[str, str]) -> None:
    """Refuse what exec would refuse, before forking (exec would raise in the child)."""
    if not args or not args[0]:
        raise SpawnFailed("cannot start a job: the command is empty")
    if any("\0" in arg for arg in args):
        raise SpawnFailed(f"cannot start {args[0]!r}: an argument contains a NUL byte")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise SpawnFailed(f"cannot start {args[0]!r}: bad environment variable {key!r}")


# --- POSIX ----------------------------------------------------------------------------


class _PosixPty:
    """A job on a POSIX pseudo-terminal; we own the master fd and reap the child."""

    def __init__(self, pid: int, fd: int) -> None:
        self._pid = pid
        self._fd = fd
        self._status: ExitStatus | None = None
        self._lock = threading.Lock()  # makes reaping and signalling mutually exclusive

    def __repr__(self) -> str:
        state = "running" if self._status is None else f"ended {self._status}"
        return f"<PosixPty pid={self._pid} fd={self._fd} {state}>"

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def fd(self) -> int:
        return self._fd

    def read(self, size: int = 65536) -> bytes:
        try:
            return os.read(self._open_fd(), size)
        except OSError as exc:
            if exc.errno == errno.EIO:  # Linux: every slave side is closed
                return b""
            raise

    def write(self, data: bytes) -> int:
        return os.write(self._open_fd(), data)

    def resize(self, rows: int, cols: int) -> None:
        for name, value in (("rows", rows), ("cols", cols)):
            if not 1 <= value <= _MAX_SIZE:
                raise ValueError(f"{name} must be between 1 and {_MAX_SIZE}, not {value}")
        winsize = struct.pack("HHHH", rows, cols, 0, 0)
        fcntl.ioctl(self._open_fd(), termios.TIOCSWINSZ, winsize)

    def signal(self, sig: int) -> None:
        with self._lock:
            # An unreaped child (even a zombie) pins its pid, so the group is still ours.
            if self._status is None:
                with suppress(ProcessLookupError):
                    os.killpg(self._pid, sig)

    def poll(self) -> ExitStatus | None:
        with self._lock:
            if self._status is None:
                try:
                    pid, raw = os.waitpid(self._pid, os.WNOHANG)
                except ChildProcessError as exc:
                    raise JobError(
                        f"the exit status of pid {self._pid} was collected by someone else"
                    ) from exc
                if pid:
                    self._status = _decode_wait_status(raw)
            return self._status

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if status is not None:
                return status
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._block_until_exit(remaining)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd < 0:
                return
            if self._status is None:
                with suppress(ProcessLookupError):
                    os.killpg(self._pid, signal.SIGKILL)
        os.close(fd)
        # Someone else reaping it leaves nothing for close() to do.
        with suppress(JobError):
            self.wait(_REAP_TIMEOUT)

    def _open_fd(self) -> int:
        if self._fd < 0:
            raise ClosedError(f"the PTY of pid {self._pid} is closed")
        return self._fd

    def _block_until_exit(self, timeout: float | None) -> None:
        """Return once the child has exited, or `timeout` passed, without reaping it."""
        try:
            pidfd = os.pidfd_open(self._pid)
        except (AttributeError, OSError):  # no pidfd here (macOS, Linux < 5.3), or reaped
            time.sleep(0.01 if timeout is None else min(0.01, timeout))
            return
        try:
            if self._status is None:  # else pidfd may name a newer process with our pid
                # poll, not select: a daemon's fd numbers can pass select's limit of 1024.
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                poller.poll(None if timeout is None else timeout * 1000)
        finally:
            os.close(pidfd)


def _decode_wait_status(raw: int) -> ExitStatus:
    if os.WIFSIGNALED(raw):
        return ExitStatus(code=None, signal=os.WTERMSIG(raw))
    return ExitStatus(code=os.WEXITSTATUS(raw), signal=None)


def _spawn_posix(
    args: list[str], env: dict[str, str], cwd: str | None, rows: int, cols: int
) -> _PosixPty:
    from ptyprocess import PtyProcess

    program = args[0]
    _check_cwd(program, cwd)
    path = _resolve_program(program, env.get("PATH", os.defpath), cwd)
    parent = os.getpid()
    try:
        # cwd goes through preexec_fn: ptyprocess's own chdir is outside its error
        # reporting, so a bad cwd would raise in the forked child.
        proc = PtyProcess.spawn(
            [path, *args[1:]],
            env=env,
            echo=True,
            preexec_fn=partial(_prepare_child, cwd),
            dimensions=(rows, cols),
        )
    except BaseException as exc:
        if os.getpid() != parent:  # we are the child and exec never happened
            os._exit(_FAILED_BEFORE_EXEC)
        if isinstance(exc, OSError):
            raise SpawnFailed(f"cannot start {program!r}: {exc}") from exc
        raise
    return _adopt(proc)


def _adopt(proc: Any) -> _PosixPty:
    """Take the child and a duplicate of its master fd away from a ptyprocess object."""
    try:
        fd = os.dup(proc.fd)
    except OSError as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        os.waitpid(proc.pid, 0)
        raise SpawnFailed(f"cannot start {proc.argv[0]!r}: {exc.strerror}") from exc
    finally:
        # Close ptyprocess's handle now and mark it closed, so that its __del__ neither
        # closes an fd number someone else may own by then nor reaps our child.
        proc.fileobj.close()
        proc.closed = True
    os.set_blocking(fd, False)
    return _PosixPty(proc.pid, fd)


def _check_cwd(program: str, cwd: str | None) -> None:
    if cwd is None:
        return
    try:
        if os.path.isdir(cwd):
            return
        os.stat(cwd)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), cwd)
    except OSError as exc:
        raise SpawnFailed(
            f"cannot start {program!r}: working directory {cwd!r}: {exc.strerror}"
        ) from exc


def _resolve_program(program: str, search_path: str, cwd: str | None) -> str:
    """The absolute path exec will run: `program` as a path, or searched in the job's PATH."""
    if "/" in program:
        path = os.path.join(cwd or os.getcwd(), program)
        problem = None
        if not os.path.exists(path):
            problem = errno.ENOENT
        elif os.path.isdir(path):
            problem = errno.EISDIR
        elif not os.access(path, os.X_OK):
            problem = errno.EACCES
        if problem is None:
            return path
        cause = OSError(problem, os.strerror(problem), path)
        why = "is not executable" if problem == errno.EACCES else f"{cause.strerror}"
        raise SpawnFailed(f"cannot start {program!r}: {why}") from cause
    found = shutil.which(program, path=search_path)
    if found is None:
        cause = FileNotFoundError(errno.ENOENT, "command not found", program)
        raise SpawnFailed(f"cannot start {program!r}: command not found") from cause
    return os.path.abspath(found)


def _prepare_child(cwd: str | None) -> None:
    """Runs in the forked child, just before exec: what a fresh job should inherit."""
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: put back the
    # defaults, or `yes | head` in the job would print errors instead of ending quietly.
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            with suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError as exc:  # ptyprocess sends this to the parent, which raises it
            raise type(exc)(f"working directory {cwd!r}: {exc.strerror}") from None


# --- Windows ----------------------------------------------------------------------------


class _WindowsPty:
    """A job in a Windows pseudo-console through pywinpty. NOT TESTED HERE (no Windows).

    pywinpty speaks str, so input is decoded from and output encoded to UTF-8. Its reads
    block and the Proactor loop has no `add_reader`, so a reader thread copies output
    into one end of a `socket.socketpair()`; `fd` is the other end (`sock` gives it as a
    socket for `loop.sock_recv`). Windows has no process groups or POSIX signals:
    `signal(SIGINT)` types Ctrl-C into the console, any other signal terminates the child
    process only (not what it started), and exit statuses are always codes.
    """

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
        self._reader.join(timeout=_REAP_TIMEOUT)
        self.wait(_REAP_TIMEOUT)

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


def _spawn_windows(
    args: list[str], env: dict[str, str], cwd: str | None, rows: int, cols: int
) -> _WindowsPty:
    from winpty import PtyProcess as WinPtyProcess

    try:
        proc = WinPtyProcess.spawn(args, cwd=cwd, env=env, dimensions=(rows, cols))
    except OSError as exc:
        raise SpawnFailed(f"cannot start {args[0]!r}: {exc}") from exc
    return _WindowsPty(proc)
