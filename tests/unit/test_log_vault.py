"""The Log Vault, through its mailbox, on the in-memory blob store (runlet.testing): no network.

It seals every output chunk, appends it to the job's log and publishes the very same sealed
bytes; it replays a log from a sequence number; it finalises a log left unfinished; with a
store it uploads each finished log (and checkpoints running ones), retries with backoff while
the store is down, and announces where the log went. A disk that fails is reported, and the
live stream goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from actors.log_vault import LogVault
from runlet.adapters import backlog
from runlet.adapters.blob_port import hash_file, object_key
from runlet.adapters.logfile import LogWriter, Record, open_output, read_records, scan_log
from runlet.adapters.logfile import seal_output as seal
from runlet.config import StorageConfig
from runlet.protocol import addresses, wire
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import LogStored, OutputChunk, ReplayFinished
from runlet.runtime.actor import Context
from runlet.runtime.local_messages import (
    CheckpointTick,
    LogFailed,
    OpenLog,
    OutputProduced,
    OutputStored,
    Publish,
    Replay,
)
from runlet.runtime.names import GATEWAY, JOB_QUEUE, VAULT, session_name
from runlet.testing import MemoryBlobStore
from tests.unit.fakes import Inbox, add_fake, running_context, sample, wait_for

USER = "alice"
NODE = "node1"
JOB = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
T0 = 1_700_000_000.0


@dataclass(frozen=True)
class _Vault:
    max_bytes: int = 0


@dataclass(frozen=True)
class _Settings:
    """The fields of `runlet.config.Config` the vault reads."""

    data_dir: Path
    node: str = NODE
    user: str = USER
    storage: StorageConfig | None = None
    vault: _Vault = field(default_factory=_Vault)


class Backoff:
    """The `upload_backoff` service: no wait at all, and a record of the attempts asked for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.attempts: list[int] = []

    def __call__(self, attempt: int) -> float:
        with self._lock:
            self.attempts.append(attempt)
        return 0.001


@dataclass
class Rig:
    """A vault with fake gateway, job queue and session, and (with storage) a memory store."""

    ctx: Context
    key: FleetKey
    store: MemoryBlobStore
    backoff: Backoff
    gateway: Inbox
    job_queue: Inbox
    session: Inbox
    folder: Path

    def start(self) -> None:
        ref = LogVault.start(self.ctx)
        wait_for(lambda: self.ctx.router.has(VAULT), what="the vault registered")
        self.ref = ref

    def tell(self, *messages: object) -> None:
        for message in messages:
            assert self.ctx.router.tell(VAULT, message)

    def path(self, job_id: str = JOB) -> Path:
        return self.folder / f"{job_id}.rlog"

    def published(self, routing_key: str) -> list[Publish]:
        return [p for p in self.gateway.of(Publish) if p.routing_key == routing_key]

    def wait_published(self, routing_key: str, count: int) -> list[Publish]:
        """Block until `count` publishes to `routing_key` reached the gateway; returns them."""
        self.gateway.wait(
            lambda _: len(self.published(routing_key)) >= count, what=f"{count} to {routing_key}"
        )
        return self.published(routing_key)

    def uploaded(self, job_id: str = JOB) -> bool:
        found = self.store.objects.get(object_key(USER, NODE, job_id))
        return found is not None and found.metadata.get("runlet-final") == "1"

    def wait_uploaded(self, job_id: str = JOB) -> None:
        wait_for(lambda: self.uploaded(job_id), what=f"the final upload of {job_id}")


