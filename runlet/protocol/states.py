"""The vocabulary of a job's life: how its process ended.

Shared by the PTY adapter (which observes an exit), the actors (which report it) and the
client (which turns it into the status `runlet run` exits with).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a job's process ended: exactly one of `code` and `signal` is set."""

    code: int | None
    """The exit code, when the process exited by itself."""
    signal: int | None
    """The signal number, when a signal killed the process."""

    def __post_init__(self) -> None:
        if (self.code is None) == (self.signal is None):
            raise ValueError(f"exactly one of code and signal must be set, not {self!r}")

    def shell_status(self) -> int:
        """The number a shell would put in `$?`: the exit code, or 128 + the signal."""
        if self.signal is not None:
            return 128 + self.signal
        if self.code is None:  # pragma: no cover - ruled out by __post_init__
            raise AssertionError(self)
        return self.code
