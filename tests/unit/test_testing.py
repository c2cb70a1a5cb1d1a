"""The public fakes (runlet.testing) behave as the real adapters do where the actors look."""

from __future__ import annotations

import asyncio

import pytest

from runlet.adapters.broker_port import BrokerPort, QueueSpec
from runlet.errors import BrokerUnavailable, NoSuchTarget
from runlet.testing import MemoryBroker, MemoryIncoming, topic_matches


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("job.*.state", "job.abc.state", True),
        ("job.*.state", "job.abc.def.state", False),
        ("job.*.*.state", "job.abc.def.state", True),
        ("job.#", "job", True),
        ("job.#", "job.a.b.c", True),
        ("#", "anything.at.all", True),
        ("dispatch.node.n1", "dispatch.node.n2", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("*", "", True),  # one (empty) word, as RabbitMQ splits it
    ],
)
def test_topic_matching_follows_amqp(pattern: str, key: str, matches: bool) -> None:
    """`*` is one word and `#` any number of words, as on a RabbitMQ topic exchange."""
    assert topic_matches(pattern, key) is matches


def test_routes_holds_and_dead_letters() -> None:
    """Published messages reach bound queues (kept until consumed); rejects are dead letters;
    an unroutable mandatory publish is NoSuchTarget; down means BrokerUnavailable."""

    async def scenario() -> None:
        broker: BrokerPort = MemoryBroker("alice")
        assert isinstance(broker, MemoryBroker)
        await broker.declare(QueueSpec("q1", bindings=("job.*.state",)))
        await broker.publish("job.j1.state", b"one", message_id="1")
        assert await broker.queue_info("q1") == (1, 0)
        got: list[MemoryIncoming] = []

        async def handler(incoming: object) -> None:
            assert isinstance(incoming, MemoryIncoming)
            got.append(incoming)
            await incoming.reject()

        await broker.consume(QueueSpec("q1", bindings=("job.*.state",)), handler)
        await broker.idle()
        assert [g.body for g in got] == [b"one"]
        assert broker.dead == got
        with pytest.raises(NoSuchTarget):
            await broker.publish("nobody.listens", b"x", message_id="2", mandatory=True)
        broker.down = True
        with pytest.raises(BrokerUnavailable):
            await broker.publish("job.j1.state", b"x", message_id="3")

    asyncio.run(scenario())
