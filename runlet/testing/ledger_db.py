"""An in-memory ledger store, for unit tests of the Ledger actor: no PostgreSQL.

It speaks `runlet.adapters.ledger_port.LedgerDbPort`, the port the real store
(`runlet.adapters.ledger_db.LedgerDb`) fills, and keeps its contract where the actor looks:

- it takes its arguments through the same checks, so it refuses (ValueError, or ProtocolError
  for an event's own time) what the real store refuses, and cuts text as it does;
- recording is idempotent by (user, job, seq): a redelivered event changes nothing and
  `record_state` answers False;
- order does not matter: the job shows the state of its highest seq, milestone times fill in
  whatever the order, the history keeps every event;
- `mark_lost` turns a node's `running` jobs `lost` at the seq they had (so the node's next event
  corrects them) and the node offline, unless it was seen since `seen_before`;
- times are kept to the microsecond, as timestamptz keeps them.

`calls` counts the calls by name (a test waits on it to know that a sweep ran). `down = True`
makes every call raise `DatabaseUnavailable`, as while the server is gone (the data stays, as a
real database's would); a closed store raises `ClosedError`. `connect` stands in for
`runlet.adapters.ledger_db.connect`: it opens this store again and counts the connects, so a
test passes `db.connect` as the Ledger actor's `ledger_db_factory`. Names sort by code point,
where PostgreSQL would use its collation. Thread-safe: the actor uses it on its loop while a
test may read it from its own thread.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Any, Self

from runlet.adapters.ledger_migrations import load_migrations
from runlet.adapters.ledger_port import (
    MAX_DETAIL,
    MAX_TEXT,
    MILESTONES,
    JobRow,
    NodeRow,
    StateRow,
    UserRow,
    check_job,
    check_limit,
    check_log,
    check_name,
    check_state,
    moment,
    storable,
    vitals_of,
)
from runlet.errors import ClosedError, DatabaseUnavailable, ProtocolError
from runlet.protocol.messages import JobStateChanged, NodeHeartbeat
from runlet.protocol.states import STATES

__all__ = ["MemoryLedgerDb"]

_NODE, _SERVER = "node", "server"  # who reported a state; at one seq the node's comes first


@dataclass(slots=True)
class _Job:
    """A row of `jobs`, changed in place as events come (`JobRow` without the log columns)."""

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
    updated_at: float


class MemoryLedgerDb:
    """The ledger's tables in dictionaries; everything is kept for the test to read."""

    def __init__(self) -> None:
        self.down = False
        self.closed = False
        self.connects = 0
        self.dsn: str | None = None
        self.applied: list[str] = []
        self.calls: Counter[str] = Counter()  # port calls that got past their checks, by name
        self._lock = threading.RLock()
        self._states: dict[tuple[str, str, int, str], StateRow] = {}
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._logs: dict[tuple[str, str], tuple[str, str]] = {}
        self._nodes: dict[tuple[str, str], NodeRow] = {}
        self._users: dict[str, float] = {}

    async def connect(self, dsn: str, *, schema: str | None = None, **options: Any) -> Self:
        """As `ledger_db.connect`: DatabaseUnavailable while down, else this store, open."""
        with self._lock:
            if self.down:
                raise DatabaseUnavailable("the database is down (MemoryLedgerDb.down)")
            self.dsn = dsn
            self.connects += 1
            self.closed = False
            return self

    # -- the port ----------------------------------------------------------------------------

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def migrate(self) -> list[str]:
        wanted = load_migrations()
        with self._lock:
            self._reach("migrate")
            pending = [m.version for m in wanted if m.version not in self.applied]
            self.applied += pending
            return pending

    async def record_state(self, user: str, event: JobStateChanged) -> bool:
        check_name("user", user)
        at = _seconds(event.at, f"time of job {event.job_id} seq {event.seq}", ProtocolError)
        detail = storable(event.detail, MAX_DETAIL)
        target = storable(event.target, MAX_TEXT) or ""
        queued, started, ended = (at if event.state in s else None for s in MILESTONES)
        with self._lock:
            self._reach("record_state")
            key = (user, event.job_id, event.seq, _NODE)
            if key in self._states:
                return False
            self._states[key] = StateRow(
                event.seq, event.state, at, event.node, event.exit_code, event.signal, detail
            )
            job = self._jobs.get((user, event.job_id))
            if job is None:
                self._jobs[user, event.job_id] = _Job(
                    user=user,
                    job_id=event.job_id,
                    node=event.node,
                    target=target,
                    state=event.state,
                    state_seq=event.seq,
                    queued_at=queued,
                    started_at=started,
                    ended_at=ended,
                    exit_code=event.exit_code,
                    signal=event.signal,
                    detail=detail,
                    updated_at=at,
                )
                return True
            job.target = job.target or target
            job.queued_at = _least(job.queued_at, queued)
            job.started_at = _least(job.started_at, started)
            if event.seq > job.state_seq:
                job.node, job.state, job.state_seq = event.node, event.state, event.seq
                job.ended_at, job.exit_code, job.signal = ended, event.exit_code, event.signal
                job.detail, job.updated_at = detail, at
            return True

    async def record_presence(
        self, user: str, beat: NodeHeartbeat, *, received_at: float | None = None
    ) -> None:
        check_name("user", user)
        seen = _seconds(time.time() if received_at is None else received_at, "received_at")
        platform = storable(beat.platform, MAX_TEXT) or ""
        version = storable(beat.version, MAX_TEXT) or ""
        counts = (max(beat.running, 0), max(beat.queued, 0))
        cpu, used, total, load, uptime, temperature = vitals_of(beat)
        row = NodeRow(
            beat.node,
            platform,
            version,
            tuple(beat.tags),
            seen,
            *counts,
            online=True,
            cpu_percent=cpu,
            mem_used=used,
            mem_total=total,
            load1=load,
            uptime=uptime,
            temperature=temperature,
        )
        with self._lock:
            self._reach("record_presence")
            self._nodes[user, beat.node] = row

    async def mark_lost(
        self, user: str, node: str, at: float, reason: str, *, seen_before: float | None = None
    ) -> list[str]:
        check_name("user", user)
        check_name("node", node)
        when = _seconds(at, "at")
        before = None if seen_before is None else _seconds(seen_before, "seen_before")
        detail = storable(reason, MAX_DETAIL)
        with self._lock:
            self._reach("mark_lost")
            known = self._nodes.get((user, node))
            if before is not None and known is not None and known.last_seen >= before:
                return []
            lost = sorted(
                (
                    j
                    for j in self._jobs.values()
                    if (j.user, j.node, j.state) == (user, node, "running")
                ),
                key=_job_id,
            )
            for job in lost:
                job.state, job.ended_at, job.updated_at = "lost", when, when
                job.exit_code, job.signal, job.detail = None, None, detail
                row = StateRow(job.state_seq, "lost", when, node, None, None, detail)
                self._states.setdefault((user, job.job_id, job.state_seq, _SERVER), row)
            if known is not None:
                self._nodes[user, node] = replace(known, online=False)
            return [job.job_id for job in lost]

    async def set_log(self, user: str, job_id: str, key: str, hash: str) -> None:
        check_name("user", user)
        check_job(job_id)
        check_log(job_id, key, hash)
        with self._lock:
            self._reach("set_log")
            self._logs[user, job_id] = (key, hash)

    async def stale_nodes(self, older_than: float) -> list[tuple[str, str]]:
        before = _seconds(older_than, "older_than")
        with self._lock:
            self._reach("stale_nodes")
            return sorted(
                key for key, row in self._nodes.items() if row.online and row.last_seen < before
            )

    async def jobs(
        self,
        user: str,
        *,
        node: str | None = None,
        state: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[JobRow]:
        check_name("user", user)
        if node is not None:
            check_name("node", node)
        if state is not None:
            check_state(state)
        after = None if since is None else _seconds(since, "since")
        check_limit(limit)
        with self._lock:
            self._reach("jobs")
            rows = [
                self._row(job)
                for job in self._jobs.values()
                if job.user == user
                and node in (None, job.node)
                and state in (None, job.state)
                and (after is None or job.updated_at >= after)
            ]
        rows.sort(key=lambda row: (row.updated_at, row.job_id), reverse=True)
        return rows[:limit]

    async def job(self, user: str, job_id: str) -> tuple[JobRow, list[StateRow]] | None:
        check_name("user", user)
        check_job(job_id)
        with self._lock:
            self._reach("job")
            job = self._jobs.get((user, job_id))
            if job is None:
                return None
            history = sorted(
                (key, row) for key, row in self._states.items() if key[:2] == (user, job_id)
            )
            return self._row(job), [row for _, row in history]

    async def nodes(self, user: str) -> list[NodeRow]:
        check_name("user", user)
        with self._lock:
            self._reach("nodes")
            return sorted((row for (u, _), row in self._nodes.items() if u == user), key=_name)

    async def add_user(self, name: str) -> bool:
        check_name("user", name)
        with self._lock:
            self._reach("add_user")
            if name in self._users:
                return False
            self._users[name] = _seconds(time.time(), "now")
            return True

    async def remove_user(self, name: str) -> bool:
        check_name("user", name)
        with self._lock:
            self._reach("remove_user")
            return self._users.pop(name, None) is not None

    async def users(self) -> list[UserRow]:
        with self._lock:
            self._reach("users")
            return [UserRow(name, at) for name, at in sorted(self._users.items())]

    async def statistics(self) -> dict[str, int]:
        with self._lock:
            self._reach("statistics")
            counts = dict.fromkeys(STATES, 0)
            for job in self._jobs.values():
                counts[job.state] += 1
            return counts

    # -- inside ------------------------------------------------------------------------------

    def _reach(self, call: str) -> None:
        """What the real store's every call goes through: closed, then the server down."""
        self.calls[call] += 1
        if self.closed:
            raise ClosedError("the ledger is closed (MemoryLedgerDb)")
        if self.down:
            raise DatabaseUnavailable("the database is down (MemoryLedgerDb.down)")

    def _row(self, job: _Job) -> JobRow:
        key, hash = self._logs.get((job.user, job.job_id), (None, None))
        return JobRow(**{**asdict(job), "log_key": key, "log_hash": hash})


def _seconds(value: float, what: str, error: type[Exception] = ValueError) -> float:
    """`value` as the real store gives it back: checked, to the microsecond."""
    return moment(value, what, error).timestamp()


def _least(old: float | None, new: float | None) -> float | None:
    """SQL's LEAST: the smaller, NULLs ignored."""
    return new if old is None else old if new is None else min(old, new)


def _name(row: NodeRow) -> str:
    return row.name


def _job_id(job: _Job) -> str:
    return job.job_id
