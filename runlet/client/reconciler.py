"""The Sync Reconciler: which copy of a job's log to read, the local or the remote one.

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
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from runlet.adapters.blobstore import RemoteLog, hash_file
from runlet.adapters.logfile import scan_log
from runlet.errors import BlobStoreUnavailable, JobNotFound, StorageError

__all__ = ["Decision", "LocalLog", "LogStore", "decide", "local_log", "reconcile"]

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]


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


def remote_time(remote: RemoteLog) -> float:
    """When the remote log was finished, or last uploaded if it is a checkpoint."""
    return remote.finished_at if remote.finished_at is not None else remote.last_modified


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
