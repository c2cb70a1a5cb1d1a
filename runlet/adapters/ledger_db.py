"""The server's ledger in PostgreSQL (asyncpg): users, nodes, jobs and every job state change.

Tables (runlet/adapters/migrations/NNNN_*.sql, applied by `Ledger.migrate`)::

    users        the accounts made by `runlet user add`
    nodes        per (user, node): platform, version, tags, last seen, running, queued, online
    jobs         per (user, job): node, target, current state and its seq, milestone times,
                 exit code, signal, detail
    job_states   every state change of every job, keyed by (user, job, seq)
    job_logs     per (user, job): where its sealed log is stored, and the log's hash

What it guarantees:

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
  `ValueError`; a closed ledger raises `ClosedError`.

Times are unix floats in Python and timestamptz in the database, to the microsecond. The user is
a plain text column, not a foreign key: events are recorded whatever order they come in, and
removing an account keeps its history.

What it must never do: store a command, environment, input or output, in clear or sealed. Only
ids, names, states, times, codes, a short detail, the log's location and its hash go in, and no
column exists for anything else (a test checks the columns).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

import asyncpg
import structlog

from runlet.errors import (
    ClosedError,
    DatabaseUnavailable,
    MigrationError,
    ProtocolError,
)
from runlet.files import read_password
from runlet.protocol.addresses import valid_job_id, valid_name
from runlet.protocol.messages import JobStateChanged, NodeHeartbeat
from runlet.protocol.states import STATES, TERMINAL

__all__ = [
    "JobRow",
    "Ledger",
    "Migration",
    "MigrationError",
    "NodeRow",
    "StateRow",
    "UserRow",
    "connect",
    "load_migrations",
]

log = structlog.get_logger(__name__)
_Row = TypeVar("_Row", "JobRow", "StateRow", "NodeRow", "UserRow")

# "runlet" in ASCII: the session lock around migrations; one more guards CREATE SCHEMA.
MIGRATION_LOCK = 0x72756E6C6574
_SCHEMA_LOCK = MIGRATION_LOCK + 1
_MIGRATION_TIMEOUT = 3600.0  # a migration may rebuild an index; normal queries get `timeout`
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_HASH = re.compile(r"[0-9a-f]{32,128}")
MAX_DETAIL = 1000
MAX_TEXT = 200  # platform, version, target
MAX_LOG_KEY = 1024
MAX_LIMIT = 10_000
# What a broken, refused or vanished server looks like from asyncpg (TimeoutError is an OSError).
_LIBRARY_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# The events whose time is a job's queued_at, started_at and ended_at.
_MILESTONES = (frozenset({"queued"}), frozenset({"running"}), TERMINAL)


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


@dataclass(frozen=True, slots=True)
class UserRow:
    """An account made by `runlet user add`."""

    name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file; `checksum` is SHA-256 of its text with line ends as `\\n`."""

    version: str
    name: str
    sql: str
    checksum: str


