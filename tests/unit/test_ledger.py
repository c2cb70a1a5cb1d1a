"""The Ledger actor, through its queues, on the in-memory broker and ledger store: no network.

The actor is the real one; `ctx.services` gives it a `MemoryBroker` per user
(runlet.testing) and a `MemoryLedgerDb` (runlet.testing.ledger_db), a quick `Pace`, and the
context's fake clock for presence and silence. Messages reach it as a node's or a client's
would: published on the user's exchange under their routing keys.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.ledger import Ledger, Pace
from runlet.adapters.ledger_migrations import load_migrations
from runlet.adapters.ledger_port import JobRow, StateRow
from runlet.protocol import addresses, wire
from runlet.protocol.messages import (
    JobStateChanged,
    LogStored,
    NodeHeartbeat,
    Ping,
    Query,
    QueryAnswered,
    SendHeartbeat,
)
from runlet.runtime.actor import Context
from runlet.runtime.local_messages import ChildDied
from runlet.runtime.names import LEDGER, SUPERVISOR
from runlet.testing import MemoryBroker, MemoryIncoming
from runlet.testing.ledger_db import MemoryLedgerDb
from tests.unit.fakes import DEADLINE, FakeClock, add_fake, running_context, sample, wait_for

USER = "alice"
JOB = "0123456789abcdef0123456789abcdef"
OTHER = "f" * 32
T0 = 1_700_000_000.0
PRESENCE_TIMEOUT = 30.0
QUICK = Pace(sweep=0.01, users=3600.0, retry=0.01)  # accounts are looked up once, at start


@dataclass(frozen=True)
class _Server:
    database_url: str = "postgresql://runlet@db.invalid/runlet"
    database_password_file: Path | None = None
    database_schema: str | None = "ledger_unit"
    presence_timeout: float = PRESENCE_TIMEOUT


@dataclass(frozen=True)
class _Broker:
    urls: tuple[str, ...] = ("amqp://guest:guest@127.0.0.1:1/",)
    heartbeat: int = 5


@dataclass(frozen=True)
class _Settings:
    data_dir: Path
    server: _Server = field(default_factory=_Server)
    broker: _Broker = field(default_factory=_Broker)


class Brokers:
    """The `broker_factory` service: one MemoryBroker per user, kept for the test to read."""

    def __init__(self) -> None:
        self.made: dict[str, MemoryBroker] = {}
        self.options: dict[str, dict[str, Any]] = {}

    def __call__(self, urls: tuple[str, ...], user: str, **options: Any) -> MemoryBroker:
        self.options[user] = options
        return self.made.setdefault(user, MemoryBroker(user))


@dataclass
class Rig:
    """A started Ledger on memory fakes, attached to USER's exchange."""

    ctx: Context
    db: MemoryLedgerDb
    brokers: Brokers
    clock: FakeClock

    @property
    def broker(self) -> MemoryBroker:
        return self.brokers.made[USER]

    def on_loop(self, make: Callable[[], Any]) -> Any:
        """Run a coroutine (made on the loop) there and return its result."""

        async def run() -> Any:
            return await make()

        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            run(), self.ctx.loop.loop
        )
        return future.result(DEADLINE)

    def publish(
        self, key: str, body: bytes, *, message_id: str = "m1", settle: bool = True, **kw: Any
    ) -> MemoryIncoming:
        """Publish on USER's exchange as a peer would; returns the delivery it made.

        With `settle`, return once the actor has handled every delivery.
        """

        async def publish() -> MemoryIncoming:
            before = len(self.broker.deliveries)
            await self.broker.publish(key, body, message_id=message_id, **kw)
            if settle:
                await self.broker.idle()
            return self.broker.deliveries[before]

        incoming: MemoryIncoming = self.on_loop(publish)
        return incoming

    def state(self, event: JobStateChanged, **kw: Any) -> MemoryIncoming:
        """Publish a state change as a node does: on its job's state key, id `job:seq`."""
        message_id = f"{event.job_id}:{event.seq}"
        key = addresses.state_key(event.job_id)
        return self.publish(key, wire.encode(event), message_id=message_id, **kw)

    def job(self, job_id: str = JOB) -> tuple[JobRow, list[StateRow]] | None:
        found: tuple[JobRow, list[StateRow]] | None = self.on_loop(
            lambda: self.db.job(USER, job_id)
        )
        return found

    def ask(
        self, query: Query | bytes, correlation_id: str = "c1"
    ) -> tuple[MemoryIncoming, QueryAnswered]:
        """Ask as a client does; returns the delivery and the QueryAnswered sent back."""
        reply = addresses.reply_key("laptop-q1", "0" * 32)
        body = query if isinstance(query, bytes) else wire.encode(query)
        incoming = self.publish(
            addresses.SERVER_RPC,
            body,
            message_id="q1",
            reply_to=reply,
            correlation_id=correlation_id,
            durable=False,
        )
        (answer,) = self.broker.sent(reply)
        assert (answer.message_id, answer.correlation_id) == ("answer:q1", correlation_id)
        return incoming, wire.decode_as(answer.body, QueryAnswered)


