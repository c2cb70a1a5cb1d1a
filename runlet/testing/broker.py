"""An in-memory broker: topic routing, queues, consumers, confirms the test controls.

It speaks `runlet.adapters.broker_port.BrokerPort`, the port the real RabbitMQ adapter fills.
Routing follows AMQP topic rules (`*` one word, `#` any number); an unroutable mandatory
publish raises `NoSuchTarget` as RabbitMQ's return does; a rejected delivery is dead-lettered
into `dead`. `down = True` makes every call raise `BrokerUnavailable`, as during an outage;
`hold_confirms = True` keeps each durable publish waiting until `confirm(message_id)`.
Runs on one asyncio loop, like the real adapter.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from runlet.adapters.broker_port import Handler, QueueSpec, Statistics
from runlet.errors import BrokerUnavailable, NoSuchTarget
from runlet.protocol import addresses


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: words split on dots; `*` is one word, `#` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


@dataclass(frozen=True, slots=True)
class Published:
    """One publish as the broker took it."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    durable: bool
    mandatory: bool
    reply_to: str | None = None
    correlation_id: str | None = None


@dataclass(slots=True)
class MemoryIncoming:
    """A delivery from a `MemoryBroker`; `settled` says how it was settled, once."""

    broker: MemoryBroker
    queue: str
    message: Published
    redelivered: bool = False
    settled: str | None = None
    # what a consumer reads, copied from the message (Incoming's read-only properties)
    body: bytes = field(init=False)
    message_id: str | None = field(init=False)
    reply_to: str | None = field(init=False)
    correlation_id: str | None = field(init=False)
    routing_key: str = field(init=False)

    def __post_init__(self) -> None:
        m = self.message
        self.body, self.message_id, self.routing_key = m.body, m.message_id, m.routing_key
        self.reply_to, self.correlation_id = m.reply_to, m.correlation_id

    async def ack(self) -> None:
        self._settle("ack")

    async def reject(self) -> None:
        if self._settle("reject"):
            self.broker.dead.append(self)

    async def requeue(self) -> None:
        if self._settle("requeue"):
            self.broker._enqueue(self.queue, self.message, redelivered=True)

    def _settle(self, how: str) -> bool:
        spec = self.broker.queues[self.queue].spec
        if not spec.acks:  # settled when it was sent; a reject still dead-letters it
            self.settled = self.settled or "auto"
            return how == "reject" and spec.dead_letter and self not in self.broker.dead
        if self.settled is not None:
            return False  # the real channel would close; here the first settlement stands
        self.settled = how
        return True


@dataclass
class _Queue:
    spec: QueueSpec
    backlog: deque[MemoryIncoming] = field(default_factory=deque)
    handler: Handler | None = None


class MemoryBroker:
    """A broker for one user, in memory; everything it was told is kept for the test to read."""

    def __init__(self, user: str = "alice") -> None:
        self.user = user
        self.generation = 1
        self.stats = Statistics(connects=1, url="memory://")
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self.queues: dict[str, _Queue] = {}
        self.published: list[Published] = []
        self.deliveries: list[MemoryIncoming] = []
        self.dead: list[MemoryIncoming] = []
        self.deleted: list[str] = []
        self.down = False
        self.hold_confirms = False
        self.waiting: list[str] = []  # held durable publishes not confirmed yet, oldest first
        self.closed = False
        self._confirms: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the port ----------------------------------------------------------------------------

    async def connect(self, *, wait: float | None = None) -> None:
        self._check()

    async def close(self) -> None:
        self.closed = True

    async def declare(self, spec: QueueSpec) -> None:
        self._check()
        self.queues.setdefault(spec.name, _Queue(spec))

    async def forget(self, name: str, *, delete: bool = False) -> None:
        queue = self.queues.pop(name, None)
        if queue is not None and delete:
            self.deleted.append(name)

    def known_queues(self, prefix: str) -> list[str]:
        return [name for name in self.queues if name.startswith(prefix)]

    async def queue_info(self, name: str) -> tuple[int, int] | None:
        self._check()
        queue = self.queues.get(name)
        if queue is None:
            return None
        return len(queue.backlog), int(queue.handler is not None)

    async def consume(self, spec: QueueSpec, handler: Handler) -> None:
        await self.declare(spec)
        queue = self.queues[spec.name]
        queue.handler = handler
        while queue.backlog:
            self._hand(queue, queue.backlog.popleft())

    async def publish(  # the port's signature; `deadline` has no meaning here
        self, routing_key: str, body: bytes, *, message_id: str, durable: bool = True,
        mandatory: bool = True, exchange: str | None = None, reply_to: str | None = None,
        correlation_id: str | None = None, deadline: float | None = None,
    ) -> None:  # fmt: skip
        self._check()
        name = addresses.exchange(self.user) if exchange is None else exchange
        message = Published(
            name, routing_key, body, message_id, durable, mandatory, reply_to, correlation_id
        )
        if durable and self.hold_confirms:
            self.waiting.append(message_id)
            try:
                await self._confirms.setdefault(message_id, asyncio.Event()).wait()
            finally:
                self.waiting.remove(message_id)
            self._check()
        self.published.append(message)
        targets = self._route(message)
        if not targets and mandatory:
            self.stats.returned += 1
            raise NoSuchTarget(routing_key)
        for queue in targets:
            self._enqueue(queue, message)

    # -- for tests ---------------------------------------------------------------------------

    def confirm(self, message_id: str) -> None:
        """Let a held durable publish of `message_id` finish (now or when it comes)."""
        self._confirms.setdefault(message_id, asyncio.Event()).set()

    async def inject(
        self, queue: str, body: bytes, *, message_id: str = "m", reply_to: str | None = None
    ) -> MemoryIncoming:
        """Deliver `body` on `queue` as if a peer had published it; returns the delivery."""
        message = Published("", queue, body, message_id, True, False, reply_to)
        incoming = self._enqueue(queue, message)
        await self.idle()
        return incoming

    async def idle(self) -> None:
        """Wait until every delivery handed to a consumer has been handled."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def sent(self, routing_key: str) -> list[Published]:
        """The publishes made with `routing_key`, in order."""
        return [p for p in self.published if p.routing_key == routing_key]

    # -- inside ------------------------------------------------------------------------------

    def _check(self) -> None:
        if self.down:
            raise BrokerUnavailable("the broker is down (MemoryBroker.down)")

    def _route(self, message: Published) -> list[str]:
        if message.exchange == "":  # the default exchange: straight to the queue named
            return [message.routing_key] if message.routing_key in self.queues else []
        return [
            name
            for name, queue in self.queues.items()
            if (queue.spec.exchange or addresses.exchange(self.user)) == message.exchange
            and any(topic_matches(b, message.routing_key) for b in queue.spec.bindings)
        ]

    def _enqueue(
        self, name: str, message: Published, *, redelivered: bool = False
    ) -> MemoryIncoming:
        incoming = MemoryIncoming(self, name, message, redelivered)
        self.deliveries.append(incoming)
        queue = self.queues.get(name)
        if queue is None:
            return incoming  # no such queue: dropped, as an unbound publish is
        if queue.handler is None:
            queue.backlog.append(incoming)
        else:
            self._hand(queue, incoming)
        return incoming

    def _hand(self, queue: _Queue, incoming: MemoryIncoming) -> None:
        handler = queue.handler
        assert handler is not None

        async def handle() -> None:
            await handler(incoming)

        task = asyncio.get_running_loop().create_task(handle())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
