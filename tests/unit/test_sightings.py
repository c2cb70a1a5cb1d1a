"""Sightings: the fleet as a client hears it on the broker, for `runlet ui` with no server."""

from __future__ import annotations

from runlet.client.sightings import MAX_JOBS, Sightings
from runlet.protocol import addresses, wire
from runlet.protocol.messages import JobStateChanged, NodeHeartbeat, Query
from runlet.testing import MemoryBroker
from tests.support import run

USER = "alice"
A, B = "a" * 32, "b" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _heard(clock: Clock) -> tuple[MemoryBroker, Sightings]:
    broker = MemoryBroker(USER)
    sightings = Sightings(broker, USER, "laptop", online_seconds=30, clock=clock)
    await sightings.start()
    return broker, sightings


async def _say(broker: MemoryBroker, key: str, msg: object) -> None:
    await broker.publish(key, wire.encode(msg), message_id=key, mandatory=True)
    await broker.idle()


def state(job: str, name: str, seq: int, at: float, **extra: object) -> JobStateChanged:
    return JobStateChanged(job, "edge-1", name, seq, at, "node:edge-1", **extra)  # type: ignore[arg-type]


def test_heartbeats_make_nodes_online_then_offline() -> None:
    """A node heard is online with its vitals; silent past the bound, offline."""

    async def scenario() -> None:
        clock = Clock()
        broker, sightings = await _heard(clock)
        beat = NodeHeartbeat("edge-1", 5.0, "0.1.0", "Linux-aarch64", ("pi",), 1, 2, 12.5)
        await _say(broker, addresses.presence_key("edge-1"), beat)
        (row,) = sightings.nodes()
        assert (row["name"], row["online"], row["tags"], row["running"]) == (
            "edge-1",
            True,
            ["pi"],
            1,
        )
        assert (row["cpu_percent"], row["last_seen"]) == (12.5, 1000.0)
        clock.now += 31
        assert sightings.nodes()[0]["online"] is False

    run(scenario())


def test_state_changes_make_jobs_newest_first_with_their_history() -> None:
    """Jobs are listed newest first, filtered as the server filters; each with its states."""

    async def scenario() -> None:
        broker, sightings = await _heard(Clock())
        for msg in (
            state(A, "queued", 0, 10.0),
            state(A, "running", 1, 11.0),
            state(B, "queued", 0, 12.0),
            state(A, "exited", 2, 13.0, exit_code=3),
            state(A, "running", 1, 11.0),  # a retried publish: changes nothing
        ):
            await _say(broker, addresses.state_key(msg.job_id), msg)
        jobs = sightings.answer(Query("jobs"))
        assert [(j["job_id"], j["state"]) for j in jobs] == [(A, "exited"), (B, "queued")]
        assert (jobs[0]["exit_code"], jobs[0]["queued_at"], jobs[0]["ended_at"]) == (3, 10.0, 13.0)
        assert [j["job_id"] for j in sightings.answer(Query("jobs", state="queued"))] == [B]
        assert sightings.answer(Query("jobs", limit=1))[0]["job_id"] == A
        assert sightings.answer(Query("jobs", since=12.5))[0]["job_id"] == A
        (one,) = sightings.answer(Query("job", job_id=A))
        assert [h["state"] for h in one["history"]] == ["queued", "running", "exited"]
        assert sightings.answer(Query("job", job_id="c" * 32)) == []

    run(scenario())


def test_garbage_on_the_queue_is_counted_and_changes_nothing() -> None:
    """Undecodable bodies are dropped and counted."""

    async def scenario() -> None:
        broker, sightings = await _heard(Clock())
        await broker.publish(addresses.presence_key("x"), b"\x00garbage", message_id="g")
        await broker.idle()
        assert (sightings.rejected, sightings.nodes()) == (1, [])

    run(scenario())


def test_the_oldest_jobs_are_forgotten_past_the_bound() -> None:
    """No more than MAX_JOBS are kept: the oldest heard of go first."""

    async def scenario() -> None:
        broker, sightings = await _heard(Clock())
        for n in range(MAX_JOBS + 5):
            job = f"{n:032x}"
            body = wire.encode(state(job, "queued", 0, float(n)))
            await broker.publish(addresses.state_key(job), body, message_id=job)
        await broker.idle()
        jobs = sightings.answer(Query("jobs", limit=10_000))
        assert len(jobs) == MAX_JOBS
        assert jobs[-1]["job_id"] == f"{5:032x}"

    run(scenario())