def start_ledger(ctx: Context, db: MemoryLedgerDb, brokers: Brokers, pace: Pace = QUICK) -> None:
    ctx.settings = _Settings(data_dir=ctx.settings.data_dir)
    ctx.services.update(ledger_db_factory=db.connect, broker_factory=brokers, ledger_pace=pace)
    Ledger.start(ctx)  # it registers itself once started


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    clock = FakeClock(T0)
    db, brokers = MemoryLedgerDb(), Brokers()
    asyncio.run(db.add_user(USER))
    with running_context(tmp_path, clock=clock) as ctx:
        start_ledger(ctx, db, brokers)
        rpc = addresses.server_rpc_queue(USER)
        wait_for(lambda: USER in brokers.made and rpc in brokers.made[USER].queues, what="rpc")
        yield Rig(ctx, db, brokers, clock)


def event(state: str, seq: int, job: str = JOB, **fields: Any) -> JobStateChanged:
    """A state change of `job` on node n1, at T0 + seq unless `at` is given."""
    at = fields.pop("at", T0 + seq)
    return JobStateChanged(job, "n1", state, seq, at, target="node:n1", **fields)


def life(job: str = JOB) -> list[JobStateChanged]:
    return [event("queued", 0, job), event("running", 1, job), event("exited", 2, job, exit_code=3)]


def heartbeat(node: str = "n1") -> bytes:
    return wire.encode(NodeHeartbeat(node, 1.0, "0.1.0", "linux-aarch64", ("arm",), running=1))


def events_counted(result: str) -> float:
    return sample("runlet_ledger_events_total", result=result)


# --- start ---------------------------------------------------------------------------------------


def test_start_migrates_and_consumes_each_users_queues(rig: Rig) -> None:
    """It connects with the server's DSN and schema, migrates, and consumes USER's 3 queues."""
    assert (rig.db.dsn, rig.db.connects) == (_Server.database_url, 1)
    assert rig.db.applied == [m.version for m in load_migrations()]
    assert set(rig.broker.queues) == {
        addresses.ledger_queue(USER),
        addresses.presence_queue(USER),
        addresses.server_rpc_queue(USER),
    }
    ledger = rig.broker.queues[addresses.ledger_queue(USER)].spec
    assert (ledger.kind, ledger.bindings) == ("quorum", addresses.LEDGER_PATTERNS)
    assert rig.brokers.options[USER]["name"] == f"runlet-server-{USER}"


def test_attaching_a_user_asks_every_node_for_a_heartbeat(rig: Rig) -> None:
    """Right after it attaches, the server asks all the user's nodes for a beat (rpc.jobs)."""
    (asked,) = rig.broker.sent(addresses.RPC_JOBS)
    assert isinstance(wire.decode(asked.body), SendHeartbeat)


def test_an_unreachable_database_at_start_crashes_it_for_its_supervisor(tmp_path: Path) -> None:
    """No database at start: the actor dies and tells its supervisor, which restarts it."""
    db, brokers = MemoryLedgerDb(), Brokers()
    db.down = True
    with running_context(tmp_path) as ctx:
        supervisor, _ = add_fake(ctx, SUPERVISOR)
        start_ledger(ctx, db, brokers)
        (died,) = supervisor.wait_of(ChildDied)
        assert died.name == LEDGER
        assert "DatabaseUnavailable" in died.error
        assert brokers.made == {}


def test_stopping_closes_the_brokers_and_the_store(tmp_path: Path) -> None:
    """On stop every user's broker connection and the store are closed."""
    db, brokers = MemoryLedgerDb(), Brokers()
    asyncio.run(db.add_user(USER))
    with running_context(tmp_path) as ctx:
        start_ledger(ctx, db, brokers)
        wait_for(lambda: ctx.router.has(LEDGER) and USER in brokers.made, what="attached")
        wait_for(lambda: addresses.server_rpc_queue(USER) in brokers.made[USER].queues)
    assert brokers.made[USER].closed
    assert db.closed


def test_an_account_added_later_is_attached_at_the_next_look(tmp_path: Path) -> None:
    """A user added while it runs gets its queues consumed when it looks for accounts again."""
    db, brokers = MemoryLedgerDb(), Brokers()
    with running_context(tmp_path) as ctx:
        start_ledger(ctx, db, brokers, Pace(sweep=0.01, users=0.01, retry=0.01))
        wait_for(lambda: db.calls["users"] >= 1, what="the first look")
        assert brokers.made == {}
        asyncio.run(db.add_user("bob"))
        wait_for(lambda: "bob" in brokers.made, what="bob attached")
        wait_for(lambda: addresses.ledger_queue("bob") in brokers.made["bob"].queues)


# --- state changes -------------------------------------------------------------------------------


def test_a_state_change_is_recorded_and_acked(rig: Rig) -> None:
    """A node's `queued` is in the store once acked, counted as recorded."""
    before = events_counted("recorded")
    incoming = rig.state(event("queued", 0))
    assert incoming.settled == "ack"
    found = rig.job()
    assert found is not None
    row, history = found
    assert (row.user, row.state, row.state_seq, row.node, row.target) == (
        USER,
        "queued",
        0,
        "n1",
        "node:n1",
    )
    assert [(s.seq, s.state) for s in history] == [(0, "queued")]
    assert events_counted("recorded") == before + 1


def test_a_redelivered_state_change_changes_nothing(rig: Rig) -> None:
    """The same (job, seq) again, even with other content, is acked as a duplicate, ignored."""
    for change in life():
        rig.state(change)
    before, duplicates = rig.job(), events_counted("duplicate")
    again = rig.state(event("running", 1))
    other = rig.state(event("exited", 2, exit_code=99, detail="forged"))
    assert (again.settled, other.settled) == ("ack", "ack")
    assert rig.job() == before
    assert events_counted("duplicate") == duplicates + 2


def test_out_of_order_state_changes_end_in_the_latest(rig: Rig) -> None:
    """exited, running, queued: the job ends exited, with every milestone and all three events."""
    for change in reversed(life()):
        assert rig.state(change).settled == "ack"
    found = rig.job()
    assert found is not None
    row, history = found
    assert (row.state, row.state_seq, row.exit_code) == ("exited", 2, 3)
    assert (row.queued_at, row.started_at, row.ended_at) == (T0, T0 + 1, T0 + 2)
    assert [s.state for s in history] == ["queued", "running", "exited"]


def test_a_log_location_is_recorded_and_acked(rig: Rig) -> None:
    """A LogStored on the job's log key lands in the job's row."""
    rig.state(event("queued", 0))
    stored = LogStored(JOB, "n1", f"{USER}/n1/{JOB}.rlog", "ab" * 32)
    incoming = rig.publish(addresses.log_key(JOB), wire.encode(stored), message_id="log")
    assert incoming.settled == "ack"
    found = rig.job()
    assert found is not None
    assert (found[0].log_key, found[0].log_hash) == (stored.key, stored.hash)


