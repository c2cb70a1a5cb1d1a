"""The POSIX backend of the PTY adapter (ptyprocess): Linux and macOS.

On Linux, a job with no working directory of its own is started with posix_spawn (vfork and
exec: a daemon's 40 MB are not copied, and no Python runs in the child), which takes well
under a millisecond where forking took ten in a busy daemon. Otherwise `spawn_posix` forks
the child with ptyprocess, then takes the child and a duplicate of its master fd away from
ptyprocess. Either way a `PosixPty` owns the fd and reaps the child itself.

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

import errno
import os
import select
import shutil
import signal
import struct
import sys
import threading
import time
from contextlib import suppress
from functools import partial
from typing import Any

from runlet.adapters.ptys import REAP_TIMEOUT, check_size
from runlet.errors import ClosedError, JobError, SpawnFailed
from runlet.protocol.states import ExitStatus

if sys.platform != "win32":
    import fcntl
    import termios

__all__ = ["PosixPty", "spawn_posix"]

_FAILED_BEFORE_EXEC = 127  # what a forked child exits with if it could not reach exec
# Linux: posix_spawn with setsid (glibc 2.26+) and open-in-child; elsewhere ptyprocess's fork
_in_place = [sys.platform == "linux" and hasattr(os, "POSIX_SPAWN_OPEN")]  # off once refused
_SIGNALS = frozenset(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


class PosixPty:
    """A job on a POSIX pseudo-terminal; we own the master fd and reap the child."""

    def __init__(self, pid: int, fd: int) -> None:
        self._pid = pid
        self._fd = fd
        self._status: ExitStatus | None = None
        self._pidfd: int | None = None  # made by exit_fd(), closed by close()
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
        check_size(rows, cols)
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

    def exit_fd(self) -> int | None:
        with self._lock:
            if self._pidfd is None and self._status is None and self._fd >= 0:
                # only while unreaped: a reaped pid may already name somebody else
                try:
                    self._pidfd = os.pidfd_open(self._pid)
                except (AttributeError, OSError):  # macOS, Linux < 5.3
                    return None
            return self._pidfd

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
            pidfd, self._pidfd = self._pidfd, None
        os.close(fd)
        if pidfd is not None:
            os.close(pidfd)
        # Someone else reaping it leaves nothing for close() to do.
        with suppress(JobError):
            self.wait(REAP_TIMEOUT)

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


def spawn_posix(
    args: list[str], env: dict[str, str], cwd: str | None, rows: int, cols: int
) -> PosixPty:
    """Fork `args` into a new pseudo-terminal; `ptys.spawn` has checked the arguments."""
    from ptyprocess import PtyProcess

    program = args[0]
    _check_cwd(program, cwd)
    path = _resolve_program(program, env.get("PATH", os.defpath), cwd)
    if cwd is None and _in_place[0]:
        try:
            return _spawn_in_place(program, [path, *args[1:]], env, rows, cols)
        except NotImplementedError:  # built without POSIX_SPAWN_SETSID (glibc before 2.26)
            _in_place[0] = False
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


def _spawn_in_place(
    program: str, argv: list[str], env: dict[str, str], rows: int, cols: int
) -> PosixPty:
    """posix_spawn the child into a fresh PTY: vfork and exec, no copy of the daemon made.

    The child leads a session of its own, and opening the terminal by name there makes it
    the child's controlling terminal, as forkpty's login_tty does; every signal is set back
    to its default and none is blocked. Nothing of ours is inherited: every fd we hold that
    is not close-on-exec is closed in the child. An exec that fails raises here (glibc
    reports it to the parent).
    """
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        actions: list[tuple[Any, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.ttyname(slave), os.O_RDWR, 0),
            (os.POSIX_SPAWN_DUP2, 0, 1),
            (os.POSIX_SPAWN_DUP2, 0, 2),
        ]
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd > 2]
        pid = os.posix_spawn(
            argv[0], argv, env, file_actions=actions, setsid=True, setsigdef=_SIGNALS, setsigmask=()
        )
    except OSError as exc:
        os.close(master)
        raise SpawnFailed(f"cannot start {program!r}: {exc}") from exc
    except NotImplementedError:
        os.close(master)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return PosixPty(pid, master)


def _inheritable_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with suppress(OSError):  # the listing's own fd, closed by now
            if os.get_inheritable(fd):
                fds.append(fd)
    return fds


def _adopt(proc: Any) -> PosixPty:
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
    return PosixPty(proc.pid, fd)


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
