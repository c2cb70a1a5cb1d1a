"""The Key Keeper: takes on a rotated fleet key sent to this node, even one sent while it was away.

It owns a broker connection of its own and consumes the node's durable keys queue
(`addresses.keys_queue`, bound to `node.<node>.keys`). A `KeyGranted` there is opened with this
device's key pair (only it can), and taken on only if the new ring keeps the key the node holds
now among its older ones (so nobody without that key — the broker, the server — can plant
one). Then the key file is replaced (atomically, mode 0o600) and the daemon's shared
`FleetKey` adopts the rotation in place: every job from then on is sealed and opened with it,
and logs sealed before stay readable. A running job goes on with the key it started with.

A grant that fails any check is dead-lettered and logged (`key_grant_refused`), never taken.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

from runlet.adapters.broker import Broker
from runlet.adapters.broker_port import BrokerPort, Incoming, QueueSpec
from runlet.errors import CryptoError, ProtocolError, StorageError
from runlet.protocol import addresses, wire
from runlet.protocol.identity import open_fleet_key
from runlet.protocol.messages import KeyGranted
from runlet.runtime.actor import Actor, Context
from runlet.runtime.local_messages import LoopTaskFailed
from runlet.runtime.names import KEY_KEEPER


class KeyKeeper(Actor):
    """Consumes this node's keys queue on the I/O loop; see the module docstring."""

    def __init__(self, ctx: Context, name: str = KEY_KEEPER) -> None:
        super().__init__(ctx, name)
        settings = ctx.settings
        self.node: str = settings.node
        self.key_file = settings.key_file
        self.fleet_key = ctx.services["fleet_key"]
        self.device_key = ctx.services["device_key"]
        make_broker = ctx.services.get("broker_factory", Broker)
        self.broker: BrokerPort = make_broker(
            settings.broker.urls,
            settings.user,
            name=f"runlet-keys-{self.node}",
            heartbeat=settings.broker.heartbeat,
            prefetch=1,
        )
        self.queue = QueueSpec(
            addresses.keys_queue(settings.user, self.node),
            "quorum",
            (addresses.keys_key(self.node),),
        )

    def started(self) -> None:
        self.ctx.loop.submit(self._setup(), self._setup_done)

    def on_stop(self) -> None:
        if not self.ctx.loop.closed:
            try:
                self.ctx.loop.submit(self.broker.close()).result(5)
            except concurrent.futures.TimeoutError:
                self.log.warning("broker_close_timed_out")

    def handle(self, message: object) -> None:
        match message:
            case LoopTaskFailed(error=error):
                raise CryptoError(error)  # crash: the supervisor restarts us
            case _:
                self.unexpected(message)

    def _setup_done(self, future: concurrent.futures.Future[Any]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            self.log.error("key_keeper_setup_failed", error=repr(exc))
            self.actor_ref.tell(LoopTaskFailed(repr(exc)))

    async def _setup(self) -> None:
        await self.broker.connect(wait=float("inf"))
        await self.broker.consume(self.queue, self._on_grant)

    async def _on_grant(self, incoming: Incoming) -> None:
        try:
            grant = wire.decode_as(incoming.body, KeyGranted)
            if grant.node != self.node:
                raise ProtocolError(f"a key granted to {grant.node}, not to this node")
            rotation = open_fleet_key(grant.sealed, self.device_key)
            if rotation == self.fleet_key:
                await incoming.ack()  # a redelivery of one taken on already
                return
            if not rotation.keeps(self.fleet_key):
                raise CryptoError("the granted key is no rotation of this node's key")
            previous = self.fleet_key.fingerprint()
            rotation.save(self.key_file, overwrite=True)  # the file first: a restart keeps it
            self.fleet_key.adopt(rotation)
        except (ProtocolError, CryptoError, StorageError) as exc:
            self.log.warning("key_grant_refused", error=str(exc))
            await incoming.reject()
            return
        self.log.info(
            "fleet_key_rotated",
            key=rotation.fingerprint(),
            replaces=previous,
            keys=rotation.generations,
        )
        await incoming.ack()