def make_rig(tmp_path: Path, *, storage: bool, max_bytes: int = 0) -> Iterator[Rig]:
    with running_context(tmp_path) as ctx:
        config = StorageConfig(bucket="runlet-logs", checkpoint_seconds=86400)
        ctx.settings = _Settings(
            data_dir=tmp_path, storage=config if storage else None, vault=_Vault(max_bytes)
        )
        key = FleetKey.generate()
        store, backoff = MemoryBlobStore(USER), Backoff()
        ctx.services.update(fleet_key=key, blob_store_factory=store.factory, upload_backoff=backoff)
        gateway, _ = add_fake(ctx, GATEWAY)
        job_queue, _ = add_fake(ctx, JOB_QUEUE)
        session, _ = add_fake(ctx, session_name(JOB))
        yield Rig(ctx, key, store, backoff, gateway, job_queue, session, tmp_path / "vault")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A vault with storage, not started yet (`rig.start()`)."""
    yield from make_rig(tmp_path, storage=True)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Rig]:
    """A started vault without a `[storage]` section."""
    for made in make_rig(tmp_path, storage=False):
        made.start()
        yield made


def output(seq: int, data: bytes, *, final: bool = False, job_id: str = JOB) -> OutputProduced:
    return OutputProduced(job_id, seq, T0 + seq, data, final=final)


def write_unfinished(path: Path, key: FleetKey, lines: int = 2) -> None:
    """A log its writer left without a FINAL chunk (the daemon died mid-job)."""
    job_key = key.job_key(JOB)
    with LogWriter(path, JOB) as writer:
        for seq in range(lines):
            flags, sealed = seal(job_key, seq, T0 + seq, b"line\n", final=False)
            writer.append(Record(seq, flags, sealed))


# --- sealing, appending, publishing ----------------------------------------------------------


def test_each_chunk_is_sealed_appended_and_published_as_the_same_bytes(local: Rig) -> None:
    """The published chunk and the stored record are one sealed chunk; plaintext stays out."""
    local.tell(OpenLog(JOB), output(0, b"secret output"), output(1, b"", final=True))
    published = local.wait_published(addresses.output_key(JOB), 2)
    chunks = [wire.decode(p.body) for p in published]
    records = list(read_records(local.path(), job_id=JOB))
    assert [p.message_id for p in published] == [f"{JOB}:o0", f"{JOB}:o1"]
    assert all(isinstance(c, OutputChunk) for c in chunks)
    assert [(r.seq, r.flags, r.sealed) for r in records] == [
        (c.seq, c.flags, c.sealed) for c in chunks if isinstance(c, OutputChunk)
    ]
    assert open_output(local.key.job_key(JOB), 0, records[0].flags, records[0].sealed) == (
        T0,
        b"secret output",
    )
    assert b"secret output" not in local.path().read_bytes()
    assert scan_log(local.path(), job_id=JOB).finished


def test_output_stored_tells_the_session_how_many_bytes_it_no_longer_owes(local: Rig) -> None:
    """Each chunk stored is acknowledged to its PTY Session, with its plaintext size."""
    local.tell(OpenLog(JOB), output(0, b"abc"), output(1, b"defgh"))
    assert local.session.wait_of(OutputStored, 2) == [
        OutputStored(JOB, 0, 3),
        OutputStored(JOB, 1, 5),
    ]


def test_without_storage_a_finished_log_stays_and_no_store_is_made(local: Rig) -> None:
    """With no `[storage]` section the log stays on the device and nothing is uploaded."""
    local.tell(OpenLog(JOB), output(0, b"x", final=True))
    local.session.wait_of(OutputStored)
    assert local.store.made == 0
    assert local.path().exists()
    assert local.published(addresses.log_key(JOB)) == []


def test_replay_sends_the_log_from_a_seq_then_where_it_ended(local: Rig) -> None:
    """Replay gives the stored chunks from `from_seq` to the asker, then ReplayFinished."""
    local.tell(OpenLog(JOB), *(output(seq, b"line %d" % seq) for seq in range(4)))
    local.session.wait_of(OutputStored, 4)
    reply = addresses.reply_key("viewer1", JOB)
    local.tell(Replay(JOB, 2, reply, "corr-1", "running"))
    local.gateway.wait(lambda _: len(local.published(reply)) == 3, what="the replay")
    sent = local.published(reply)
    assert {p.correlation_id for p in sent} == {"corr-1"}
    first, second, done = (wire.decode(p.body) for p in sent)
    assert isinstance(first, OutputChunk)
    assert isinstance(second, OutputChunk)
    assert (first.seq, second.seq) == (2, 3)
    assert done == ReplayFinished(JOB, NODE, 4, "running")


def test_replay_of_a_log_this_device_lacks_says_where_to_start(local: Rig) -> None:
    """A replay of an unknown job still ends with ReplayFinished at the asked seq."""
    reply = addresses.reply_key("viewer1", OTHER)
    local.tell(Replay(OTHER, 5, reply, None, "exited", exit_code=0))
    local.gateway.wait(lambda _: bool(local.published(reply)), what="the replay's end")
    (done,) = [wire.decode(p.body) for p in local.published(reply)]
    assert done == ReplayFinished(OTHER, NODE, 5, "exited", 0)


def test_an_unfinished_log_is_finalised_when_asked(local: Rig) -> None:
    """OpenLog(finalise=True) ends a log its writer left unfinished with a FINAL chunk."""
    local.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_unfinished(local.path(), local.key)
    assert not scan_log(local.path()).finished
    local.tell(OpenLog(JOB, finalise=True))
    wait_for(lambda: scan_log(local.path()).finished, what="the FINAL chunk")
    assert [r.seq for r in read_records(local.path())] == [0, 1, 2]


# --- a disk that fails -------------------------------------------------------------------------


def test_a_log_that_cannot_be_written_is_reported_and_output_still_flows(local: Rig) -> None:
    """An append that fails tells the Job Queue once (LogFailed); chunks are still published."""
    local.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    local.path().mkdir()  # where the log should be, a directory: every open fails
    local.tell(OpenLog(JOB), output(0, b"a"), output(1, b"b"), output(2, b"c", final=True))
    assert len(local.wait_published(addresses.output_key(JOB), 3)) == 3
    (failed,) = local.job_queue.wait_of(LogFailed)
    assert (failed.job_id, failed.seq) == (JOB, 0)
    assert "cannot open the log" in failed.reason
    assert local.job_queue.of(LogFailed) == [failed]  # told once, not per chunk


def test_after_a_failed_job_the_next_job_is_written_again(local: Rig) -> None:
    """A failed log is forgotten when its job ends: another job's log is written as usual."""
    local.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    local.path().mkdir()
    local.tell(
        output(0, b"a", final=True), OpenLog(OTHER), output(0, b"b", final=True, job_id=OTHER)
    )
    wait_for(lambda: local.path(OTHER).exists() and scan_log(local.path(OTHER)).finished)
    assert len(local.job_queue.of(LogFailed)) == 1


