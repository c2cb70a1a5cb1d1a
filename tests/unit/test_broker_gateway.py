"""The Broker Gateway, through its mailbox, on the in-memory broker (runlet.testing): no network.

It routes each delivery to the actor of its concern and settles it as that actor says (a
keystroke to its session's input sink on the loop, when the session lends one),
dead-letters what it cannot decode, answers pings itself, opens and closes a job's queues,
and keeps each job's messages in order (state changes one after the other, output only once
`running` has left).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pykka
import pytest

from actors.broker_gateway import BrokerGateway
from runlet.protocol import addresses, wire
from runlet.protocol.messages import (
    InputSent,
    JobStateChanged,
    Ping,
    Pong,
    ReplayRequested,
    SendHeartbeat,
    StartJob,
)
from runlet.runtime.actor import Context
from runlet.runtime.local_messages import (
    CloseJobQueues,
    Delivered,
    OpenJobQueues,
    Publish,
    Settle,
)
from runlet.runtime.names import GATEWAY, JOB_QUEUE, session_name
from runlet.testing import MemoryBroker, MemoryIncoming
from tests.unit.fakes import DEADLINE, Inbox, add_fake, running_context, sample, wait_for

T = TypeVar("T")
JOB = "0123456789abcdef0123456789abcdef"
USER = "alice"


@dataclass(frozen=True)
class _Broker:
    urls: tuple[str, ...] = ("amqp://guest:guest@127.0.0.1:1/",)
    heartbeat: int = 5
    publish_timeout: float = 5.0
    prefetch: int = 8


@dataclass(frozen=True)
class _Settings:
    data_dir: Path
    node: str = "node1"
    user: str = USER
    tags: tuple[str, ...] = ("arm",)
    broker: _Broker = field(default_factory=_Broker)


@dataclass
class Rig:
    """A started gateway on a MemoryBroker, with a recording fake Job Queue."""

    ctx: Context
    broker: MemoryBroker
    job_queue: Inbox

    def on_loop(self, make: Callable[[], Any]) -> Any:
        """Run a coroutine (made on the loop) there and return its result."""

        async def run() -> Any:
            return await make()

        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            run(), self.ctx.loop.loop
        )
        return future.result(DEADLINE)

    def inject(self, queue: str, body: bytes, **kw: Any) -> MemoryIncoming:
        incoming: MemoryIncoming = self.on_loop(lambda: self.broker.inject(queue, body, **kw))
        return incoming

    def tell(self, message: object) -> None:
        assert self.ctx.router.tell(GATEWAY, message)

    def confirm(self, message_id: str) -> None:
        self.ctx.loop.call(self.broker.confirm, message_id)

    def published_ids(self) -> list[str]:
        return [p.message_id for p in list(self.broker.published)]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    broker = MemoryBroker(USER)
    with running_context(tmp_path) as ctx:
        ctx.settings = _Settings(data_dir=tmp_path)
        ctx.services["broker_factory"] = lambda *args, **kw: broker
        job_queue, _ = add_fake(ctx, JOB_QUEUE)
        ref = BrokerGateway.start(ctx)
        ctx.router.register(GATEWAY, ref)
        dispatch = addresses.dispatch_queue(USER, "node1")
        wait_for(lambda: dispatch in broker.queues, what="the dispatch queue consumed")
        yield Rig(ctx, broker, job_queue)


def start_job(job_id: str = JOB) -> bytes:
    return wire.encode(StartJob(job_id, USER, "node:node1", "me", b"\0" * 40, 1.0, None, 24, 80))


def test_setup_consumes_the_nodes_queues(rig: Rig) -> None:
    """Dispatch (node, all and tag keys), any, the rpc queue; the ledger queue is declared."""
    spec = rig.broker.queues[addresses.dispatch_queue(USER, "node1")].spec
    assert set(spec.bindings) == {
        addresses.dispatch_node_key("node1"),
        addresses.DISPATCH_ALL,
        addresses.dispatch_tag_key("arm"),
    }
    assert addresses.any_queue(USER) in rig.broker.queues
    assert addresses.ledger_queue(USER) in rig.broker.queues
    assert addresses.rpc_queue(USER, "node1") in rig.broker.queues


def test_a_dispatch_goes_to_the_job_queue_and_is_acked_when_it_says(rig: Rig) -> None:
    """A StartJob delivery reaches the Job Queue as Delivered; Settle(ok) acks it."""
    incoming = rig.inject(addresses.dispatch_queue(USER, "node1"), start_job())
    (delivered,) = rig.job_queue.wait_of(Delivered)
    assert isinstance(delivered.message, StartJob)
    assert incoming.settled is None  # nothing is acked before the journal has it
    rig.tell(Settle(delivered.token, ok=True))
    wait_for(lambda: incoming.settled == "ack", what="the ack")


def test_a_refused_delivery_is_dead_lettered_and_counted(rig: Rig) -> None:
    """Settle(ok=False) rejects the delivery: it lands in the dead letters, counted."""
    before = sample("runlet_rejected_messages_total", queue="actor", reason="refused")
    incoming = rig.inject(addresses.dispatch_queue(USER, "node1"), start_job())
    (delivered,) = rig.job_queue.wait_of(Delivered)
    rig.tell(Settle(delivered.token, ok=False, reason="wrong key"))
    wait_for(lambda: incoming.settled == "reject", what="the reject")
    assert incoming in rig.broker.dead
    assert sample("runlet_rejected_messages_total", queue="actor", reason="refused") == before + 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1garbage", id="garbage"),
        pytest.param(start_job()[:-3], id="truncated"),
        pytest.param(wire.encode(Ping(1, 1.0)), id="wrong-type"),
    ],
)
def test_bad_dispatches_never_reach_an_actor(rig: Rig, body: bytes) -> None:
    """Undecodable, truncated or wrong-type bodies are dead-lettered by the gateway itself."""
    incoming = rig.inject(addresses.dispatch_queue(USER, "node1"), body)
    assert incoming.settled == "reject"
    assert rig.job_queue.of(Delivered) == []


def test_a_ping_is_answered_on_the_loop(rig: Rig) -> None:
    """A Ping on the rpc queue is acked and answered with a Pong to its reply key."""
    reply = addresses.reply_key("viewer1", JOB)
    incoming = rig.inject(
        addresses.rpc_queue(USER, "node1"), wire.encode(Ping(7, 2.0)), reply_to=reply
    )
    assert incoming.settled == "ack"
    (pong,) = rig.broker.sent(reply)
    assert wire.decode(pong.body) == Pong("node1", 7, 2.0)


def test_a_servers_heartbeat_request_goes_to_the_job_queue(rig: Rig) -> None:
    """SendHeartbeat on the rpc queue (the server asking every node) reaches the Job Queue."""
    rig.inject(addresses.rpc_queue(USER, "node1"), wire.encode(SendHeartbeat(3.0)))
    (delivered,) = rig.job_queue.wait_of(Delivered)
    assert delivered.message == SendHeartbeat(3.0)


def test_input_goes_to_the_jobs_session_only_on_its_own_queue(rig: Rig) -> None:
    """With its input queue open a job's InputSent reaches its session; another job's is refused."""
    session, _ = add_fake(rig.ctx, session_name(JOB))
    rig.tell(OpenJobQueues(JOB, input=True, control=True))
    prefix = addresses.job_queue(USER, JOB, "input")
    wait_for(lambda: bool(rig.broker.known_queues(prefix)), what="the input queue")
    (queue,) = rig.broker.known_queues(prefix)
    rig.inject(queue, wire.encode(InputSent(JOB, "v1", 0, b"\0" * 40)))
    assert isinstance(session.wait_of(Delivered)[0].message, InputSent)
    other = rig.inject(queue, wire.encode(InputSent("f" * 32, "v1", 0, b"\0" * 40)))
    assert other in rig.broker.dead


def open_input_queue(rig: Rig) -> str:
    rig.tell(OpenJobQueues(JOB, input=True, control=True))
    prefix = addresses.job_queue(USER, JOB, "input")
    wait_for(lambda: bool(rig.broker.known_queues(prefix)), what="the input queue")
    (queue,) = rig.broker.known_queues(prefix)
    return queue


def test_input_goes_to_the_sessions_input_sink_and_is_settled_by_its_answer(rig: Rig) -> None:
    """With an input sink lent for the job, a keystroke is handed to it in the consumer's own
    callback, and dead-lettered when the sink refuses it; no mailbox is involved."""
    typed: list[InputSent] = []

    def sink(sent: InputSent) -> str | None:
        typed.append(sent)
        return None if sent.seq == 0 else "bad seal"

    async def lend() -> None:
        rig.ctx.plane.attach_input(JOB, sink)

    session, _ = add_fake(rig.ctx, session_name(JOB))
    queue = open_input_queue(rig)
    rig.on_loop(lend)
    good = rig.inject(queue, wire.encode(InputSent(JOB, "v1", 0, b"\0" * 40)))
    assert typed == [InputSent(JOB, "v1", 0, b"\0" * 40)]
    assert good not in rig.broker.dead
    before = sample("runlet_rejected_messages_total", queue="actor", reason="refused")
    bad = rig.inject(queue, wire.encode(InputSent(JOB, "v1", 1, b"\0" * 40)))
    assert bad in rig.broker.dead
    assert sample("runlet_rejected_messages_total", queue="actor", reason="refused") == before + 1
    assert session.all() == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xc1garbage", id="garbage"),
        pytest.param(wire.encode(InputSent(JOB, "v1", 0, b"\0" * 40))[:-2], id="truncated"),
        pytest.param(wire.encode(Ping(1, 1.0)), id="wrong-type"),
        pytest.param(wire.encode(InputSent("f" * 32, "v1", 0, b"\0" * 40)), id="other-job"),
    ],
)
def test_bad_input_never_reaches_the_input_sink(rig: Rig, body: bytes) -> None:
    """Undecodable input, another type, or another job's input is dead-lettered unseen."""
    typed: list[InputSent] = []

    async def lend() -> None:
        rig.ctx.plane.attach_input(JOB, typed.append)

    queue = open_input_queue(rig)
    rig.on_loop(lend)
    assert rig.inject(queue, body) in rig.broker.dead
    assert typed == []


