"""The RabbitMQ adapter: one connection with failover, two channels, declared topology restored.

Runs on the asyncio loop only. What it guarantees, and why:

- **Failover.** It connects to the configured URLs in turn and, when the connection dies, moves
  to the next one, re-declares every queue and binding it was asked for and re-starts every
  consumer (aio-pika's robust connection takes one URL only, and restores no publish).
- **Durable publishes** go on a channel with publisher confirms and `on_return_raises`, as
  persistent messages. A publish caught by an outage is retried with the *same* message id
  until it is confirmed or its deadline passes, so consumers must drop duplicates by id.
- **Interactive publishes** (keystrokes, output) go on a second channel without confirms, in
  order, written at once: a quorum queue costs tens of milliseconds a message, this about one.
- An unroutable mandatory publish raises `NoSuchTarget`: that is how a client learns at once
  that no node serves a target.
- **Who it talks to and as whom** is `BrokerSecurity` (`security.py`): TLS context, password
  from its file, the login mechanism; a failed attempt is told in its words (`explain`).

aio-pika and aiormq exceptions never leave this module: they become `BrokerUnavailable`,
`NoSuchTarget`, or `AccessRefused` (a publish this account may not make: never retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
)

from runlet import metrics
from runlet.adapters.broker.delivery import BROKER_ERRORS, AmqpIncoming, connect_failure
from runlet.adapters.broker.properties import (
    Consumer,
    Topology,
    dead_lettered,
    declare_user_exchanges,
    persistent,
    queue_arguments,
    reply_text,
    transient,
)
from runlet.adapters.broker.security import BrokerSecurity
from runlet.adapters.broker_port import (
    Handler,
    QueueSpec,
    Statistics,
    safe_url,
)
from runlet.errors import AccessRefused, BrokerUnavailable, ClosedError, NoSuchTarget
from runlet.protocol import addresses

log = structlog.get_logger(__name__)


class Broker:
    """A failover AMQP connection for one user's exchange."""

    def __init__(
        self,
        urls: Sequence[str],
        user: str,
        *,
        name: str = "runlet",
        heartbeat: int = 10,
        publish_timeout: float = 10.0,
        prefetch: int = 64,
        connect_timeout: float = 5.0,
        security: BrokerSecurity | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one broker URL is needed")
        self.urls = tuple(urls)
        self.user = user
        self.name = name
        self.heartbeat = heartbeat
        self.publish_timeout = publish_timeout
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        self.security = security if security is not None else BrokerSecurity()
        self.generation = 0
        self.stats = Statistics()
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self._url_cycle = itertools.cycle(range(len(self.urls)))
        self._topology = Topology()
        self._ready = asyncio.Event()
        self._closed = False
        self._connection: AbstractConnection | None = None
        self._durable: AbstractChannel | None = None
        self._fast: AbstractChannel | None = None
        self._exchanges: dict[tuple[str, bool], AbstractExchange] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._fast_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self, *, wait: float | None = None) -> None:
        """Connect to the first reachable URL; keep reconnecting in the background after.

        With `wait` None, a broker that cannot be reached now raises `BrokerUnavailable`;
        otherwise the call waits up to `wait` seconds for one to come up.
        """
        if self._closed:
            raise ClosedError("broker adapter is closed")
        started = time.monotonic()
        deadline = None if wait is None else started + wait
        last: BaseException | None = None
        url, said = self.urls[0], ""
        while True:
            for _ in self.urls:
                url = self.urls[next(self._url_cycle)]
                try:
                    await self._open(url)
                except BROKER_ERRORS as exc:
                    last, why = exc, self.security.explain(exc)
                    if why != said and deadline is not None:  # a waiting daemon says why, once
                        log.warning(
                            "broker_connect_failed",
                            connection=self.name,
                            url=safe_url(url),
                            error=why,
                        )
                        said = why
                    continue
                self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
                return
            if deadline is None or time.monotonic() >= deadline:
                waited = time.monotonic() - started
                why = "" if last is None else self.security.explain(last)
                raise connect_failure(self.urls, url, last, waited, why) from last
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        """Close the connection; idempotent. Pending publishes fail with ClosedError."""
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        self._lost.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._connection is not None:
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await self._connection.close()

    async def wait_ready(self, timeout: float) -> None:
        if self._ready.is_set() and not self._closed:
            return  # no suspension: ordered publishes must not be reordered here
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError as exc:
            raise BrokerUnavailable(f"RabbitMQ unreachable for {timeout:.0f} s") from exc
        if self._closed:
            raise ClosedError("broker adapter is closed")

    async def _open(self, url: str) -> None:
        conn = await self.security.dial(
            url, timeout=self.connect_timeout, heartbeat=self.heartbeat, name=self.name
        )
        try:
            durable = await conn.channel(publisher_confirms=True, on_return_raises=True)
            fast = await conn.channel(publisher_confirms=False)
            await durable.set_qos(prefetch_count=self.prefetch)
            await fast.set_qos(prefetch_count=self.prefetch)
        except BaseException:
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await conn.close()
            raise
        self._lost = asyncio.Event()
        lost = self._lost
        conn.close_callbacks.add(lambda *_: lost.set())
        for channel in (durable, fast):
            # a channel the broker closes (an error answer) is as bad as a lost connection:
            # start over on a fresh connection, which restores every queue and consumer
            channel.close_callbacks.add(lambda *_: lost.set())
        self._connection, self._durable, self._fast = conn, durable, fast
        self._exchanges.clear()
        self.generation += 1
        self.stats.connects += 1
        self.stats.url = safe_url(url)
        try:
            await self._restore()
        except BaseException:
            # half-restored (say, an exclusive queue still locked by our dead connection):
            # close this one, or every retry would leave another connection behind
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await conn.close()
            raise
        self._ready.set()
        log.info("broker_connected", url=safe_url(url), generation=self.generation)

    async def _restore(self) -> None:
        await declare_user_exchanges(self._channel(durable=True), self.user)
        for spec in list(self._topology.queues.values()):
            await self._declare(spec)
        for consumer in list(self._topology.consumers.values()):
            await self._start_consumer(consumer)

    async def _supervise(self) -> None:
        while not self._closed:
            await self._lost.wait()
            if self._closed:
                return
            self._ready.clear()
            log.warning("broker_connection_lost", url=self.stats.url)
            if self._connection is not None and not self._connection.is_closed:
                with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                    await self._connection.close()
            await self._reconnect()

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self._closed:
            url = self.urls[next(self._url_cycle)]
            try:
                await self._open(url)
            except BROKER_ERRORS as exc:
                error = self.security.explain(exc)
                log.warning("broker_reconnect_failed", url=safe_url(url), error=error)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            self.stats.reconnects += 1
            for callback in list(self.on_reconnect):
                await callback()
            return

    # -- topology ----------------------------------------------------------------------------

    async def declare(self, spec: QueueSpec) -> None:
        """Declare and bind a queue now and after every reconnect."""
        self._topology.queues[spec.name] = spec
        await self._with_broker(self._declare(spec))

    async def forget(self, name: str, *, delete: bool = False) -> None:
        """Stop restoring a queue (and its consumer); optionally delete it now."""
        spec = self._topology.queues.pop(name, None)
        consumer = self._topology.consumers.pop(name, None)
        if consumer is not None and consumer.channel is not None and consumer.tag:
            try:
                await consumer.channel.basic_cancel(consumer.tag)
            except (*BROKER_ERRORS, RuntimeError):
                pass
            else:
                if spec is not None and spec.kind == "exclusive":
                    return  # auto-delete: it went with its only consumer (no channel, no RPC)
        if delete and self._ready.is_set() and self._connection is not None:
            # on a channel of its own: an error answer (the queue went with its consumer)
            # closes only that channel, never the ones every publish and consumer share
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                probe = await self._connection.channel(publisher_confirms=False)
                try:
                    await probe.queue_delete(name)
                finally:
                    with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                        await probe.close()

    async def _declare(self, spec: QueueSpec) -> AbstractQueue:
        channel = self._channel(durable=spec.kind == "quorum")
        queue = await channel.declare_queue(
            spec.name,
            durable=spec.kind == "quorum",
            exclusive=spec.kind == "exclusive",
            auto_delete=spec.kind == "exclusive",
            arguments=queue_arguments(spec, self.user),
        )
        exchange_name = spec.exchange or addresses.exchange(self.user)
        for key in spec.bindings:
            await queue.bind(exchange_name, routing_key=key)
        return queue

    def known_queues(self, prefix: str) -> list[str]:
        """Names of the queues this adapter restores that start with `prefix`."""
        return [name for name in self._topology.queues if name.startswith(prefix)]

    async def queue_info(self, name: str) -> tuple[int, int] | None:
        """(messages, consumers) of an existing queue, or None when there is no such queue."""
        await self.wait_ready(self.publish_timeout)
        assert self._connection is not None
        probe = await self._connection.channel(publisher_confirms=False)
        try:
            queue = await probe.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"cannot look up queue {name}: {exc}") from exc
        finally:
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await probe.close()
        result = queue.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)

    # -- consuming ---------------------------------------------------------------------------

    async def consume(self, spec: QueueSpec, handler: Handler) -> None:
        """Declare `spec` and deliver its messages to `handler`, across reconnects."""
        self._topology.queues[spec.name] = spec
        consumer = Consumer(spec, handler)
        self._topology.consumers[spec.name] = consumer
        await self._with_broker(self._start_consumer(consumer))

    async def _start_consumer(self, consumer: Consumer) -> None:
        queue = await self._declare(consumer.spec)
        generation = self.generation
        handler = consumer.handler
        acks, dead_letter = consumer.spec.acks, consumer.spec.dead_letter

        async def on_message(msg: aiormq.abc.DeliveredMessage) -> None:
            await handler(AmqpIncoming(msg, self, generation, acks=acks, dead_letter=dead_letter))

        # aiormq's consumer, not aio-pika's: it delivers in a task of its own already, and
        # aio-pika would wrap each delivery in an IncomingMessage and one more task
        raw = await self._channel(durable=consumer.spec.kind == "quorum").get_underlay_channel()
        ok = await raw.basic_consume(queue.name, on_message, no_ack=not acks)
        consumer.channel, consumer.tag = raw, str(ok.consumer_tag)

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        durable: bool = True,
        mandatory: bool = True,
        exchange: str | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        deadline: float | None = None,
    ) -> None:
        """Publish; durable ones are confirmed and retried with the same id until `deadline`.

        `deadline` is a `time.monotonic()` instant; it defaults to now + publish_timeout.
        """
        name = addresses.exchange(self.user) if exchange is None else exchange
        if not durable:
            properties = transient(message_id, reply_to, correlation_id)
            await self._publish_fast(name, routing_key, body, properties, mandatory)
            return
        message = persistent(body, message_id, reply_to, correlation_id)
        end = deadline if deadline is not None else time.monotonic() + self.publish_timeout
        await self._publish_confirmed(name, routing_key, message, mandatory, end)

    async def _publish_fast(
        self,
        name: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        """Keystrokes and output: straight onto the channel, which writes in order.

        aiormq's own publish, without aio-pika's Message and Exchange around it: they cost more
        than the rest of a keystroke's way through the daemon, and add nothing here (no
        confirms, no returns raised).
        """
        await self.wait_ready(self.publish_timeout)
        try:
            async with self._fast_lock:
                raw = await self._channel(durable=False).get_underlay_channel()
                await raw.basic_publish(
                    body,
                    exchange=name,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                )
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise AccessRefused(routing_key, reply_text(exc)) from exc
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"publish to {routing_key} failed: {exc}") from exc

    async def dead_letter(self, incoming: AmqpIncoming) -> None:
        """Put a delivery from a queue consumed without acks where a reject would have put it.

        Best effort, like the broker's own dead-lettering of a transient message.
        """
        with contextlib.suppress(BrokerUnavailable):
            await self._publish_fast(
                addresses.dead_letter_exchange(self.user),
                incoming.routing_key,
                incoming.body,
                dead_lettered(incoming),
                mandatory=False,
            )

    async def _publish_confirmed(
        self, name: str, routing_key: str, message: aio_pika.Message, mandatory: bool, end: float
    ) -> None:
        delay = 0.05
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailable(f"publish to {routing_key} not confirmed in time")
            try:
                await self.wait_ready(remaining)
                exchange = await self._exchange(name, durable=True)
                async with asyncio.timeout(max(0.1, end - time.monotonic())):
                    await exchange.publish(message, routing_key, mandatory=mandatory)
                return
            except aio_pika.exceptions.PublishError as exc:
                self.stats.returned += 1
                raise NoSuchTarget(routing_key) from exc
            except aiormq.exceptions.ChannelAccessRefused as exc:
                raise AccessRefused(routing_key, reply_text(exc)) from exc
            except BROKER_ERRORS as exc:
                self.stats.publish_retries += 1
                metrics.PUBLISH_RETRIES.inc()
                log.warning("publish_retried", routing_key=routing_key, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _exchange(self, name: str, *, durable: bool) -> AbstractExchange:
        key = (name, durable)
        exchange = self._exchanges.get(key)
        if exchange is None:
            channel = self._channel(durable=durable)
            exchange = channel.default_exchange if name == "" else await channel.get_exchange(name)
            self._exchanges[key] = exchange
        return exchange

    def _channel(self, *, durable: bool) -> AbstractChannel:
        channel = self._durable if durable else self._fast
        if channel is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        return channel

    async def _with_broker(self, coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc
