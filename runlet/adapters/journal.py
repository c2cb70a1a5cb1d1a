"""The daemon's durable local journal of accepted jobs (stdlib SQLite).

The Job Queue writes a job here before it acks the dispatch message, so a job the broker
considers delivered survives a daemon crash: on restart the node resumes `queued` jobs and
reports `running` ones as `interrupted` (DESIGN §4). The client-made job id is unique here,
which is what stops a redelivered dispatch from running a job twice.

The journal must never hold a plaintext command or environment: `request` is the sealed wire
bytes exactly as received, and is opened only by whoever holds the key.

One thread only: a `Journal` is built and used on the Job Queue actor's thread (SQLite's own
same-thread check stays on); `sync()` alone may be called from another (the group commit's).
Every `sqlite3.Error` and `OSError` is translated here, once, into `StorageError` naming the
file; a closed journal raises `ClosedError`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from runlet.errors import ClosedError, JobNotFound, StorageError
from runlet.files import make_private_dirs
from runlet.protocol.states import NEXT, NODE_STATES, TERMINAL, JobState

SCHEMA_VERSION = 1

QUEUED, RUNNING = JobState.QUEUED, JobState.RUNNING
STATES = NODE_STATES
TERMINAL_STATES: frozenset[str] = frozenset(NODE_STATES) & TERMINAL

# Separate statements: executescript() would commit the transaction that checks the version.
_SCHEMA = (
    """
CREATE TABLE jobs (
    order_no INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    request BLOB NOT NULL,
    accepted_at REAL,
    started_at REAL,
    ended_at REAL,
    exit_code INTEGER,
    signal INTEGER,
    detail TEXT,
    state_seq INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX jobs_by_state ON jobs (state, order_no)",
)

_COLUMNS = (
    "order_no, job_id, state, request, accepted_at, started_at, ended_at,"
    " exit_code, signal, detail, state_seq"
)

_READ_ONLY = "is read-only (check the permissions of the file and its folder)"
_CORRUPT = "is corrupt"

