"""The blob store adapter: job logs in an S3-compatible store (MinIO, AWS S3) over aioboto3.

Layout in the bucket (DESIGN.md §6)::

    <user>/<node>/<job>.rlog   the sealed log, byte for byte as in the vault, with metadata
                               runlet-hash         hex BLAKE2b-256 of those bytes
                               runlet-finished-at  unix time the job ended (absent while it runs)
                               runlet-final        "1" complete, "0" a checkpoint of a running job
                               runlet-job          the job id
    <user>/by-job/<job>        a tiny object whose body is the node's name, so any device finds
                               a job's log without listing the bucket

What it guarantees:

- an upload sends a snapshot: exactly the bytes that were hashed, even while the log's writer
  keeps appending (the log is append-only, so a prefix never changes);
- a download lands in `dest` whole or not at all: it streams to a temporary file beside it,
  checks the size and the hash against the metadata, then renames it into place;
- every failure of the store (refused, timed out, 5xx, bad credentials, missing bucket) is a
  `BlobStoreUnavailable` naming the endpoint and bucket: the caller retries with backoff, since
  botocore is told to try each request once. botocore and aiohttp errors never leave here.

What it must never do: hold plaintext or a sealing key (only sealed bytes pass through), log
or put into a message the access keys or the credentials file's contents, or import aioboto3
before a store is opened (it is heavy, and a daemon without storage stays light).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import io
import math
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

import structlog

from runlet.config import StorageConfig
from runlet.errors import BlobStoreUnavailable, ClosedError, ConfigError, StorageError
from runlet.files import read_secret
from runlet.protocol import addresses

__all__ = [
    "BlobStore",
    "RemoteLog",
    "Statistics",
    "hash_file",
    "index_key",
    "load_credentials",
    "object_key",
]

log = structlog.get_logger(__name__)

CHUNK = 1 << 16
MAX_CREDENTIALS_BYTES = 64 * 1024
_CREDENTIALS_KEY = "storage.credentials_file"
_HASH = re.compile(r"[0-9a-f]{64}")
_MAX_INDEX_BYTES = 256
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_REFUSED = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)

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


def object_key(user: str, node: str, job_id: str) -> str:
    """Where a job's log lives in the bucket."""
    _check_ids(user, node, job_id)
    return f"{user}/{node}/{job_id}.rlog"


def index_key(user: str, job_id: str) -> str:
    """The object that names the node holding a job's log."""
    _check_ids(user, None, job_id)
    return f"{user}/by-job/{job_id}"


def _check_ids(user: str, node: str | None, job_id: str) -> None:
    # Checked here so no id can add a "/" or ".." to a key.
    if not addresses.valid_name(user):
        raise ValueError(f"not a user name: {user!r}")
    if node is not None and not addresses.valid_name(node):
        raise ValueError(f"not a node name: {node!r}")
    if not addresses.valid_job_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")


def hash_file(path: Path) -> str:
    """Hex BLAKE2b-256 of a file's bytes (the ciphertext), read in chunks."""
    try:
        with open(path, "rb") as f:
            return _hash_prefix(f, None)
    except OSError as exc:
        raise StorageError(f"cannot hash {path}: {exc.strerror or exc}") from exc


def _hash_prefix(f: BinaryIO, size: int | None) -> str:
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


# --- credentials ----------------------------------------------------------------------------


def load_credentials(path: Path) -> tuple[str, str]:
    """(access_key_id, secret_access_key) from a TOML file only its owner may read.

    Problems with the file are `ConfigError` on ``storage.credentials_file``; nothing read
    from it ever appears in a message.
    """
    data = _read_credentials_file(path)
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        raise _bad_credentials(path, "is not a TOML file of UTF-8 text") from None
    expected = {"access_key_id", "secret_access_key"}
    if table.keys() != expected:
        missing = ", ".join(sorted(expected - table.keys()))
        problem = f"lacks {missing}" if missing else "holds keys other than these two"
        raise _bad_credentials(
            path, f"{problem}: it must set exactly access_key_id and secret_access_key"
        )
    values = []
    for name in ("access_key_id", "secret_access_key"):
        value = table[name]
        if not isinstance(value, str) or not value or not value.isprintable() or " " in value:
            raise _bad_credentials(path, f"{name} must be a non-empty string without spaces")
        values.append(value)
    return values[0], values[1]


def _read_credentials_file(path: Path) -> bytes:
    return read_secret(path, partial(_bad_credentials, path), max_bytes=MAX_CREDENTIALS_BYTES)


def _bad_credentials(path: Path, problem: str) -> ConfigError:
    return ConfigError(_CREDENTIALS_KEY, problem, source=str(path))


# --- the store ------------------------------------------------------------------------------


