"""Every error Runlet raises on purpose, in one tree.

```
RunletError
├── ConfigError        bad or missing setting: the program names the key and stops (exit 78)
├── ProtocolError      undecodable or invalid message: dead-lettered, never retried
├── CryptoError        authentication failed or no key: never retried, always reported
├── JobError           something about one job
│   ├── JobNotFound    no node knows the job
│   ├── NoSuchTarget   no node serves the requested target
│   └── SpawnFailed    the command could not be started (the OSError is __cause__)
├── StorageError       a local file (journal, log, key) is unreadable, corrupt or the disk is full
├── MigrationError     (runlet.adapters.ledger_db) a database migration was changed or is unknown
├── ClosedError        used after we closed it
└── ServiceError       an outside service failed: the only kind that is retried, with backoff
    ├── BrokerUnavailable
    ├── DatabaseUnavailable
    └── BlobStoreUnavailable
```

Library exceptions (aiormq, asyncpg, botocore, OSError) are translated into these in the
adapter that calls the library, nowhere else.
"""

from __future__ import annotations

# Exit statuses, after sysexits.h where one fits.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 64
EXIT_DATAERR = 65
EXIT_NOHOST = 68
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
EXIT_CONFIG = 78


class RunletError(Exception):
    """Base of every error Runlet raises on purpose."""

    exit_code = EXIT_FAILURE


class ConfigError(RunletError):
    """A setting is bad or missing; `key` is its dotted path (`broker.urls`)."""

    exit_code = EXIT_CONFIG

    def __init__(self, key: str, problem: str, *, source: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}")


class ProtocolError(RunletError):
    """A message could not be decoded or failed validation."""

    exit_code = EXIT_DATAERR


class CryptoError(RunletError):
    """A sealed payload did not authenticate, or a key is missing or malformed."""

    exit_code = EXIT_NOPERM


class JobError(RunletError):
    """Something about one job; `job_id` names it."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(message)


class JobNotFound(JobError):
    """No node (or server) knows the job."""

    exit_code = EXIT_NOHOST


class NoSuchTarget(JobError):
    """No node serves the requested target, so a job sent there would never run."""

    exit_code = EXIT_NOHOST

    def __init__(self, target: str) -> None:
        self.target = target
        super().__init__(f"no node serves target {target!r}")


class SpawnFailed(JobError):
    """The job's command could not be started; the OSError is the __cause__."""


class StorageError(RunletError):
    """A local file (journal, log, key) is unreadable or corrupt, or the disk is full."""

    exit_code = EXIT_SOFTWARE


class ClosedError(RunletError):
    """An object was used after it was closed on purpose."""


class ServiceError(RunletError):
    """An outside service failed; the only kind of error that is retried."""

    exit_code = EXIT_UNAVAILABLE


class BrokerUnavailable(ServiceError):
    """RabbitMQ could not be reached or refused the operation."""


class DatabaseUnavailable(ServiceError):
    """PostgreSQL could not be reached or refused the operation."""


class BlobStoreUnavailable(ServiceError):
    """The S3-compatible store could not be reached or refused the operation."""