def test_the_input_queue_is_consumed_without_acks(rig: Rig) -> None:
    """A keystroke costs no ack frame: the input queue dies with the connection anyway."""
    queue = open_input_queue(rig)
    assert not rig.broker.queues[queue].spec.acks


def test_output_through_the_output_sink_keeps_the_jobs_order(held: Rig) -> None:
    """A chunk handed to the Gateway's output sink waits for `running` as one told does, and
    its `on_sent` is called once it has left."""
    sent = threading.Event()

    async def hand() -> bool:
        return held.ctx.plane.publish_output(output(JOB, 0), sent.set)

    held.tell(OpenJobQueues(JOB, input=False, control=True, announce=state(JOB, 0)))
    held.confirm(f"{JOB}:0")
    settled(held, [f"{JOB}:0"])
    assert held.on_loop(hand)
    held.tell(OpenJobQueues(JOB, input=True, control=False, announce=state(JOB, 1, "running")))
    assert not sent.wait(0.2)
    held.confirm(f"{JOB}:1")
    settled(held, [f"{JOB}:0", f"{JOB}:1", f"{JOB}:o0"])
    assert sent.wait(DEADLINE)


def test_output_at_the_sink_before_the_jobs_lane_exists_waits_for_its_turn(held: Rig) -> None:
    """A chunk that reaches the output sink while the job's OpenJobQueues still waits in the
    mailbox is held behind it: it leaves after `running`, not before `queued`."""

    async def race() -> None:  # in one loop callback: the lane cannot exist in between
        held.ctx.router.tell(
            GATEWAY, OpenJobQueues(JOB, input=False, control=True, announce=state(JOB, 0))
        )
        assert held.ctx.plane.publish_output(output(JOB, 0))

    held.on_loop(race)
    held.confirm(f"{JOB}:0")
    settled(held, [f"{JOB}:0"])
    held.tell(OpenJobQueues(JOB, input=True, control=False, announce=state(JOB, 1, "running")))
    held.confirm(f"{JOB}:1")
    settled(held, [f"{JOB}:0", f"{JOB}:1", f"{JOB}:o0"])


