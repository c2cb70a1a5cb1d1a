"""The server's ledger store in PostgreSQL (asyncpg): users, nodes, jobs, every state change.

Tables (runlet/adapters/migrations/NNNN_*.sql, applied by `LedgerDb.migrate`)::

    users        the accounts made by `runlet user add`
    nodes        per (user, node): platform, version, tags, last seen, running, queued, online,
                 and the vitals of its last heartbeat (CPU %, memory, load, uptime, temperature)
    jobs         per (user, job): node, target, current state and its seq, milestone times,
                 exit code, signal, detail
    job_states   every state change of every job, keyed by (user, job, seq)
    job_logs     per (user, job): where its sealed log is stored, and the log's hash

It fills `runlet.adapters.ledger_port.LedgerDbPort` and answers with its rows; the statements
are in `ledger_sql`, the migration files and their checks in `ledger_migrations`. What it
guarantees:

- recording is idempotent: an event is keyed by (user, job id, seq), so a redelivered event
  changes nothing and `record_state` answers False;
- order does not matter: the history keeps every event, the job shows the state of the highest
  seq seen (a late older event never rolls it back), and `queued_at`, `started_at` and
  `ended_at` are filled from the events of those states whenever they arrive;
- a node whose presence expired has its `running` jobs marked `lost` at the seq they had, so
  any later event from the node (seq + 1, say `interrupted`) corrects them;
- migrations run once, in order, under an advisory lock, each in one transaction; an applied
  file that changed, or a database newer than this code, stops the server (`MigrationError`);
- every asyncpg error and OSError is translated here, once, into `DatabaseUnavailable` naming
  the server (never the password), with the library's exception as `__cause__`; a bad DSN is a
  `ValueError`; a closed store raises `ClosedError`.

Times are unix floats in Python and timestamptz in the database, to the microsecond. The user is
a plain text column, not a foreign key: events are recorded whatever order they come in, and
removing an account keeps its history.

What it must never do: store a command, environment, input or output, in clear or sealed. Only
ids, names, states, times, codes, a short detail, the log's location and its hash go in, and no
column exists for anything else (a test checks the columns).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import structlog

from runlet.adapters import ledger_sql as sql
from runlet.adapters.closing import Closing
from runlet.adapters.ledger_dsn import Where
from runlet.adapters.ledger_migrations import MIGRATION_LOCK, apply_pending, load_migrations
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
from runlet.errors import ClosedError, ProtocolError
from runlet.protocol.messages import JobStateChanged, NodeHeartbeat
from runlet.protocol.states import STATES

__all__ = ["LedgerDb", "connect"]

log = structlog.get_logger(__name__)
_Row = TypeVar("_Row", JobRow, StateRow, NodeRow, UserRow)

_SCHEMA_LOCK = MIGRATION_LOCK + 1  # guards CREATE SCHEMA
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# What a broken, refused or vanished server looks like from asyncpg (TimeoutError is an OSError).
_LIBRARY_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def connect(
    dsn: str,
    *,
    schema: str | None = None,
    min_size: int = 1,
    max_size: int = 5,
    timeout: float = 30.0,
    application_name: str = "runlet",
) -> LedgerDb:
    """Open a pool on `dsn`; with `schema`, every table lives in it (made if missing).

    `timeout` bounds connecting and each query. DatabaseUnavailable if the server cannot be
    reached or refuses us; ValueError for a malformed DSN or schema name.
    """
    if schema is not None and not _SCHEMA.fullmatch(schema):
        raise ValueError(f"invalid schema name {schema[:80]!r}: use [a-z_][a-z0-9_]*")
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ValueError(f"pool sizes min {min_size}, max {max_size} are not 0 <= min <= max >= 1")
    where = Where.of(dsn)
    settings = {"application_name": application_name}
    if schema is not None:
        settings["search_path"] = schema
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            command_timeout=timeout,
            server_settings=settings,
        )
    except ValueError as exc:  # asyncpg's ClientConfigurationError is a ValueError too
        raise ValueError(f"invalid PostgreSQL DSN for {where}: {where.mask(exc)}") from None
    except _LIBRARY_ERRORS as exc:
        raise where.unavailable(exc) from exc
    store = LedgerDb(pool, where, timeout)
    if schema is not None:
        try:
            await store._create_schema(schema)
        except BaseException:
            await store.close()
            raise
    return store


class LedgerDb(Closing):
    """The server's ledger store; made by `connect`, used from the asyncio loop, closed once."""

    def __init__(self, pool: Any, where: Where, timeout: float) -> None:
        self._pool = pool
        self._where = where
        self._timeout = timeout
        self._closed = False

    async def close(self) -> None:
        """Close the pool; idempotent. Calls made afterwards raise ClosedError."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout)
        except _LIBRARY_ERRORS as exc:  # a held or broken connection: drop them all, still closed
            self._pool.terminate()
            log.warning("database_close_failed", where=str(self._where), error=type(exc).__name__)
        except BaseException:
            self._pool.terminate()
            raise

    # --- schema ----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the package's migrations not yet applied; return their versions, in order."""
        wanted = load_migrations()
        async with self._connection() as conn:
            return await apply_pending(conn, wanted)

    async def _create_schema(self, schema: str) -> None:
        # IF NOT EXISTS still races with itself (unique violation), hence the lock.
        async with self._transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')  # matched _SCHEMA

    # --- recording -------------------------------------------------------------------------

    async def record_state(self, user: str, event: JobStateChanged) -> bool:
        """Record one state change; False when it was already recorded (a redelivery)."""
        check_name("user", user)
        at = moment(event.at, f"time of job {event.job_id} seq {event.seq}", ProtocolError)
        key = (user, event.job_id)
        change = (event.seq, event.state, at, event.node)
        outcome = (event.exit_code, event.signal, storable(event.detail, MAX_DETAIL))
        milestones = [at if event.state in states else None for states in MILESTONES]
        target = storable(event.target, MAX_TEXT) or ""
        async with self._transaction() as conn:
            if not await conn.fetchval(sql.INSERT_STATE, *key, *change, *outcome):
                return False
            await conn.execute(sql.UPSERT_JOB, *key, *change, *outcome, target, *milestones)
        return True

    async def record_presence(
        self, user: str, beat: NodeHeartbeat, *, received_at: float | None = None
    ) -> None:
        """Note a node's heartbeat: it is online, last seen at `received_at` (default: now).

        The node's own `beat.at` is not used for expiry: boards without a real-time clock
        often boot in 1970, and would otherwise look stale forever.
        """
        check_name("user", user)
        seen = moment(time.time() if received_at is None else received_at, "received_at")
        platform = storable(beat.platform, MAX_TEXT) or ""
        version = storable(beat.version, MAX_TEXT) or ""
        counts = (max(beat.running, 0), max(beat.queued, 0))
        row = (user, beat.node, platform, version, list(beat.tags), seen, *counts, *vitals_of(beat))
        async with self._connection() as conn:
            await conn.execute(sql.UPSERT_NODE, *row)

    async def mark_lost(
        self, user: str, node: str, at: float, reason: str, *, seen_before: float | None = None
    ) -> list[str]:
        """Mark the node offline and its `running` jobs `lost` at `at`; return their ids.

        The jobs keep their seq, so the node's next event about them wins. With `seen_before`
        (the `older_than` given to `stale_nodes`) nothing happens if a heartbeat came since.
        """
        check_name("user", user)
        check_name("node", node)
        when = moment(at, "at")
        before = None if seen_before is None else moment(seen_before, "seen_before")
        async with self._transaction() as conn:
            last = await conn.fetchval(sql.LOCK_NODE, user, node)
            if before is not None and last is not None and last >= before:
                return []
            rows = await conn.fetch(sql.MARK_LOST, user, node, when, storable(reason, MAX_DETAIL))
            await conn.execute(sql.NODE_OFFLINE, user, node)
        lost = [str(row["job_id"]) for row in rows]
        if lost:
            log.warning("jobs_lost", user=user, node=node, jobs=len(lost))
        return lost

    async def set_log(self, user: str, job_id: str, key: str, hash: str) -> None:
        """Note where a job's sealed log is stored and its hash; the latest call wins."""
        check_name("user", user)
        check_job(job_id)
        check_log(job_id, key, hash)
        async with self._connection() as conn:
            await conn.execute(sql.UPSERT_LOG, user, job_id, key, hash)

    # --- queries ---------------------------------------------------------------------------

    async def stale_nodes(self, older_than: float) -> list[tuple[str, str]]:
        """(user, node) of every node still online but last seen before `older_than`."""
        before = moment(older_than, "older_than")
        async with self._connection() as conn:
            rows = await conn.fetch(sql.STALE_NODES, before)
        return [(str(row["user_name"]), str(row["name"])) for row in rows]

    async def jobs(
        self,
        user: str,
        *,
        node: str | None = None,
        state: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[JobRow]:
        """A user's jobs, most recently changed first; `since` keeps those changed at or after."""
        check_name("user", user)
        where: list[str] = ["j.user_name = $1"]
        args: list[object] = [user]
        if node is not None:
            check_name("node", node)
            args.append(node)
            where.append(f"j.node = ${len(args)}")
        if state is not None:
            check_state(state)
            args.append(state)
            where.append(f"j.state = ${len(args)}")
        if since is not None:
            args.append(moment(since, "since"))
            where.append(f"j.updated_at >= ${len(args)}")
        check_limit(limit)
        args.append(limit)
        query = (
            f"{sql.SELECT_JOBS} WHERE {' AND '.join(where)} {sql.NEWEST_FIRST} LIMIT ${len(args)}"
        )
        async with self._connection() as conn:
            rows = await conn.fetch(query, *args)
        return [_row(JobRow, row) for row in rows]

    async def job(self, user: str, job_id: str) -> tuple[JobRow, list[StateRow]] | None:
        """One job and its whole state history in seq order; None if unknown."""
        check_name("user", user)
        check_job(job_id)
        async with self._transaction(isolation="repeatable_read", readonly=True) as conn:
            row = await conn.fetchrow(
                f"{sql.SELECT_JOBS} WHERE j.user_name = $1 AND j.job_id = $2", user, job_id
            )
            history = await conn.fetch(sql.HISTORY, user, job_id)
        if row is None:
            return None
        return _row(JobRow, row), [_row(StateRow, r) for r in history]

    async def nodes(self, user: str) -> list[NodeRow]:
        """A user's nodes by name."""
        check_name("user", user)
        async with self._connection() as conn:
            rows = await conn.fetch(sql.NODES, user)
        return [_row(NodeRow, row) for row in rows]

    async def add_user(self, name: str) -> bool:
        """Add an account; False if it already exists."""
        check_name("user", name)
        async with self._connection() as conn:
            return bool(await conn.fetchval(sql.ADD_USER, name))

    async def remove_user(self, name: str) -> bool:
        """Remove an account (its jobs and nodes stay, as history); False if there was none."""
        check_name("user", name)
        async with self._connection() as conn:
            return bool(await conn.fetchval(sql.REMOVE_USER, name))

    async def users(self) -> list[UserRow]:
        """Every account, by name."""
        async with self._connection() as conn:
            rows = await conn.fetch(sql.USERS)
        return [_row(UserRow, row) for row in rows]

    async def statistics(self) -> dict[str, int]:
        """How many jobs are in each state (every state, zeros included), for metrics."""
        async with self._connection() as conn:
            rows = await conn.fetch(sql.JOBS_BY_STATE)
        counts = dict.fromkeys(STATES, 0)
        counts.update({str(row["state"]): int(row["n"]) for row in rows})
        return counts

    # --- plumbing --------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; library errors inside become DatabaseUnavailable."""
        if self._closed:
            raise ClosedError(f"the ledger on {self._where} is closed")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except _LIBRARY_ERRORS as exc:
            if self._closed:
                raise ClosedError(f"the ledger on {self._where} was closed meanwhile") from exc
            raise self._where.unavailable(exc) from exc

    @asynccontextmanager
    async def _transaction(self, **options: Any) -> AsyncIterator[Any]:
        """A pooled connection in a transaction (asyncpg's `options`: isolation, readonly)."""
        async with self._connection() as conn, conn.transaction(**options):
            yield conn


def _row(kind: type[_Row], record: Mapping[str, Any]) -> _Row:
    """A row dataclass from a record whose columns are named as its fields, times as floats."""
    return kind(**{name: _plain(value) for name, value in record.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, list):
        return tuple(value)
    return value
