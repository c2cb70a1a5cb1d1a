"""The Sync Reconciler's rule: which copy of a log is read, and when one is fetched."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Coroutine
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import pytest

from actors.sync_reconciler import (
    Decision,
    LocalLog,
    decide,
    local_log,
    reconcile,
    remote_is_newer,
)
from runlet.adapters.blobstore import RemoteLog, hash_file
from runlet.adapters.logfile import LogWriter, Record, seal_output
from runlet.errors import BlobStoreUnavailable, JobNotFound, StorageError
from runlet.protocol.crypto import FleetKey

T = TypeVar("T")
JOB = "0123456789abcdef0123456789abcdef"
NODE = "edge-1"
T0 = 1_700_000_000.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def limited() -> T:
        async with asyncio.timeout(10):
            return await coro

    return asyncio.run(limited())


def write_log(path: Path, lines: int = 3, *, final: bool = True, mtime: float = T0) -> bytes:
    """A real sealed log (a fresh key each time, so two logs never share bytes)."""
    key = FleetKey.generate().job_key(JOB)
    with LogWriter(path, JOB) as writer:
        for seq in range(lines):
            last = final and seq == lines - 1
            flags, sealed = seal_output(key, seq, T0 + seq, b"line\n", final=last)
            writer.append(Record(seq, flags, sealed))
    set_mtime(path, mtime)
    return path.read_bytes()


def set_mtime(path: Path, when: float) -> None:
    ns = round(Fraction(when) * 1_000_000_000)  # exact, so st_mtime_ns gives `when` back
    os.utime(path, ns=(ns, ns))


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def local(hash: str = "a" * 64, *, at: float = T0, final: bool = True) -> LocalLog:
    return LocalLog(path=Path("/vault/x.rlog"), hash=hash, finished_at=at, final=final)


def remote(
    hash: str = "b" * 64,
    *,
    at: float | None = T0,
    final: bool = True,
    modified: float = T0 + 5,
) -> RemoteLog:
    return RemoteLog(
        key=f"u/{NODE}/{JOB}.rlog",
        size=100,
        hash=hash,
        finished_at=at,
        final=final,
        last_modified=modified,
    )


# --- decide --------------------------------------------------------------------------------


def test_no_copy_anywhere_is_missing() -> None:
    """Neither a local nor a remote copy: MISSING."""
    assert decide(None, None) is Decision.MISSING


def test_only_a_remote_copy_is_fetched() -> None:
    """No local copy: FETCH the remote one."""
    assert decide(None, remote()) is Decision.FETCH


def test_only_a_local_copy_is_read() -> None:
    """No remote copy: read the local one."""
    assert decide(local(), None) is Decision.LOCAL


@pytest.mark.parametrize(
    "other",
    [
        remote("a" * 64, at=T0 + 100),
        remote("a" * 64, at=T0 - 100),
        remote("a" * 64, at=None, final=False),
    ],
    ids=["remote-later", "remote-earlier", "remote-checkpoint"],
)
def test_same_hash_reads_the_local_copy(other: RemoteLog) -> None:
    """Equal hashes mean the same bytes: SAME, whatever the times say."""
    assert decide(local("a" * 64), other) is Decision.SAME


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [
        (local(at=T0), remote(at=T0 + 1), Decision.REPLACE),
        (local(at=T0), remote(at=T0 - 1), Decision.KEEP_LOCAL_NEWER),
        (local(at=T0), remote(at=T0), Decision.KEEP_LOCAL_NEWER),
        (local(at=T0, final=False), remote(at=T0 - 60), Decision.REPLACE),
        (local(at=T0), remote(at=None, final=False, modified=T0 + 60), Decision.KEEP_LOCAL_NEWER),
        (
            local(at=T0, final=False),
            remote(at=None, final=False, modified=T0 + 1),
            Decision.REPLACE,
        ),
        (
            local(at=T0, final=False),
            remote(at=None, final=False, modified=T0 - 1),
            Decision.KEEP_LOCAL_NEWER,
        ),
        (local(at=T0, final=False), remote(at=T0 + 1, final=False), Decision.REPLACE),
    ],
    ids=[
        "remote-finished-later",
        "remote-finished-earlier",
        "tie-keeps-local",
        "final-remote-beats-unfinished-local-even-if-older",
        "remote-checkpoint-never-beats-final-local",
        "later-checkpoint-beats-local-checkpoint",
        "earlier-checkpoint-loses-to-local-checkpoint",
        "finish-time-wins-over-upload-time",
    ],
)
def test_differing_copies(mine: LocalLog, theirs: RemoteLog, expected: Decision) -> None:
    """Different hashes: REPLACE only when the remote copy is newer, else keep the local one."""
    assert decide(mine, theirs) is expected


def test_remote_without_a_hash_is_compared_by_time() -> None:
    """A remote object with no valid runlet-hash never counts as the same copy."""
    assert decide(local(), remote("", at=T0 + 1)) is Decision.REPLACE
    assert not remote_is_newer(local(), remote("", at=T0 - 1))


# --- local_log -----------------------------------------------------------------------------


def test_local_log_of_a_missing_file_is_none(tmp_path: Path) -> None:
    """No file: no local copy."""
    assert local_log(tmp_path / "nope.rlog") is None


def test_local_log_of_a_final_log(tmp_path: Path) -> None:
    """A finished log: its hash, its mtime as finish time, and final."""
    path = tmp_path / "a.rlog"
    data = write_log(path, mtime=T0 + 0.25)
    assert local_log(path) == LocalLog(
        path=path, hash=digest(data), finished_at=T0 + 0.25, final=True
    )


def test_local_log_of_an_unfinished_log(tmp_path: Path) -> None:
    """A log without its FINAL record is not final."""
    path = tmp_path / "a.rlog"
    write_log(path, final=False)
    found = local_log(path)
    assert found is not None
    assert not found.final


def test_local_log_with_bytes_after_final_is_not_final(tmp_path: Path) -> None:
    """A damaged log is never final, even if a FINAL record is in it."""
    path = tmp_path / "a.rlog"
    write_log(path)
    with path.open("ab") as f:
        f.write(b"\x00\x00\x00\x30junk")
    found = local_log(path)
    assert found is not None
    assert not found.final


@pytest.mark.parametrize("content", [b"", b"not a runlet log at all"])
def test_local_file_that_is_no_log_is_an_unfinished_copy(tmp_path: Path, content: bytes) -> None:
    """An empty or foreign file is a copy that is not final, so a final remote one replaces it."""
    path = tmp_path / "a.rlog"
    path.write_bytes(content)
    found = local_log(path)
    assert found is not None
    assert (found.hash, found.final) == (digest(content), False)


def test_local_log_that_cannot_be_read_is_a_storage_error(tmp_path: Path) -> None:
    """A folder where the log should be is a StorageError, not a missing copy."""
    (tmp_path / "a.rlog").mkdir()
    with pytest.raises(StorageError):
        local_log(tmp_path / "a.rlog")


def test_hash_file_is_blake2b_256_of_the_bytes(tmp_path: Path) -> None:
    """hash_file gives the hex BLAKE2b-256 of the whole file, across chunk boundaries."""
    path = tmp_path / "big"
    data = os.urandom(200_000)
    path.write_bytes(data)
    assert hash_file(path) == digest(data)


# --- reconcile with a fake store -----------------------------------------------------------


@dataclass
class FakeStore:
    """Duck-types the BlobStore methods the reconciler calls; records what it was asked."""

    content: bytes | None = None  # the remote log's bytes, None for no remote copy
    finished_at: float | None = T0
    final: bool = True
    index: dict[str, str] = field(default_factory=dict)
    fail: bool = False
    calls: list[str] = field(default_factory=list)

    def _remote(self) -> RemoteLog | None:
        if self.content is None:
            return None
        return RemoteLog(
            key=f"u/{NODE}/{JOB}.rlog",
            size=len(self.content),
            hash=digest(self.content),
            finished_at=self.finished_at,
            final=self.final,
            last_modified=T0 + 1,
        )

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.fail:
            raise BlobStoreUnavailable("the fake store is down")

    async def find_node(self, job_id: str) -> str | None:
        self._check("find_node")
        return self.index.get(job_id)

    async def head_log(self, node: str, job_id: str) -> RemoteLog | None:
        self._check("head_log")
        return self._remote()

    async def get_log(
        self,
        node: str,
        job_id: str,
        dest: Path,
        *,
        progress: Any = None,
    ) -> RemoteLog:
        self._check("get_log")
        found = self._remote()
        assert found is not None
        assert self.content is not None
        deliver(dest, self.content)
        if progress is not None:
            progress(len(self.content), len(self.content))
        return found


def deliver(dest: Path, content: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(content)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "vault" / f"{JOB}.rlog"


def test_reconcile_fetches_when_there_is_no_local_copy(path: Path, tmp_path: Path) -> None:
    """FETCH: the remote copy is downloaded to the local path, with progress."""
    remote_bytes = write_log(tmp_path / "remote.rlog")
    store = FakeStore(remote_bytes)
    seen: list[tuple[int, int]] = []
    progress = lambda done, total: seen.append((done, total))  # noqa: E731
    assert run(reconcile(store, NODE, JOB, path, progress=progress)) == (path, Decision.FETCH)
    assert path.read_bytes() == remote_bytes
    assert seen == [(len(remote_bytes), len(remote_bytes))]


def test_reconcile_reads_the_same_copy_without_download(path: Path) -> None:
    """SAME: equal hashes, nothing is downloaded."""
    data = write_log(path)
    store = FakeStore(data, finished_at=T0 + 1000)
    assert run(reconcile(store, NODE, JOB, path)) == (path, Decision.SAME)
    assert store.calls == ["head_log"]


def test_reconcile_replaces_an_older_different_copy(path: Path, tmp_path: Path) -> None:
    """REPLACE: different and the remote one finished later, so it is downloaded over."""
    write_log(path, mtime=T0)
    newer = write_log(tmp_path / "remote.rlog")
    store = FakeStore(newer, finished_at=T0 + 10)
    assert run(reconcile(store, NODE, JOB, path)) == (path, Decision.REPLACE)
    assert path.read_bytes() == newer


def test_reconcile_keeps_a_newer_different_local_copy(path: Path, tmp_path: Path) -> None:
    """KEEP_LOCAL_NEWER: different but the remote one is older; the local copy stays."""
    mine = write_log(path, mtime=T0 + 10)
    store = FakeStore(write_log(tmp_path / "remote.rlog"), finished_at=T0)
    assert run(reconcile(store, NODE, JOB, path)) == (path, Decision.KEEP_LOCAL_NEWER)
    assert path.read_bytes() == mine
    assert "get_log" not in store.calls


def test_reconcile_replaces_a_crashed_local_checkpoint(path: Path, tmp_path: Path) -> None:
    """An unfinished local log is replaced by a final remote one, even one finished earlier."""
    write_log(path, final=False, mtime=T0 + 100)
    final = write_log(tmp_path / "remote.rlog")
    store = FakeStore(final, finished_at=T0)
    assert run(reconcile(store, NODE, JOB, path)) == (path, Decision.REPLACE)
    assert path.read_bytes() == final


@pytest.mark.parametrize("with_store", [True, False])
def test_reconcile_reads_local_when_there_is_no_remote_copy(path: Path, with_store: bool) -> None:
    """LOCAL: no remote copy, or no store configured at all."""
    data = write_log(path)
    store = FakeStore(None) if with_store else None
    assert run(reconcile(store, NODE, JOB, path)) == (path, Decision.LOCAL)
    assert path.read_bytes() == data


@pytest.mark.parametrize("with_store", [True, False])
def test_reconcile_without_any_copy_is_job_not_found(path: Path, with_store: bool) -> None:
    """MISSING: JobNotFound naming the job, and no file is created."""
    store = FakeStore(None) if with_store else None
    with pytest.raises(JobNotFound) as info:
        run(reconcile(store, NODE, JOB, path))
    assert info.value.job_id == JOB
    assert not path.exists()


def test_reconcile_finds_the_node_through_the_index(path: Path, tmp_path: Path) -> None:
    """Without a node, the store's index names it and the log is fetched."""
    store = FakeStore(write_log(tmp_path / "remote.rlog"), index={JOB: NODE})
    assert run(reconcile(store, None, JOB, path)) == (path, Decision.FETCH)
    assert store.calls == ["find_node", "head_log", "get_log"]


def test_reconcile_without_node_or_index_entry(path: Path) -> None:
    """No node and no index entry: the local copy if any, else JobNotFound."""
    store = FakeStore(b"unused")
    with pytest.raises(JobNotFound):
        run(reconcile(store, None, JOB, path))
    write_log(path)
    assert run(reconcile(store, None, JOB, path)) == (path, Decision.LOCAL)
    assert "head_log" not in store.calls


def test_unreachable_store_reads_the_local_copy_unchecked(path: Path) -> None:
    """UNCHECKED: the store is down but a local copy exists, so that copy is read as is."""
    data = write_log(path)
    store = FakeStore(b"other", fail=True)
    assert run(reconcile(store, NODE, JOB, path)) == (path, Decision.UNCHECKED)
    assert path.read_bytes() == data


def test_unreachable_store_without_local_copy_raises(path: Path) -> None:
    """With no local copy to fall back on, the store's failure is the caller's to retry."""
    with pytest.raises(BlobStoreUnavailable):
        run(reconcile(FakeStore(b"x", fail=True), NODE, JOB, path))
