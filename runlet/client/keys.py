"""`runlet key grant NODE PUBLIC`: send this device's fleet key, sealed to one node, to its queue.

The sealed key goes to the node's durable keys queue (`addresses.keys_queue`, declared by its
daemon's Key Keeper), so a node that is away gets it when it comes back. A node whose daemon
never ran has no such queue: the publish is returned, and that is said.
"""

from __future__ import annotations

import uuid

from runlet.adapters.broker import Broker, BrokerSecurity
from runlet.config import Config
from runlet.errors import NoSuchTarget, UsageError
from runlet.protocol import addresses, wire
from runlet.protocol.crypto import FleetKey
from runlet.protocol.identity import fingerprint, parse_public, seal_fleet_key
from runlet.protocol.messages import KeyGranted


async def grant(config: Config, key: FleetKey, node: str, public: str) -> str:
    """Seal `key` to `public` and send it to `node`; the recipient's fingerprint."""
    recipient = parse_public(public)
    message = KeyGranted(node, seal_fleet_key(key, recipient))
    broker = Broker(
        config.broker.urls,
        config.user,
        name=f"runlet-grant-{config.node}",
        heartbeat=config.broker.heartbeat,
        security=BrokerSecurity.of(config.broker),
    )
    await broker.connect()
    try:
        await broker.publish(
            addresses.keys_key(node), wire.encode(message), message_id=uuid.uuid4().hex
        )
    except NoSuchTarget:
        raise UsageError(
            f"node {node} has no keys queue: its daemon has never run with this version"
        ) from None
    finally:
        await broker.close()
    return fingerprint(recipient)