def test_an_unexpected_message_is_counted_and_the_vault_goes_on(local: Rig) -> None:
    """A message the vault has no case for is logged and counted, never a crash."""
    before = sample("runlet_unexpected_messages_total", actor=VAULT)
    local.tell("hello", OpenLog(JOB), output(0, b"x"))
    local.session.wait_of(OutputStored)
    assert sample("runlet_unexpected_messages_total", actor=VAULT) == before + 1


# --- uploads -------------------------------------------------------------------------------


def test_a_finished_log_is_uploaded_with_its_hash_and_announced(rig: Rig) -> None:
    """The final upload carries the log's hash; the ledger hears where it is; a marker stays."""
    rig.start()
    rig.tell(OpenLog(JOB), output(0, b"x"), output(1, b"", final=True))
    rig.wait_uploaded()
    digest = hash_file(rig.path())
    stored = rig.store.objects[object_key(USER, NODE, JOB)]
    assert stored.body == rig.path().read_bytes()
    assert stored.metadata["runlet-hash"] == digest
    assert float(stored.metadata["runlet-finished-at"]) == rig.path().stat().st_mtime
    rig.gateway.wait(lambda _: bool(rig.published(addresses.log_key(JOB))), what="LogStored")
    (announced,) = rig.published(addresses.log_key(JOB))
    assert wire.decode(announced.body) == LogStored(JOB, NODE, object_key(USER, NODE, JOB), digest)
    assert (announced.durable, announced.mandatory) == (True, True)
    wait_for(lambda: backlog.uploaded_hash(rig.path()) == digest, what="the upload marker")
    assert rig.store.calls["put_log"] == 1


def test_logs_finished_before_a_restart_are_uploaded_at_start(rig: Rig) -> None:
    """The backlog is the vault folder: a finished log without a marker goes up at start."""
    rig.folder.mkdir(mode=0o700, parents=True)
    write_unfinished(rig.path(), rig.key)
    with LogWriter(rig.path(), JOB) as writer:
        flags, sealed = seal(rig.key.job_key(JOB), 2, T0 + 2, b"", final=True)
        writer.append(Record(2, flags, sealed))
    rig.start()
    rig.wait_uploaded()
    assert rig.store.objects[object_key(USER, NODE, JOB)].body == rig.path().read_bytes()


def test_an_upload_that_fails_is_retried_until_the_store_is_back(rig: Rig) -> None:
    """While the store is down each upload fails and is tried again with growing backoff."""
    rig.start()
    wait_for(lambda: rig.store.bucket_exists, what="the store opened")
    rig.store.down = True
    rig.tell(OpenLog(JOB), output(0, b"x", final=True))
    wait_for(lambda: rig.store.calls["put_log"] >= 3, what="three tries")
    assert not rig.uploaded()
    rig.store.down = False
    rig.wait_uploaded()
    assert rig.backoff.attempts[:2] == [1, 2]
    assert sample("runlet_uploads_total", kind="final", result="failed") >= 2


