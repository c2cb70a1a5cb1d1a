"""The blob store adapter (adapters.blobstore) and the reconciler against moto's S3 over HTTP."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pytest

from runlet.adapters import blobstore
from runlet.adapters.blobstore import (
    BlobStore,
    RemoteLog,
    hash_file,
    index_key,
    load_credentials,
    object_key,
)
from runlet.adapters.logfile import LogWriter, Record, seal_output
from runlet.client.reconciler import Decision, reconcile
from runlet.config import StorageConfig
from runlet.errors import BlobStoreUnavailable, ClosedError, ConfigError, StorageError
from runlet.protocol.crypto import FleetKey
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


# --- keys and credentials (no network) -----------------------------------------------------


def test_keys_follow_the_layout() -> None:
    """Logs live at <user>/<node>/<job>.rlog and the index at <user>/by-job/<job>."""
    assert object_key(USER, NODE, JOB) == f"alice/edge-1/{JOB}.rlog"
    assert object_key(USER, NODE, f"{JOB}.edge-2") == f"alice/edge-1/{JOB}.edge-2.rlog"
    assert index_key(USER, JOB) == f"alice/by-job/{JOB}"


@pytest.mark.parametrize(
    ("user", "node", "job"),
    [("a/b", NODE, JOB), (USER, "..", JOB), (USER, NODE, "../../etc"), (USER, NODE, "")],
)
def test_keys_refuse_ids_that_could_escape(user: str, node: str, job: str) -> None:
    """No user, node or job id can add a '/' or '..' to a key."""
    with pytest.raises(ValueError, match="not a"):
        object_key(user, node, job)


def write_credentials(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_credentials_are_read(tmp_path: Path) -> None:
    """A private TOML file with both keys gives them back in order."""
    path = write_credentials(
        tmp_path / "c.toml", 'access_key_id = "AKIA1"\nsecret_access_key = "s3cret/+x"\n'
    )
    assert load_credentials(path) == ("AKIA1", "s3cret/+x")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('access_key_id = "AKIA1"\n', "lacks secret_access_key"),
        ('secret_access_key = "s3cret"\n', "lacks access_key_id"),
        ('access_key_id = "A"\nsecret_access_key = "s3cret"\nsession = "x"\n', "other than"),
        ('access_key_id = "A"\nsecret_access_key = ""\n', "non-empty"),
        ('access_key_id = "A"\nsecret_access_key = 7\n', "non-empty"),
        ('access_key_id = "A B"\nsecret_access_key = "s3cret"\n', "without spaces"),
        ('access_key_id = "A"\nsecret_access_key = "s3cret\\n"\n', "without spaces"),
        ("access_key_id = s3cret garbage\n", "not a TOML file"),
        ("", "lacks"),
    ],
)
def test_bad_credentials_are_config_errors(tmp_path: Path, text: str, problem: str) -> None:
    """Each malformed credentials file is a ConfigError that never echoes the secret."""
    path = write_credentials(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_credentials(path)
    assert info.value.key == "storage.credentials_file"
    assert info.value.source == str(path)
    assert problem in info.value.problem
    assert "s3cret" not in str(info.value)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_credentials_open_to_others_are_refused(tmp_path: Path, mode: int) -> None:
    """Like the fleet key, a credentials file others can read is refused with the fix."""
    path = write_credentials(
        tmp_path / "c.toml", 'access_key_id = "A"\nsecret_access_key = "s3cret"\n', mode
    )
    with pytest.raises(ConfigError, match="chmod 600"):
        load_credentials(path)


def test_missing_oversize_and_odd_credentials_files(tmp_path: Path) -> None:
    """A missing, oversize, binary or non-regular credentials file is a clear ConfigError."""
    with pytest.raises(ConfigError, match="not found"):
        load_credentials(tmp_path / "nope.toml")
    big = write_credentials(tmp_path / "big.toml", "#" * (blobstore.MAX_CREDENTIALS_BYTES + 1))
    with pytest.raises(ConfigError, match="over"):
        load_credentials(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00s3cret")
    binary.chmod(0o600)
    with pytest.raises(ConfigError, match="UTF-8"):
        load_credentials(binary)
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="regular file"):
        load_credentials(folder)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo", 0o600)
        with pytest.raises(ConfigError, match="regular file"):
            load_credentials(tmp_path / "fifo")  # refused at once, never waiting for a writer


def test_final_upload_needs_a_sane_finish_time(tmp_path: Path) -> None:
    """put_log refuses a final log without a finish time, or with a time that is no time."""
    config = make_storage_config("http://127.0.0.1:9", tmp_path)

    async def scenario() -> None:
        async with BlobStore(config, USER) as store:
            with pytest.raises(ValueError, match="finish time"):
                await store.put_log(NODE, JOB, tmp_path, finished_at=None, final=True)
            for bad in (math.nan, math.inf, -1.0):
                with pytest.raises(ValueError, match="unix time"):
                    await store.put_log(NODE, JOB, tmp_path, finished_at=bad, final=True)

    run(scenario())


def test_store_must_be_opened_and_stays_closed(tmp_path: Path) -> None:
    """A store refuses use before open and after close; close is idempotent."""
    config = make_storage_config("http://127.0.0.1:9", tmp_path)

    async def scenario() -> None:
        store = BlobStore(config, USER)
        with pytest.raises(ClosedError, match="not open"):
            await store.head_log(NODE, JOB)
        await store.open()
        await store.open()
        await store.close()
        await store.close()
        with pytest.raises(ClosedError, match="closed"):
            await store.head_log(NODE, JOB)
        with pytest.raises(ClosedError):
            await store.open()

    run(scenario())


def test_bad_credentials_file_fails_open(tmp_path: Path) -> None:
    """Opening a store whose credentials file is open to others fails before any request."""
    config = make_storage_config("http://127.0.0.1:9", tmp_path)
    assert config.credentials_file is not None
    config.credentials_file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"storage\.credentials_file"):
        run(BlobStore(config, USER).open())


# --- round trips ---------------------------------------------------------------------------


def test_put_head_get_round_trip(storage_config: StorageConfig, tmp_path: Path) -> None:
    """A log goes up and comes back byte for byte, with its hash, finish time and final flag."""
    source = tmp_path / "vault" / f"{JOB}.rlog"
    data = write_log(source)
    dest = tmp_path / "elsewhere" / f"{JOB}.rlog"

    async def scenario() -> tuple[RemoteLog, RemoteLog | None, RemoteLog]:
        async with opened(storage_config) as store:
            put = await store.put_log(
                NODE, JOB, source, hash=hash_file(source), finished_at=FINISHED, final=True
            )
            head = await store.head_log(NODE, JOB)
            got = await store.get_log(NODE, JOB, dest)
            return put, head, got

    put, head, got = run(scenario())
    assert put == head == got
    assert put.key == object_key(USER, NODE, JOB)
    assert (put.size, put.hash) == (len(data), hash_file(source))
    assert (put.finished_at, put.final) == (FINISHED, True)
    assert abs(put.last_modified - time.time()) < 120
    assert dest.read_bytes() == data
    assert dest.stat().st_mtime_ns / 1_000_000_000 == FINISHED
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary file left


def test_checkpoint_has_no_finish_time(storage_config: StorageConfig, tmp_path: Path) -> None:
    """A running job's checkpoint is stored as not final, without a finish time."""
    source = tmp_path / f"{JOB}.rlog"
    write_log(source, final=False)
    dest = tmp_path / "copy.rlog"

    async def scenario() -> RemoteLog:
        async with opened(storage_config) as store:
            await store.put_log(NODE, JOB, source, finished_at=None, final=False)
            return await store.get_log(NODE, JOB, dest)

    remote = run(scenario())
    assert (remote.finished_at, remote.final) == (None, False)
    assert dest.stat().st_mtime == remote.last_modified  # a checkpoint's time: its upload


