"""Every error Runlet raises on purpose, in one tree.

```
RunletError
├── UsageError             a bad command line: the message says what to type (exit 64)
├── ConfigError            bad or missing setting: the program names the key and stops (exit 78)
├── ProtocolError          undecodable or invalid message: dead-lettered, never retried (65)
├── CryptoError            no key, or a bad one: never retried, always reported (exit 77)
│   ├── AuthenticationFailed   a sealed message did not open (job, kind, seq)
│   └── PairingFailed          `runlet pair` did not bring the fleet key over (wrong code, …)
├── JobError               something about one job
│   ├── JobNotFound        no node knows the job (exit 68)
│   ├── NoSuchTarget       no node serves the requested target (exit 68)
│   └── SpawnFailed        the command could not be started (the OSError is __cause__)
├── StorageError           a local file (journal, log, key) is unreadable, corrupt, or the disk full
│   └── LogDamage          a log is unreadable from a byte on (path, offset, kind)
├── MigrationError         a database migration was changed or is unknown (exit 70)
├── AccountExists          `user add` for a user that has a broker account already
├── AccessRefused          the broker refused this account a publish (a run-only device) (77)
├── ClosedError            used after we closed it
└── ServiceError           an outside service failed: the only kind that is retried (exit 69)
    ├── BrokerUnavailable
    │   └── BrokerLoginRefused   the broker answered but refused the account (which one)
    ├── DatabaseUnavailable
    ├── BlobStoreUnavailable
    └── ServerUnavailable  no Runlet server answers this user's questions
```

Library exceptions (aiormq, asyncpg, botocore, OSError) are translated into these in the
adapter that calls the library, nowhere else.
"""

from __future__ import annotations

from pathlib import Path

# Exit statuses, after sysexits.h where one fits; a job's own end is reported as a shell would
# (`protocol.states.shell_status`): its code, 128 + a signal, and the two below.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_TIMED_OUT = 124  # as timeout(1)
EXIT_CANCELLED = 130  # a job cancelled before it ran: as if Ctrl-C ended it
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


class UsageError(RunletError):
    """The command line is wrong: an unknown option, a missing or malformed argument."""

    exit_code = EXIT_USAGE


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


class AuthenticationFailed(CryptoError):
    """A sealed message did not open; `job_id`, `kind` and `seq` say which one."""

    def __init__(self, message: str, *, job_id: str, kind: str, seq: int) -> None:
        self.job_id = job_id
        self.kind = kind
        self.seq = seq
        super().__init__(message)


class PairingFailed(CryptoError):
    """`runlet pair` ended without the fleet key moving: a wrong or expired code, no device
    waiting, a refusal. The message says which; it never holds the code's secret words."""


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


class LogDamage(StorageError):
    """A log is unreadable from `offset` on (`kind`: a `logfile.DamageKind`); the `good_records`
    before it were fine."""

    def __init__(
        self,
        path: Path,
        offset: int,
        kind: str,
        detail: str,
        *,
        good_records: int,
        found_seq: int | None = None,
    ) -> None:
        self.path = path
        self.offset = offset
        self.kind = kind
        self.detail = detail
        self.good_records = good_records
        self.found_seq = found_seq
        super().__init__(
            f"{path}: {detail} at byte {offset}; the {good_records} records before it are intact"
        )


class MigrationError(RunletError):
    """The database's schema does not match this code's migrations; `version` names the file."""

    exit_code = EXIT_SOFTWARE

    def __init__(self, message: str, *, version: str | None = None) -> None:
        self.version = version
        super().__init__(message)


class AccountExists(RunletError):
    """`create` was asked for a user that already has a broker account; `name` names it."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"user {name!r} already has a broker account")


class AccessRefused(RunletError):
    """The broker refused this account a publish (`routing_key`): retrying will not help."""

    exit_code = EXIT_NOPERM

    def __init__(self, routing_key: str, reason: str) -> None:
        self.routing_key = routing_key
        super().__init__(
            f"the broker refused this account publishing to {routing_key}: {reason} (a"
            " run-only device's account may run jobs but not start or steer them)"
        )


class ClosedError(RunletError):
    """An object was used after it was closed on purpose."""


class ServiceError(RunletError):
    """An outside service failed; the only kind of error that is retried."""

    exit_code = EXIT_UNAVAILABLE


class BrokerUnavailable(ServiceError):
    """RabbitMQ could not be reached or refused the operation."""


class BrokerLoginRefused(BrokerUnavailable):
    """RabbitMQ answered but refused the login; `account` and `url` (password masked) say whose."""

    def __init__(self, message: str, *, account: str, url: str) -> None:
        self.account = account
        self.url = url
        super().__init__(message)


class DatabaseUnavailable(ServiceError):
    """PostgreSQL could not be reached or refused the operation."""


class BlobStoreUnavailable(ServiceError):
    """The S3-compatible store could not be reached or refused the operation."""


class ServerUnavailable(ServiceError):
    """No server answers this user's questions."""