@pytest.mark.parametrize(
    ("key", "body"),
    [
        pytest.param(addresses.state_key(JOB), b"", id="empty"),
        pytest.param(addresses.state_key(JOB), b"\xc1garbage", id="garbage"),
        pytest.param(addresses.state_key(JOB), wire.encode(event("queued", 0))[:-3], id="cut"),
        pytest.param(addresses.state_key(JOB), wire.encode(Ping(1, 1.0)), id="wrong-type"),
        pytest.param(addresses.state_key(OTHER), wire.encode(event("queued", 0)), id="other-job"),
        pytest.param(addresses.log_key(JOB), wire.encode(event("queued", 0)), id="state-as-log"),
        pytest.param(
            addresses.state_key(JOB),
            wire.encode(LogStored(JOB, "n1", f"{JOB}.rlog", "0" * 64)),
            id="log-as-state",
        ),
        pytest.param(
            addresses.state_key(JOB),
            wire.encode(event("queued", 0, at=1e20)),
            id="impossible-time",
        ),
    ],
)
def test_bad_ledger_messages_are_dead_lettered_and_counted(rig: Rig, key: str, body: bytes) -> None:
    """Undecodable, wrong-type, wrongly keyed or impossible: dead-lettered, counted, not stored."""
    invalid = sample("runlet_rejected_messages_total", queue="ledger", reason="invalid")
    rejected = events_counted("rejected")
    incoming = rig.publish(key, body)
    assert incoming.settled == "reject"
    assert incoming in rig.broker.dead
    assert sample("runlet_rejected_messages_total", queue="ledger", reason="invalid") == (
        invalid + 1
    )
    assert events_counted("rejected") == rejected + 1
    assert rig.on_loop(lambda: rig.db.jobs(USER)) == []


def test_database_down_a_state_change_waits_in_its_queue_until_it_is_back(rig: Rig) -> None:
    """Store down: the delivery is requeued, never acked; once it is back, recorded and acked."""
    rig.db.down = True
    first = rig.state(event("queued", 0), settle=False)
    wait_for(lambda: first.settled == "requeue", what="the first delivery given back")
    wait_for(lambda: len(rig.broker.deliveries) >= 3, what="more attempts")
    rig.db.down = False
    wait_for(lambda: rig.job() is not None, what="the event recorded")
    rig.on_loop(rig.broker.idle)
    tries = [d for d in rig.broker.deliveries if d.message_id == f"{JOB}:0"]
    assert [d.settled for d in tries] == ["requeue"] * (len(tries) - 1) + ["ack"]
    assert all(d.redelivered for d in tries[1:])
    assert rig.broker.dead == []


# --- presence and silence ------------------------------------------------------------------------


def test_a_heartbeat_marks_its_node_online_at_the_servers_time(rig: Rig) -> None:
    """A heartbeat is acked and the node shown online, last seen at the server's clock."""
    incoming = rig.publish(addresses.presence_key("n1"), heartbeat(), durable=False)
    assert incoming.settled == "ack"
    (node,) = rig.on_loop(lambda: rig.db.nodes(USER))
    assert (node.name, node.last_seen, node.online, node.running, node.tags) == (
        "n1",
        T0,
        True,
        1,
        ("arm",),
    )


def test_a_bad_or_unrecordable_heartbeat_is_acked_and_dropped(rig: Rig) -> None:
    """Garbage on presence is counted and acked; so is a heartbeat while the store is down."""
    invalid = sample("runlet_rejected_messages_total", queue="presence", reason="invalid")
    garbage = rig.publish(addresses.presence_key("n1"), b"\xc1", durable=False)
    assert garbage.settled == "ack"
    assert sample("runlet_rejected_messages_total", queue="presence", reason="invalid") == (
        invalid + 1
    )
    rig.db.down = True
    lost = rig.publish(addresses.presence_key("n1"), heartbeat(), durable=False)
    assert lost.settled == "ack"
    rig.db.down = False
    assert rig.on_loop(lambda: rig.db.nodes(USER)) == []


def test_a_silent_nodes_running_jobs_are_swept_to_lost(rig: Rig) -> None:
    """Silent past presence_timeout: node offline, its running job `lost`; its next event wins."""
    rig.publish(addresses.presence_key("n1"), heartbeat(), durable=False)
    rig.state(event("queued", 0))
    rig.state(event("running", 1))
    rig.state(event("queued", 0, OTHER))
    sweeps = rig.db.calls["stale_nodes"]
    wait_for(lambda: rig.db.calls["stale_nodes"] >= sweeps + 2, what="two sweeps")
    found = rig.job()
    assert found is not None
    assert found[0].state == "running"  # heard from within presence_timeout: not swept
    rig.clock.advance(PRESENCE_TIMEOUT + 1)
    wait_for(lambda: _state(rig) == "lost", what="the running job lost")
    found = rig.job()
    assert found is not None
    row, history = found
    assert (row.state, row.state_seq, row.ended_at) == ("lost", 1, T0 + PRESENCE_TIMEOUT + 1)
    assert [(s.seq, s.state) for s in history][-1] == (1, "lost")
    (node,) = rig.on_loop(lambda: rig.db.nodes(USER))
    assert not node.online
    waiting = rig.job(OTHER)
    assert waiting is not None
    assert waiting[0].state == "queued"
    assert rig.state(event("interrupted", 2)).settled == "ack"
    assert _state(rig) == "interrupted"


