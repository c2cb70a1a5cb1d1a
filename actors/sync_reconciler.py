"""The Sync Reconciler: which copy of a job's log to read, the local or the remote one.

The actor (`SyncReconciler`, named `runtime.names.RECONCILER`) runs in every process that reads
logs: the daemon and the reader root behind `runlet logs`. Asked `ReadLog`, it applies the
rule below on the I/O loop with its process's blob store and answers `LogRead`; it reads one
job's log at a time (a second ask for the same job waits for the first, then finds the copy
in place), different jobs at once.

The rule (DESIGN.md §6, the paper's):

1. no local copy → fetch the remote copy and read that;
2. a local copy → compare its hash with the remote copy's metadata hash; replace the local
   copy only if they differ **and** the remote copy is newer; otherwise read the local copy.

"Newer", exactly (`remote_is_newer`):

- a remote log that is final (its last record is FINAL) beats a local one that is not: the
  local copy is a checkpoint or a log its writer left unfinished when it crashed;
- a remote log that is not final never beats a local one that is: it is a checkpoint from
  before the job ended whose final upload has not happened yet;
- otherwise the remote copy's time beats the local one's if it is strictly later. The remote
  time is its ``runlet-finished-at`` metadata, or, for a checkpoint (which has none), the
  object's Last-Modified time. The local time is the file's mtime: the vault's writer last
  touches a log when the job ends, and `BlobStore.get_log` sets a fetched copy's mtime to the
  remote time, so the same log compares equal on every device. A tie keeps the local copy.

The rest: no remote copy (or no store configured) and a local one → read the local one; no
copy anywhere → `JobNotFound`. If the store cannot be reached but a local copy exists, that
copy is read unchecked (`Decision.UNCHECKED`) rather than failing the read.

This module never decrypts and never deletes a log; a replaced local copy is swapped in
whole by the store's download, or left as it was.

Its seam, in `ctx.services`: `blob_store_factory` (default `runlet.adapters.blobstore.BlobStore`;
a test passes a `runlet.testing.MemoryBlobStore`'s `factory`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from runlet.adapters.blob_port import BlobStorePort, Progress, RemoteLog, hash_file, remote_time
from runlet.adapters.blobstore import BlobStore
from runlet.adapters.logfile import scan_log
from runlet.config import StorageConfig
from runlet.errors import BlobStoreUnavailable, ClosedError, JobNotFound, RunletError, StorageError
from runlet.runtime.actor import Actor, Context
from runlet.runtime.local_messages import LogRead, ReadLog
from runlet.runtime.names import RECONCILER

__all__ = [
    "Decision",
    "LocalLog",
    "LogStore",
    "SyncReconciler",
    "decide",
    "local_log",
    "reconcile",
    "remote_is_newer",
]

log = structlog.get_logger(__name__)


class Decision(enum.StrEnum):
    """What the reconciler did, or would do, about one job's log."""

    FETCH = "fetch"  # no local copy: download the remote one
    LOCAL = "local"  # no remote copy: read the local one
    REPLACE = "replace"  # they differ and the remote one is newer: download over the local one
    KEEP_LOCAL_NEWER = "keep-local-newer"  # they differ but the remote one is not newer
    SAME = "same"  # same hash: read the local one
    MISSING = "missing"  # no copy anywhere
    UNCHECKED = "unchecked"  # the store could not be reached: read the local one as it is


@dataclass(frozen=True, slots=True)
class LocalLog:
    """What the reconciler needs to know about the local copy."""

    path: Path
    hash: str
    finished_at: float  # the file's mtime
    final: bool  # its last readable record is FINAL and nothing is damaged


class LogStore(Protocol):
    """The part of `BlobStore` the reconciler uses (so tests can pass a fake)."""

    async def find_node(self, job_id: str) -> str | None: ...

    async def head_log(self, node: str, job_id: str) -> RemoteLog | None: ...

    async def get_log(
        self, node: str, job_id: str, dest: Path, *, progress: Progress | None = None
    ) -> RemoteLog: ...


def local_log(path: Path) -> LocalLog | None:
    """Describe the local copy at `path`, or None when there is none.

    A file that is not a readable runlet log (empty, bad header) counts as a copy that is not
    final, so a final remote copy replaces it; one that cannot be read at all raises
    StorageError.
    """
    try:
        mtime = os.stat(path).st_mtime_ns / 1_000_000_000  # int / int rounds once
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot look at the log {path}: {exc.strerror or exc}") from exc
    digest = hash_file(path)
    try:
        scan = scan_log(path)
    except StorageError:
        final = False
    else:
        final = scan.finished and scan.intact
    return LocalLog(path=path, hash=digest, finished_at=mtime, final=final)


def remote_is_newer(local: LocalLog, remote: RemoteLog) -> bool:
    """The module docstring's definition of "newer"."""
    if remote.final != local.final:
        return remote.final
    return remote_time(remote) > local.finished_at


