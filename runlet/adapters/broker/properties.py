"""What the broker adapter remembers and declares, and what it puts on the wire.

The consumers and queues it restores after a reconnect (`Topology`), a user's exchanges and a
queue's arguments, the AMQP properties of its three kinds of publish (transient, persistent,
dead-lettered by hand), and the broker's own words in a channel error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq

from runlet.adapters.broker.delivery import AmqpIncoming
from runlet.adapters.broker_port import Handler, QueueSpec
from runlet.protocol import addresses

CONTENT_TYPE = "application/msgpack"


@dataclass(slots=True)
class Consumer:
    spec: QueueSpec
    handler: Handler
    tag: str = ""
    channel: aiormq.abc.AbstractChannel | None = None  # aiormq's, which delivers to it


@dataclass(slots=True)
class Topology:
    queues: dict[str, QueueSpec] = field(default_factory=dict)
    consumers: dict[str, Consumer] = field(default_factory=dict)


async def declare_user_exchanges(channel: aio_pika.abc.AbstractChannel, user: str) -> None:
    """The user's topic exchange, its dead-letter exchange and the queue that keeps what dies."""
    await channel.declare_exchange(
        addresses.exchange(user), aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlx = await channel.declare_exchange(
        addresses.dead_letter_exchange(user), aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead = await channel.declare_queue(
        addresses.dead_letter_queue(user), durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(dlx, routing_key="")


def queue_arguments(spec: QueueSpec, user: str) -> dict[str, Any]:
    """A queue's arguments: its own, where what it rejects goes, and its type."""
    arguments: dict[str, Any] = dict(spec.arguments)
    if spec.dead_letter:
        arguments["x-dead-letter-exchange"] = addresses.dead_letter_exchange(user)
    if spec.kind == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments


def transient(
    message_id: str, reply_to: str | None, correlation_id: str | None
) -> aiormq.spec.Basic.Properties:
    """A keystroke's, an output chunk's, a reply's: not persistent, never confirmed."""
    return aiormq.spec.Basic.Properties(
        message_id=message_id,
        content_type=CONTENT_TYPE,
        delivery_mode=1,  # not persistent
        reply_to=reply_to,
        correlation_id=correlation_id,
    )


def persistent(
    body: bytes, message_id: str, reply_to: str | None, correlation_id: str | None
) -> aio_pika.Message:
    """A durable publish: persistent, confirmed, retried under the same id."""
    return aio_pika.Message(
        body,
        message_id=message_id,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        reply_to=reply_to,
        correlation_id=correlation_id,
    )


def dead_lettered(incoming: AmqpIncoming) -> aiormq.spec.Basic.Properties:
    """A delivery consumed without acks, put where a reject would have put it."""
    return aiormq.spec.Basic.Properties(
        message_id=incoming.message_id,
        content_type=incoming.content_type,
        delivery_mode=1,
        headers={"x-first-death-queue-key": incoming.routing_key},
    )


def reply_text(exc: BaseException) -> str:
    """The broker's words in a channel error (ACCESS_REFUSED - ...), not the library's."""
    text = str(exc.args[0]) if exc.args else str(exc)
    return text.split(". For details")[0]
