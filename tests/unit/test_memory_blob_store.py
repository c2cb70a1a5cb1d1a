"""The in-memory blob store (runlet.testing.MemoryBlobStore) keeps the real store's contract.

The contract scenarios (tests/blob_contract.py) are the ones tests/integration/test_blobstore
runs on S3 (moto's server); here they run on the fake, plus what only a fake needs: being told
to be down, and being made again by the Log Vault's factory after a close.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from runlet.adapters.blob_port import BlobStorePort
from runlet.errors import BlobStoreUnavailable, ClosedError
from runlet.testing import MemoryBlobStore
from tests.blob_contract import (
    FINISHED,
    JOB,
    NODE,
    SCENARIOS,
    USER,
    Scenario,
    scenario_id,
    write_log,
)

_buckets = itertools.count()


def make() -> BlobStorePort:
    """A new fake on a bucket of its own, not made yet."""
    return MemoryBlobStore(USER, bucket=f"bucket-{next(_buckets)}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
def test_the_fake_keeps_the_contract(scenario: Scenario, tmp_path: Path) -> None:
    """Each scenario the real store passes against S3, the fake passes in memory."""
    asyncio.run(scenario(make, tmp_path))


def test_down_refuses_every_call_and_keeps_the_objects(tmp_path: Path) -> None:
    """While down every call that talks to the store is unavailable; back up, the log is there."""
    source = tmp_path / f"{JOB}.rlog"
    write_log(source)
    store = MemoryBlobStore(USER)

    async def run() -> None:
        async with store:
            await store.ensure_bucket()
            put = await store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True)
            store.down = True
            for call in (
                store.ensure_bucket(),
                store.head_log(NODE, JOB),
                store.find_node(JOB),
                store.get_log(NODE, JOB, tmp_path / "copy.rlog"),
                store.put_log(NODE, JOB, source, finished_at=FINISHED, final=True),
            ):
                with pytest.raises(BlobStoreUnavailable, match="cannot connect"):
                    await call
            store.down = False
            assert await store.head_log(NODE, JOB) == put

    asyncio.run(run())
    assert store.stats.failures == 5
    assert not (tmp_path / "copy.rlog").exists()
    assert store.calls["put_log"] == 2


def test_the_factory_makes_the_store_usable_again() -> None:
    """`factory` hands back the same store, open-able again after a close, and counts."""
    store = MemoryBlobStore(USER)

    async def run() -> None:
        async with store.factory(None, USER):
            await store.ensure_bucket()
        with pytest.raises(ClosedError):
            await store.open()
        async with store.factory(None, USER) as again:
            assert again is store
            assert await again.find_node(JOB) is None

    asyncio.run(run())
    assert store.made == 2


def test_the_factory_refuses_another_user() -> None:
    """A store made for one user is never handed out for another's logs."""
    with pytest.raises(ValueError, match="bob"):
        MemoryBlobStore(USER).factory(None, "bob")


def test_a_user_that_is_no_name_is_refused() -> None:
    """As the real store does, the fake refuses a user name that could escape a key."""
    with pytest.raises(ValueError, match="not a user name"):
        MemoryBlobStore("a/b")
