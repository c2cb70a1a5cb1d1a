"""`Client.submit`'s target check, on the in-memory broker: once per batch, not once per job."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runlet.adapters.broker_port import QueueSpec
from runlet.client import session
from runlet.client.session import Client
from runlet.config import load_config
from runlet.errors import NoSuchTarget
from runlet.protocol import addresses
from runlet.protocol.crypto import FleetKey
from runlet.protocol.payloads import JobSpec
from runlet.testing import MemoryBroker


class CountingBroker(MemoryBroker):
    """A MemoryBroker that counts its queue look-ups."""

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.lookups = 0

    async def queue_info(self, name: str) -> tuple[int, int] | None:
        self.lookups += 1
        return await super().queue_info(name)


def client_on(tmp_path: Path, broker: MemoryBroker) -> Client:
    path = tmp_path / "runlet.toml"
    path.write_text(
        f'role = "client"\nuser = "alice"\nnode = "laptop"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[crypto]\nkey_file = "{tmp_path / "fleet.key"}"\n',
        encoding="utf-8",
    )
    client = Client(load_config(path, env={}), FleetKey.generate())
    client.broker = broker  # type: ignore[assignment]  # the port, in memory
    return client


def test_a_batch_of_submits_checks_its_target_once(tmp_path: Path) -> None:
    """Submits to the same target within TARGET_CACHE_SECONDS share one look-up."""
    broker = CountingBroker("alice")
    client = client_on(tmp_path, broker)

    async def scenario() -> None:
        await broker.declare(
            QueueSpec(addresses.any_queue("alice"), "quorum", (addresses.DISPATCH_ANY,))
        )
        for _ in range(5):
            submitted = await client.submit(JobSpec(("true",)), "any")
            assert submitted.offline  # no consumer on the queue: said every time, from the cache
        assert broker.lookups == 1
        assert len(broker.published) == 5

    asyncio.run(scenario())


def test_a_target_is_checked_again_once_its_check_is_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the cache's time gone by, the next submit asks the broker again."""
    monkeypatch.setattr(session, "TARGET_CACHE_SECONDS", 0.0)
    broker = CountingBroker("alice")
    client = client_on(tmp_path, broker)

    async def scenario() -> None:
        await broker.declare(
            QueueSpec(addresses.any_queue("alice"), "quorum", (addresses.DISPATCH_ANY,))
        )
        await client.submit(JobSpec(("true",)), "any")
        await client.submit(JobSpec(("true",)), "any")
        assert broker.lookups == 2

    asyncio.run(scenario())


def test_a_missing_target_is_never_cached(tmp_path: Path) -> None:
    """A target that does not exist fails every submit, each after its own look-up."""
    broker = CountingBroker("alice")
    client = client_on(tmp_path, broker)

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(NoSuchTarget):
                await client.submit(JobSpec(("true",)), "node:nowhere")
        assert broker.lookups == 2

    asyncio.run(scenario())