def test_output_at_the_sink_for_a_job_without_a_lane_leaves_after_the_mailbox(
    held: Rig,
) -> None:
    """A chunk of a job the Gateway has no lane for (closed, or never opened) is not held."""

    async def hand() -> bool:
        return held.ctx.plane.publish_output(output("9" * 32, 4))

    assert held.on_loop(hand)
    settled(held, [f"{'9' * 32}:o4"])


def test_a_stopped_gateway_withdraws_its_output_sink(rig: Rig) -> None:
    """Once the Gateway stops, output takes the mailbox path (held for its next instance)."""

    async def has_sink() -> bool:
        return rig.ctx.plane.statistics()["output_sink"] == 1

    assert rig.on_loop(has_sink)
    (ref,) = pykka.ActorRegistry.get_by_class(BrokerGateway)
    ref.stop(block=True, timeout=DEADLINE)
    assert not rig.on_loop(has_sink)


def test_a_replay_request_flushes_every_sessions_store_before_it_goes_on(rig: Rig) -> None:
    """The vault must hold every chunk published before a replay is asked of it: the
    Gateway runs the sessions' store flushes, then routes the request to the Job Queue."""
    order: list[str] = []

    def flush() -> None:
        order.append("flushed")
        assert rig.job_queue.of(Delivered) == []  # not passed on yet

    async def lend() -> None:
        rig.ctx.plane.attach_store(JOB, flush)

    rig.on_loop(lend)
    rig.inject(
        addresses.rpc_queue(USER, "node1"),
        wire.encode(ReplayRequested(JOB, 0)),
        reply_to=addresses.reply_key("viewer1", JOB),
    )
    (delivered,) = rig.job_queue.wait_of(Delivered)
    assert isinstance(delivered.message, ReplayRequested)
    assert order == ["flushed"]


