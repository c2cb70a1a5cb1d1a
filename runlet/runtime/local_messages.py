"""Messages that only cross local mailboxes, between actors of one process.

They are not encoded (they never leave the process), but they follow the same rules as wire
messages: frozen, slotted, typed, past tense for facts and imperative for requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runlet.protocol.states import ExitStatus


@dataclass(frozen=True, slots=True)
class Delivered:
    """A decoded broker message for an actor; settle it with `Settle(token, …)`."""

    token: int
    message: object
    reply_to: str | None = None
    correlation_id: str | None = None
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class Settle:
    """Ack a delivery (`ok`) or dead-letter it, saying why."""

    token: int
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Publish:
    """Send encoded bytes to the broker. `exchange` "" is the default (reply) exchange."""

    routing_key: str
    body: bytes
    message_id: str
    durable: bool = False
    mandatory: bool = False
    exchange: str | None = None
    correlation_id: str | None = None
    # Order within one job (the Gateway keeps it): a publish with `job_id` is one of that job's
    # state changes and leaves after the job's earlier ones and queue operations; with
    # `after_start` as well, it is the job's output and is held until `running` has left.
    job_id: str = ""
    after_start: bool = False


@dataclass(frozen=True, slots=True)
class OpenJobQueues:
    """Declare and consume a running job's input and control queues."""

    job_id: str
    input: bool = True
    control: bool = True
    announce: Publish | None = None  # published once the queues exist (the state that invites use)


@dataclass(frozen=True, slots=True)
class ReleaseOutput:
    """Output of a job the Gateway had no lane for yet may go, in its turn (after the job's
    queue operations told before it)."""

    job_id: str


@dataclass(frozen=True, slots=True)
class CloseJobQueues:
    """Delete a finished job's queues."""

    job_id: str


@dataclass(frozen=True, slots=True)
class RequestSlot:
    """Ask the governor for permission to start a job."""

    job_id: str


@dataclass(frozen=True, slots=True)
class SlotGranted:
    """The governor allows the job to start now."""

    job_id: str


@dataclass(frozen=True, slots=True)
class ReleaseSlot:
    """A job no longer needs its slot (ended, or cancelled before it started)."""

    job_id: str


@dataclass(frozen=True, slots=True)
class AdmissionTick:
    """Time to look at the load average again."""


@dataclass(frozen=True, slots=True)
class StartSession:
    """Spawn the job's child in a PTY; the request is the journaled wire bytes."""

    job_id: str
    request: bytes


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """The job's child is running."""

    job_id: str
    pid: int


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The job's child is gone; `how` is exited | killed | cancelled | timed_out | failed."""

    job_id: str
    how: str
    status: ExitStatus | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Terminate:
    """End the job: SIGTERM, then SIGKILL after `grace` seconds."""

    job_id: str
    grace: float
    reason: str = "cancelled"


@dataclass(frozen=True, slots=True)
class GraceExpired:
    """The grace period after SIGTERM is over."""

    job_id: str


@dataclass(frozen=True, slots=True)
class ResizeSession:
    job_id: str
    rows: int
    cols: int


@dataclass(frozen=True, slots=True)
class SignalSession:
    job_id: str
    signal: int


@dataclass(frozen=True, slots=True)
class OutputProduced:
    """Plaintext terminal output, numbered by the session; the vault seals and stores it."""

    job_id: str
    seq: int
    at: float
    data: bytes
    final: bool = False


@dataclass(frozen=True, slots=True)
class OutputSealed:
    """Output chunk `seq`, sealed and published by its session: the vault only stores it.

    `size` is the plaintext's length, the credit the vault gives back with `OutputStored`.
    """

    job_id: str
    seq: int
    flags: int
    sealed: bytes
    size: int
    final: bool = False


@dataclass(frozen=True, slots=True)
class OutputStored:
    """The vault stored (and published) output chunk `seq`; `size` bytes are no longer owed."""

    job_id: str
    seq: int
    size: int


@dataclass(frozen=True, slots=True)
class OpenLog:
    """Create or reopen a job's log; `interrupted` finalises an unfinished log at once."""

    job_id: str
    finalise: bool = False


@dataclass(frozen=True, slots=True)
class Replay:
    """Send a job's stored output from `from_seq` to `reply_to`, then its state."""

    job_id: str
    from_seq: int
    reply_to: str
    correlation_id: str | None
    state: str
    exit_code: int | None = None
    signal: int | None = None


@dataclass(frozen=True, slots=True)
class ChildDied:
    """A supervised actor crashed (or failed to start)."""

    name: str
    error: str


@dataclass(frozen=True, slots=True)
class RestartChild:
    """Start the named actor again (after its backoff)."""

    name: str


@dataclass(frozen=True, slots=True)
class StoreOpened:
    """The object store answered (`error` None) or could not be opened yet."""

    error: str | None = None


@dataclass(frozen=True, slots=True)
class UploadTick:
    """Time to look at the upload backlog again."""


@dataclass(frozen=True, slots=True)
class CheckpointTick:
    """Time to upload the partial logs of running jobs."""


@dataclass(frozen=True, slots=True)
class UploadDone:
    """An upload finished: `error` None when the store confirmed `digest`."""

    job_id: str
    final: bool
    digest: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LogFailed:
    """A job's log could not be written (disk full, I/O error): it is incomplete from `seq`."""

    job_id: str
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class StartChild:
    """Ask the supervisor to start `factory`'s actor as `name` and look after it."""

    name: str
    factory: Callable[[], Any]
    permanent: bool = True  # restarted after a crash; a temporary child is only reported
    notify: str | None = None  # told ChildDied when a temporary child crashes


@dataclass(frozen=True, slots=True)
class ForgetChild:
    """A child stopped for good: the supervisor no longer looks after `name`."""

    name: str


@dataclass(frozen=True, slots=True)
class LoopTaskFailed:
    """A long-running coroutine of the actor failed for good: the actor crashes and restarts."""

    error: str


@dataclass(frozen=True, slots=True)
class ReopenStore:
    """Time to try opening the blob store again."""


@dataclass(frozen=True, slots=True)
class StopSession:
    """The session has nothing left to do: stop the actor."""


@dataclass(frozen=True, slots=True)
class ProcessExited:
    """The job's process ended (seen by the PTY adapter's exit watcher)."""

    status: ExitStatus


@dataclass(frozen=True, slots=True)
class HeartbeatDue:
    """Time for the node's next heartbeat."""


@dataclass(frozen=True, slots=True)
class RetryJournal:
    """Try again to journal a state change the journal could not take (disk full)."""

    job_id: str
    state: str
    target: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReadLog:
    """Ask the Sync Reconciler to make `path` the copy of `job_id`'s log to read, by its rule.

    `node` is where the job ran, if known. `reply(LogRead)` is called once, from the
    reconciler's thread: it must only hand the answer on (to a loop, a mailbox).
    `progress(done, total)` is called on the I/O loop while a copy is fetched.
    """

    job_id: str
    path: Path
    reply: Callable[[LogRead], None]
    node: str | None = None
    progress: Callable[[int, int], None] | None = None


@dataclass(frozen=True, slots=True)
class LogRead:
    """The Sync Reconciler read a log: the copy to read and the rule's decision, or why not.

    `final` says whether that copy is a finished log. With `error` (JobNotFound when there is
    no copy anywhere, BlobStoreUnavailable, StorageError, ConfigError) there is none to read.
    """

    job_id: str
    path: Path
    decision: str = ""
    final: bool = False
    error: Exception | None = None