def decide(local: LocalLog | None, remote: RemoteLog | None) -> Decision:
    """Apply the rule to what is known about the two copies."""
    if local is None:
        return Decision.MISSING if remote is None else Decision.FETCH
    if remote is None:
        return Decision.LOCAL
    if remote.hash == local.hash:
        return Decision.SAME
    return Decision.REPLACE if remote_is_newer(local, remote) else Decision.KEEP_LOCAL_NEWER


async def reconcile(
    store: LogStore | None,
    node: str | None,
    job_id: str,
    local_path: Path,
    *,
    progress: Progress | None = None,
) -> tuple[Path, Decision]:
    """Make `local_path` the copy to read and say why; downloads on FETCH and REPLACE.

    `node` is where the job ran, if known; otherwise the store's index is asked. Raises
    JobNotFound when no copy exists, and BlobStoreUnavailable when the store fails and there
    is no local copy to fall back on.
    """
    local = await asyncio.to_thread(local_log, local_path)
    try:
        remote, node = await _find_remote(store, node, job_id)
        decision = decide(local, remote)
        fetch = decision in (Decision.FETCH, Decision.REPLACE)
        if fetch and store is not None and node is not None:
            await store.get_log(node, job_id, local_path, progress=progress)
    except BlobStoreUnavailable as exc:
        if local is None:
            raise
        log.warning("log_read_unchecked", job=job_id, error=str(exc))
        return local_path, Decision.UNCHECKED
    if decision is Decision.MISSING:
        raise JobNotFound(f"no log of job {job_id} here or in the store", job_id=job_id)
    log.debug("log_reconciled", job=job_id, node=node, decision=str(decision))
    return local_path, decision


async def _find_remote(
    store: LogStore | None, node: str | None, job_id: str
) -> tuple[RemoteLog | None, str | None]:
    if store is None:
        return None, node
    if node is None:
        node = await store.find_node(job_id)
        if node is None:
            return None, None
    return await store.head_log(node, job_id), node


# --- the actor ---------------------------------------------------------------------------------


class SyncReconciler(Actor):
    """Answers `ReadLog` by the rule, with this process's blob store (none without `[storage]`)."""

    def __init__(self, ctx: Context, name: str = RECONCILER) -> None:
        super().__init__(ctx, name)
        self.storage: StorageConfig | None = getattr(ctx.settings, "storage", None)
        self.make_store = ctx.services.get("blob_store_factory", BlobStore)
        self.store: BlobStorePort | None = None
        self.asks: dict[str, deque[ReadLog]] = {}  # by job: the one being read first

    def started(self) -> None:
        if self.storage is not None:
            self.store = self.make_store(self.storage, self.ctx.settings.user)

    def on_stop(self) -> None:
        for asks in self.asks.values():
            for ask in asks:
                _answer(ask, LogRead(ask.job_id, ask.path, error=ClosedError("no log reader")))
        self.asks.clear()
        if self.store is not None and not self.ctx.loop.closed:
            try:
                self.ctx.loop.run_sync(self.store.close(), 5)
            except (concurrent.futures.TimeoutError, RunletError):
                self.log.warning("store_close_timed_out")

    def handle(self, message: object) -> None:
        match message:
            case ReadLog(job_id=job_id):
                asks = self.asks.setdefault(job_id, deque())
                asks.append(message)
                if len(asks) == 1:
                    self._read(message)
            case LogRead(job_id=job_id) if self.asks.get(job_id):
                asks = self.asks[job_id]
                _answer(asks.popleft(), message)
                if asks:
                    self._read(asks[0])
                else:
                    del self.asks[job_id]
            case _:
                self.unexpected(message)

    def _read(self, ask: ReadLog) -> None:
        ref = self.actor_ref

        def done(future: concurrent.futures.Future[LogRead]) -> None:
            try:
                answer = future.result()
            except concurrent.futures.CancelledError:  # the loop is closing
                answer = LogRead(ask.job_id, ask.path, error=ClosedError("the read was cancelled"))
            except Exception as exc:  # noqa: BLE001 - every failure is the asker's to see
                answer = LogRead(ask.job_id, ask.path, error=exc)
            _tell(ref, answer)

        try:
            self.ctx.loop.submit(_read(self.store, ask), done)
        except ClosedError as exc:
            _tell(ref, LogRead(ask.job_id, ask.path, error=exc))


async def _read(store: BlobStorePort | None, ask: ReadLog) -> LogRead:
    if store is not None:
        await store.open()
    path, decision = await reconcile(store, ask.node, ask.job_id, ask.path, progress=ask.progress)
    found = await asyncio.to_thread(local_log, path)
    return LogRead(ask.job_id, path, str(decision), final=found is not None and found.final)


def _answer(ask: ReadLog, answer: LogRead) -> None:
    try:
        ask.reply(answer)
    except Exception:  # a reply that fails must not take the reconciler down
        log.exception("log_reply_failed", job=ask.job_id)


def _tell(ref: Any, message: object) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - the reconciler stopped meanwhile; it answered on stop
        return