def test_closing_a_job_deletes_its_queues(rig: Rig) -> None:
    """CloseJobQueues deletes the job's input and control queues."""
    rig.tell(OpenJobQueues(JOB, input=True, control=True))
    prefix = addresses.job_queue(USER, JOB, "")
    wait_for(lambda: len(rig.broker.known_queues(prefix)) == 2, what="both job queues")
    opened = rig.broker.known_queues(prefix)
    rig.tell(CloseJobQueues(JOB))
    wait_for(lambda: not rig.broker.known_queues(prefix), what="the queues gone")
    assert sorted(rig.broker.deleted) == sorted(opened)


# --- each job's order ----------------------------------------------------------------------


def state(job_id: str, seq: int, name: str = "queued") -> Publish:
    event = JobStateChanged(job_id, "node1", name, seq, 1.0)
    return Publish(
        addresses.state_key(job_id),
        wire.encode(event),
        message_id=f"{job_id}:{seq}",
        durable=True,
        mandatory=False,
        job_id=job_id,
    )


def output(job_id: str, seq: int) -> Publish:
    return Publish(
        addresses.output_key(job_id), b"o", f"{job_id}:o{seq}", job_id=job_id, after_start=True
    )


@pytest.fixture
def held(rig: Rig) -> Rig:
    rig.broker.hold_confirms = True
    return rig


