"""What the rest of Runlet needs of the ledger store: the port the PostgreSQL adapter fills.

`LedgerDb` (runlet.adapters.ledger_db) is the real store; `runlet.testing.ledger_db`'s
`MemoryLedgerDb` keeps the same contract in memory, for unit tests of the Ledger actor. Both
answer with the rows defined here and take their arguments through the same checks, so a value
one refuses the other refuses too:

- a user, node or job id that is not a valid name is a `ValueError`, and so is an unknown
  state, a limit out of `1..MAX_LIMIT`, a malformed log key or hash, or a time that is not a
  representable unix time (a `ProtocolError` when it is an event's own time);
- free text (platform, version, target, detail) is made storable with `storable`.

The contract itself (idempotent by (user, job, seq), out-of-order safe, `lost` at the seq it
replaced) is written in `LedgerDbPort` and in runlet.adapters.ledger_db's docstring.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, Self

from runlet.protocol.addresses import valid_job_id, valid_name
from runlet.protocol.messages import JobStateChanged, NodeHeartbeat
from runlet.protocol.states import STATES, TERMINAL

MAX_DETAIL = 1000
MAX_TEXT = 200  # platform, version, target
MAX_LOG_KEY = 1024
MAX_LIMIT = 10_000
# The events whose time is a job's queued_at, started_at and ended_at.
MILESTONES = (frozenset({"queued"}), frozenset({"running"}), TERMINAL)
_HASH = re.compile(r"[0-9a-f]{32,128}")


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job as the ledger knows it: its current state and the times of its milestones."""

    user: str
    job_id: str
    node: str
    target: str
    state: str
    state_seq: int
    queued_at: float | None
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    signal: int | None
    detail: str | None
    log_key: str | None
    log_hash: str | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class StateRow:
    """One state change of a job; `lost` is the server's, at the seq of the state it replaced."""

    seq: int
    state: str
    at: float
    node: str
    exit_code: int | None
    signal: int | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A node as its last heartbeat described it; `last_seen` is the server's clock."""

    name: str
    platform: str
    version: str
    tags: tuple[str, ...]
    last_seen: float
    running: int
    queued: int
    online: bool
    cpu_percent: float | None = None
    mem_used: int | None = None
    mem_total: int | None = None
    load1: float | None = None
    uptime: float | None = None
    temperature: float | None = None


@dataclass(frozen=True, slots=True)
class UserRow:
    """An account made by `runlet user add`."""

    name: str
    created_at: float


class LedgerDbPort(Protocol):
    """The ledger store as the Ledger actor and `runlet user` use it; used from one loop."""

    async def close(self) -> None:
        """Idempotent; calls made afterwards raise ClosedError."""

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc_info: object) -> None: ...
    async def migrate(self) -> list[str]:
        """Bring the schema up to date; the versions applied now, in order."""

    async def record_state(self, user: str, event: JobStateChanged) -> bool:
        """Record one state change; False when (user, job, seq) was already recorded."""

    async def record_presence(
        self, user: str, beat: NodeHeartbeat, *, received_at: float | None = None
    ) -> None:
        """The node is online, last seen at `received_at` (default: now)."""

    async def mark_lost(
        self, user: str, node: str, at: float, reason: str, *, seen_before: float | None = None
    ) -> list[str]:
        """The node goes offline and its `running` jobs `lost` at their seq; their ids."""

    async def set_log(self, user: str, job_id: str, key: str, hash: str) -> None:
        """Where a job's sealed log is stored and its hash; the latest call wins."""

    async def stale_nodes(self, older_than: float) -> list[tuple[str, str]]:
        """(user, node) of every node still online but last seen before `older_than`."""

    async def jobs(
        self, user: str, *, node: str | None = None, state: str | None = None,
        since: float | None = None, limit: int = 100,
    ) -> list[JobRow]:  # fmt: skip
        """A user's jobs, most recently changed first."""

    async def job(self, user: str, job_id: str) -> tuple[JobRow, list[StateRow]] | None:
        """One job and its whole history in seq order (node before server); None if unknown."""

    async def nodes(self, user: str) -> list[NodeRow]:
        """A user's nodes by name."""

    async def add_user(self, name: str) -> bool:
        """False if the account already exists."""

    async def remove_user(self, name: str) -> bool:
        """False if there was no such account; its jobs and nodes stay."""

    async def users(self) -> list[UserRow]:
        """Every account, by name."""

    async def statistics(self) -> dict[str, int]:
        """How many jobs are in each state, every state included."""


Vitals = tuple[float | None, int | None, int | None, float | None, float | None, float | None]


def vitals_of(beat: NodeHeartbeat) -> Vitals:
    """A heartbeat's vitals in NodeRow's order (cpu %, memory used, total, load, uptime, temp)."""
    return (
        beat.cpu_percent,
        beat.mem_used,
        beat.mem_total,
        beat.load1,
        beat.uptime,
        beat.temperature,
    )


def check_name(what: str, name: str) -> None:
    """ValueError unless `name` may be a user or node name."""
    if not valid_name(name):
        raise ValueError(f"invalid {what} name {name[:80]!r}")


def check_job(job_id: str) -> None:
    """ValueError unless `job_id` is a job id (or a fan-out child's)."""
    if not valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id[:80]!r}")


def check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"unknown state {state[:40]!r}")


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit {limit} out of range 1..{MAX_LIMIT}")


def check_log(job_id: str, key: str, hash: str) -> None:
    """ValueError unless `key` is a storable object key and `hash` lowercase hex."""
    if not key or len(key) > MAX_LOG_KEY or "\x00" in key:
        raise ValueError(f"invalid log key {key[:80]!r} for job {job_id}")
    if not _HASH.fullmatch(hash):
        raise ValueError(f"invalid log hash {hash[:80]!r} for job {job_id}: want hex")


def moment(seconds: float, what: str, error: type[Exception] = ValueError) -> datetime:
    """A unix time as an aware datetime; `error` if it is not a representable time."""
    try:
        if math.isfinite(seconds):
            return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        pass
    raise error(f"{what} {seconds!r} is not a representable unix time")


def storable(value: str | None, limit: int) -> str | None:
    """Free text made storable: NULs and lone surrogates replaced, cut at `limit` characters."""
    if value is None:
        return None
    clean = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return clean[:limit]
