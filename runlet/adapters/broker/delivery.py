"""One delivery from RabbitMQ, and the library errors that mean the broker failed us."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

if TYPE_CHECKING:
    from runlet.adapters.broker.connection import Broker

BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: the channel closed under us
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class AmqpIncoming:
    """One delivery from RabbitMQ; settle it exactly once with `ack()` or `reject()`."""

    __slots__ = ("_acks", "_broker", "_dead_letter", "_generation", "_msg")

    def __init__(
        self,
        msg: AbstractIncomingMessage,
        broker: Broker,
        generation: int,
        *,
        acks: bool = True,
        dead_letter: bool = True,
    ) -> None:
        self._msg = msg
        self._broker = broker
        self._generation = generation
        self._acks = acks  # False: consumed without acks, settled by the broker when sent
        self._dead_letter = dead_letter

    @property
    def body(self) -> bytes:
        return self._msg.body

    @property
    def message_id(self) -> str | None:
        return self._msg.message_id

    @property
    def reply_to(self) -> str | None:
        return self._msg.reply_to

    @property
    def correlation_id(self) -> str | None:
        return self._msg.correlation_id

    @property
    def redelivered(self) -> bool:
        return bool(self._msg.redelivered)

    @property
    def routing_key(self) -> str:
        return self._msg.routing_key or ""

    async def ack(self) -> None:
        await self._settle(self._ack)

    async def reject(self) -> None:
        """Refuse for good: the queue's dead-letter exchange gets it.

        From a queue consumed without acks the broker cannot dead-letter it any more: it is
        published to the dead-letter exchange here instead.
        """
        if not self._acks:
            if self._dead_letter:
                await self._broker.dead_letter(self._msg)
            return
        await self._settle(self._reject)

    # The frames are queued for the connection's writer without waiting for it to write them
    # (aio-pika's own ack waits, which costs a future and two task switches per delivery): a
    # settlement is not confirmed by the broker either way, and one lost with the connection
    # means a redelivery, which consumers drop by message id.

    async def _ack(self) -> None:
        tag = self._msg.delivery_tag
        if tag is not None:
            await self._msg.channel.basic_ack(tag, wait=False)

    async def _reject(self) -> None:
        tag = self._msg.delivery_tag
        if tag is not None:
            await self._msg.channel.basic_reject(tag, requeue=False, wait=False)

    async def requeue(self) -> None:
        """Give it back to the queue to be delivered again (we could not handle it now)."""
        await self._settle(lambda: self._msg.nack(requeue=True))

    async def _settle(self, action: Callable[[], Awaitable[None]]) -> None:
        if not self._acks:
            return
        if self._generation != self._broker.generation:
            return  # its channel is gone; the broker redelivers it and dedupe drops it
        with contextlib.suppress(*BROKER_ERRORS, aio_pika.exceptions.MessageProcessError):
            await action()