def load_migrations(folder: Traversable | None = None) -> list[Migration]:
    """The migration files in `folder` (the package's), in order; MigrationError if misnamed."""
    folder = folder if folder is not None else resources.files("runlet.adapters.migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"migration {entry.name!r} is not named NNNN_name.sql")
        sql = entry.read_text(encoding="utf-8").replace("\r\n", "\n")
        if not any(line.strip() and not line.lstrip().startswith("--") for line in sql.split("\n")):
            raise MigrationError(f"migration {entry.name} has no SQL", version=match[1])
        checksum = hashlib.sha256(sql.encode("utf-8")).hexdigest()
        found.append(Migration(match[1], match[2], sql, checksum))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != [f"{n:04d}" for n in range(1, len(found) + 1)]:
        raise MigrationError(f"migrations must be numbered 0001, 0002, … once each: {versions}")
    return found


async def connect(
    dsn: str,
    *,
    schema: str | None = None,
    min_size: int = 1,
    max_size: int = 5,
    timeout: float = 30.0,
    application_name: str = "runlet",
) -> Ledger:
    """Open a pool on `dsn`; with `schema`, every table lives in it (made if missing).

    `timeout` bounds connecting and each query. DatabaseUnavailable if the server cannot be
    reached or refuses us; ValueError for a malformed DSN or schema name.
    """
    if schema is not None and not _SCHEMA.fullmatch(schema):
        raise ValueError(f"invalid schema name {schema[:80]!r}: use [a-z_][a-z0-9_]*")
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ValueError(f"pool sizes min {min_size}, max {max_size} are not 0 <= min <= max >= 1")
    where = _Where.of(dsn)
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
    ledger = Ledger(pool, where, timeout)
    if schema is not None:
        try:
            await ledger._create_schema(schema)
        except BaseException:
            await ledger.close()
            raise
    return ledger


class Ledger:
    """The server's ledger; made by `connect`, used from the asyncio loop, closed once."""

    def __init__(self, pool: Any, where: _Where, timeout: float) -> None:
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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- schema ----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the package's migrations not yet applied; return their versions, in order."""
        wanted = load_migrations()
        applied: list[str] = []
        async with self._connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await conn.execute(_CREATE_MIGRATIONS)
                rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
                done = {str(row["version"]): str(row["checksum"]) for row in rows}
                _check_applied(done, wanted)
                for migration in wanted:
                    if migration.version not in done:
                        await _apply(conn, migration)
                        applied.append(migration.version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        return applied

    async def _create_schema(self, schema: str) -> None:
        # IF NOT EXISTS still races with itself (unique violation), hence the lock.
        async with self._transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')  # matched _SCHEMA

    # --- recording -------------------------------------------------------------------------

    async def record_state(self, user: str, event: JobStateChanged) -> bool:
        """Record one state change; False when it was already recorded (a redelivery)."""
        _check_name("user", user)
        at = _moment(event.at, f"time of job {event.job_id} seq {event.seq}", ProtocolError)
        key = (user, event.job_id)
        change = (event.seq, event.state, at, event.node)
        outcome = (event.exit_code, event.signal, _text(event.detail, MAX_DETAIL))
        milestones = [at if event.state in states else None for states in _MILESTONES]
        target = _text(event.target, MAX_TEXT) or ""
        async with self._transaction() as conn:
            if not await conn.fetchval(_INSERT_STATE, *key, *change, *outcome):
                return False
            await conn.execute(_UPSERT_JOB, *key, *change, *outcome, target, *milestones)
        return True

    async def record_presence(
        self, user: str, beat: NodeHeartbeat, *, received_at: float | None = None
    ) -> None:
        """Note a node's heartbeat: it is online, last seen at `received_at` (default: now).

        The node's own `beat.at` is not used for expiry: boards without a real-time clock
        often boot in 1970, and would otherwise look stale forever.
        """
        _check_name("user", user)
        seen = _moment(time.time() if received_at is None else received_at, "received_at")
        platform = _text(beat.platform, MAX_TEXT) or ""
        version = _text(beat.version, MAX_TEXT) or ""
        counts = (max(beat.running, 0), max(beat.queued, 0))
        row = (user, beat.node, platform, version, list(beat.tags), seen, *counts)
        async with self._connection() as conn:
            await conn.execute(_UPSERT_NODE, *row)

    async def mark_lost(
        self, user: str, node: str, at: float, reason: str, *, seen_before: float | None = None
    ) -> list[str]:
        """Mark the node offline and its `running` jobs `lost` at `at`; return their ids.

        The jobs keep their seq, so the node's next event about them wins. With `seen_before`
        (the `older_than` given to `stale_nodes`) nothing happens if a heartbeat came since.
        """
        _check_name("user", user)
        _check_name("node", node)
        when = _moment(at, "at")
        before = None if seen_before is None else _moment(seen_before, "seen_before")
        async with self._transaction() as conn:
            last = await conn.fetchval(_LOCK_NODE, user, node)
            if before is not None and last is not None and last >= before:
                return []
            rows = await conn.fetch(_MARK_LOST, user, node, when, _text(reason, MAX_DETAIL))
            await conn.execute(_NODE_OFFLINE, user, node)
        lost = [str(row["job_id"]) for row in rows]
        if lost:
            log.warning("jobs_lost", user=user, node=node, jobs=len(lost))
        return lost

    async def set_log(self, user: str, job_id: str, key: str, hash: str) -> None:
        """Note where a job's sealed log is stored and its hash; the latest call wins."""
        _check_name("user", user)
        _check_job(job_id)
        if not key or len(key) > MAX_LOG_KEY or "\x00" in key:
            raise ValueError(f"invalid log key {key[:80]!r} for job {job_id}")
        if not _HASH.fullmatch(hash):
            raise ValueError(f"invalid log hash {hash[:80]!r} for job {job_id}: want hex")
        async with self._connection() as conn:
            await conn.execute(_UPSERT_LOG, user, job_id, key, hash)

    # --- queries ---------------------------------------------------------------------------

    async def stale_nodes(self, older_than: float) -> list[tuple[str, str]]:
        """(user, node) of every node still online but last seen before `older_than`."""
        before = _moment(older_than, "older_than")
        async with self._connection() as conn:
            rows = await conn.fetch(_STALE_NODES, before)
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
        _check_name("user", user)
        where: list[str] = ["j.user_name = $1"]
        args: list[object] = [user]
        if node is not None:
            _check_name("node", node)
            args.append(node)
            where.append(f"j.node = ${len(args)}")
        if state is not None:
            if state not in STATES:
                raise ValueError(f"unknown state {state[:40]!r}")
            args.append(state)
            where.append(f"j.state = ${len(args)}")
        if since is not None:
            args.append(_moment(since, "since"))
            where.append(f"j.updated_at >= ${len(args)}")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit {limit} out of range 1..{MAX_LIMIT}")
        args.append(limit)
        sql = f"{_SELECT_JOBS} WHERE {' AND '.join(where)} {_NEWEST_FIRST} LIMIT ${len(args)}"
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [_row(JobRow, row) for row in rows]

    async def job(self, user: str, job_id: str) -> tuple[JobRow, list[StateRow]] | None:
        """One job and its whole state history in seq order; None if unknown."""
        _check_name("user", user)
        _check_job(job_id)
        async with self._transaction(isolation="repeatable_read", readonly=True) as conn:
            row = await conn.fetchrow(
                f"{_SELECT_JOBS} WHERE j.user_name = $1 AND j.job_id = $2", user, job_id
            )
            history = await conn.fetch(_HISTORY, user, job_id)
        if row is None:
            return None
        return _row(JobRow, row), [_row(StateRow, r) for r in history]

    async def nodes(self, user: str) -> list[NodeRow]:
        """A user's nodes by name."""
        _check_name("user", user)
        async with self._connection() as conn:
            rows = await conn.fetch(_NODES, user)
        return [_row(NodeRow, row) for row in rows]

    async def add_user(self, name: str) -> bool:
        """Add an account; False if it already exists."""
        _check_name("user", name)
        async with self._connection() as conn:
            return bool(await conn.fetchval(_ADD_USER, name))

    async def remove_user(self, name: str) -> bool:
        """Remove an account (its jobs and nodes stay, as history); False if there was none."""
        _check_name("user", name)
        async with self._connection() as conn:
            return bool(
                await conn.fetchval("DELETE FROM users WHERE name = $1 RETURNING true", name)
            )

    async def users(self) -> list[UserRow]:
        """Every account, by name."""
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT name, created_at FROM users ORDER BY name")
        return [_row(UserRow, row) for row in rows]

    async def statistics(self) -> dict[str, int]:
        """How many jobs are in each state (every state, zeros included), for metrics."""
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
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


@dataclass(frozen=True, slots=True)
class _Where:
    """How errors name the server: host, port, database and user; never the password."""

    text: str
    secrets: tuple[str, ...]

    @classmethod
    def of(cls, dsn: str) -> _Where:
        try:
            parts = urlsplit(dsn)
            port = parts.port or 5432
        except ValueError:
            return cls("PostgreSQL (unparsable DSN)", ())
        query = parse_qs(parts.query)
        host = parts.hostname or ",".join(query.get("host", [])) or "localhost"
        database = unquote(parts.path.lstrip("/")) or "(default database)"
        user = unquote(parts.username or "") or "(default user)"
        secrets = [parts.password or "", *query.get("password", [])]
        secrets += [unquote(s) for s in secrets]
        return cls(f"PostgreSQL {host}:{port}/{database} as {user}", tuple(s for s in secrets if s))

    def __str__(self) -> str:
        return self.text

    def mask(self, error: BaseException) -> str:
        text = str(error) or type(error).__name__
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def unavailable(self, error: BaseException) -> DatabaseUnavailable:
        return DatabaseUnavailable(f"{self.text}: {type(error).__name__}: {self.mask(error)}")


def _check_applied(done: Mapping[str, str], wanted: Iterable[Migration]) -> None:
    known = {m.version: m for m in wanted}
    for version, checksum in sorted(done.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version}, which this runlet does not know: "
                "it is older than the schema; upgrade it",
                version=version,
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {version}_{migration.name}.sql changed after it was applied "
                f"(checksum {checksum[:12]}… in the database, {migration.checksum[:12]}… here); "
                "restore it and put the change in a new numbered file",
                version=version,
            )


async def _apply(conn: Any, migration: Migration) -> None:
    async with conn.transaction():
        await conn.execute(migration.sql, timeout=_MIGRATION_TIMEOUT)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            migration.checksum,
        )
    log.info("migration_applied", version=migration.version, name=migration.name)