class BlobStore:
    """One user's logs in one bucket; open it (or `async with`) before use, on one loop."""

    def __init__(self, config: StorageConfig, user: str) -> None:
        if not addresses.valid_name(user):
            raise ValueError(f"not a user name: {user!r}")
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
        # Importing aioboto3 takes most of a second: do it off the event loop.
        aioboto3 = await asyncio.to_thread(importlib.import_module, "aioboto3")
        from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]

        keys: dict[str, str] = {}
        if self._config.credentials_file is not None:
            key_id, secret = load_credentials(self._config.credentials_file)
            keys = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        session = aioboto3.Session(region_name=self._config.region, **keys)
        boto_config = BotoConfig(
            connect_timeout=self._config.timeout_seconds,
            read_timeout=self._config.timeout_seconds,
            retries={"total_max_attempts": 1, "mode": "standard"},  # we retry, with backoff
            s3={"addressing_style": "path" if self._config.path_style else "auto"},
            # Our BLAKE2b hash checks every byte end to end; the CRC checksums botocore adds
            # by default since 1.36 are not understood by every S3-compatible store.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = AsyncExitStack()
        with self._translate("connect"):
            self._client = await stack.enter_async_context(
                session.client("s3", endpoint_url=self._config.endpoint_url, config=boto_config)
            )
        self._stack = stack

    async def close(self) -> None:
        """Close the client; closing again does nothing."""
        self._closed = True
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._client is not None else "new"
        return f"<BlobStore {self._where} user={self._user!r} {state}>"

    async def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (for tests and first set-up)."""
        ClientError = _boto().ClientError
        client = self._require_open()
        with self._translate("create the bucket"):
            try:
                await client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _code(exc) not in _NOT_FOUND:
                    raise
            extra: dict[str, Any] = {}
            if self._config.region != "us-east-1":
                extra["CreateBucketConfiguration"] = {"LocationConstraint": self._config.region}
            try:
                await client.create_bucket(Bucket=self.bucket, **extra)
            except ClientError as exc:
                if _code(exc) != "BucketAlreadyOwnedByYou":  # made meanwhile by another device
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
        if finished_at is None and final:
            raise ValueError("a final log needs its finish time")
        if finished_at is not None and _unix_time(repr(float(finished_at))) is None:
            raise ValueError(f"finished_at must be a unix time, got {finished_at!r}")
        client = self._require_open()
        key = object_key(self._user, node, job_id)
        with _open_log(path) as f:
            size, digest = await asyncio.to_thread(_snapshot, f, path)
            if hash is not None and hash != digest:
                raise StorageError(f"{path} changed after it was hashed; not uploaded")
            metadata = {"runlet-hash": digest, "runlet-final": "1" if final else "0"}
            metadata["runlet-job"] = job_id
            if finished_at is not None:
                metadata["runlet-finished-at"] = repr(float(finished_at))
            with self._translate(f"upload {key}"):
                await client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=_Prefix(f, size),
                    ContentLength=size,
                    ContentType="application/octet-stream",
                    Metadata=metadata,
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
        ClientError = _boto().ClientError
        client = self._require_open()
        key = object_key(self._user, node, job_id)
        with self._translate(f"look up {key}"):
            try:
                head = await client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) not in _NOT_FOUND:
                    raise
                # A HEAD answer has no body, so a missing bucket looks like a missing key.
                await self._require_bucket(client)
                return None
        return _remote_log(key, head)

    async def find_node(self, job_id: str) -> str | None:
        """The node whose log of `job_id` the store holds, from the job's index object."""
        ClientError = _boto().ClientError
        client = self._require_open()
        key = index_key(self._user, job_id)
        with self._translate(f"read {key}"):
            try:
                got = await client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND:
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
        ClientError = _boto().ClientError
        client = self._require_open()
        key = object_key(self._user, node, job_id)
        tmp = _temporary_beside(dest)
        try:
            with _open_private(tmp) as out, self._translate(f"download {key}"):
                try:
                    got = await client.get_object(Bucket=self.bucket, Key=key)
                except ClientError as exc:
                    if _code(exc) in _NOT_FOUND:
                        raise BlobStoreUnavailable(f"{self._where} has no {key}") from exc
                    raise
                remote = _remote_log(key, got)
                body = got["Body"]
                async with body:  # closes the connection even if we stop early
                    digest = await _receive(body, out, remote.size, progress)
                self._check_download(remote, digest, out.tell())
                await asyncio.to_thread(os.fsync, out.fileno())
            when = remote.finished_at if remote.finished_at is not None else remote.last_modified
            os.utime(tmp, ns=(_nanoseconds(when), _nanoseconds(when)))
            os.replace(tmp, dest)
        except OSError as exc:
            raise StorageError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.stats.downloads += 1
        self.stats.bytes_downloaded += remote.size
        log.debug("log_downloaded", job=job_id, node=node, size=remote.size)
        return remote

    async def delete_log(self, node: str, job_id: str) -> None:
        """Delete a job's log and its index object; deleting a missing log does nothing."""
        client = self._require_open()
        with self._translate(f"delete the log of job {job_id}"):
            await client.delete_object(Bucket=self.bucket, Key=object_key(self._user, node, job_id))
            await client.delete_object(Bucket=self.bucket, Key=index_key(self._user, job_id))

    # --- helpers ------------------------------------------------------------------------

    async def _require_bucket(self, client: Any) -> None:
        ClientError = _boto().ClientError
        try:
            await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise BlobStoreUnavailable(self._no_bucket()) from exc
            raise

    def _no_bucket(self) -> str:
        return f"{self._where}: the bucket does not exist; create it or fix storage.bucket"

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

    @contextlib.contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn botocore and aiohttp failures into BlobStoreUnavailable (never with secrets)."""
        import aiohttp

        boto = _boto()

        try:
            yield
        except BlobStoreUnavailable:
            self.stats.failures += 1
            raise
        except boto.ClientError as exc:
            self.stats.failures += 1
            raise BlobStoreUnavailable(self._client_error(exc, what)) from exc
        except (boto.NoCredentialsError, boto.PartialCredentialsError) as exc:
            self.stats.failures += 1
            problem = f"{self._where} cannot {what}: no credentials; set storage.credentials_file"
            raise BlobStoreUnavailable(problem) from exc
        except (boto.ConnectTimeoutError, boto.ReadTimeoutError, TimeoutError) as exc:
            self.stats.failures += 1
            limit = self._config.timeout_seconds
            problem = f"{self._where} did not answer within {limit:g} s; could not {what}"
            raise BlobStoreUnavailable(problem) from exc
        except boto.EndpointConnectionError as exc:
            self.stats.failures += 1
            raise BlobStoreUnavailable(f"cannot connect to {self._where} to {what}") from exc
        except (boto.BotoCoreError, aiohttp.ClientError) as exc:
            self.stats.failures += 1
            problem = f"{self._where} failed to {what}: {type(exc).__name__}: {exc}"
            raise BlobStoreUnavailable(problem) from exc

    def _client_error(self, exc: Any, what: str) -> str:
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        if code == "NoSuchBucket":
            return self._no_bucket()
        if code in _REFUSED:
            return (
                f"{self._where} refused to {what} ({code}): check the keys in"
                " storage.credentials_file and the bucket's access policy"
            )
        return f"{self._where} failed to {what}: {code} (HTTP {status})"


class _Prefix(io.RawIOBase):
    """The first `size` bytes of an open file, as a stream botocore can measure and rewind.

    Without `fileno`, so aiohttp sends what `read` gives, never the grown file's new size.
    """

    def __init__(self, f: BinaryIO, size: int) -> None:
        super().__init__()
        self._f = f
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._f.read(min(len(view), self._size - self._pos))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        self._f.seek(self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._size - self._pos


def _open_log(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # the caller holds it in a `with`
    except OSError as exc:
        raise StorageError(f"cannot open the log {path}: {exc.strerror or exc}") from exc


def _snapshot(f: BinaryIO, path: Path) -> tuple[int, str]:
    """The file's current size and the hash of that many bytes."""
    try:
        size = os.fstat(f.fileno()).st_size
        return size, _hash_prefix(f, size)
    except OSError as exc:
        raise StorageError(f"cannot read the log {path}: {exc.strerror or exc}") from exc


async def _receive(body: Any, out: BinaryIO, total: int, progress: Progress | None) -> str:
    """Copy a response body to `out`, hashing it; returns the hex digest."""
    digest = hashlib.blake2b(digest_size=32)
    done = 0
    if progress is not None:
        progress(0, total)
    while chunk := await body.read(CHUNK):
        out.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    out.flush()
    return digest.hexdigest()


def _open_private(tmp: Path) -> BinaryIO:
    return open(tmp, "r+b")  # made 0o600 by mkstemp; the caller holds it in a `with`


def _temporary_beside(dest: Path) -> Path:
    """A new private file next to `dest`, so the final rename stays on one filesystem."""
    try:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise StorageError(f"cannot write beside {dest}: {exc.strerror or exc}") from exc
    os.close(fd)
    return Path(name)


def _boto() -> Any:
    """botocore's exceptions, imported only once a store is used."""
    from botocore import exceptions  # type: ignore[import-untyped]

    return exceptions


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _remote_log(key: str, response: Mapping[str, Any]) -> RemoteLog:
    """A RemoteLog from a HEAD or GET answer; metadata keys come back lower-cased."""
    metadata: Mapping[str, str] = response.get("Metadata", {})
    digest = metadata.get("runlet-hash", "")
    modified: datetime = response["LastModified"]
    return RemoteLog(
        key=key,
        size=int(response["ContentLength"]),
        hash=digest if _HASH.fullmatch(digest) else "",
        finished_at=_unix_time(metadata.get("runlet-finished-at")),
        final=metadata.get("runlet-final") == "1",
        last_modified=modified.timestamp(),
    )


def _nanoseconds(when: float) -> int:
    """`when` in whole ns, computed exactly: st_mtime_ns / 10**9 then gives `when` back."""
    return round(Fraction(when) * 1_000_000_000)


def _unix_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
