"""The Sync Reconciler actor, through its mailbox, on the in-memory blob store: no network.

Its rule has tests of its own (test_reconciler); here the actor answers `ReadLog` with the
copy to read and the rule's decision, or the error that left none; reads one job's log at a
time; works without a store; answers what is still waiting when it stops. The reader root
(runlet.roots.reader), which `runlet logs` uses, is checked at the end.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pykka
import pytest

from actors.sync_reconciler import SyncReconciler
from runlet.adapters.blob_port import RemoteLog
from runlet.adapters.logfile import LogWriter, Record, seal_output
from runlet.config import StorageConfig, load_config
from runlet.errors import BlobStoreUnavailable, ClosedError, JobNotFound
from runlet.protocol.crypto import FleetKey
from runlet.roots.reader import Reader
from runlet.runtime.actor import Context
from runlet.runtime.local_messages import LogRead, ReadLog
from runlet.runtime.names import RECONCILER
from runlet.testing import MemoryBlobStore
from tests.unit.fakes import DEADLINE, Inbox, running_context, sample, wait_for

USER = "alice"
NODE = "edge-1"
JOB = "0123456789abcdef0123456789abcdef"
T0 = 1_700_000_000.0


@dataclass(frozen=True)
class _Settings:
    """The fields of `runlet.config.Config` the reconciler reads."""

    data_dir: Path
    node: str = "laptop"
    user: str = USER
    storage: StorageConfig | None = None


def write_log(path: Path, *, final: bool = True) -> bytes:
    """A real sealed log of JOB (a fresh key each time, so two logs never share bytes)."""
    key = FleetKey.generate().job_key(JOB)
    with LogWriter(path, JOB) as writer:
        for seq in range(3):
            flags, sealed = seal_output(key, seq, T0 + seq, b"line\n", final=final and seq == 2)
            writer.append(Record(seq, flags, sealed))
    return path.read_bytes()


class GatedStore(MemoryBlobStore):
    """A memory store whose `head_log` waits until the test opens the gate."""

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.entered = threading.Event()
        self.gate = threading.Event()

    async def head_log(self, node: str, job_id: str) -> RemoteLog | None:
        self.entered.set()
        await asyncio.to_thread(self.gate.wait, DEADLINE)  # off the loop: it closes the store
        return await super().head_log(node, job_id)


@dataclass
class Rig:
    """A started reconciler on a memory store (or none), with a recorder for its answers."""

    ctx: Context
    store: MemoryBlobStore
    ref: pykka.ActorRef[SyncReconciler]
    answers: Inbox
    folder: Path

    def ask(self, path: Path | None = None, *, node: str | None = NODE) -> None:
        ask = ReadLog(JOB, path or self.local, self.answers.put, node=node)
        assert self.ctx.router.tell(RECONCILER, ask)

    def answer(self, count: int = 1) -> LogRead:
        return self.answers.wait_of(LogRead, count)[count - 1]

    @property
    def local(self) -> Path:
        return self.folder / "logs" / f"{JOB}.rlog"

    def upload(self, *, final: bool = True) -> bytes:
        """Put a log of JOB from NODE into the store, as that node's vault would."""
        source = self.folder / "node-vault" / f"{JOB}.rlog"
        data = write_log(source, final=final)

        async def put() -> None:
            async with self.store.another() as node_store:
                finished = T0 + 10 if final else None
                await node_store.put_log(NODE, JOB, source, finished_at=finished, final=final)

        asyncio.run(put())
        return data


def make_rig(
    tmp_path: Path, *, storage: bool = True, store: MemoryBlobStore | None = None
) -> Iterator[Rig]:
    with running_context(tmp_path) as ctx:
        config = StorageConfig(bucket="runlet-logs") if storage else None
        ctx.settings = _Settings(data_dir=tmp_path, storage=config)
        store = store or MemoryBlobStore(USER)
        store.bucket_exists = True
        ctx.services["blob_store_factory"] = store.factory
        ref = SyncReconciler.start(ctx)
        wait_for(lambda: ctx.router.has(RECONCILER), what="the reconciler registered")
        yield Rig(ctx, store, ref, Inbox(), tmp_path)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(tmp_path)


def test_a_log_this_device_lacks_is_fetched(rig: Rig) -> None:
    """No local copy: the remote one is downloaded and read (rule 1)."""
    remote = rig.upload()
    rig.ask()
    answer = rig.answer()
    assert (answer.path, answer.decision, answer.final, answer.error) == (
        rig.local,
        "fetch",
        True,
        None,
    )
    assert rig.local.read_bytes() == remote


def test_without_a_node_the_index_finds_it(rig: Rig) -> None:
    """Where the job ran need not be known: the store's index names the node."""
    rig.upload()
    rig.ask(node=None)
    assert rig.answer().decision == "fetch"
    assert rig.store.calls["find_node"] == 1


