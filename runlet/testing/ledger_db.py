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
from dataclasses import replace
from typing import Any, Self

from runlet.adapters import ledger_port as port
from runlet.adapters.closing import Closing
from runlet.adapters.ledger_migrations import load_migrations
from runlet.adapters.ledger_port import JobRow, NodeRow, StateRow, UserRow
from runlet.errors import ClosedError, DatabaseUnavailable, ProtocolError
from runlet.protocol.messages import JobStateChanged, NodeHeartbeat
from runlet.protocol.states import STATES

__all__ = ["MemoryLedgerDb"]

_NODE, _SERVER = "node", "server"  # who reported a state; at one seq the node's comes first


class MemoryLedgerDb(Closing):
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
        self._jobs: dict[tuple[str, str], JobRow] = {}  # without the log columns (`_logs`)
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

    async def migrate(self) -> list[str]:
        wanted = load_migrations()
        with self._lock:
            self._reach("migrate")
            pending = [m.version for m in wanted if m.version not in self.applied]
            self.applied += pending
            return pending

    async def record_state(self, user: str, event: JobStateChanged) -> bool:
        port.check_name("user", user)
        at = _seconds(event.at, f"time of job {event.job_id} seq {event.seq}", ProtocolError)
        detail = port.storable(event.detail, port.MAX_DETAIL)
        target = port.storable(event.target, port.MAX_TEXT) or ""
        queued, started, ended = (at if event.state in s else None for s in port.MILESTONES)
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
                job = JobRow(
                    user, event.job_id, event.node, target, event.state, event.seq,
                    queued, started, ended, event.exit_code, event.signal, detail,
                    log_key=None, log_hash=None, updated_at=at,
                )  # fmt: skip
            elif event.seq > job.state_seq:
                job = replace(
                    job, node=event.node, state=event.state, state_seq=event.seq,
                    ended_at=ended, exit_code=event.exit_code, signal=event.signal,
                    detail=detail, updated_at=at,
                )  # fmt: skip
            self._jobs[user, event.job_id] = replace(
                job,
                target=job.target or target,
                queued_at=_least(job.queued_at, queued),
                started_at=_least(job.started_at, started),
            )
            return True

    async def record_presence(
        self, user: str, beat: NodeHeartbeat, *, received_at: float | None = None
    ) -> None:
        port.check_name("user", user)
        seen = _seconds(time.time() if received_at is None else received_at, "received_at")
        platform = port.storable(beat.platform, port.MAX_TEXT) or ""
        version = port.storable(beat.version, port.MAX_TEXT) or ""
        counts = (max(beat.running, 0), max(beat.queued, 0))
        cpu, used, total, load, uptime, temperature = port.vitals_of(beat)
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
        port.check_name("user", user)
        port.check_name("node", node)
        when = _seconds(at, "at")
        before = None if seen_before is None else _seconds(seen_before, "seen_before")
        detail = port.storable(reason, port.MAX_DETAIL)
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
                self._jobs[user, job.job_id] = replace(
                    job, state="lost", ended_at=when, updated_at=when,
                    exit_code=None, signal=None, detail=detail,
                )  # fmt: skip
                row = StateRow(job.state_seq, "lost", when, node, None, None, detail)
                self._states.setdefault((user, job.job_id, job.state_seq, _SERVER), row)
            if known is not None:
                self._nodes[user, node] = replace(known, online=False)
            return [job.job_id for job in lost]

    async def set_log(self, user: str, job_id: str, key: str, hash: str) -> None:
        port.check_name("user", user)
        port.check_job(job_id)
        port.check_log(job_id, key, hash)
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
        self, user: str, *, node: str | None = None, state: str | None = None,
        since: float | None = None, limit: int = 100,
    ) -> list[JobRow]:  # fmt: skip
        port.check_name("user", user)
        if node is not None:
            port.check_name("node", node)
        if state is not None:
            port.check_state(state)
        after = None if since is None else _seconds(since, "since")
        port.check_limit(limit)
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
        port.check_name("user", user)
        port.check_job(job_id)
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
        port.check_name("user", user)
        with self._lock:
            self._reach("nodes")
            return sorted((row for (u, _), row in self._nodes.items() if u == user), key=_name)

    async def add_user(self, name: str) -> bool:
        port.check_name("user", name)
        with self._lock:
            self._reach("add_user")
            if name in self._users:
                return False
            self._users[name] = _seconds(time.time(), "now")
            return True

    async def remove_user(self, name: str) -> bool:
        port.check_name("user", name)
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

    def _row(self, job: JobRow) -> JobRow:
        key, hash = self._logs.get((job.user, job.job_id), (None, None))
        return replace(job, log_key=key, log_hash=hash)


def _seconds(value: float, what: str, error: type[Exception] = ValueError) -> float:
    """`value` as the real store gives it back: checked, to the microsecond."""
    return port.moment(value, what, error).timestamp()


def _least(old: float | None, new: float | None) -> float | None:
    """SQL's LEAST: the smaller, NULLs ignored."""
    return new if old is None else old if new is None else min(old, new)


def _name(row: NodeRow) -> str:
    return row.name


def _job_id(job: JobRow) -> str:
    return job.job_id
