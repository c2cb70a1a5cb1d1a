"""The blob store adapter (adapters.blobstore) and the reconciler against moto's S3 over HTTP."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pytest

from actors.sync_reconciler import Decision, reconcile
from runlet.adapters.blob_port import BlobStorePort
from runlet.adapters.blobstore import BlobStore, RemoteLog, files
from runlet.adapters.logfile import LogWriter, Record, seal_output
from runlet.config import StorageConfig
from runlet.errors import BlobStoreUnavailable
from runlet.protocol.crypto import FleetKey
from tests.blob_contract import SCENARIOS, Scenario, scenario_id
from tests.integration.s3 import (
    MOTO_KEY,
    MotoServer,
    failing_store,
    make_storage_config,
    moto_server,
    private_s3_server,
    refusing_endpoint,
    s3_server,
    silent_store,
    storage_config,
)

__all__ = ["moto_server", "private_s3_server", "s3_server", "storage_config"]  # fixtures in use

T = TypeVar("T")
USER = "alice"
NODE = "edge-1"
JOB = "0123456789abcdef0123456789abcdef"
OTHER_JOB = "fedcba9876543210fedcba9876543210"
FINISHED = 1_700_000_000.125


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    async def limited() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(limited())


@asynccontextmanager
async def opened(config: StorageConfig, *, create: bool = True) -> AsyncIterator[BlobStore]:
    """An open store for `config`, its bucket created unless told otherwise."""
    async with BlobStore(config, USER) as store:
        if create:
            await store.ensure_bucket()
        yield store


def write_log(path: Path, lines: int = 3, *, final: bool = True, size: int = 64) -> bytes:
    """A real sealed log of `lines` chunks of `size` bytes (a fresh key: unique bytes)."""
    key = FleetKey.generate().job_key(JOB)
    with LogWriter(path, JOB) as writer:
        for seq in range(lines):
            last = final and seq == lines - 1
            flags, sealed = seal_output(key, seq, FINISHED, os.urandom(size), final=last)
            writer.append(Record(seq, flags, sealed))
    return path.read_bytes()


async def raw_put(config: StorageConfig, key: str, body: bytes, metadata: dict[str, str]) -> None:
    """Write an object behind the adapter's back, as a broken or hostile store might."""
    import aioboto3

    session = aioboto3.Session(
        aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_KEY, region_name=config.region
    )
    async with session.client("s3", endpoint_url=config.endpoint_url) as client:
        await client.put_object(Bucket=config.bucket, Key=key, Body=body, Metadata=metadata)


def set_mtime(path: Path, when: float) -> None:
    ns = round(Fraction(when) * 1_000_000_000)
    os.utime(path, ns=(ns, ns))


def elapsed(since: float) -> float:
    return time.monotonic() - since


# --- the contract the in-memory fake keeps too (tests/blob_contract.py) ---------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
def test_s3_keeps_the_contract(scenario: Scenario, s3_server: str, tmp_path: Path) -> None:
    """Each scenario of the blob store contract passes on S3, as it does on the fake."""

    def make() -> BlobStorePort:
        return BlobStore(make_storage_config(s3_server, tmp_path), USER)

    run(scenario(make, tmp_path))


# --- what only a real store shows ----------------------------------------------------------


