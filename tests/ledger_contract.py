"""What every ledger store must do, written once: the PostgreSQL one and the in-memory fake.

Each scenario takes a migrated, empty store (`runlet.adapters.ledger_port.LedgerDbPort`) and
fails with an AssertionError when the store breaks the contract. tests/unit/test_memory_ledger_db
runs them on `runlet.testing.ledger_db.MemoryLedgerDb`; tests/integration/test_database runs them
on `LedgerDb` over the real PostgreSQL, so the fake cannot drift from the store it stands for.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from runlet.adapters.ledger_port import LedgerDbPort, NodeRow, StateRow
from runlet.errors import ProtocolError
from runlet.protocol.messages import JobStateChanged, NodeHeartbeat
from runlet.protocol.states import STATES

T0 = 1_700_000_000.0  # whole or binary-fraction times: exact to the microsecond
USER = "alice"

Scenario = Callable[[LedgerDbPort], Awaitable[None]]


def new_job() -> str:
    return uuid.uuid4().hex


def event(job: str, state: str, seq: int, *, node: str = "n1", **fields: Any) -> JobStateChanged:
    """A state change of `job` at T0 + seq (unless `at` is given)."""
    at = fields.pop("at", T0 + seq)
    return JobStateChanged(job_id=job, node=node, state=state, seq=seq, at=at, **fields)


def life(job: str, *, node: str = "n1") -> list[JobStateChanged]:
    """queued → running → exited(3), in order."""
    return [
        event(job, "queued", 0, node=node, target=f"node:{node}"),
        event(job, "running", 1, node=node, target=f"node:{node}"),
        event(job, "exited", 2, node=node, target=f"node:{node}", exit_code=3, detail="done"),
    ]


def beat(node: str, *, running: int = 0, tags: tuple[str, ...] = ()) -> NodeHeartbeat:
    """A heartbeat whose own clock is far off: stores go by the time it was received."""
    return NodeHeartbeat(node, 1.0, "0.1.0", "linux-aarch64", tags, running=running, queued=2)


async def record(
    store: LedgerDbPort, events: list[JobStateChanged], user: str = USER
) -> list[bool]:
    return [await store.record_state(user, e) for e in events]


async def redelivery_changes_nothing(store: LedgerDbPort) -> None:
    """The same (user, job, seq) again, whatever it holds, is answered False and ignored."""
    job = new_job()
    assert await record(store, life(job)) == [True, True, True]
    before = await store.job(USER, job)
    assert await record(store, life(job)) == [False, False, False]
    assert await store.record_state(USER, event(job, "exited", 2, exit_code=99)) is False
    assert await store.job(USER, job) == before


async def order_does_not_matter(store: LedgerDbPort) -> None:
    """Events in reverse order end in the highest seq's state, with every time and event."""
    job = new_job()
    assert await record(store, life(job)[::-1]) == [True, True, True]
    found = await store.job(USER, job)
    assert found is not None
    row, history = found
    assert (row.state, row.state_seq, row.exit_code, row.detail) == ("exited", 2, 3, "done")
    assert (row.queued_at, row.started_at, row.ended_at, row.updated_at) == (
        T0,
        T0 + 1,
        T0 + 2,
        T0 + 2,
    )
    assert (row.node, row.target) == ("n1", "node:n1")
    assert history == [
        StateRow(0, "queued", T0, "n1", None, None, None),
        StateRow(1, "running", T0 + 1, "n1", None, None, None),
        StateRow(2, "exited", T0 + 2, "n1", 3, None, "done"),
    ]


