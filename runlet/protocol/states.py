"""The vocabulary of a job's life, written once: its states, their order, how it ended.

    submitted ─▶ queued ─▶ running ─▶ exited(code) | killed(signal) | timed_out | cancelled
                    │           └──▶ interrupted   (the daemon died while it ran)
                    └──▶ expired | rejected | cancelled | interrupted
    (the server alone says `lost`, for a node that went silent; the node may correct it)

Shared by the journal (which enforces `NEXT`), the messages (which carry a state), the ledger,
the PTY adapter (which observes an `ExitStatus`) and the client (which turns a final state into
the status `runlet run` exits with, `shell_status`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runlet.errors import EXIT_CANCELLED, EXIT_DATAERR, EXIT_TEMPFAIL, EXIT_TIMED_OUT


class JobState(StrEnum):
    """One state of a job; a `str`, so it travels and compares as its plain name."""

    SUBMITTED = "submitted"
    QUEUED = "queued"
    RUNNING = "running"
    EXITED = "exited"
    KILLED = "killed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    EXPIRED = "expired"
    REJECTED = "rejected"
    LOST = "lost"


STATES: tuple[str, ...] = tuple(JobState)
"""Every state, in the order of a job's life."""
LIVE: frozenset[str] = frozenset({JobState.QUEUED, JobState.RUNNING})
"""The states a node holds a job in: it may still change."""
TERMINAL: frozenset[str] = frozenset(STATES) - LIVE - {JobState.SUBMITTED}
"""The end states (`lost` included: only the node's later report can correct it)."""
NODE_STATES: tuple[str, ...] = tuple(s for s in STATES if s not in (JobState.SUBMITTED, "lost"))
"""The states a node's journal records."""
NEXT: dict[str, frozenset[str]] = {
    JobState.QUEUED: frozenset(
        {JobState.RUNNING, JobState.CANCELLED, JobState.EXPIRED, JobState.REJECTED}
        | {JobState.INTERRUPTED}
    ),
    JobState.RUNNING: frozenset(
        {JobState.EXITED, JobState.KILLED, JobState.TIMED_OUT, JobState.CANCELLED}
        | {JobState.INTERRUPTED}
    ),
}
"""Where a node may move a job from each live state; an end state leads nowhere."""


def shell_status(state: str, exit_code: int | None, signal: int | None) -> int:  # noqa: PLR0911
    """The shell-style status a client exits with for a job's final state (1 for a live one).

    Its exit code; 128+N when signal N ended it; 124 `timed_out`; 75 `expired`,
    `interrupted` or `lost`; 65 `rejected`; 130 a job cancelled before it ran.
    """
    match state:
        case JobState.EXITED:
            return exit_code if exit_code is not None else 1
        case JobState.KILLED | JobState.CANCELLED if signal is not None:
            return 128 + signal
        case JobState.CANCELLED:
            return EXIT_CANCELLED
        case JobState.TIMED_OUT:
            return EXIT_TIMED_OUT
        case JobState.EXPIRED | JobState.INTERRUPTED | JobState.LOST:
            return EXIT_TEMPFAIL
        case JobState.REJECTED:
            return EXIT_DATAERR
    return 1


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


def recorded_exit(
    status: ExitStatus | None, detail: str | None
) -> tuple[int | None, int | None, str | None]:
    """(exit code, signal, detail) as journal and ledger record them: a code in 0..255 (one
    outside, such as Windows' 0xC000013A, becomes 255 and is named in the detail), a signal
    in 1..127."""
    code = status.code if status else None
    sig = status.signal if status else None
    if code is not None and not 0 <= code <= 255:
        named = f"exit code {code:#x}"
        detail = f"{detail}; {named}" if detail else named
        code = 255
    if sig is not None and not 1 <= sig <= 127:
        sig = 127
    return code, sig, detail
