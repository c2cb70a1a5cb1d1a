"""Ledger: the server's record of every user's jobs and nodes, in PostgreSQL.

For each user known to the database it consumes three queues on that user's exchange:
`runlet.<user>.ledger` (every job state change, quorum), `runlet.<user>.presence` (node
heartbeats, short TTL) and `runlet.<user>.server.rpc` (queries). A state change is acked only
once PostgreSQL has it; if the database is down, deliveries go back to the queue and wait —
devices keep working meanwhile. Recording is idempotent, so redeliveries change nothing.

A state change or log location that cannot be decoded, is of another type, or came under the
key of another job is dead-lettered and counted. Every few seconds it looks for nodes whose
heartbeat stopped: their running jobs become `lost` (a node that comes back and reports them
corrects the ledger). When it attaches to a user's exchange (at its start, or for a new
account) it asks every node of that user for a heartbeat at once, so its view of who is
online does not wait for the nodes' next beats. It never sees a key, a command or output: it
stores ids, names, states, times and codes.

Its seams, in `ctx.services`: `ledger_db_factory` (default `runlet.adapters.ledger_db.connect`;
a test passes a `runlet.testing.ledger_db.MemoryLedgerDb`'s `connect`), `broker_factory`
(default `Broker`; a test passes one making `MemoryBroker`s) and `ledger_pace` (a `Pace`).
Presence and silence are timed by `ctx.clock`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import asdict, dataclass
from typing import Any

from runlet import metrics
from runlet.adapters.broker import Broker
from runlet.adapters.broker_port import BrokerPort, Incoming, QueueSpec
from runlet.adapters.ledger_db import connect
from runlet.adapters.ledger_dsn import server_dsn
from runlet.adapters.ledger_port import LedgerDbPort
from runlet.errors import ClosedError, DatabaseUnavailable, ProtocolError, RunletError
from runlet.protocol import addresses, wire
from runlet.protocol.messages import (
    JobStateChanged,
    LogStored,
    NodeHeartbeat,
    Query,
    QueryAnswered,
    SendHeartbeat,
)
from runlet.runtime.actor import Actor, Context
from runlet.runtime.local_messages import LoopTaskFailed
from runlet.runtime.names import LEDGER

PRESENCE_TTL_MS = 120_000


@dataclass(frozen=True, slots=True)
class Pace:
    """How often the Ledger looks again, in seconds; a test passes a quicker one."""

    sweep: float = 2.0  # between looks for silent nodes
    users: float = 5.0  # between looks for new accounts
    retry: float = 1.0  # before a delivery goes back to its queue, the database being down


class Ledger(Actor):
    """Owns the database pool and one broker connection per user, all on the I/O loop."""

    def __init__(self, ctx: Context, name: str = LEDGER) -> None:
        super().__init__(ctx, name)
        self.settings = ctx.settings
        self.server = ctx.settings.server
        self.connect_db = ctx.services.get("ledger_db_factory", connect)
        self.make_broker = ctx.services.get("broker_factory", Broker)
        self.pace: Pace = ctx.services.get("ledger_pace", Pace())
        self.db: LedgerDbPort | None = None  # once connected, on the loop
        self.brokers: dict[str, BrokerPort] = {}
        self.task: concurrent.futures.Future[None] | None = None

    def started(self) -> None:
        self.task = self.ctx.loop.submit(self._run(), self._ended)

    def on_stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if not self.ctx.loop.closed:
            try:
                self.ctx.loop.run_sync(self._close(), 10)
            except (concurrent.futures.TimeoutError, RunletError):
                self.log.warning("ledger_close_timed_out")

    def handle(self, message: object) -> None:
        match message:
            case LoopTaskFailed(error=error):
                raise DatabaseUnavailable(error)  # crash: the supervisor restarts us
            case _:
                self.unexpected(message)

    def _ended(self, future: concurrent.futures.Future[None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.log.error("ledger_failed", error=repr(exc))
            try:
                self.actor_ref.tell(LoopTaskFailed(repr(exc)))
            except Exception:  # noqa: BLE001 - already stopping
                return

    # -- on the loop -------------------------------------------------------------------------

    @property
    def store(self) -> LedgerDbPort:
        """The connected ledger store (only the loop's coroutines use it, once it is)."""
        if self.db is None:
            raise ClosedError("the ledger database is not connected")
        return self.db

    async def _run(self) -> None:
        dsn = server_dsn(self.server.database_url, self.server.database_password_file)
        self.db = await self.connect_db(dsn, schema=self.server.database_schema, max_size=10)
        applied = await self.store.migrate()
        self.log.info("ledger_ready", migrations_applied=applied)
        next_users = 0.0
        while True:
            now = time.monotonic()
            if now >= next_users:
                await self._attach_users()
                next_users = now + self.pace.users
            await self._sweep()
            await asyncio.sleep(self.pace.sweep)

    async def _close(self) -> None:
        for broker in self.brokers.values():
            await broker.close()
        self.brokers.clear()
        if self.db is not None:
            await self.db.close()

    async def _attach_users(self) -> None:
        for row in await self.store.users():
            if row.name not in self.brokers:
                await self._attach(row.name)

    async def _attach(self, user: str) -> None:
        broker: BrokerPort = self.make_broker(
            self.settings.broker.urls,
            user,
            name=f"runlet-server-{user}",
            heartbeat=self.settings.broker.heartbeat,
            prefetch=32,  # at most this many wait for the pool: no acquire times out
        )
        await broker.connect(wait=30)
        ledger = QueueSpec(addresses.ledger_queue(user), "quorum", addresses.LEDGER_PATTERNS)
        presence = QueueSpec(
            addresses.presence_queue(user),
            "classic",
            (addresses.PRESENCE_PATTERN,),
            dead_letter=False,
            arguments=(("x-message-ttl", PRESENCE_TTL_MS), ("x-expires", 24 * 3600 * 1000)),
        )
        rpc = QueueSpec(addresses.server_rpc_queue(user), "exclusive", (addresses.SERVER_RPC,))
        await broker.consume(ledger, lambda m: self._on_state(user, m))
        await broker.consume(presence, lambda m: self._on_presence(user, m))
        await broker.consume(rpc, lambda m: self._on_query(user, broker, m))
        self.brokers[user] = broker
        self.log.info("ledger_user_attached", user=user)
        await self._ask_for_heartbeats(user, broker)

    async def _ask_for_heartbeats(self, user: str, broker: BrokerPort) -> None:
        """Every online node beats now, so `runlet nodes` right after a start lists them."""
        asked = wire.encode(SendHeartbeat(self.ctx.clock()))
        try:
            await broker.publish(
                addresses.RPC_JOBS,
                asked,
                message_id=f"server:beat:{self.ctx.clock()}",
                durable=False,
                mandatory=False,  # no node yet: nobody to ask
            )
        except RunletError as exc:  # the beats come anyway, only later
            self.log.warning("heartbeats_not_asked", user=user, error=str(exc))

    async def _on_state(self, user: str, incoming: Incoming) -> None:
        try:
            event = _ledger_event(incoming)
            if isinstance(event, LogStored):
                await self.store.set_log(user, event.job_id, event.key, event.hash)
            else:
                fresh = await self.store.record_state(user, event)
                metrics.LEDGER_EVENTS.labels(result="recorded" if fresh else "duplicate").inc()
        except DatabaseUnavailable as exc:
            self.log.warning("ledger_write_deferred", user=user, error=str(exc))
            await asyncio.sleep(self.pace.retry)
            await incoming.requeue()
            return
        except ProtocolError as exc:
            metrics.LEDGER_EVENTS.labels(result="rejected").inc()
            metrics.REJECTED.labels(queue="ledger", reason="invalid").inc()
            self.log.warning("message_rejected", queue="ledger", user=user, detail=str(exc))
            await incoming.reject()
            return
        await incoming.ack()

    async def _on_presence(self, user: str, incoming: Incoming) -> None:
        try:
            beat = wire.decode_as(incoming.body, NodeHeartbeat)
            await self.store.record_presence(user, beat, received_at=self.ctx.clock())
        except ProtocolError as exc:
            metrics.REJECTED.labels(queue="presence", reason="invalid").inc()
            self.log.warning("message_rejected", queue="presence", user=user, detail=str(exc))
        except DatabaseUnavailable as exc:
            self.log.warning("presence_not_recorded", user=user, error=str(exc))
        await incoming.ack()  # a heartbeat is only worth its freshness: never redelivered

    async def _on_query(self, user: str, broker: BrokerPort, incoming: Incoming) -> None:
        try:
            await self._query(user, broker, incoming)
        except Exception as exc:
            self.log.exception("query_failed", user=user, error=repr(exc))
            raise

    async def _query(self, user: str, broker: BrokerPort, incoming: Incoming) -> None:
        reply_to = incoming.reply_to
        self.log.debug("query_received", user=user, reply_to=reply_to)
        try:
            query = wire.decode_as(incoming.body, Query)
        except ProtocolError as exc:
            metrics.REJECTED.labels(queue="server.rpc", reason="invalid").inc()
            await incoming.reject()
            answer = QueryAnswered(False, error=f"bad query: {exc}")
        else:
            await incoming.ack()
            answer = await self._answer(user, query)
        self.log.debug("query_answered", user=user, ok=answer.ok, error=answer.error)
        if reply_to is None or not addresses.valid_reply_key(reply_to):
            self.log.warning("query_unanswerable", user=user, reply_to=str(reply_to)[:80])
            return
        await broker.publish(
            reply_to,
            wire.encode(answer),
            message_id=f"answer:{incoming.message_id}",
            durable=False,
            mandatory=False,
            correlation_id=incoming.correlation_id,
        )

    async def _answer(self, user: str, query: Query) -> QueryAnswered:
        try:
            rows: list[dict[str, Any]]
            match query:
                case Query(kind="nodes"):
                    rows = [asdict(row) for row in await self.store.nodes(user)]
                case Query(kind="job", job_id=str() as job_id):
                    found = await self.store.job(user, job_id)
                    if found is None:
                        return QueryAnswered(False, error=f"no job {job_id} in the ledger")
                    job, history = found
                    rows = [{"job": asdict(job), "history": [asdict(h) for h in history]}]
                case _:
                    jobs = await self.store.jobs(
                        user,
                        node=query.node,
                        state=query.state,
                        since=query.since,
                        limit=query.limit,
                    )
                    rows = [asdict(job) for job in jobs]
        except DatabaseUnavailable as exc:
            return QueryAnswered(False, error=f"the ledger database is unavailable: {exc}")
        except ValueError as exc:
            return QueryAnswered(False, error=f"bad query: {exc}")
        body = wire.encode_rows(rows)
        if len(body) > wire.MAX_MESSAGE - 4096:
            return QueryAnswered(False, error="answer too large: ask with --limit")
        return QueryAnswered(True, rows=body)

    async def _sweep(self) -> None:
        now = self.ctx.clock()
        cutoff = now - self.server.presence_timeout
        try:
            for user, node in await self.store.stale_nodes(cutoff):
                lost = await self.store.mark_lost(
                    user, node, now, "its node stopped sending heartbeats", seen_before=cutoff
                )
                self.log.warning("node_silent", user=user, node=node, jobs_lost=len(lost))
            for state, count in (await self.store.statistics()).items():
                metrics.LEDGER_JOBS.labels(state=state).set(count)
            for user in self.brokers:
                online = sum(1 for n in await self.store.nodes(user) if n.online)
                metrics.NODES_ONLINE.labels(user=user).set(online)
        except DatabaseUnavailable as exc:
            self.log.warning("ledger_sweep_failed", error=str(exc))


def _ledger_event(incoming: Incoming) -> JobStateChanged | LogStored:
    """The state change or log location a delivery holds, under its own job's key.

    ProtocolError if it cannot be decoded, is of another type, or came under another key.
    """
    event: object = wire.decode(incoming.body)
    if isinstance(event, JobStateChanged):
        expected = addresses.state_key(event.job_id)
    elif isinstance(event, LogStored):
        expected = addresses.log_key(event.job_id)
    else:
        raise ProtocolError(f"{type(event).__name__} does not belong on the ledger queue")
    if incoming.routing_key != expected:
        raise ProtocolError(
            f"{type(event).__name__} of job {event.job_id} came as {incoming.routing_key[:120]!r}"
        )
    return event