async def lost_and_found(store: LedgerDbPort) -> None:
    """A silent node's running job is lost at its seq; the node's next event corrects it."""
    running, waiting = new_job(), new_job()
    await store.record_presence(USER, beat("n1", running=1), received_at=T0)
    await record(store, [*life(running)[:2], event(waiting, "queued", 0)])
    assert await store.stale_nodes(T0 + 60) == [(USER, "n1")]
    assert await store.mark_lost(USER, "n1", T0 + 100, "silent") == [running]
    assert await store.stale_nodes(T0 + 60) == []
    assert [n.online for n in await store.nodes(USER)] == [False]
    found = await store.job(USER, running)
    assert found is not None
    row, history = found
    assert (row.state, row.state_seq, row.ended_at, row.detail) == ("lost", 1, T0 + 100, "silent")
    assert (row.exit_code, row.signal, row.updated_at) == (None, None, T0 + 100)
    assert history[-1] == StateRow(1, "lost", T0 + 100, "n1", None, None, "silent")
    assert [(s.seq, s.state) for s in history] == [(0, "queued"), (1, "running"), (1, "lost")]
    other = await store.job(USER, waiting)
    assert other is not None
    assert other[0].state == "queued"
    assert await store.record_state(USER, event(running, "interrupted", 2, at=T0 + 200)) is True
    found = await store.job(USER, running)
    assert found is not None
    assert (found[0].state, found[0].state_seq, found[0].ended_at) == ("interrupted", 2, T0 + 200)


async def lost_stays_lost_on_an_older_event(store: LedgerDbPort) -> None:
    """After `lost`, a late older event joins the history but does not revive the job."""
    job = new_job()
    await store.record_state(USER, life(job)[1])
    assert await store.mark_lost(USER, "n1", T0 + 100, "silent") == [job]
    assert await store.mark_lost(USER, "n1", T0 + 101, "again") == []
    assert await store.record_state(USER, life(job)[0]) is True
    found = await store.job(USER, job)
    assert found is not None
    row, history = found
    assert (row.state, row.state_seq, row.queued_at, row.started_at) == ("lost", 1, T0, T0 + 1)
    assert [(s.seq, s.state) for s in history] == [(0, "queued"), (1, "running"), (1, "lost")]


async def a_node_seen_since_is_spared(store: LedgerDbPort) -> None:
    """With `seen_before`, a heartbeat that came after the staleness check wins."""
    job = new_job()
    await store.record_state(USER, life(job)[1])
    await store.record_presence(USER, beat("n1"), received_at=T0 + 50)
    assert await store.mark_lost(USER, "n1", T0 + 60, "silent", seen_before=T0 + 10) == []
    found = await store.job(USER, job)
    assert found is not None
    assert found[0].state == "running"
    assert [n.online for n in await store.nodes(USER)] == [True]


async def queries_filter_and_order(store: LedgerDbPort) -> None:
    """jobs() is newest first, filtered by node, state and since, limited, one user's only."""
    a, b, c, d = (new_job() for _ in range(4))
    await record(store, [event(a, "queued", 0, at=T0 + 10)])
    await record(store, [event(b, "running", 1, at=T0 + 30, node="n2")])
    await record(store, [event(c, "exited", 2, at=T0 + 20, exit_code=0)])
    await record(store, [event(d, "queued", 0, at=T0 + 40)], user="bob")

    async def ids(**filters: Any) -> list[str]:
        return [row.job_id for row in await store.jobs(USER, **filters)]

    assert await ids() == [b, c, a]
    assert await ids(node="n1") == [c, a]
    assert await ids(state="exited") == [c]
    assert await ids(since=T0 + 20) == [b, c]
    assert await ids(limit=2) == [b, c]
    assert await ids(node="n2", state="queued") == []
    assert await store.job("bob", a) is None
    refusals: tuple[tuple[str, Any], ...] = (
        ("state", "sleeping"),
        ("limit", 0),
        ("since", float("inf")),
        ("node", "a.b"),
    )
    for name, value in refusals:
        with pytest.raises(ValueError, match=name):
            await store.jobs(USER, **{name: value})


async def logs_join_their_job(store: LedgerDbPort) -> None:
    """A log location may come before the job's first event; the latest one wins."""
    job = new_job()
    await store.set_log(USER, job, f"{USER}/n1/{job}.rlog", "a" * 64)
    await record(store, life(job))
    await store.set_log(USER, job, f"{USER}/n1/{job}.rlog", "b" * 64)
    with pytest.raises(ValueError, match="hash"):
        await store.set_log(USER, job, "k", "not hex")
    [row] = await store.jobs(USER)
    assert (row.log_key, row.log_hash) == (f"{USER}/n1/{job}.rlog", "b" * 64)


