"""Broker Gateway: the daemon's one door to RabbitMQ.

It consumes the node's queues, decodes every delivery strictly and hands it, wrapped in
`Delivered`, to the actor named for its concern; that actor answers `Settle` to ack it or
dead-letter it. Anything undecodable, of the wrong type for its queue, or addressed to a job
the queue is not for, is dead-lettered here and counted: no actor ever sees it.

It keeps each job's messages in the order they happened: the job's queue operations and
state changes leave one after the other (each once the one before it is confirmed), and its
output only once `running` has left, so every watcher and the ledger see `queued` → `running`
→ the end, and `running` before the first output.

The data plane (`runlet.runtime.plane`) stays on the loop: a keystroke for a job whose
session has lent its input sink is handed to that sink in the consumer's callback and acked
or dead-lettered by its answer, with no actor in between; the Gateway lends the output sink
through which sessions publish their sealed output chunks. Without a sink, deliveries and
publishes take the mailboxes as before.

It never opens sealed payloads and never waits on an actor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pykka

from runlet import metrics
from runlet.adapters.broker import Broker, Handler, Incoming, QueueSpec
from runlet.adapters.broker_port import BrokerPort
from runlet.errors import BrokerUnavailable, NoSuchTarget, ProtocolError, RunletError
from runlet.protocol import addresses, wire
from runlet.protocol.messages import (
    ControlSent,
    InputSent,
    Ping,
    Pong,
    ReplayRequested,
    SendHeartbeat,
    StartJob,
)
from runlet.runtime.actor import Actor, Context
from runlet.runtime.local_messages import (
    CloseJobQueues,
    Delivered,
    LoopTaskFailed,
    OpenJobQueues,
    Publish,
    ReleaseOutput,
    Settle,
)
from runlet.runtime.names import GATEWAY, JOB_QUEUE, session_name

DURABLE_PUBLISH_WINDOW = 3600.0  # seconds a state change is retried before it is given up

Route = Callable[[object], str | None]


@dataclass
class _Lane:
    """One job's order on the loop: the last of its operations, and whether output may leave."""

    tail: asyncio.Future[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)  # `running` has left (or the end)
    open: bool = False  # between its OpenJobQueues and its CloseJobQueues


