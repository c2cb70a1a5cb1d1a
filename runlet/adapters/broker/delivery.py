"""One delivery from RabbitMQ, and the library errors that mean the broker failed us."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

from runlet.adapters.broker_port import safe_url
from runlet.errors import BrokerLoginRefused, BrokerUnavailable

if TYPE_CHECKING:
    from runlet.adapters.broker.connection import Broker


def connect_failure(
    urls: Sequence[str], url: str, last: BaseException | None, waited: float
) -> BrokerUnavailable:
    """The error for a connect that gave up: a refused login names the account, anything else
    the URLs tried and for how long (passwords masked)."""
    if isinstance(last, aiormq.exceptions.ProbableAuthenticationError):
        account = urlsplit(url).username or "guest"
        return BrokerLoginRefused(
            f"RabbitMQ at {safe_url(url)} refused the login of account {account!r}: check the"
            " user name and password in broker.urls",
            account=account,
            url=safe_url(url),
        )
    shown = ", ".join(safe_url(u) for u in urls)
    return BrokerUnavailable(f"cannot reach RabbitMQ at {shown} (tried for {waited:.1f} s): {last}")


BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: the channel closed under us
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class AmqpIncoming:
    """One delivery from RabbitMQ; settle it exactly once with `ack()` or `reject()`."""

    __slots__ = ("_broker", "_generation", "_msg")

    def __init__(self, msg: AbstractIncomingMessage, broker: Broker, generation: int) -> None:
        self._msg = msg
        self._broker = broker
        self._generation = generation

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
        await self._settle(self._msg.ack)

    async def reject(self) -> None:
        """Refuse for good: the queue's dead-letter exchange gets it."""
        await self._settle(lambda: self._msg.reject(requeue=False))

    async def requeue(self) -> None:
        """Give it back to the queue to be delivered again (we could not handle it now)."""
        await self._settle(lambda: self._msg.nack(requeue=True))

    async def _settle(self, action: Callable[[], Awaitable[None]]) -> None:
        if self._generation != self._broker.generation:
            return  # its channel is gone; the broker redelivers it and dedupe drops it
        with contextlib.suppress(*BROKER_ERRORS, aio_pika.exceptions.MessageProcessError):
            await action()
