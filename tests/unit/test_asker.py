"""Asker: questions for the server over one open connection, each answer matched to its own.

On the in-memory broker, with a fake server that answers when the test says so: out of order,
late, never, or not at all because no server consumes the queue.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runlet.adapters.broker_port import Incoming, QueueSpec
from runlet.client.queries import Asker
from runlet.errors import RunletError, ServerUnavailable
from runlet.protocol import addresses, wire
from runlet.protocol.messages import Query, QueryAnswered
from runlet.testing import MemoryBroker
from tests.support import run

USER = "alice"


class Server:
    """Holds each question until `answer` is called for it."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.questions: list[tuple[Query, str, str]] = []
        self.asked = asyncio.Event()

    async def start(self) -> None:
        spec = QueueSpec(addresses.server_rpc_queue(USER), "classic", (addresses.SERVER_RPC,))
        await self.broker.consume(spec, self.on_query)

    async def on_query(self, incoming: Incoming) -> None:
        await incoming.ack()
        query = wire.decode_as(incoming.body, Query)
        self.questions.append((query, incoming.reply_to or "", incoming.correlation_id or ""))
        self.asked.set()

    async def answer(self, index: int, rows: list[dict[str, Any]], *, ok: bool = True) -> None:
        _, reply_to, ident = self.questions[index]
        body = QueryAnswered(ok, wire.encode_rows(rows), None if ok else "refused")
        await self.broker.publish(
            reply_to, wire.encode(body), message_id=f"a{index}", correlation_id=ident
        )

    async def until(self, count: int) -> None:
        while len(self.questions) < count:
            self.asked.clear()
            await asyncio.wait_for(self.asked.wait(), 5)


async def _setup(*, server: bool = True) -> tuple[MemoryBroker, Asker, Server]:
    broker = MemoryBroker(USER)
    fake = Server(broker)
    if server:
        await fake.start()
    asker = Asker(broker, USER, "laptop")
    await asker.start()
    return broker, asker, fake


def test_answers_out_of_order_reach_their_own_questions() -> None:
    """Two questions at once, answered in reverse: each gets its own rows."""

    async def scenario() -> None:
        _, asker, server = await _setup()
        first = asyncio.ensure_future(asker.ask(Query("nodes")))
        second = asyncio.ensure_future(asker.ask(Query("jobs", limit=5)))
        await server.until(2)
        await server.answer(1, [{"which": "jobs"}])
        await server.answer(0, [{"which": "nodes"}])
        assert await first == [{"which": "nodes"}]
        assert await second == [{"which": "jobs"}]
        assert [q.kind for q, _, _ in server.questions] == ["nodes", "jobs"]

    run(scenario())


def test_a_late_answer_is_dropped_not_taken_for_the_next_question() -> None:
    """A question that gave up is ServerUnavailable; its late answer is counted and dropped."""

    async def scenario() -> None:
        _, asker, server = await _setup()
        with pytest.raises(ServerUnavailable, match="did not answer"):
            await asker.ask(Query("nodes"), timeout=0.05)
        following = asyncio.ensure_future(asker.ask(Query("nodes")))
        await server.until(2)
        await server.answer(0, [{"stale": True}])
        await server.answer(1, [{"fresh": True}])
        assert await following == [{"fresh": True}]
        assert asker.late == 1

    run(scenario())


def test_no_server_is_unavailable_at_once() -> None:
    """Nobody consumes the server's queue: the mandatory publish bounces, no waiting."""

    async def scenario() -> None:
        _, asker, _ = await _setup(server=False)
        with pytest.raises(ServerUnavailable, match="no Runlet server"):
            await asker.ask(Query("nodes"))

    run(scenario())


def test_a_refusal_is_a_runlet_error_with_the_servers_reason() -> None:
    """The server's `ok: false` answer becomes a RunletError saying why."""

    async def scenario() -> None:
        _, asker, server = await _setup()
        asked = asyncio.ensure_future(asker.ask(Query("nodes")))
        await server.until(1)
        await server.answer(0, [], ok=False)
        with pytest.raises(RunletError, match="refused"):
            await asked

    run(scenario())


def test_a_forged_answer_without_a_known_id_is_dropped() -> None:
    """An answer whose correlation id no question has is counted late, never delivered."""

    async def scenario() -> None:
        broker, asker, server = await _setup()
        asked = asyncio.ensure_future(asker.ask(Query("nodes")))
        await server.until(1)
        forged = wire.encode(QueryAnswered(True, wire.encode_rows([{"forged": True}])))
        await broker.publish(asker.reply, forged, message_id="f", correlation_id="nope")
        await broker.publish(asker.reply, forged, message_id="g")
        await server.answer(0, [{"real": True}])
        assert await asked == [{"real": True}]
        assert asker.late == 2

    run(scenario())