def settled(rig: Rig, ids: list[str]) -> None:
    wait_for(lambda: rig.published_ids() == ids, what=f"publishes {ids} ({rig.published_ids()})")


def test_a_jobs_state_changes_leave_one_after_the_other(held: Rig) -> None:
    """A job's next state change is not published before its previous one is confirmed."""
    for seq in range(3):
        held.tell(state(JOB, seq))
    held.confirm(f"{JOB}:1")  # confirmed early: it still waits for seq 0
    held.confirm(f"{JOB}:2")
    with pytest.raises(AssertionError):
        wait_for(lambda: held.published_ids() != [], timeout=0.3, what="(nothing yet)")
    held.confirm(f"{JOB}:0")
    settled(held, [f"{JOB}:0", f"{JOB}:1", f"{JOB}:2"])


def test_other_jobs_are_not_held_by_a_slow_confirm(held: Rig) -> None:
    """Order is per job: another job's state change leaves while the first one waits."""
    other = "f" * 32
    held.tell(state(JOB, 0))
    held.tell(state(other, 0))
    held.confirm(f"{other}:0")
    settled(held, [f"{other}:0"])
    held.confirm(f"{JOB}:0")
    settled(held, [f"{other}:0", f"{JOB}:0"])


def test_output_waits_for_running_then_follows_it(held: Rig) -> None:
    """Output produced before `running` has left is published only after it."""
    held.tell(OpenJobQueues(JOB, input=False, control=True, announce=state(JOB, 0)))
    held.confirm(f"{JOB}:0")
    settled(held, [f"{JOB}:0"])
    held.tell(output(JOB, 0))  # the session's first chunk overtook SessionStarted
    held.tell(OpenJobQueues(JOB, input=True, control=False, announce=state(JOB, 1, "running")))
    with pytest.raises(AssertionError):
        wait_for(lambda: len(held.published_ids()) > 1, timeout=0.3, what="(nothing yet)")
    held.confirm(f"{JOB}:1")
    settled(held, [f"{JOB}:0", f"{JOB}:1", f"{JOB}:o0"])
    held.tell(output(JOB, 1))  # `running` has left: output goes at once now
    settled(held, [f"{JOB}:0", f"{JOB}:1", f"{JOB}:o0", f"{JOB}:o1"])


def test_closing_a_job_that_never_ran_releases_its_output(held: Rig) -> None:
    """A job cancelled before `running` still gets its final chunk out, after its end state."""
    held.tell(OpenJobQueues(JOB, input=False, control=True, announce=state(JOB, 0)))
    held.confirm(f"{JOB}:0")
    held.tell(output(JOB, 0))
    held.tell(state(JOB, 1, "cancelled"))
    held.tell(CloseJobQueues(JOB))
    settled(held, [f"{JOB}:0"])
    held.confirm(f"{JOB}:1")
    settled(held, [f"{JOB}:0", f"{JOB}:1", f"{JOB}:o0"])


def test_output_of_a_job_without_a_lane_leaves_at_once(held: Rig) -> None:
    """Output after the job's queues are closed (or of an unknown job) is never held."""
    held.tell(output("9" * 32, 3))
    settled(held, [f"{'9' * 32}:o3"])


def test_stopping_with_a_jobs_operations_still_waiting_leaves_nothing_unawaited(
    held: Rig,
) -> None:
    """The daemon stops while a job's state changes wait in its lane: none is left half-made."""
    for seq in range(3):
        held.tell(state(JOB, seq))
    held.tell(CloseJobQueues(JOB))
    wait_for(lambda: held.broker.waiting == [f"{JOB}:0"], what="the first publish")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        held.ctx.stopping.set()
        pykka.ActorRegistry.stop_all(block=True, timeout=DEADLINE)
        held.ctx.loop.close()
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
