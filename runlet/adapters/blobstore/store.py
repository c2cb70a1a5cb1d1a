"""The blob store itself: one user's logs in one S3 bucket, over aioboto3, on one loop.

What it guarantees (the package docstring has the layout in the bucket):

- an upload sends a snapshot: exactly the bytes that were hashed, even while the log's writer
  keeps appending (`files.snapshot`);
- a download lands in `dest` whole or not at all: it streams to a temporary file beside it,
  checks the size and the hash against the metadata, then renames it into place;
- every failure of the store is a `BlobStoreUnavailable` naming the endpoint and bucket
  (`translate`): the caller retries with backoff, since botocore tries each request once.

What it must never do: hold plaintext or a sealing key (only sealed bytes pass through), or
import aioboto3 before it is opened.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AbstractContextManager, AsyncExitStack
from pathlib import Path
from typing import Any

import structlog

from runlet.adapters.blob_port import (
    Progress,
    RemoteLog,
    Statistics,
    check_upload,
    check_user,
    index_key,
    object_key,
    remote_time,
)
from runlet.adapters.blobstore import files
from runlet.adapters.blobstore.client import metadata, open_client, remote_log
from runlet.adapters.blobstore.translate import NOT_FOUND, boto, code, no_bucket, translating
from runlet.adapters.closing import Closing
from runlet.config import StorageConfig
from runlet.errors import BlobStoreUnavailable, ClosedError, StorageError
from runlet.protocol import addresses

log = structlog.get_logger(__name__)

_MAX_INDEX_BYTES = 256


class BlobStore(Closing):
    """One user's logs in one bucket; open it (or `async with`) before use, on one loop."""

    def __init__(self, config: StorageConfig, user: str) -> None:
        check_user(user)
        self._config = config
        self._user = user
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._closed = False
        self.stats = Statistics()
        endpoint = config.endpoint_url or f"AWS S3 ({config.region})"
        self._where = f"the blob store at {endpoint} (bucket {config.bucket})"

    @property
    def bucket(self) -> str:
        return self._config.bucket

    async def open(self) -> None:
        """Load the credentials and make the client; opening an open store does nothing."""
        if self._closed:
            raise ClosedError(f"{self._where} was closed; make a new BlobStore")
        if self._client is not None:
            return
        stack = AsyncExitStack()
        with self._translate("connect"):
            self._client = await open_client(self._config, stack)
        self._stack = stack

    async def close(self) -> None:
        """Close the client; closing again does nothing."""
        self._closed = True
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._client is not None else "new"
        return f"<BlobStore {self._where} user={self._user!r} {state}>"

    async def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (for tests and first set-up)."""
        ClientError = boto().ClientError
        client = self._require_open()
        with self._translate("create the bucket"):
            try:
                await client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if code(exc) not in NOT_FOUND:
                    raise
            extra: dict[str, Any] = {}
            if self._config.region != "us-east-1":
                extra["CreateBucketConfiguration"] = {"LocationConstraint": self._config.region}
            try:
                await client.create_bucket(Bucket=self.bucket, **extra)
            except ClientError as exc:
                if code(exc) != "BucketAlreadyOwnedByYou":  # made meanwhile by another device
                    raise

    async def put_log(
        self,
        node: str,
        job_id: str,
        path: Path,
        *,
        hash: str | None = None,
        finished_at: float | None,
        final: bool,
    ) -> RemoteLog:
        """Upload the log at `path` as it is now, then point the job's index at `node`.

        The bytes are hashed as they are sent from a snapshot of the file's current size. A
        `hash` given for a finished log must match them (StorageError otherwise); leave it
        out for a checkpoint of a log that is still growing.
        """
        check_upload(finished_at, final)
        client = self._require_open()
        key = object_key(self._user, node, job_id)
        with files.open_log(path) as f:
            size, digest = await asyncio.to_thread(files.snapshot, f, path)
            if hash is not None and hash != digest:
                raise StorageError(f"{path} changed after it was hashed; not uploaded")
            with self._translate(f"upload {key}"):
                await client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=files.Prefix(f, size),
                    ContentLength=size,
                    ContentType="application/octet-stream",
                    Metadata=metadata(job_id, digest, finished_at, final=final),
                )
        with self._translate(f"write the index of job {job_id}"):
            await client.put_object(
                Bucket=self.bucket,
                Key=index_key(self._user, job_id),
                Body=node.encode("ascii"),
                ContentType="text/plain",
            )
        self.stats.uploads += 1
        self.stats.bytes_uploaded += size
        log.debug("log_uploaded", job=job_id, node=node, size=size, final=final)
        remote = await self.head_log(node, job_id)
        if remote is None:
            raise BlobStoreUnavailable(f"{self._where} lost {key} right after it was written")
        return remote

    async def head_log(self, node: str, job_id: str) -> RemoteLog | None:
        """The remote log's description, or None when the store has none."""
        ClientError = boto().ClientError
        client = self._require_open()
        key = object_key(self._user, node, job_id)
        with self._translate(f"look up {key}"):
            try:
                head = await client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if code(exc) not in NOT_FOUND:
                    raise
                # A HEAD answer has no body, so a missing bucket looks like a missing key.
                await self._require_bucket(client)
                return None
        return remote_log(key, head)

    async def find_node(self, job_id: str) -> str | None:
        """The node whose log of `job_id` the store holds, from the job's index object."""
        ClientError = boto().ClientError
        client = self._require_open()
        key = index_key(self._user, job_id)
        with self._translate(f"read {key}"):
            try:
                got = await client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if code(exc) in NOT_FOUND:
                    return None
                raise
            body = got["Body"]
            async with body:  # entering gives aiohttp's response, not the body: keep `body`
                raw = await body.read(_MAX_INDEX_BYTES + 1)
        node = bytes(raw).decode("ascii", "replace")
        if not addresses.valid_name(node):
            raise BlobStoreUnavailable(f"{self._where}: {key} does not hold a node name")
        return node

    async def get_log(
        self, node: str, job_id: str, dest: Path, *, progress: Progress | None = None
    ) -> RemoteLog:
        """Download the log to `dest`, whole or not at all; `progress(done, total)` per chunk.

        `dest`'s modification time becomes the remote log's finish time (its upload time for a
        checkpoint), so the copy's mtime is its finish time as the reconciler reads it.
        """
        ClientError = boto().ClientError
        client = self._require_open()
        key = object_key(self._user, node, job_id)
        with files.landing(dest) as spot, self._translate(f"download {key}"):
            try:
                got = await client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if code(exc) in NOT_FOUND:
                    raise BlobStoreUnavailable(f"{self._where} has no {key}") from exc
                raise
            remote = remote_log(key, got)
            body = got["Body"]
            async with body:  # closes the connection even if we stop early
                digest = await files.receive(body, spot.file, remote.size, progress)
            self._check_download(remote, digest, spot.file.tell())
            await asyncio.to_thread(os.fsync, spot.file.fileno())
            spot.keep(remote_time(remote))
        self.stats.downloads += 1
        self.stats.bytes_downloaded += remote.size
        log.debug("log_downloaded", job=job_id, node=node, size=remote.size)
        return remote

    # --- helpers ------------------------------------------------------------------------

    async def _require_bucket(self, client: Any) -> None:
        ClientError = boto().ClientError
        try:
            await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if code(exc) in NOT_FOUND:
                raise BlobStoreUnavailable(no_bucket(self._where)) from exc
            raise

    def _require_open(self) -> Any:
        if self._client is None:
            state = "was closed" if self._closed else "is not open: await open() first"
            raise ClosedError(f"{self._where} {state}")
        return self._client

    def _check_download(self, remote: RemoteLog, digest: str, received: int) -> None:
        if received != remote.size:
            raise BlobStoreUnavailable(
                f"{self._where} sent {received} of the {remote.size} bytes of {remote.key}"
            )
        if remote.hash and digest != remote.hash:
            raise BlobStoreUnavailable(
                f"{self._where}: {remote.key} does not match its runlet-hash (corrupted in the"
                " store or on the way); the local copy was left alone"
            )

    def _translate(self, what: str) -> AbstractContextManager[None]:
        return translating(self._where, self._config.timeout_seconds, self.stats, what)
