"""What the rest of Runlet needs of a broker: the port that the RabbitMQ adapter fills.

`Broker` (runlet.adapters.broker) is the real one; `runlet.testing.MemoryBroker` routes in
memory, for unit tests of the actors that talk to a broker. Both speak only these types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue the adapter declares, binds and (re)declares after every reconnect."""

    name: str
    kind: str = "classic"  # "quorum" | "classic" | "exclusive"
    bindings: tuple[str, ...] = ()
    exchange: str | None = None  # binding exchange; None → the user's exchange
    dead_letter: bool = True
    arguments: tuple[tuple[str, Any], ...] = ()
    # False: the broker takes a delivery as settled once sent, and `ack()`/`reject()` do
    # nothing. Only for a queue that dies with its connection (a viewer's own, exclusive),
    # whose consumer settles each delivery on arrival anyway: it saves a frame per message.
    acks: bool = True


@dataclass(slots=True)
class Statistics:
    """What the adapter has been through, for metrics and tests."""

    connects: int = 0
    reconnects: int = 0
    publish_retries: int = 0
    returned: int = 0
    url: str = ""


class Incoming(Protocol):
    """One delivery; settle it exactly once with `ack()`, `reject()` or `requeue()`."""

    @property
    def body(self) -> bytes: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def redelivered(self) -> bool: ...
    @property
    def routing_key(self) -> str: ...
    async def ack(self) -> None: ...
    async def reject(self) -> None:
        """Refuse for good: the queue's dead-letter exchange gets it."""

    async def requeue(self) -> None:
        """Give it back to the queue to be delivered again."""


Handler = Callable[[Incoming], Awaitable[None]]


class BrokerPort(Protocol):
    """A connection to one user's exchange, as the actors and the client use it."""

    generation: int
    stats: Statistics
    on_reconnect: list[Callable[[], Awaitable[None]]]

    async def connect(self, *, wait: float | None = None) -> None: ...
    async def close(self) -> None: ...
    async def declare(self, spec: QueueSpec) -> None: ...
    async def forget(self, name: str, *, delete: bool = False) -> None: ...
    def known_queues(self, prefix: str) -> list[str]: ...
    async def queue_info(self, name: str) -> tuple[int, int] | None: ...
    async def consume(self, spec: QueueSpec, handler: Handler) -> None: ...
    async def publish(
        self, routing_key: str, body: bytes, *, message_id: str, durable: bool = True,
        mandatory: bool = True, exchange: str | None = None, reply_to: str | None = None,
        correlation_id: str | None = None, deadline: float | None = None,
    ) -> None: ...  # fmt: skip


def safe_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