def _state(rig: Rig) -> str | None:
    found = rig.job()
    return None if found is None else found[0].state


# --- queries -------------------------------------------------------------------------------------


def test_a_jobs_query_is_answered_on_the_reply_path(rig: Rig) -> None:
    """`jobs` is acked and answered to its reply key, with its correlation id, as the rows."""
    for change in life():
        rig.state(change)
    rig.state(event("queued", 0, OTHER))
    incoming, answer = rig.ask(Query("jobs", state="exited"))
    assert incoming.settled == "ack"
    assert answer.ok, answer.error
    expected = rig.on_loop(lambda: rig.db.jobs(USER, state="exited"))
    assert wire.decode_rows(answer.rows) == [asdict(row) for row in expected]
    assert [row["job_id"] for row in wire.decode_rows(answer.rows)] == [JOB]


def test_a_job_query_is_answered_with_its_history(rig: Rig) -> None:
    """`job` answers one row: the job and its whole history."""
    for change in life():
        rig.state(change)
    _, answer = rig.ask(Query("job", job_id=JOB))
    assert answer.ok, answer.error
    [row] = wire.decode_rows(answer.rows)
    assert row["job"]["state"] == "exited"
    assert [h["state"] for h in row["history"]] == ["queued", "running", "exited"]


def test_a_nodes_query_is_answered(rig: Rig) -> None:
    """`nodes` answers the user's nodes as their last heartbeat described them."""
    rig.publish(addresses.presence_key("n1"), heartbeat(), durable=False)
    _, answer = rig.ask(Query("nodes"))
    assert answer.ok, answer.error
    [node] = wire.decode_rows(answer.rows)
    assert (node["name"], node["online"], node["last_seen"]) == ("n1", True, T0)


@pytest.mark.parametrize(
    ("query", "settled", "error"),
    [
        pytest.param(b"\xc1garbage", "reject", "bad query", id="garbage"),
        pytest.param(wire.encode(Ping(1, 1.0)), "reject", "bad query", id="wrong-type"),
        pytest.param(Query("jobs", since=1e20), "ack", "bad query", id="impossible-since"),
        pytest.param(Query("job", job_id=OTHER), "ack", f"no job {OTHER}", id="unknown-job"),
    ],
)
def test_a_bad_query_is_answered_with_an_error(
    rig: Rig, query: Query | bytes, settled: str, error: str
) -> None:
    """A query it cannot decode (dead-lettered) or cannot answer gets an error back."""
    incoming, answer = rig.ask(query)
    assert incoming.settled == settled
    assert not answer.ok
    assert answer.error is not None
    assert answer.error.startswith(error)


def test_a_query_while_the_database_is_down_is_answered_so(rig: Rig) -> None:
    """With the store down a query is still answered at once, with the reason."""
    rig.db.down = True
    incoming, answer = rig.ask(Query("nodes"))
    rig.db.down = False
    assert incoming.settled == "ack"
    assert not answer.ok
    assert answer.error is not None
    assert "unavailable" in answer.error


def test_a_query_without_a_valid_reply_key_is_not_answered(rig: Rig) -> None:
    """No reply key, or one outside `reply.*`: acked, and nothing is published."""
    for reply_to in (None, "runlet.alice.ledger"):
        incoming = rig.publish(
            addresses.SERVER_RPC, wire.encode(Query("nodes")), reply_to=reply_to, durable=False
        )
        assert incoming.settled == "ack"
    answers = [p for p in rig.broker.published if p.routing_key != addresses.RPC_JOBS]
    assert [p.routing_key for p in answers] == [addresses.SERVER_RPC] * 2
