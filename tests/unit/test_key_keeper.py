"""The Key Keeper on the in-memory broker: which granted keys it takes on, and which it refuses."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from actors.key_keeper import KeyKeeper
from runlet.protocol import addresses, wire
from runlet.protocol.crypto import FleetKey, Kind
from runlet.protocol.identity import DeviceKey, seal_fleet_key
from runlet.protocol.messages import KeyGranted, Ping
from runlet.runtime.actor import Context
from runlet.runtime.names import KEY_KEEPER
from runlet.testing import MemoryBroker, MemoryIncoming
from tests.unit.fakes import DEADLINE, running_context, wait_for

USER = "alice"
NODE = "node1"


@dataclass(frozen=True)
class _Broker:
    urls: tuple[str, ...] = ("amqp://guest:guest@127.0.0.1:1/",)
    heartbeat: int = 5
    publish_timeout: float = 5.0
    prefetch: int = 8


@dataclass(frozen=True)
class _Settings:
    data_dir: Path
    key_file: Path
    node: str = NODE
    user: str = USER
    broker: _Broker = field(default_factory=_Broker)


@dataclass
class Rig:
    ctx: Context
    broker: MemoryBroker
    fleet: FleetKey
    device: DeviceKey
    key_file: Path

    def grant(self, message: KeyGranted | bytes) -> MemoryIncoming:
        body = message if isinstance(message, bytes) else wire.encode(message)
        queue = addresses.keys_queue(USER, NODE)

        async def inject() -> MemoryIncoming:
            return await self.broker.inject(queue, body)

        future: concurrent.futures.Future[MemoryIncoming] = asyncio.run_coroutine_threadsafe(
            inject(), self.ctx.loop.loop
        )
        incoming = future.result(DEADLINE)
        wait_for(lambda: incoming.settled is not None, what="the grant settled")
        return incoming


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    broker = MemoryBroker(USER)
    fleet, device = FleetKey.generate(), DeviceKey.generate()
    key_file = tmp_path / "fleet.key"
    fleet.save(key_file)
    with running_context(tmp_path) as ctx:
        ctx.settings = _Settings(data_dir=tmp_path, key_file=key_file)
        ctx.services.update(
            broker_factory=lambda *args, **kw: broker, fleet_key=fleet, device_key=device
        )
        ref = KeyKeeper.start(ctx)
        ctx.router.register(KEY_KEEPER, ref)
        queue = addresses.keys_queue(USER, NODE)
        wait_for(lambda: queue in broker.queues, what="the keys queue consumed")
        yield Rig(ctx, broker, fleet, device, key_file)


def test_the_queue_is_durable_and_bound_to_the_nodes_key(rig: Rig) -> None:
    """A grant sent while the node is away waits in a quorum queue bound to node.<node>.keys."""
    spec = rig.broker.queues[addresses.keys_queue(USER, NODE)].spec
    assert (spec.kind, spec.bindings) == ("quorum", (addresses.keys_key(NODE),))


def test_a_rotation_is_taken_on_in_place_and_saved(rig: Rig) -> None:
    """A rotation of the node's key, sealed to its device key: the shared FleetKey adopts it
    (new jobs use it, old messages still open) and the key file holds it."""
    old_sealed = rig.fleet.job_key("j").seal(Kind.OUTPUT, 0, b"before")
    rotation = FleetKey.import_text(rig.fleet.export_text()).rotated()  # rotated on another device
    incoming = rig.grant(KeyGranted(NODE, seal_fleet_key(rotation, rig.device.public)))
    assert incoming.settled == "ack"
    assert rig.fleet == rotation
    assert FleetKey.load(rig.key_file) == rotation
    assert rig.fleet.job_key("j").open(Kind.OUTPUT, 0, old_sealed) == b"before"
    again = rig.grant(KeyGranted(NODE, seal_fleet_key(rotation, rig.device.public)))
    assert again.settled == "ack"  # a redelivery changes nothing
    assert rig.fleet.generations == 2


def refused(rig: Rig, message: KeyGranted | bytes) -> None:
    before = rig.key_file.read_bytes()
    current = FleetKey.load(rig.key_file)
    incoming = rig.grant(message)
    assert incoming.settled == "reject"  # dead-lettered
    assert rig.key_file.read_bytes() == before
    assert rig.fleet == current


def test_a_key_that_is_no_rotation_of_ours_is_refused(rig: Rig) -> None:
    """A well-sealed key that does not keep the node's current key (what someone without it
    would send) is dead-lettered; nothing changes."""
    stranger = FleetKey.generate().rotated()
    refused(rig, KeyGranted(NODE, seal_fleet_key(stranger, rig.device.public)))


def test_a_key_sealed_to_another_device_is_refused(rig: Rig) -> None:
    """A rotation sealed to some other device's key does not open here."""
    rotation = FleetKey.import_text(rig.fleet.export_text()).rotated()
    refused(rig, KeyGranted(NODE, seal_fleet_key(rotation, DeviceKey.generate().public)))


def test_a_key_for_another_node_is_refused(rig: Rig) -> None:
    """A grant naming another node is refused even if it would open."""
    rotation = FleetKey.import_text(rig.fleet.export_text()).rotated()
    refused(rig, KeyGranted("node2", seal_fleet_key(rotation, rig.device.public)))


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00garbage", wire.encode(Ping(1, 1.0)), wire.encode(Ping(1, 1.0))[:-3]],
)
def test_garbage_on_the_keys_queue_is_refused(rig: Rig, body: bytes) -> None:
    """Undecodable, truncated or foreign messages are dead-lettered."""
    refused(rig, body)


@pytest.mark.parametrize("sealed", ["", "runlet-key-v1:AAAA", "runlet-sealed-key-v1:" + "A" * 5000])
def test_a_grant_that_is_no_sealed_key_cannot_be_made(sealed: str) -> None:
    """KeyGranted itself refuses a plain key, an empty one or an oversize one."""
    with pytest.raises(ValueError, match="sealed key"):
        KeyGranted(NODE, sealed)