def test_upload_sends_the_snapshot_that_was_hashed(
    storage_config: StorageConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes appended after the log was hashed are not sent: the object matches its hash."""
    source = tmp_path / f"{JOB}.rlog"
    data = write_log(source, final=False)
    snapshot = files.snapshot

    def snapshot_then_append(f: BinaryIO, path: Path) -> tuple[int, str]:
        taken = snapshot(f, path)
        with path.open("ab") as writer:  # the log's writer goes on appending
            writer.write(b"\x01" * 100_000)
        return taken

    monkeypatch.setattr(files, "snapshot", snapshot_then_append)

    async def scenario() -> RemoteLog:
        async with opened(storage_config) as store:
            await store.put_log(NODE, JOB, source, finished_at=None, final=False)
            return await store.get_log(NODE, JOB, tmp_path / "copy.rlog")

    remote = run(scenario())
    assert remote.size == len(data)
    assert (tmp_path / "copy.rlog").read_bytes() == data


def test_corrupt_remote_copy_is_refused(storage_config: StorageConfig, tmp_path: Path) -> None:
    """An object whose bytes do not match its runlet-hash never replaces the local copy."""
    source = tmp_path / f"{JOB}.rlog"
    write_log(source)
    dest = tmp_path / "copy.rlog"
    dest.write_bytes(b"the local copy")

    async def scenario() -> None:
        async with opened(storage_config) as store:
            remote = await store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True)
            other = write_log(tmp_path / "other.rlog")  # same size, other bytes, old hash
            await raw_put(storage_config, remote.key, other, {"runlet-hash": remote.hash})
            with pytest.raises(BlobStoreUnavailable, match="runlet-hash"):
                await store.get_log(NODE, JOB, dest)

    run(scenario())
    assert dest.read_bytes() == b"the local copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["copy.rlog", "other.rlog", f"{JOB}.rlog", "s3-credentials.toml"]
    )


# --- failures ------------------------------------------------------------------------------


def test_missing_bucket_is_unavailable(storage_config: StorageConfig, tmp_path: Path) -> None:
    """Every call against a bucket that does not exist says so, naming endpoint and bucket."""
    source = tmp_path / f"{JOB}.rlog"
    write_log(source)
    dest = tmp_path / "copy.rlog"

    async def scenario() -> list[str]:
        messages = []
        async with opened(storage_config, create=False) as store:
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: store.head_log(NODE, JOB),
                lambda: store.find_node(JOB),
                lambda: store.get_log(NODE, JOB, dest),
                lambda: store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True),
            ]
            for call in calls:
                with pytest.raises(BlobStoreUnavailable) as info:
                    await call()
                messages.append(str(info.value))
            assert store.stats.failures == 4
        return messages

    for message in run(scenario()):
        assert "does not exist" in message
        assert storage_config.bucket in message
        assert str(storage_config.endpoint_url) in message
        assert MOTO_KEY not in message  # the access keys
    assert not dest.exists()


def test_refused_connection_is_unavailable_at_once(tmp_path: Path) -> None:
    """With nothing listening, a call fails with BlobStoreUnavailable well within the timeout."""
    with refusing_endpoint() as endpoint:
        config = make_storage_config(endpoint, tmp_path, timeout=10.0)

        async def scenario() -> float:
            async with opened(config, create=False) as store:
                start = time.monotonic()  # the call alone: making the client is not timed
                with pytest.raises(BlobStoreUnavailable, match="cannot connect") as info:
                    await store.head_log(NODE, JOB)
                took = elapsed(start)
                assert endpoint in str(info.value)
                return took

        took = run(scenario())
    assert took < 5.0  # half the timeout it must not wait for


def test_silent_store_times_out(tmp_path: Path) -> None:
    """A store that accepts but never answers fails after about timeout_seconds, once."""
    with silent_store() as silent:
        config = make_storage_config(silent.endpoint, tmp_path, timeout=0.5)

        async def scenario() -> float:
            async with opened(config, create=False) as store:
                start = time.monotonic()  # the call alone: making the client is not timed
                with pytest.raises(BlobStoreUnavailable, match=r"did not answer within 0\.5 s"):
                    await store.head_log(NODE, JOB)
                return elapsed(start)

        took = run(scenario())
        attempts = silent.connections()
    # one attempt (botocore does not retry on its own), counted where it lands rather than
    # guessed from the time, which a busy machine stretches; the time only has to be the
    # timeout's, not some default one's (botocore's is 60 s)
    assert attempts == 1
    assert 0.5 <= took < 5.0


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "SlowDown")])
def test_server_errors_are_unavailable_and_tried_once(
    tmp_path: Path, status: int, code: str
) -> None:
    """5xx answers become BlobStoreUnavailable after one request each: we retry, not botocore."""
    with failing_store(status, code) as store_server:
        config = make_storage_config(store_server.endpoint, tmp_path)

        async def scenario() -> tuple[str, str]:
            async with opened(config, create=False) as store:
                with pytest.raises(BlobStoreUnavailable) as get_error:
                    await store.find_node(JOB)
                with pytest.raises(BlobStoreUnavailable) as head_error:
                    await store.head_log(NODE, JOB)
                return str(get_error.value), str(head_error.value)

        on_get, on_head = run(scenario())
        assert store_server.requests == 2
    assert f"{code} (HTTP {status})" in on_get
    assert f"{status} (HTTP {status})" in on_head  # a HEAD answer has no body, so no code
    assert config.bucket in on_get


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"])
def test_refused_credentials_say_where_to_look(tmp_path: Path, code: str) -> None:
    """A 403 names the credentials file to check and never shows the keys."""
    with failing_store(403, code) as store_server:
        config = make_storage_config(store_server.endpoint, tmp_path)

        async def scenario() -> list[str]:
            async with opened(config, create=False) as store:
                found = []
                for call in (lambda: store.find_node(JOB), lambda: store.head_log(NODE, JOB)):
                    with pytest.raises(BlobStoreUnavailable) as info:
                        await call()
                    found.append(str(info.value))
                return found

        messages = run(scenario())
    for message in messages:
        assert "refused" in message
        assert "storage.credentials_file" in message
        assert MOTO_KEY not in message


def test_store_down_then_back(private_s3_server: MotoServer, tmp_path: Path) -> None:
    """While the server is stopped calls fail fast; once it is back, the same store works."""
    config = make_storage_config(private_s3_server.endpoint, tmp_path)
    source = tmp_path / f"{JOB}.rlog"
    write_log(source)

    async def scenario() -> RemoteLog | None:
        async with opened(config) as store:
            await store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True)
            with private_s3_server.down():
                start = time.monotonic()
                with pytest.raises(BlobStoreUnavailable, match="cannot connect"):
                    await store.head_log(NODE, JOB)
                assert elapsed(start) < config.timeout_seconds
            return await store.head_log(NODE, JOB)

    found = run(scenario())
    assert found is not None
    assert found.finished_at == FINISHED


# --- the reconciler against the real server ------------------------------------------------


@pytest.fixture
def remote_log(storage_config: StorageConfig, tmp_path: Path) -> bytes:
    """A final log of JOB from NODE in the store, finished at FINISHED."""
    source = tmp_path / "node-vault" / f"{JOB}.rlog"
    data = write_log(source)

    async def upload() -> None:
        async with opened(storage_config) as store:
            await store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True)

    run(upload())
    return data


def reconcile_with(
    config: StorageConfig, path: Path, node: str | None = NODE
) -> tuple[Path, Decision]:
    async def scenario() -> tuple[Path, Decision]:
        async with opened(config, create=False) as store:
            found: tuple[Path, Decision] = await reconcile(store, node, JOB, path)
            return found

    return run(scenario())


def test_reconcile_fetches_a_log_this_device_lacks(
    storage_config: StorageConfig, remote_log: bytes, tmp_path: Path
) -> None:
    """FETCH: no local copy, so the remote one is downloaded (the node found by the index)."""
    path = tmp_path / "viewer-vault" / f"{JOB}.rlog"
    assert reconcile_with(storage_config, path, node=None) == (path, Decision.FETCH)
    assert path.read_bytes() == remote_log
    assert reconcile_with(storage_config, path) == (path, Decision.SAME)  # and it stays put


def test_reconcile_same_log_reads_the_local_copy(
    storage_config: StorageConfig, remote_log: bytes, tmp_path: Path
) -> None:
    """SAME: the local bytes equal the remote ones, whatever the local mtime."""
    path = tmp_path / f"{JOB}.rlog"
    path.write_bytes(remote_log)
    set_mtime(path, FINISHED - 3600)
    assert reconcile_with(storage_config, path) == (path, Decision.SAME)
    assert path.stat().st_mtime == FINISHED - 3600  # untouched


def test_reconcile_replaces_an_older_local_copy(
    storage_config: StorageConfig, remote_log: bytes, tmp_path: Path
) -> None:
    """REPLACE: the copies differ and the local one is older than the remote finish time."""
    path = tmp_path / f"{JOB}.rlog"
    write_log(path)
    set_mtime(path, FINISHED - 60)
    assert reconcile_with(storage_config, path) == (path, Decision.REPLACE)
    assert path.read_bytes() == remote_log
    assert path.stat().st_mtime_ns / 1_000_000_000 == FINISHED


def test_reconcile_keeps_a_newer_local_copy(
    storage_config: StorageConfig, remote_log: bytes, tmp_path: Path
) -> None:
    """KEEP_LOCAL_NEWER: the copies differ but the local one is newer, so it is kept."""
    path = tmp_path / f"{JOB}.rlog"
    mine = write_log(path)
    set_mtime(path, FINISHED + 60)
    assert reconcile_with(storage_config, path) == (path, Decision.KEEP_LOCAL_NEWER)
    assert path.read_bytes() == mine
    assert mine != remote_log


def test_reconcile_reads_local_when_the_store_is_down(
    private_s3_server: MotoServer, tmp_path: Path
) -> None:
    """UNCHECKED: with the store stopped, a local copy is still read."""
    config = make_storage_config(private_s3_server.endpoint, tmp_path)
    path = tmp_path / f"{JOB}.rlog"
    mine = write_log(path)
    with private_s3_server.down():
        assert reconcile_with(config, path) == (path, Decision.UNCHECKED)
    assert path.read_bytes() == mine
