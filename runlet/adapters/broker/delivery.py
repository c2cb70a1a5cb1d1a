"""One delivery from RabbitMQ, and the library errors that mean the broker failed us.

Deliveries come straight from aiormq (`DeliveredMessage`): aio-pika's IncomingMessage and the
extra task it starts for each one cost more than the rest of a keystroke's way in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiormq
from aiormq.abc import DeliveredMessage

from runlet.adapters.broker_port import safe_url
from runlet.errors import BrokerLoginRefused, BrokerUnavailable

if TYPE_CHECKING:
    from runlet.adapters.broker.connection import Broker


def connect_failure(
    urls: Sequence[str], url: str, last: BaseException | None, waited: float, why: str
) -> BrokerUnavailable:
    """The error for a connect that gave up: a refused login names the account, anything else
    the URLs tried and for how long (passwords masked); `why` is the last failure in words."""
    if isinstance(last, aiormq.exceptions.ProbableAuthenticationError):
        account = urlsplit(url).username or "guest"
        return BrokerLoginRefused(
            f"RabbitMQ at {safe_url(url)} refused the login of account {account!r}: {why}",
            account=account,
            url=safe_url(url),
        )
    shown = ", ".join(safe_url(u) for u in urls)
    return BrokerUnavailable(f"cannot reach RabbitMQ at {shown} (tried for {waited:.1f} s): {why}")


BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: the channel closed under us
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class AmqpIncoming:
    """One delivery from RabbitMQ; settle it exactly once with `ack()` or `reject()`.

    Settlements are queued for the connection's writer without waiting for it to write them:
    the broker confirms none of them either way, and one lost with the connection means a
    redelivery, which consumers drop by message id.
    """

    __slots__ = ("_acks", "_broker", "_dead_letter", "_generation", "_msg", "_settled")

    def __init__(
        self,
        msg: DeliveredMessage,
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
        self._settled = False

    @property
    def body(self) -> bytes:
        return self._msg.body

    @property
    def message_id(self) -> str | None:
        return self._msg.header.properties.message_id

    @property
    def reply_to(self) -> str | None:
        return self._msg.header.properties.reply_to

    @property
    def correlation_id(self) -> str | None:
        return self._msg.header.properties.correlation_id

    @property
    def content_type(self) -> str | None:
        return self._msg.header.properties.content_type

    @property
    def redelivered(self) -> bool:
        return bool(self._msg.redelivered)

    @property
    def routing_key(self) -> str:
        return self._msg.routing_key or ""

    async def ack(self) -> None:
        if self._take():
            with contextlib.suppress(*BROKER_ERRORS):
                await self._msg.channel.basic_ack(self._tag, wait=False)

    async def reject(self) -> None:
        """Refuse for good: the queue's dead-letter exchange gets it.

        From a queue consumed without acks the broker cannot dead-letter it any more: it is
        published to the dead-letter exchange here instead.
        """
        if not self._acks:
            if self._dead_letter and not self._settled:
                self._settled = True
                await self._broker.dead_letter(self)
            return
        if self._take():
            with contextlib.suppress(*BROKER_ERRORS):
                await self._msg.channel.basic_reject(self._tag, requeue=False, wait=False)

    async def requeue(self) -> None:
        """Give it back to the queue to be delivered again (we could not handle it now)."""
        if self._take():
            with contextlib.suppress(*BROKER_ERRORS):
                await self._msg.channel.basic_nack(self._tag, requeue=True, wait=False)

    @property
    def _tag(self) -> int:
        tag = self._msg.delivery_tag
        assert tag is not None  # a consumer's delivery always has one
        return tag

    def _take(self) -> bool:
        """Whether to send a settlement now: once, with acks, on the channel that delivered it
        (one from before a reconnect is redelivered, and dedupe drops it)."""
        if not self._acks or self._settled or self._generation != self._broker.generation:
            return False
        if self._msg.channel.is_closed:
            return False
        self._settled = True
        return True
