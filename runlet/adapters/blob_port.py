"""What the rest of Runlet needs of a blob store: the port the S3 adapter fills.

`BlobStore` (runlet.adapters.blobstore) is the real one; `runlet.testing.MemoryBlobStore`
keeps the same contract in memory, for unit tests of the Log Vault and the Sync Reconciler.
Both describe a log with `RemoteLog`, name objects with `object_key` and `index_key`, hash
with `hash_file` and take the arguments of an upload through `check_upload`, so a value one
refuses the other refuses too. tests/blob_contract.py holds the assertions both pass.

Layout in the bucket (DESIGN.md §6)::

    <user>/<node>/<job>.rlog   the sealed log, byte for byte as in the vault, with metadata
                               runlet-hash         hex BLAKE2b-256 of those bytes
                               runlet-finished-at  unix time the job ended (absent while it runs)
                               runlet-final        "1" complete, "0" a checkpoint of a running job
                               runlet-job          the job id
    <user>/by-job/<job>        a tiny object whose body is the node's name, so any device finds
                               a job's log without listing the bucket
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Protocol, Self

from runlet.errors import StorageError
from runlet.protocol import addresses

CHUNK = 1 << 16

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class RemoteLog:
    """A log object as the store describes it (from its metadata)."""

    key: str
    size: int
    hash: str  # "" when the object carries no valid runlet-hash
    finished_at: float | None  # None for a checkpoint of a running job
    final: bool
    last_modified: float  # unix time, whole seconds (S3's resolution)


@dataclass(slots=True)
class Statistics:
    """What the adapter has done, for metrics and tests."""

    uploads: int = 0
    downloads: int = 0
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0
    failures: int = 0


class BlobStorePort(Protocol):
    """One user's logs in one bucket, as the Log Vault and the reconciler use it; one loop.

    Every failure of the store is a `BlobStoreUnavailable` (the caller retries with backoff);
    a call before `open` or after `close` is a `ClosedError`; a log file that cannot be read or
    written here is a `StorageError`.
    """

    stats: Statistics

    @property
    def bucket(self) -> str: ...
    async def open(self) -> None:
        """Make ready for use; opening an open store does nothing, a closed one ClosedError."""

    async def close(self) -> None:
        """Idempotent; calls made afterwards raise ClosedError."""

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc_info: object) -> None: ...
    async def ensure_bucket(self) -> None:
        """Create the bucket if it is missing."""

    async def put_log(
        self, node: str, job_id: str, path: Path, *, hash: str | None = None,
        finished_at: float | None, final: bool,
    ) -> RemoteLog:  # fmt: skip
        """Upload the log at `path` as it is now, then point the job's index at `node`."""

    async def head_log(self, node: str, job_id: str) -> RemoteLog | None:
        """The remote log's description, or None when the store has none."""

    async def find_node(self, job_id: str) -> str | None:
        """The node whose log of `job_id` the store holds, from the job's index object."""

    async def get_log(
        self, node: str, job_id: str, dest: Path, *, progress: Progress | None = None
    ) -> RemoteLog:
        """Download to `dest`, whole or not at all; its mtime becomes the remote time."""


def object_key(user: str, node: str, job_id: str) -> str:
    """Where a job's log lives in the bucket."""
    _check_ids(user, node, job_id)
    return f"{user}/{node}/{job_id}.rlog"


def index_key(user: str, job_id: str) -> str:
    """The object that names the node holding a job's log."""
    _check_ids(user, None, job_id)
    return f"{user}/by-job/{job_id}"


def check_user(user: str) -> None:
    """ValueError unless `user` may own logs in a bucket."""
    if not addresses.valid_name(user):
        raise ValueError(f"not a user name: {user!r}")


def _check_ids(user: str, node: str | None, job_id: str) -> None:
    # Checked here so no id can add a "/" or ".." to a key.
    check_user(user)
    if node is not None and not addresses.valid_name(node):
        raise ValueError(f"not a node name: {node!r}")
    if not addresses.valid_job_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")


def check_upload(finished_at: float | None, final: bool) -> None:
    """ValueError unless (finished_at, final) describe an upload: a final one needs a time."""
    if finished_at is None and final:
        raise ValueError("a final log needs its finish time")
    if finished_at is not None and unix_time(repr(float(finished_at))) is None:
        raise ValueError(f"finished_at must be a unix time, got {finished_at!r}")


def hash_file(path: Path) -> str:
    """Hex BLAKE2b-256 of a file's bytes (the ciphertext), read in chunks."""
    try:
        with open(path, "rb") as f:
            return hash_prefix(f, None)
    except OSError as exc:
        raise StorageError(f"cannot hash {path}: {exc.strerror or exc}") from exc


def hash_prefix(f: BinaryIO, size: int | None) -> str:
    """Hash `size` bytes of `f` from its start (all of it for None); leaves `f` at 0."""
    digest = hashlib.blake2b(digest_size=32)
    left = math.inf if size is None else size
    f.seek(0)
    while left > 0 and (chunk := f.read(int(min(CHUNK, left)))):
        digest.update(chunk)
        left -= len(chunk)
    if size is not None and left > 0:
        raise StorageError(f"{getattr(f, 'name', 'a log')} shrank while it was read")
    f.seek(0)
    return digest.hexdigest()


def remote_time(remote: RemoteLog) -> float:
    """When the remote log was finished, or last uploaded if it is a checkpoint."""
    return remote.finished_at if remote.finished_at is not None else remote.last_modified


def nanoseconds(when: float) -> int:
    """`when` in whole ns, computed exactly: st_mtime_ns / 10**9 then gives `when` back."""
    return round(Fraction(when) * 1_000_000_000)


def unix_time(text: str | None) -> float | None:
    """The unix time `text` spells, or None if it spells none (metadata is untrusted)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
