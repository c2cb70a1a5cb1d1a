"""What every blob store must do, written once: the S3 one and the in-memory fake.

Each scenario takes `make` (a new, unopened store on a bucket of its own that does not exist
yet: `runlet.adapters.blob_port.BlobStorePort`) and a private folder, and fails with an
AssertionError when the store breaks the contract. tests/unit/test_memory_blob_store runs them
on `runlet.testing.MemoryBlobStore`; tests/integration/test_blobstore runs them on `BlobStore`
against moto's S3 server over HTTP, so the fake cannot drift from the store it stands for.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from runlet.adapters.blob_port import BlobStorePort, hash_file, object_key
from runlet.adapters.logfile import LogWriter, Record, seal_output
from runlet.errors import BlobStoreUnavailable, ClosedError, StorageError
from runlet.protocol.crypto import FleetKey

USER = "alice"
NODE = "edge-1"
JOB = "0123456789abcdef0123456789abcdef"
OTHER_JOB = "fedcba9876543210fedcba9876543210"
FINISHED = 1_700_000_000.125

Maker = Callable[[], BlobStorePort]
Scenario = Callable[[Maker, Path], Coroutine[Any, Any, None]]


def write_log(path: Path, lines: int = 3, *, final: bool = True, size: int = 64) -> bytes:
    """A real sealed log of `lines` chunks of `size` bytes (a fresh key: unique bytes)."""
    key = FleetKey.generate().job_key(JOB)
    with LogWriter(path, JOB) as writer:
        for seq in range(lines):
            last = final and seq == lines - 1
            flags, sealed = seal_output(key, seq, FINISHED, os.urandom(size), final=last)
            writer.append(Record(seq, flags, sealed))
    return path.read_bytes()


@asynccontextmanager
async def opened(make: Maker) -> AsyncIterator[BlobStorePort]:
    """A new open store, its bucket created."""
    async with make() as store:
        await store.ensure_bucket()
        yield store


async def round_trip(make: Maker, folder: Path) -> None:
    """A log goes up and comes back byte for byte, with its hash, finish time and final flag."""
    source = folder / "vault" / f"{JOB}.rlog"
    data = write_log(source)
    dest = folder / "elsewhere" / f"{JOB}.rlog"
    async with opened(make) as store:
        put = await store.put_log(
            NODE, JOB, source, hash=hash_file(source), finished_at=FINISHED, final=True
        )
        head = await store.head_log(NODE, JOB)
        got = await store.get_log(NODE, JOB, dest)
        stats = store.stats
    assert put == head == got
    assert put.key == object_key(USER, NODE, JOB)
    assert (put.size, put.hash) == (len(data), hash_file(source))
    assert (put.finished_at, put.final) == (FINISHED, True)
    assert put.last_modified == int(put.last_modified)  # S3 keeps whole seconds
    assert abs(put.last_modified - time.time()) < 120
    assert dest.read_bytes() == data
    assert dest.stat().st_mtime_ns / 1_000_000_000 == FINISHED
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary file left
    assert (stats.uploads, stats.downloads, stats.failures) == (1, 1, 0)
    assert stats.bytes_uploaded == stats.bytes_downloaded == len(data)


async def checkpoint_has_no_finish_time(make: Maker, folder: Path) -> None:
    """A running job's checkpoint is stored as not final, without a finish time."""
    source = folder / f"{JOB}.rlog"
    write_log(source, final=False)
    dest = folder / "copy.rlog"
    async with opened(make) as store:
        await store.put_log(NODE, JOB, source, finished_at=None, final=False)
        remote = await store.get_log(NODE, JOB, dest)
    assert (remote.finished_at, remote.final) == (None, False)
    assert dest.stat().st_mtime == remote.last_modified  # a checkpoint's time: its upload


async def a_later_upload_replaces_the_earlier(make: Maker, folder: Path) -> None:
    """The final upload after a checkpoint is what the store then holds and describes."""
    source = folder / f"{JOB}.rlog"
    write_log(source, final=False)
    async with opened(make) as store:
        first = await store.put_log(NODE, JOB, source, finished_at=None, final=False)
        data = write_log(folder / "final.rlog")
        os.replace(folder / "final.rlog", source)  # the job ended: its log grew to the end
        last = await store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True)
        assert await store.head_log(NODE, JOB) == last
    assert first.hash != last.hash
    assert (last.size, last.final, last.finished_at) == (len(data), True, FINISHED)


async def hash_that_does_not_match_is_not_uploaded(make: Maker, folder: Path) -> None:
    """A hash given for a log that has changed since stops the upload."""
    source = folder / f"{JOB}.rlog"
    write_log(source)
    async with opened(make) as store:
        with pytest.raises(StorageError, match="changed after it was hashed"):
            await store.put_log(NODE, JOB, source, hash="0" * 64, finished_at=1.0, final=True)
        assert await store.head_log(NODE, JOB) is None
        assert await store.find_node(JOB) is None


async def a_missing_log_file_is_a_storage_error(make: Maker, folder: Path) -> None:
    """Uploading a log that is not on disk is a StorageError naming it; nothing is stored."""
    async with opened(make) as store:
        with pytest.raises(StorageError, match="cannot open the log"):
            await store.put_log(NODE, JOB, folder / "gone.rlog", finished_at=1.0, final=True)
        assert await store.head_log(NODE, JOB) is None