def _check_name(what: str, name: str) -> None:
    if not valid_name(name):
        raise ValueError(f"invalid {what} name {name[:80]!r}")


def _check_job(job_id: str) -> None:
    if not valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id[:80]!r}")


def _moment(seconds: float, what: str, error: type[Exception] = ValueError) -> datetime:
    """A unix time as an aware datetime; `error` if it is not a representable time."""
    try:
        if math.isfinite(seconds):
            return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        pass
    raise error(f"{what} {seconds!r} is not a representable unix time")


def _text(value: str | None, limit: int) -> str | None:
    """Free text made storable: NULs and lone surrogates replaced, cut at `limit` characters."""
    if value is None:
        return None
    clean = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return clean[:limit]


def _row(kind: type[_Row], record: Mapping[str, Any]) -> _Row:
    """A row dataclass from a record whose columns are named as its fields, times as floats."""
    return kind(**{name: _plain(value) for name, value in record.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, list):
        return tuple(value)
    return value


_CREATE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text        PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""

_INSERT_STATE = """
INSERT INTO job_states (user_name, job_id, seq, state, at, node, exit_code, signal, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT DO NOTHING
RETURNING true"""

# Milestone times fill in whatever the order; the current state moves only to a higher seq.
_UPSERT_JOB = """
INSERT INTO jobs AS j (user_name, job_id, state_seq, state, updated_at, node,
                       exit_code, signal, detail, target, queued_at, started_at, ended_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (user_name, job_id) DO UPDATE SET
    target     = CASE WHEN j.target = '' THEN EXCLUDED.target ELSE j.target END,
    queued_at  = LEAST(j.queued_at, EXCLUDED.queued_at),
    started_at = LEAST(j.started_at, EXCLUDED.started_at),
    node       = CASE WHEN EXCLUDED.state_seq > j.state_seq THEN EXCLUDED.node ELSE j.node END,
    state      = CASE WHEN EXCLUDED.state_seq > j.state_seq THEN EXCLUDED.state ELSE j.state END,
    ended_at   = CASE WHEN EXCLUDED.state_seq > j.state_seq
                      THEN EXCLUDED.ended_at ELSE j.ended_at END,
    exit_code  = CASE WHEN EXCLUDED.state_seq > j.state_seq
                      THEN EXCLUDED.exit_code ELSE j.exit_code END,
    signal     = CASE WHEN EXCLUDED.state_seq > j.state_seq
                      THEN EXCLUDED.signal ELSE j.signal END,
    detail     = CASE WHEN EXCLUDED.state_seq > j.state_seq
                      THEN EXCLUDED.detail ELSE j.detail END,
    updated_at = CASE WHEN EXCLUDED.state_seq > j.state_seq
                      THEN EXCLUDED.updated_at ELSE j.updated_at END,
    state_seq  = GREATEST(j.state_seq, EXCLUDED.state_seq)"""

_UPSERT_NODE = """
INSERT INTO nodes (user_name, name, platform, version, tags, last_seen, running, queued, online)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true)
ON CONFLICT (user_name, name) DO UPDATE SET
    platform = EXCLUDED.platform, version = EXCLUDED.version, tags = EXCLUDED.tags,
    last_seen = EXCLUDED.last_seen, running = EXCLUDED.running, queued = EXCLUDED.queued,
    online = true"""

_LOCK_NODE = "SELECT last_seen FROM nodes WHERE user_name = $1 AND name = $2 FOR UPDATE"

_MARK_LOST = """
WITH lost AS (
    UPDATE jobs SET state = 'lost', ended_at = $3, updated_at = $3,
                    exit_code = NULL, signal = NULL, detail = $4
    WHERE user_name = $1 AND node = $2 AND state = 'running'
    RETURNING job_id, state_seq
), noted AS (
    INSERT INTO job_states (user_name, job_id, seq, reported_by, state, at, node, detail)
    SELECT $1, job_id, state_seq, 'server', 'lost', $3, $2, $4 FROM lost
    ON CONFLICT DO NOTHING
)
SELECT job_id FROM lost ORDER BY job_id"""

_NODE_OFFLINE = "UPDATE nodes SET online = false WHERE user_name = $1 AND name = $2"

_UPSERT_LOG = """
INSERT INTO job_logs (user_name, job_id, log_key, log_hash) VALUES ($1, $2, $3, $4)
ON CONFLICT (user_name, job_id) DO UPDATE SET
    log_key = EXCLUDED.log_key, log_hash = EXCLUDED.log_hash, updated_at = now()"""

_STALE_NODES = """
SELECT user_name, name FROM nodes WHERE online AND last_seen < $1 ORDER BY user_name, name"""

_SELECT_JOBS = """
SELECT j.user_name AS "user", j.job_id, j.node, j.target, j.state, j.state_seq, j.queued_at,
       j.started_at, j.ended_at, j.exit_code, j.signal, j.detail, l.log_key, l.log_hash,
       j.updated_at
FROM jobs AS j
LEFT JOIN job_logs AS l ON l.user_name = j.user_name AND l.job_id = j.job_id"""

_NEWEST_FIRST = "ORDER BY j.updated_at DESC, j.job_id DESC"

# At one seq the node's report comes before the server's `lost` ('node' < 'server').
_HISTORY = """
SELECT seq, state, at, node, exit_code, signal, detail FROM job_states
WHERE user_name = $1 AND job_id = $2 ORDER BY seq, reported_by"""

_NODES = """
SELECT name, platform, version, tags, last_seen, running, queued, online
FROM nodes WHERE user_name = $1 ORDER BY name"""

_ADD_USER = "INSERT INTO users (name) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true"


def server_dsn(url: str, password_file: Path | None) -> str:
    """The DSN of `[server] database_url`, with the password from its file put in.

    A file that cannot be read is a ConfigError naming `server.database_password_file`.
    """
    if password_file is None:
        return url
    password = read_password(password_file, "server.database_password_file")
    parts = urlsplit(url)
    netloc = f"{quote(parts.username or 'postgres', safe='')}:{quote(password, safe='')}@"
    netloc += parts.netloc.rpartition("@")[2] or "127.0.0.1"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
