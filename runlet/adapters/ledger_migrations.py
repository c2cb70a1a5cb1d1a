"""The ledger's schema migrations: the numbered SQL files, their checks, and applying them.

The files are runlet/adapters/migrations/NNNN_name.sql, shipped as package data and read
through importlib.resources. `apply_pending` runs on one connection of the ledger store
(runlet.adapters.ledger_db): under a session advisory lock, so that two servers starting at
once apply each file exactly once, and each file in its own transaction, recorded in
`schema_migrations` with the SHA-256 of its text.

What it must never do: apply a file that changed after it was applied, or run on a database
that has a migration this code does not know (a newer runlet's); both are `MigrationError`.
This module holds no connection of its own and imports no driver.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import structlog

from runlet.errors import MigrationError

log = structlog.get_logger(__name__)

# "runlet" in ASCII: the session lock around migrations (the store takes the next one too).
MIGRATION_LOCK = 0x72756E6C6574
_MIGRATION_TIMEOUT = 3600.0  # a migration may rebuild an index; normal queries get `timeout`
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_CREATE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text        PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


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


async def apply_pending(conn: Any, wanted: list[Migration]) -> list[str]:
    """Apply those of `wanted` not yet applied on `conn`; return their versions, in order.

    `conn` is an asyncpg connection outside any transaction; the caller translates its errors.
    """
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(_CREATE_MIGRATIONS)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {str(row["version"]): str(row["checksum"]) for row in rows}
        check_applied(done, wanted)
        for migration in wanted:
            if migration.version not in done:
                await _apply(conn, migration)
                applied.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


def check_applied(done: Mapping[str, str], wanted: Iterable[Migration]) -> None:
    """MigrationError if a version in `done` (version → checksum) is unknown or changed."""
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