# What a primary SQLite result code means, for the person reading the error.
_PROBLEMS = {
    8: _READ_ONLY,  # SQLITE_READONLY
    10: "could not be read or written (disk I/O error)",  # SQLITE_IOERR
    11: _CORRUPT,  # SQLITE_CORRUPT
    13: "cannot grow: the disk is full",  # SQLITE_FULL
    14: "cannot be opened (check its folder exists and is writable)",  # SQLITE_CANTOPEN
    26: "is not a database (garbage, or some other kind of file)",  # SQLITE_NOTADB
}


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One job as the journal last recorded it; `request` is still sealed."""

    order_no: int
    job_id: str
    state: str
    request: bytes
    accepted_at: float | None
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    signal: int | None
    detail: str | None
    state_seq: int


def _storage_error(path: Path, doing: str, exc: sqlite3.Error | OSError) -> StorageError:
    if isinstance(exc, PermissionError):
        problem = _READ_ONLY
    else:
        code = getattr(exc, "sqlite_errorcode", None)  # absent on OSError and some sqlite3 errors
        problem = _PROBLEMS.get(code & 0xFF, "failed") if isinstance(code, int) else "failed"
    return StorageError(f"journal {path} {problem} (while {doing}: {exc})")


class Journal:
    """The durable record of every job this node accepted, in accept (FIFO) order."""

    def __init__(self, path: Path, *, group_commit: bool = False) -> None:
        self._path = path
        self._group_commit = group_commit
        self._conn: sqlite3.Connection | None = None
        try:
            make_private_dirs(path.parent)
            # Created 0o600 before SQLite sees it; SQLite gives its -wal and -shm the same mode.
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
            self._conn = sqlite3.connect(path, isolation_level=None)
            self._prepare(self._conn)
        except (sqlite3.Error, OSError) as exc:
            self._abandon()
            raise _storage_error(path, "opening", exc) from exc
        except BaseException:
            self._abandon()
            raise

    @property
    def path(self) -> Path:
        """The journal's database file."""
        return self._path

    def accept(self, job_id: str, request: bytes, now: float) -> bool:
        """Record a new queued job, durably; False (nothing changed) if `job_id` is known."""
        with self._writing("accepting a job") as conn:
            cursor = conn.execute(
                "INSERT INTO jobs (job_id, state, request, accepted_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (job_id) DO NOTHING",
                (job_id, QUEUED, bytes(request), now),
            )
            return cursor.rowcount == 1

    def mark(
        self,
        job_id: str,
        state: str,
        now: float,
        *,
        exit_code: int | None = None,
        signal: int | None = None,
        detail: str | None = None,
    ) -> JournalEntry:
        """Move a job to `state`, durably; ValueError if the job cannot go there from where it is.

        `started_at` is set on becoming running, `ended_at` on becoming terminal. `exit_code`,
        `signal` and `detail` replace what was recorded when given, and are kept when not.
        """
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}")
        with self._writing("marking a job") as conn:
            current = self._select_one(conn, job_id)
            if current is None:
                raise JobNotFound(f"job {job_id} is not in the journal", job_id=job_id)
            if state not in NEXT.get(current.state, frozenset()):
                raise ValueError(f"job {job_id} cannot go from {current.state} to {state}")
            conn.execute(
                "UPDATE jobs SET state = :state, state_seq = state_seq + 1,"
                " started_at = CASE WHEN :starts THEN :now ELSE started_at END,"
                " ended_at = CASE WHEN :ends THEN :now ELSE ended_at END,"
                " exit_code = COALESCE(:exit_code, exit_code),"
                " signal = COALESCE(:signal, signal),"
                " detail = COALESCE(:detail, detail)"
                " WHERE job_id = :job_id",
                {
                    "state": state,
                    "starts": state == RUNNING,
                    "ends": state in TERMINAL_STATES,
                    "now": now,
                    "exit_code": exit_code,
                    "signal": signal,
                    "detail": detail,
                    "job_id": job_id,
                },
            )
            updated = self._select_one(conn, job_id)
        assert updated is not None  # same transaction as the read that found it
        return updated

    def sync(self) -> None:
        """Make every commit so far durable: one fsync of the write-ahead log.

        Only needed with `group_commit` (otherwise each commit is synced already). Unlike
        every other method it may be called from any thread: it does not touch the SQLite
        connection, only the log file beside the database.
        """
        wal = self._path.with_name(self._path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # nothing committed since the log was last checkpointed away
        except OSError as exc:
            raise _storage_error(self._path, "syncing", exc) from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _storage_error(self._path, "syncing", exc) from exc
        finally:
            os.close(fd)

    def queued(self) -> list[JournalEntry]:
        """Jobs waiting to run, oldest accepted first."""
        return self._select("WHERE state = ? ORDER BY order_no", (QUEUED,))

    def running(self) -> list[JournalEntry]:
        """Jobs recorded as running, oldest accepted first."""
        return self._select("WHERE state = ? ORDER BY order_no", (RUNNING,))

    def get(self, job_id: str) -> JournalEntry | None:
        """The job with this id, or None if the journal does not hold it."""
        with self._reading("reading a job") as conn:
            return self._select_one(conn, job_id)

    def forget_finished(self, older_than: float) -> int:
        """Delete terminal jobs that ended before `older_than`; returns how many.

        A forgotten id can be accepted again, so `older_than` must lie well before any
        dispatch message could still be redelivered.
        """
        marks = ", ".join("?" * len(TERMINAL_STATES))
        with self._writing("forgetting finished jobs") as conn:
            cursor = conn.execute(
                f"DELETE FROM jobs WHERE state IN ({marks}) AND ended_at < ?",  # noqa: S608 -- only placeholders are interpolated
                (*sorted(TERMINAL_STATES), older_than),
            )
            return cursor.rowcount

    def statistics(self) -> dict[str, int]:
        """How many jobs the journal holds in each state (every state listed, zeros included)."""
        counts = dict.fromkeys(STATES, 0)
        with self._reading("counting jobs") as conn:
            for state, count in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                counts[state] = count
        return counts

    def close(self) -> None:
        """Close the database; closing again does nothing."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.close()
        except sqlite3.Error as exc:
            raise _storage_error(self._path, "closing", exc) from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _prepare(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"journal {self._path} cannot use WAL mode (got {mode!r})")
        # FULL: every commit is synced. With group commit the caller syncs (`sync()`) once for
        # a burst of commits: in WAL mode NORMAL syncs only around checkpoints, and what a
        # checkpoint has not taken yet is made durable by syncing the write-ahead log.
        conn.execute(f"PRAGMA synchronous = {'NORMAL' if self._group_commit else 'FULL'}")
        # A full page scan; journals are small and this runs once, at daemon start, so a
        # damaged file is refused now rather than failing some later write half-way.
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StorageError(f"journal {self._path} {_CORRUPT}: {problems[0]}")
        with self._transaction(conn):
            self._check_schema(conn)

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "meta" not in tables:
            if tables - {"sqlite_sequence"}:
                raise StorageError(f"journal {self._path} is some other SQLite database")
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            for statement in _SCHEMA:
                conn.execute(statement)
            return
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = None if row is None else row[0]
        if version == SCHEMA_VERSION:
            # A write that changes nothing: a read-only file fails now, not on the first accept
            # (in WAL mode SQLite opens it read-only without a word, and BEGIN IMMEDIATE passes).
            conn.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
            return
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise StorageError(
                f"journal {self._path} was written by a newer Runlet (schema {version};"
                f" this one reads schema {SCHEMA_VERSION})"
            )
        raise StorageError(f"journal {self._path} has an unknown schema version {version!r}")

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _reading(self, doing: str) -> Iterator[sqlite3.Connection]:
        if self._conn is None:
            raise ClosedError(f"journal {self._path} is closed")
        try:
            yield self._conn
        except (sqlite3.Error, OSError) as exc:
            raise _storage_error(self._path, doing, exc) from exc

    @contextmanager
    def _writing(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._reading(doing) as conn, self._transaction(conn):
            yield conn

    def _select(self, clause: str, params: tuple[Any, ...]) -> list[JournalEntry]:
        with self._reading("listing jobs") as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM jobs {clause}", params).fetchall()  # noqa: S608 -- clause is one of ours
        return [JournalEntry(*row) for row in rows]

    @staticmethod
    def _select_one(conn: sqlite3.Connection, job_id: str) -> JournalEntry | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()  # noqa: S608 -- constant column list
        return None if row is None else JournalEntry(*row)

    def _abandon(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Already failing: the error that brought us here is the one worth reporting.
            with suppress(sqlite3.Error):
                conn.close()