def test_the_same_copy_is_read_without_a_download(rig: Rig) -> None:
    """Equal hashes: the local copy is read and nothing is fetched (rule 2)."""
    rig.local.parent.mkdir(parents=True)
    rig.local.write_bytes(rig.upload())
    rig.ask()
    assert rig.answer().decision == "same"
    assert rig.store.calls["get_log"] == 0


def test_a_remote_checkpoint_is_fetched_but_not_final(rig: Rig) -> None:
    """Only a checkpoint in the store: it is fetched, and said not to be a finished log."""
    rig.upload(final=False)
    rig.ask()
    answer = rig.answer()
    assert (answer.decision, answer.final) == ("fetch", False)


def test_no_copy_anywhere_is_job_not_found(rig: Rig) -> None:
    """Neither a local nor a remote copy: the answer carries JobNotFound naming the job."""
    rig.ask()
    error = rig.answer().error
    assert isinstance(error, JobNotFound)
    assert error.job_id == JOB
    assert not rig.local.exists()


def test_a_store_that_is_down_leaves_the_local_copy_unchecked(rig: Rig) -> None:
    """With the store down a local copy is read unchecked; with none, the failure is told."""
    rig.store.down = True
    rig.ask()
    assert isinstance(rig.answer().error, BlobStoreUnavailable)
    rig.local.parent.mkdir(parents=True)
    write_log(rig.local)
    rig.ask()
    answer = rig.answer(2)
    assert (answer.decision, answer.final, answer.error) == ("unchecked", True, None)


def test_asks_for_one_job_are_read_one_after_the_other(rig: Rig) -> None:
    """Two asks at once: the first fetches, the second then finds that copy in place."""
    rig.upload()
    rig.ask()
    rig.ask()
    first, second = rig.answers.wait_of(LogRead, 2)
    assert (first.decision, second.decision) == ("fetch", "same")
    assert rig.store.calls["get_log"] == 1


def test_an_unexpected_message_is_counted_and_the_reconciler_goes_on(rig: Rig) -> None:
    """A message it has no case for (an answer nobody asked for too) is counted, not a crash."""
    before = sample("runlet_unexpected_messages_total", actor=RECONCILER)
    assert rig.ctx.router.tell(RECONCILER, "hello")
    assert rig.ctx.router.tell(RECONCILER, LogRead(JOB, rig.local, "same"))
    rig.ask()
    assert isinstance(rig.answer().error, JobNotFound)
    assert sample("runlet_unexpected_messages_total", actor=RECONCILER) == before + 2


def test_without_storage_the_local_copy_is_read_and_no_store_made(tmp_path: Path) -> None:
    """No `[storage]`: the local copy is the one (LOCAL), or there is none (JobNotFound)."""
    for local in make_rig(tmp_path, storage=False):
        local.ask()
        assert isinstance(local.answer().error, JobNotFound)
        local.local.parent.mkdir(parents=True)
        write_log(local.local, final=False)
        local.ask()
        answer = local.answer(2)
        assert (answer.decision, answer.final) == ("local", False)
        assert local.store.made == 0


def test_stopping_answers_what_waits_and_closes_the_store(tmp_path: Path) -> None:
    """Asks still waiting when the reconciler stops are answered ClosedError; the store closes."""
    gated = GatedStore(USER)
    for rig in make_rig(tmp_path, store=gated):
        rig.ask()
        assert gated.entered.wait(DEADLINE)
        rig.ask()  # waits behind the first
        rig.ref.stop(block=True, timeout=DEADLINE)
        answers = rig.answers.wait_of(LogRead, 2)
        assert all(isinstance(a.error, ClosedError) for a in answers)
        assert gated.calls["close"] == 1
        gated.gate.set()


# --- the reader root ---------------------------------------------------------------------------


def reader_config(folder: Path) -> Path:
    path = folder / "runlet.toml"
    path.write_text(
        f'role = "client"\nuser = "{USER}"\nnode = "laptop"\ndata_dir = "{folder / "data"}"\n'
        f'[crypto]\nkey_file = "{folder / "fleet.key"}"\n'
        '[storage]\nbucket = "runlet-logs"\nendpoint_url = "http://127.0.0.1:9"\n',
        encoding="utf-8",
    )
    return path


def test_the_reader_root_asks_its_reconciler_and_raises_what_it_met(tmp_path: Path) -> None:
    """`Reader.read` gives (path, decision, final) from the actor, raises its errors, and
    refuses once stopped."""
    store = MemoryBlobStore(USER)
    store.bucket_exists = True
    config = load_config(reader_config(tmp_path), env={})
    local = tmp_path / "data" / "logs" / f"{JOB}.rlog"
    with Reader(config, {"blob_store_factory": store.factory}) as reader:
        with pytest.raises(JobNotFound):
            asyncio.run(reader.read(JOB, local))
        local.parent.mkdir(parents=True)
        write_log(local)
        assert asyncio.run(reader.read(JOB, local, node=NODE)) == (local, "local", True)
    assert store.calls["close"] == 1
    with pytest.raises(ClosedError):
        asyncio.run(reader.read(JOB, local))