class BrokerGateway(Actor):
    """Owns the broker adapter; every coroutine it starts runs on the shared I/O loop."""

    def __init__(self, ctx: Context, name: str = GATEWAY) -> None:
        super().__init__(ctx, name)
        settings = ctx.settings
        self.user: str = settings.user
        self.node: str = settings.node
        self.tags: tuple[str, ...] = tuple(settings.tags)
        make_broker = ctx.services.get("broker_factory", Broker)  # a test passes a MemoryBroker
        self.broker: BrokerPort = make_broker(
            settings.broker.urls,
            self.user,
            name=f"runlet-daemon-{self.node}",
            heartbeat=settings.broker.heartbeat,
            publish_timeout=settings.broker.publish_timeout,
            prefetch=settings.broker.prefetch,
        )
        self._deliveries: dict[int, Incoming] = {}  # touched on the loop only
        self._topology_lock: asyncio.Lock | None = None  # made on the loop, first use
        self._lanes: dict[str, _Lane] = {}  # touched on the loop only
        self._tokens = itertools.count(1)
        self._outputs: set[asyncio.Task[None]] = set()  # output publishes under way
        # output of jobs with no lane yet, by job, until this mailbox says it may go (loop only)
        self._early: dict[str, list[tuple[Publish, Callable[[], None] | None]]] = {}

    def started(self) -> None:
        self.ctx.loop.call(self.ctx.plane.serve_output, self._output_sink)
        self.ctx.loop.submit(self._setup(), self._setup_done)

    def on_stop(self) -> None:
        # first, so that output published meanwhile waits in the mailbox of our next instance
        self.ctx.loop.call(self._withdraw_output_sink)
        if not self.ctx.loop.closed:
            try:
                self.ctx.loop.run_sync(self.broker.close(), 5)
            except (concurrent.futures.TimeoutError, RunletError):
                self.log.warning("broker_close_timed_out")

    def on_failure(self, *exc_info: Any) -> None:
        self.ctx.loop.call(self._withdraw_output_sink)
        super().on_failure(*exc_info)

    def handle(self, message: object) -> None:
        match message:
            case Publish(job_id=job_id, after_start=True) if job_id:
                self.ctx.loop.submit(self._publish_output(message), self._log_failure)
            case Publish(job_id=job_id) if job_id:
                self.ctx.loop.submit(
                    self._in_order(job_id, partial(self._publish, message)), self._log_failure
                )
            case Publish():
                self.ctx.loop.submit(self._publish(message), self._log_failure)
            case ReleaseOutput(job_id=job_id):
                self.ctx.loop.submit(self._release_output(job_id), self._log_failure)
            case Settle(token=token, ok=ok, reason=reason):
                self.ctx.loop.call(self._settle, token, ok, reason)
            case OpenJobQueues(job_id=job_id):
                self.ctx.loop.submit(
                    self._in_order(job_id, partial(self._open_job, message), opens=True),
                    self._log_failure,
                )
            case CloseJobQueues(job_id=job_id):
                self.ctx.loop.submit(
                    self._in_order(job_id, partial(self._close_job, job_id), closes=True),
                    self._log_failure,
                )
            case LoopTaskFailed(error=error):
                raise BrokerUnavailable(error)
            case _:
                self.unexpected(message)

    def _log_failure(self, future: concurrent.futures.Future[None]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            self.log.error("broker_operation_failed", error=repr(exc))

    # -- on the loop -------------------------------------------------------------------------

    def _withdraw_output_sink(self) -> None:
        self.ctx.plane.withdraw_output(self._output_sink)

    def _output_sink(self, message: Publish, on_sent: Callable[[], None] | None) -> None:
        """The data plane's output sink: publish a job's chunk in order, on the loop.

        A chunk of a job that has no lane here may be early: the OpenJobQueues that makes its
        lane can still wait in this actor's mailbox. Such chunks (and any after them) wait
        until a ReleaseOutput through the mailbox says that everything told before is done.
        """
        job_id = message.job_id
        if (early := self._early.get(job_id)) is not None:
            early.append((message, on_sent))
        elif job_id not in self._lanes:
            self._early[job_id] = [(message, on_sent)]
            try:
                self.actor_ref.tell(ReleaseOutput(job_id))
            except pykka.ActorDeadError:  # stopping: no lane will come; nothing to wait for
                self._start_output(*self._early.pop(job_id)[0])
        else:
            self._start_output(message, on_sent)

    def _start_output(self, message: Publish, on_sent: Callable[[], None] | None) -> None:
        task = asyncio.get_running_loop().create_task(self._publish_output(message))
        self._outputs.add(task)
        task.add_done_callback(partial(self._output_done, on_sent))

    async def _release_output(self, job_id: str) -> None:
        # a coroutine, not a callback: it runs after the first step of every coroutine
        # submitted before it, which is where `_in_order` makes a job's lane
        for message, on_sent in self._early.pop(job_id, []):
            self._start_output(message, on_sent)

    def _output_done(self, on_sent: Callable[[], None] | None, task: asyncio.Task[None]) -> None:
        self._outputs.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.log.error("broker_operation_failed", error=repr(exc))
        if on_sent is not None:
            on_sent()

    async def _setup(self) -> None:
        self.log.info("broker_connecting", urls=len(self.ctx.settings.broker.urls))
        await self.broker.connect(wait=float("inf"))
        self.broker.on_reconnect.append(self._reconnected)
        node_bindings = (
            addresses.dispatch_node_key(self.node),
            addresses.DISPATCH_ALL,
            *(addresses.dispatch_tag_key(tag) for tag in self.tags),
        )
        dispatch = QueueSpec(
            addresses.dispatch_queue(self.user, self.node), "quorum", node_bindings
        )
        any_spec = QueueSpec(addresses.any_queue(self.user), "quorum", (addresses.DISPATCH_ANY,))
        ledger = QueueSpec(addresses.ledger_queue(self.user), "quorum", addresses.LEDGER_PATTERNS)
        rpc = QueueSpec(
            addresses.rpc_queue(self.user, self.node),
            "exclusive",
            (addresses.rpc_key(self.node), addresses.RPC_JOBS),
        )
        await self.broker.declare(ledger)
        await self.broker.consume(dispatch, self._handler("dispatch", _route_dispatch))
        await self.broker.consume(any_spec, self._handler("dispatch.any", _route_dispatch))
        await self.broker.consume(rpc, self._rpc_handler)
        self.log.info("broker_ready", url=self.broker.stats.url)

    @property
    def _rpc_other(self) -> Handler:
        return self._handler("rpc", _route_rpc)

    def _setup_done(self, future: concurrent.futures.Future[None]) -> None:
        if future.cancelled():  # the loop closed under it: the daemon is stopping
            return
        exc = future.exception()
        if exc is not None:
            self.log.error("broker_setup_failed", error=repr(exc))
            self.actor_ref.tell(LoopTaskFailed(repr(exc)))

    async def _reconnected(self) -> None:
        metrics.RECONNECTS.inc()
        self.log.info("broker_reconnected", url=self.broker.stats.url)

    def _handler(self, queue: str, route: Route) -> Handler:
        async def on_message(incoming: Incoming) -> None:
            try:
                msg = wire.decode(incoming.body)
                target = route(msg)
                if target is None:
                    raise ProtocolError(f"{type(msg).__name__} does not belong on {queue} queues")
            except ProtocolError as exc:
                self._rejected(queue, "invalid", str(exc))
                await incoming.reject()
                return
            token = next(self._tokens)
            self._deliveries[token] = incoming
            delivered = Delivered(
                token, msg, incoming.reply_to, incoming.correlation_id, incoming.redelivered
            )
            if not self.ctx.router.tell(target, delivered):
                self._deliveries.pop(token, None)
                self._rejected(queue, "no_receiver", f"nobody handles {target}")
                await incoming.reject()

        return on_message

    async def _rpc_handler(self, incoming: Incoming) -> None:
        """Pings are answered right here on the loop (they measure the path, not the actors)."""
        try:
            ping = wire.decode_as(incoming.body, Ping)
        except ProtocolError:
            # a replay request: the vault must hold every chunk published before it is asked
            self.ctx.plane.flush_stores()
            await self._rpc_other(incoming)
            return
        await incoming.ack()
        reply_to = incoming.reply_to
        if reply_to is None or not addresses.valid_reply_key(reply_to):
            return
        pong = wire.encode(Pong(self.node, ping.seq, ping.sent_at))
        try:
            await self.broker.publish(
                reply_to, pong, message_id=f"pong:{ping.seq}", durable=False, mandatory=False
            )
        except BrokerUnavailable:
            return

    def _input_handler(self, job_id: str) -> Handler:
        """A job's keystrokes: to its session's input sink on the loop, else to its mailbox."""
        by_mailbox = self._job_handler(job_id, "input")

        async def on_input(incoming: Incoming) -> None:
            sink = self.ctx.plane.input_sink(job_id)
            if sink is None:
                await by_mailbox(incoming)
                return
            try:
                sent = wire.decode_as(incoming.body, InputSent)
                if sent.job_id != job_id:
                    raise ProtocolError(f"input for job {sent.job_id} on the queue of {job_id}")
            except ProtocolError as exc:
                self._rejected("job.input", "invalid", str(exc))
                await incoming.reject()
                return
            # no await before the sink: keystrokes are typed in the order they were delivered
            refused = sink(sent)
            if refused is None:
                await incoming.ack()
            else:
                self._rejected("actor", "refused", refused)
                await incoming.reject()

        return on_input

    def _job_handler(self, job_id: str, concern: str) -> Handler:
        def route(msg: object) -> str | None:
            match msg:
                case InputSent(job_id=jid) if concern == "input" and jid == job_id:
                    return session_name(job_id)
                case ControlSent(job_id=jid) if concern == "control" and jid == job_id:
                    return JOB_QUEUE
            return None

        return self._handler(f"job.{concern}", route)

    def _rejected(self, queue: str, reason: str, detail: str) -> None:
        metrics.REJECTED.labels(queue=queue, reason=reason).inc()
        self.log.warning("message_rejected", queue=queue, reason=reason, detail=detail)

    def _settle(self, token: int, ok: bool, reason: str) -> None:
        incoming = self._deliveries.pop(token, None)
        if incoming is None:
            return
        if not ok:
            self._rejected("actor", "refused", reason)
        self.ctx.loop.submit(incoming.ack() if ok else incoming.reject())

    async def _publish(self, message: Publish) -> None:
        deadline = time.monotonic() + DURABLE_PUBLISH_WINDOW if message.durable else None
        try:
            await self.broker.publish(
                message.routing_key,
                message.body,
                message_id=message.message_id,
                durable=message.durable,
                mandatory=message.mandatory,
                exchange=message.exchange,
                correlation_id=message.correlation_id,
                deadline=deadline,
            )
        except (BrokerUnavailable, NoSuchTarget) as exc:
            kind = "durable" if message.durable else "interactive"
            metrics.PUBLISH_FAILURES.labels(kind=kind).inc()
            if message.durable:
                self.log.error("publish_failed", routing_key=message.routing_key, error=str(exc))

    def _lock(self) -> asyncio.Lock:
        # per-job queues are opened and closed strictly in the order asked: a close that
        # overtook an open would delete a queue half-way through its declaration
        if self._topology_lock is None:
            self._topology_lock = asyncio.Lock()
        return self._topology_lock

    async def _in_order(
        self,
        job_id: str,
        operation: Callable[[], Awaitable[None]],
        *,
        opens: bool = False,
        closes: bool = False,
    ) -> None:
        """Run one of a job's operations once the job's previous one has finished.

        The operation is made only when its turn comes, so one cancelled while it waits (the
        loop closing) leaves no coroutine behind that was never awaited.

        The lane is taken before the first await, so operations keep the order in which they
        were submitted (the order of this actor's mailbox). A job's lane lives from its
        OpenJobQueues to its CloseJobQueues; a lone state change (a refused job) makes a lane
        that goes once it is idle.
        """
        lane = self._lanes.setdefault(job_id, _Lane())
        if opens:
            lane.open = True
        previous, done = lane.tail, asyncio.get_running_loop().create_future()
        lane.tail = done
        try:
            if previous is not None:
                # shielded: a waiter cancelled (the loop closing) must not cancel the chain
                await asyncio.shield(previous)  # it never raises: see the finally below
            await operation()
        finally:
            done.set_result(None)
            if closes:
                lane.open = False
                lane.started.set()  # whatever output is left may go now
            if lane.tail is done and not lane.open:
                self._lanes.pop(job_id, None)

    async def _publish_output(self, message: Publish) -> None:
        """A job's output leaves only once its `running` has (a job without a lane: at once)."""
        lane = self._lanes.get(message.job_id)
        if lane is not None and not lane.started.is_set():
            await lane.started.wait()
        await self._publish(message)

    async def _open_job(self, message: OpenJobQueues) -> None:
        async with self._lock():
            await self._declare_job(message)
        if message.announce is not None:
            await self._publish(message.announce)
        if message.input and (lane := self._lanes.get(message.job_id)) is not None:
            lane.started.set()  # the input queue exists and `running` has left: output may go

    async def _declare_job(self, message: OpenJobQueues) -> None:
        job_id = message.job_id
        suffix = f"g{self.broker.generation}"
        try:
            if message.control:
                spec = QueueSpec(
                    addresses.job_queue(self.user, job_id, "control", suffix),
                    "exclusive",
                    (addresses.control_key(job_id),),
                )
                await self.broker.consume(spec, self._job_handler(job_id, "control"))
            if message.input:
                # no acks: it dies with the connection, so an ack would keep nothing, and it
                # would cost a frame on every keystroke's way (a refusal is still dead-lettered)
                spec = QueueSpec(
                    addresses.job_queue(self.user, job_id, "input", suffix),
                    "exclusive",
                    (addresses.input_key(job_id),),
                    acks=False,
                )
                await self.broker.consume(spec, self._input_handler(job_id))
        except BrokerUnavailable as exc:
            # restored on reconnect: the spec is remembered by the adapter
            self.log.warning("job_queues_deferred", job=job_id, error=str(exc))

    async def _close_job(self, job_id: str) -> None:
        prefix = addresses.job_queue(self.user, job_id, "")
        async with self._lock():
            for name in self.broker.known_queues(prefix):
                await self.broker.forget(name, delete=True)


def _route_dispatch(msg: object) -> str | None:
    return JOB_QUEUE if isinstance(msg, StartJob) else None


def _route_rpc(msg: object) -> str | None:
    return JOB_QUEUE if isinstance(msg, ReplayRequested | SendHeartbeat) else None
