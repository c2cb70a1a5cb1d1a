"""An in-memory blob store, for unit tests of the Log Vault and the Sync Reconciler: no S3.

It speaks `runlet.adapters.blob_port.BlobStorePort`, the port the real store
(`runlet.adapters.blobstore.BlobStore`) fills, and keeps its contract (tests/blob_contract.py
runs the same assertions on both):

- ids, finish times and hashes go through the same checks, so it refuses what the real store
  refuses (ValueError, StorageError for a log that changed after it was hashed);
- an upload takes a snapshot of the file as it is; a download lands whole or not at all, with
  the remote time as its mtime; object metadata is written and read as S3 would keep it, and
  Last-Modified has S3's resolution of a second;
- a missing bucket, a missing object and an outage are `BlobStoreUnavailable` naming the
  bucket; use before `open` or after `close` is `ClosedError`.

`down = True` makes every call that would talk to the store raise `BlobStoreUnavailable` (the
objects stay, as a real store's would). `calls` counts the calls by name, so a test waits on
it. `factory` stands in for the `BlobStore` class as an actor's `blob_store_factory`: it opens
this store again and counts in `made`; `another()` is a second handle on the same bucket, as
another device would hold. Thread-safe: an actor uses it on its loop while a test reads it
from its own thread.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, Self

from runlet.adapters import blob_port as port
from runlet.adapters.blob_port import Progress, RemoteLog, Statistics
from runlet.adapters.blobstore import files
from runlet.adapters.blobstore.client import metadata, remote_log
from runlet.adapters.blobstore.translate import no_bucket
from runlet.adapters.closing import Closing
from runlet.errors import BlobStoreUnavailable, ClosedError, StorageError

__all__ = ["MemoryBlobStore", "StoredObject"]


@dataclass(slots=True)
class _Bucket:
    """What every handle on one bucket shares."""

    objects: dict[str, StoredObject] = field(default_factory=dict)
    exists: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object as the store keeps it."""

    body: bytes
    metadata: dict[str, str]
    last_modified: datetime


class MemoryBlobStore(Closing):
    """One user's logs in one in-memory bucket, made when `ensure_bucket` is called."""

    def __init__(
        self, user: str, *, bucket: str = "runlet-logs", clock: Callable[[], float] = time.time
    ) -> None:
        port.check_user(user)
        self.user = user
        self._bucket = bucket
        self._clock = clock
        self._shared = _Bucket()
        self._lock = self._shared.lock
        self.down = False
        self.calls: Counter[str] = Counter()
        self.made = 0
        self.stats = Statistics()
        self._open = False
        self._closed = False
        self._where = f"the in-memory blob store (bucket {bucket})"

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def objects(self) -> dict[str, StoredObject]:
        """Every object in the bucket by key (logs and index objects), in upload order."""
        return self._shared.objects

    @property
    def bucket_exists(self) -> bool:
        return self._shared.exists

    @bucket_exists.setter
    def bucket_exists(self, exists: bool) -> None:
        self._shared.exists = exists

    def another(self) -> MemoryBlobStore:
        """A new, unopened handle on this bucket: the same objects, its own state and counts."""
        other = MemoryBlobStore(self.user, bucket=self._bucket, clock=self._clock)
        other._shared = self._shared
        other._lock = self._shared.lock
        return other

    def factory(self, config: Any, user: str) -> Self:
        """`BlobStore(config, user)` for the Log Vault: this store, made usable again."""
        if user != self.user:
            raise ValueError(f"this store holds {self.user!r}'s logs, not {user!r}'s")
        with self._lock:
            self.made += 1
            self._open = self._closed = False
        return self

    async def open(self) -> None:
        self._count("open")
        if self._closed:
            raise ClosedError(f"{self._where} was closed; make a new store")
        self._open = True

    async def close(self) -> None:
        self._count("close")
        self._closed, self._open = True, False

    def __repr__(self) -> str:
        return f"<MemoryBlobStore {self._where} user={self.user!r}>"

    async def ensure_bucket(self) -> None:
        self._use("ensure_bucket")
        self._reach("create the bucket", bucket=False)
        self.bucket_exists = True

    async def put_log(
        self, node: str, job_id: str, path: Path, *, hash: str | None = None,
        finished_at: float | None, final: bool,
    ) -> RemoteLog:  # fmt: skip
        port.check_upload(finished_at, final)
        self._use("put_log")
        key = port.object_key(self.user, node, job_id)
        with files.open_log(path) as f:
            size, digest = files.snapshot(f, path)
            if hash is not None and hash != digest:
                raise StorageError(f"{path} changed after it was hashed; not uploaded")
            body = f.read(size)
        self._reach(f"upload {key}")
        when = datetime.fromtimestamp(int(self._clock()), UTC)  # S3 keeps whole seconds
        with self._lock:
            meta = metadata(job_id, digest, finished_at, final=final)
            self.objects[key] = StoredObject(body, meta, when)
            index = port.index_key(self.user, job_id)
            self.objects[index] = StoredObject(node.encode("ascii"), {}, when)
            self.stats.uploads += 1
            self.stats.bytes_uploaded += size
        remote = await self.head_log(node, job_id)
        assert remote is not None
        return remote

    async def head_log(self, node: str, job_id: str) -> RemoteLog | None:
        self._use("head_log")
        key = port.object_key(self.user, node, job_id)
        self._reach(f"look up {key}")
        found = self.objects.get(key)
        return None if found is None else _describe(key, found)

    async def find_node(self, job_id: str) -> str | None:
        self._use("find_node")
        key = port.index_key(self.user, job_id)
        self._reach(f"read {key}")
        found = self.objects.get(key)
        return None if found is None else found.body.decode("ascii")

    async def get_log(
        self, node: str, job_id: str, dest: Path, *, progress: Progress | None = None
    ) -> RemoteLog:
        self._use("get_log")
        key = port.object_key(self.user, node, job_id)
        with files.landing(dest) as spot:
            self._reach(f"download {key}")
            found = self.objects.get(key)
            if found is None:
                self._fail(f"{self._where} has no {key}")
            remote = _describe(key, found)
            await files.receive(_Body(found.body), spot.file, remote.size, progress)
            spot.keep(port.remote_time(remote))
        with self._lock:
            self.stats.downloads += 1
            self.stats.bytes_downloaded += remote.size
        return remote

    # --- helpers ------------------------------------------------------------------------

    def _count(self, call: str) -> None:
        with self._lock:
            self.calls[call] += 1

    def _use(self, call: str) -> None:
        self._count(call)
        if not self._open:
            state = "was closed" if self._closed else "is not open: await open() first"
            raise ClosedError(f"{self._where} {state}")

    def _reach(self, what: str, *, bucket: bool = True) -> None:
        """Fail as the real store would when it is down or the bucket is missing."""
        if self.down:
            self._fail(f"cannot connect to {self._where} to {what}")
        if bucket and not self.bucket_exists:
            self._fail(no_bucket(self._where))

    def _fail(self, problem: str) -> NoReturn:
        with self._lock:
            self.stats.failures += 1
        raise BlobStoreUnavailable(problem)


class _Body:
    """A response body that gives at most `n` bytes a read, as aiohttp's does."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    async def read(self, n: int = port.CHUNK) -> bytes:
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(chunk)
        return chunk


def _describe(key: str, found: StoredObject) -> RemoteLog:
    """The RemoteLog a HEAD of `found` gives, read as the real store reads S3's answer."""
    answer = {
        "Metadata": found.metadata,
        "LastModified": found.last_modified,
        "ContentLength": len(found.body),
    }
    return remote_log(key, answer)