async def index_names_the_node(make: Maker, folder: Path) -> None:
    """find_node reads the node from the job's index object; an unknown job has none."""
    source = folder / f"{JOB}.rlog"
    write_log(source)
    async with opened(make) as store:
        await store.put_log("rpi-7", JOB, source, finished_at=FINISHED, final=True)
        assert await store.find_node(JOB) == "rpi-7"
        assert await store.find_node(OTHER_JOB) is None
        assert await store.head_log(NODE, JOB) is None  # the log is under its node


async def missing_log_is_none_and_cannot_be_fetched(make: Maker, folder: Path) -> None:
    """head_log of a log the store lacks is None; get_log of it fails, leaving `dest` alone."""
    dest = folder / "copy.rlog"
    dest.write_bytes(b"the local copy")
    async with opened(make) as store:
        assert await store.head_log(NODE, OTHER_JOB) is None
        with pytest.raises(BlobStoreUnavailable, match="has no"):
            await store.get_log(NODE, OTHER_JOB, dest)
    assert dest.read_bytes() == b"the local copy"
    assert [name for name in os.listdir(folder) if name.endswith(".tmp")] == []


async def progress_grows_to_the_total(make: Maker, folder: Path) -> None:
    """progress(done, total) starts at 0, grows with each chunk and ends at the total."""
    source = folder / f"{JOB}.rlog"
    data = write_log(source, lines=5, size=60_000)
    seen: list[tuple[int, int]] = []
    async with opened(make) as store:
        await store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True)
        await store.get_log(NODE, JOB, folder / "copy.rlog", progress=lambda *a: seen.append(a))
    done = [d for d, _ in seen]
    assert {total for _, total in seen} == {len(data)}
    assert done[0] == 0
    assert done[-1] == len(data)
    assert len(done) > 3
    assert all(a < b for a, b in itertools.pairwise(done))


async def final_upload_needs_a_sane_finish_time(make: Maker, folder: Path) -> None:
    """put_log refuses a final log without a finish time, or with a time that is no time."""
    async with opened(make) as store:
        with pytest.raises(ValueError, match="finish time"):
            await store.put_log(NODE, JOB, folder, finished_at=None, final=True)
        for bad in (math.nan, math.inf, -1.0):
            with pytest.raises(ValueError, match="unix time"):
                await store.put_log(NODE, JOB, folder, finished_at=bad, final=True)


async def ids_that_could_escape_are_refused(make: Maker, folder: Path) -> None:
    """No node or job id can add a '/' or '..' to a key: every call refuses it."""
    source = folder / f"{JOB}.rlog"
    write_log(source)
    async with opened(make) as store:
        for node, job in [("a/b", JOB), ("..", JOB), (NODE, "../../etc"), (NODE, "")]:
            with pytest.raises(ValueError, match="not a"):
                await store.put_log(node, job, source, finished_at=FINISHED, final=True)
            with pytest.raises(ValueError, match="not a"):
                await store.head_log(node, job)
            with pytest.raises(ValueError, match="not a"):
                await store.get_log(node, job, folder / "copy.rlog")
        with pytest.raises(ValueError, match="not a"):
            await store.find_node("../x")


async def store_must_be_opened_and_stays_closed(make: Maker, folder: Path) -> None:
    """A store refuses use before open and after close; open and close are idempotent."""
    store = make()
    with pytest.raises(ClosedError, match="not open"):
        await store.head_log(NODE, JOB)
    await store.open()
    await store.open()
    await store.ensure_bucket()
    assert await store.head_log(NODE, JOB) is None
    await store.close()
    await store.close()
    with pytest.raises(ClosedError, match="closed"):
        await store.head_log(NODE, JOB)
    with pytest.raises(ClosedError):
        await store.open()


async def missing_bucket_is_unavailable(make: Maker, folder: Path) -> None:
    """Every call against a bucket that does not exist says so, naming it; nothing lands."""
    source = folder / f"{JOB}.rlog"
    write_log(source)
    dest = folder / "copy.rlog"
    async with make() as store:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.head_log(NODE, JOB),
            lambda: store.find_node(JOB),
            lambda: store.get_log(NODE, JOB, dest),
            lambda: store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True),
        ]
        for call in calls:
            with pytest.raises(BlobStoreUnavailable) as info:
                await call()
            assert "does not exist" in str(info.value)
            assert store.bucket in str(info.value)
        assert store.stats.failures == 4
        await store.ensure_bucket()
        await store.ensure_bucket()  # already there: nothing to do
        assert await store.head_log(NODE, JOB) is None
    assert not dest.exists()


SCENARIOS: list[Scenario] = [
    round_trip,
    checkpoint_has_no_finish_time,
    a_later_upload_replaces_the_earlier,
    hash_that_does_not_match_is_not_uploaded,
    a_missing_log_file_is_a_storage_error,
    index_names_the_node,
    missing_log_is_none_and_cannot_be_fetched,
    progress_grows_to_the_total,
    final_upload_needs_a_sane_finish_time,
    ids_that_could_escape_are_refused,
    store_must_be_opened_and_stays_closed,
    missing_bucket_is_unavailable,
]


def scenario_id(scenario: Scenario) -> str:
    return getattr(scenario, "__name__", repr(scenario))