def test_upload_sends_the_snapshot_that_was_hashed(
    storage_config: StorageConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes appended after the log was hashed are not sent: the object matches its hash."""
    source = tmp_path / f"{JOB}.rlog"
    data = write_log(source, final=False)
    snapshot = blobstore._snapshot

    def snapshot_then_append(f: BinaryIO, path: Path) -> tuple[int, str]:
        taken = snapshot(f, path)
        with path.open("ab") as writer:  # the log's writer goes on appending
            writer.write(b"\x01" * 100_000)
        return taken

    monkeypatch.setattr(blobstore, "_snapshot", snapshot_then_append)

    async def scenario() -> RemoteLog:
        async with opened(storage_config) as store:
            await store.put_log(NODE, JOB, source, finished_at=None, final=False)
            return await store.get_log(NODE, JOB, tmp_path / "copy.rlog")

    remote = run(scenario())
    assert remote.size == len(data)
    assert (tmp_path / "copy.rlog").read_bytes() == data


def test_hash_that_does_not_match_is_not_uploaded(
    storage_config: StorageConfig, tmp_path: Path
) -> None:
    """A hash given for a log that has changed since stops the upload."""
    source = tmp_path / f"{JOB}.rlog"
    write_log(source)

    async def scenario() -> RemoteLog | None:
        async with opened(storage_config) as store:
            with pytest.raises(StorageError, match="changed after it was hashed"):
                await store.put_log(NODE, JOB, source, hash="0" * 64, finished_at=1.0, final=True)
            return await store.head_log(NODE, JOB)

    assert run(scenario()) is None


def test_index_names_the_node(storage_config: StorageConfig, tmp_path: Path) -> None:
    """find_node reads the node from the job's index object; an unknown job has none."""
    source = tmp_path / f"{JOB}.rlog"
    write_log(source)

    async def scenario() -> tuple[str | None, str | None]:
        async with opened(storage_config) as store:
            await store.put_log("rpi-7", JOB, source, finished_at=FINISHED, final=True)
            return await store.find_node(JOB), await store.find_node(OTHER_JOB)

    assert run(scenario()) == ("rpi-7", None)


def test_missing_log_is_none(storage_config: StorageConfig) -> None:
    """head_log of a log the store does not hold is None, not an error."""

    async def scenario() -> RemoteLog | None:
        async with opened(storage_config) as store:
            return await store.head_log(NODE, OTHER_JOB)

    assert run(scenario()) is None


def test_deleted_log_is_gone(storage_config: StorageConfig, tmp_path: Path) -> None:
    """delete_log removes the log and its index; deleting again does nothing."""
    source = tmp_path / f"{JOB}.rlog"
    write_log(source)

    async def scenario() -> tuple[RemoteLog | None, str | None]:
        async with opened(storage_config) as store:
            await store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True)
            await store.delete_log(NODE, JOB)
            await store.delete_log(NODE, JOB)
            return await store.head_log(NODE, JOB), await store.find_node(JOB)

    assert run(scenario()) == (None, None)


def test_progress_grows_to_the_total(storage_config: StorageConfig, tmp_path: Path) -> None:
    """progress(done, total) starts at 0, grows with each chunk and ends at the total."""
    source = tmp_path / f"{JOB}.rlog"
    data = write_log(source, lines=5, size=60_000)
    seen: list[tuple[int, int]] = []

    async def scenario() -> None:
        async with opened(storage_config) as store:
            await store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True)
            await store.get_log(
                NODE, JOB, tmp_path / "copy.rlog", progress=lambda *args: seen.append(args)
            )

    run(scenario())
    done = [d for d, _ in seen]
    assert {total for _, total in seen} == {len(data)}
    assert done[0] == 0
    assert done[-1] == len(data)
    assert len(done) > 3
    assert all(a < b for a, b in itertools.pairwise(done))


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
            return await reconcile(store, node, JOB, path)

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