def test_a_store_unreachable_at_start_is_opened_again(rig: Rig) -> None:
    """A store that cannot be opened yet is tried again; logs wait and go up once it answers."""
    rig.store.down = True
    rig.start()
    rig.tell(OpenLog(JOB), output(0, b"x", final=True))
    wait_for(lambda: rig.store.calls["ensure_bucket"] >= 2, what="a second try to open")
    assert rig.store.calls["put_log"] == 0  # nothing is sent to a store that is not open
    rig.store.down = False
    rig.wait_uploaded()
    assert rig.store.made == 1  # the same store, opened again


def test_uploads_go_in_the_order_the_jobs_ended(rig: Rig) -> None:
    """Two finished logs are both uploaded, in the order their jobs ended."""
    rig.start()
    wait_for(lambda: rig.store.bucket_exists, what="the store opened")
    rig.tell(OpenLog(OTHER), OpenLog(JOB))
    rig.tell(output(0, b"x", final=True), output(0, b"y", final=True, job_id=OTHER))
    rig.wait_uploaded(JOB)
    rig.wait_uploaded(OTHER)
    assert rig.store.calls["put_log"] == 2
    logs = [key for key in rig.store.objects if key.endswith(".rlog")]
    assert logs == [object_key(USER, NODE, JOB), object_key(USER, NODE, OTHER)]


def test_a_checkpoint_uploads_what_a_running_job_wrote_so_far(rig: Rig) -> None:
    """CheckpointTick sends running jobs' logs as not final; the final upload replaces it."""
    rig.start()
    wait_for(lambda: rig.store.bucket_exists, what="the store opened")
    rig.tell(OpenLog(JOB), output(0, b"so far"))
    rig.session.wait_of(OutputStored)
    rig.tell(CheckpointTick())
    key = object_key(USER, NODE, JOB)
    wait_for(lambda: key in rig.store.objects, what="the checkpoint")
    checkpoint = rig.store.objects[key]
    assert checkpoint.metadata["runlet-final"] == "0"
    assert "runlet-finished-at" not in checkpoint.metadata
    assert backlog.uploaded_hash(rig.path()) is None  # a checkpoint is no upload of the log
    rig.tell(output(1, b"", final=True))
    rig.wait_uploaded()
    assert len(rig.store.objects[key].body) > len(checkpoint.body)


def test_the_store_is_closed_when_the_vault_stops(rig: Rig) -> None:
    """Stopping the vault closes its store (on the loop, waited for)."""
    rig.start()
    wait_for(lambda: rig.store.bucket_exists, what="the store opened")
    rig.ref.stop(block=True)
    assert rig.store.calls["close"] == 1


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Rig]:
    """A vault with storage whose `[vault] max_bytes` any log is over, not started yet."""
    yield from make_rig(tmp_path, storage=True, max_bytes=1)


def test_a_log_is_evicted_only_once_uploaded_even_across_a_restart(small: Rig) -> None:
    """Past `max_bytes` an uploaded log goes; one whose upload fails stays, a restart too."""
    small.start()
    wait_for(lambda: small.store.bucket_exists, what="the store opened")
    small.tell(OpenLog(JOB), output(0, b"x", final=True))
    small.wait_uploaded()
    wait_for(lambda: not small.path().exists(), what="the uploaded log evicted")
    small.store.down = True
    small.tell(OpenLog(OTHER), output(0, b"y", final=True, job_id=OTHER))
    wait_for(lambda: small.store.calls["put_log"] >= 3, what="the upload tried and failed")
    small.ref.stop(block=True)
    tries = small.store.calls["ensure_bucket"]
    small.start()  # the daemon restarted: its start looks at the vault folder again
    wait_for(lambda: small.store.calls["ensure_bucket"] > tries, what="the new vault started")
    reply = addresses.reply_key("viewer1", OTHER)
    small.tell(Replay(OTHER, 0, reply, None, "exited", exit_code=0))  # handled after its start
    chunk, done = (wire.decode(p.body) for p in small.wait_published(reply, 2))
    assert isinstance(chunk, OutputChunk)  # still there to replay: not evicted
    assert done == ReplayFinished(OTHER, NODE, 1, "exited", 0)
    assert small.path(OTHER).exists()
    small.store.down = False
    small.wait_uploaded(OTHER)
    wait_for(lambda: not small.path(OTHER).exists(), what="the log evicted once uploaded")
    assert small.store.made == 2
