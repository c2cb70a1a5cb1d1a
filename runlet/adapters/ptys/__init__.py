"""The PTY adapter: run one command in a pseudo-terminal behind one small interface.

`spawn()` starts a command and returns a `Pty`; `ExitStatus` says how it ended. Everything
except `Pty.wait()` is non-blocking, so an asyncio loop can drive a `Pty` through
`loop.add_reader(pty.fd, ...)` / `loop.add_writer(pty.fd, ...)`.

This module is the interface and the choice of backend; each backend is a module of its own:

- `posix` (ptyprocess): Linux and macOS;
- `windows` (pywinpty): NOT TESTED HERE (no Windows), but type-checked everywhere.

`spawn` imports the backend it needs when it is first called, so neither platform loads the
other's libraries. OSError from spawning is translated in the backend into `SpawnFailed`,
with the OSError as its `__cause__`; no caller sees ptyprocess or pywinpty exceptions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol

from runlet.errors import SpawnFailed
from runlet.protocol.states import ExitStatus

__all__ = ["DEFAULT_TERM", "Pty", "spawn"]

DEFAULT_TERM = "xterm-256color"
"""TERM given to a job whose environment does not set one."""

MAX_SIZE = 0xFFFF  # struct winsize fields are unsigned short
REAP_TIMEOUT = 5.0  # how long close() waits for a killed child to disappear


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

    def exit_fd(self) -> int | None:
        """An fd that turns readable once the job has ended (poll() then reaps it), or None.

        A loop watches it instead of polling for the exit (Linux: a pidfd). None where the
        platform has no such thing: poll() on a timer then. It is closed by close().
        """
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
    check_size(rows, cols)
    if sys.platform == "win32":
        from runlet.adapters.ptys.windows import spawn_windows

        return spawn_windows(args, child_env, cwd, rows, cols)
    from runlet.adapters.ptys.posix import spawn_posix

    return spawn_posix(args, child_env, cwd, rows, cols)


def check_size(rows: int, cols: int) -> None:
    """Refuse a terminal size a backend cannot set (ValueError naming the bad side)."""
    for name, value in (("rows", rows), ("cols", cols)):
        if not 1 <= value <= MAX_SIZE:
            raise ValueError(f"{name} must be between 1 and {MAX_SIZE}, not {value}")


def _check_command(args: list[str], env: Mapping[str, str]) -> None:
    """Refuse what exec would refuse, before forking (exec would raise in the child)."""
    if not args or not args[0]:
        raise SpawnFailed("cannot start a job: the command is empty")
    if any("\0" in arg for arg in args):
        raise SpawnFailed(f"cannot start {args[0]!r}: an argument contains a NUL byte")
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise SpawnFailed(f"cannot start {args[0]!r}: bad environment variable {key!r}")