async def nodes_as_their_last_heartbeat_said(store: LedgerDbPort) -> None:
    """nodes() by name, as last heard; stale_nodes() spans users and skips offline nodes."""
    await store.record_presence(USER, beat("n2"), received_at=T0)
    await store.record_presence(USER, beat("n1", tags=("gpu",)), received_at=T0)
    await store.record_presence(USER, beat("n1", running=2, tags=("arm",)), received_at=T0 + 5)
    await store.record_presence("bob", beat("n9"), received_at=T0)
    assert await store.nodes(USER) == [
        NodeRow("n1", "linux-aarch64", "0.1.0", ("arm",), T0 + 5, 2, 2, True),
        NodeRow("n2", "linux-aarch64", "0.1.0", (), T0, 0, 2, True),
    ]
    assert await store.stale_nodes(T0 + 1) == [(USER, "n2"), ("bob", "n9")]
    await store.mark_lost("bob", "n9", T0 + 2, "silent")
    assert await store.stale_nodes(T0 + 1) == [(USER, "n2")]


async def vitals_as_the_last_heartbeat_gave_them(store: LedgerDbPort) -> None:
    """A heartbeat's vitals are kept as given, replaced by the next one, None where unknown."""
    full = replace(
        beat("n1"),
        cpu_percent=12.5,
        mem_used=3 << 30,
        mem_total=8 << 30,
        load1=0.75,
        uptime=86400.5,
        temperature=48.25,
    )
    await store.record_presence(USER, full, received_at=T0)
    (row,) = await store.nodes(USER)
    assert (row.cpu_percent, row.mem_used, row.mem_total) == (12.5, 3 << 30, 8 << 30)
    assert (row.load1, row.uptime, row.temperature) == (0.75, 86400.5, 48.25)
    await store.record_presence(USER, replace(full, temperature=None), received_at=T0 + 1)
    (row,) = await store.nodes(USER)
    assert (row.temperature, row.cpu_percent) == (None, 12.5)
    await store.record_presence(USER, beat("n1"), received_at=T0 + 2)  # an older daemon
    (row,) = await store.nodes(USER)
    assert (row.cpu_percent, row.mem_total, row.uptime) == (None, None, None)


async def accounts_and_statistics(store: LedgerDbPort) -> None:
    """Accounts are added once and removed once; statistics count every state, zeros too."""
    assert await store.statistics() == dict.fromkeys(STATES, 0)
    assert await store.add_user("bob") is True
    assert await store.add_user("alice") is True
    assert await store.add_user("bob") is False
    assert [u.name for u in await store.users()] == ["alice", "bob"]
    assert await store.remove_user("bob") is True
    assert await store.remove_user("bob") is False
    await record(store, life(new_job()) + life(new_job())[:2])
    stats = await store.statistics()
    assert stats == {**dict.fromkeys(STATES, 0), "exited": 1, "running": 1}
    assert await store.migrate() == []  # the store came migrated: nothing is left to apply


async def bad_values_are_refused(store: LedgerDbPort) -> None:
    """A bad name is a ValueError, an event's impossible time a ProtocolError; text is cut."""
    job = new_job()
    with pytest.raises(ValueError, match="user"):
        await store.add_user("no.dots")
    with pytest.raises(ValueError, match="job id"):
        await store.job(USER, "not a job")
    with pytest.raises(ProtocolError, match=job):
        await store.record_state(USER, event(job, "queued", 0, at=float("inf")))
    assert await store.job(USER, job) is None
    await store.record_state(USER, event(job, "rejected", 0, detail="a\x00b" + "x" * 5000))
    found = await store.job(USER, job)
    assert found is not None
    assert found[0].detail == "a\ufffdb" + "x" * 997


SCENARIOS: list[Scenario] = [
    redelivery_changes_nothing,
    order_does_not_matter,
    lost_and_found,
    lost_stays_lost_on_an_older_event,
    a_node_seen_since_is_spared,
    queries_filter_and_order,
    logs_join_their_job,
    nodes_as_their_last_heartbeat_said,
    vitals_as_the_last_heartbeat_gave_them,
    accounts_and_statistics,
    bad_values_are_refused,
]


def scenario_id(scenario: Scenario) -> str:
    return getattr(scenario, "__name__", repr(scenario))
