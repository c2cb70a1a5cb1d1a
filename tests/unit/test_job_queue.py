"""The Job Queue: journal before ack, FIFO starts, restarts, control and replay."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.governor import Governor
from actors.job_queue import JOURNAL_RETENTION, JOURNAL_SWEEP_SECONDS, JobQueue
from runlet.adapters.journal import Journal
from runlet.adapters.vitals import Vitals
from runlet.protocol import addresses, wire
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import (
    ControlSent,
    JobStateChanged,
    NodeHeartbeat,
    ReplayRequested,
    SendHeartbeat,
    StartJob,
)
from runlet.protocol.payloads import Control, JobSpec
from runlet.protocol.states import ExitStatus
from runlet.runtime.actor import Context, start_supervisor, supervise
from runlet.runtime.local_messages import (
    ChildDied,
    CloseJobQueues,
    Delivered,
    ForgetChild,
    HeartbeatDue,
    OpenJobQueues,
    OpenLog,
    Publish,
    ReleaseSlot,
    Replay,
    RequestSlot,
    ResizeSession,
    SessionEnded,
    Settle,
    SignalSession,
    SlotGranted,
    StartSession,
    Terminate,
)
from tests.unit.fakes import (
    DEADLINE,
    FakeClock,
    Inbox,
    Sessions,
    TrappedKey,
    add_fake,
    running_context,
    sync,
    wait_for,
)

NOW = 1_000_000.0
VIEWER = "laptop"


class Node:
    """A job queue among fakes: gateway, vault, sessions, and a fake or the real governor."""

    def __init__(self, ctx: Context, *, real_governor: bool = False) -> None:
        self.ctx = ctx
        self.key = FleetKey.generate()
        self.trapped = TrappedKey(self.key)
        self.sessions = Sessions()
        ctx.services.update(fleet_key=self.trapped, session_factory=self.sessions)
        self.journal_path: Path = ctx.settings.data_dir / "journal.sqlite3"
        self.journal_at_ack: dict[int, dict[str, str]] = {}
        self.gateway, self.gateway_ref = add_fake(ctx, "gateway", react=self._look_in_journal)
        self.vault, self.vault_ref = add_fake(ctx, "vault")
        self.supervisor = start_supervisor(ctx)
        self.governor: Inbox | None = None
        self.governor_ref: pykka.ActorRef[Any]
        if real_governor:
            self.governor_ref = Governor.start(ctx)
            ctx.router.register("governor", self.governor_ref)
        else:
            self.governor, self.governor_ref = add_fake(ctx, "governor")
        self.queues: list[pykka.ActorRef[Any]] = []
        self.tokens = 0

    # -- the job queue itself --------------------------------------------------------------

    def start_queue(self) -> pykka.ActorRef[Any]:
        ref = JobQueue.start(self.ctx)
        self.ctx.router.register("job_queue", ref)
        self.queues.append(ref)
        return ref

    def supervise_queue(self) -> None:
        def make() -> pykka.ActorRef[Any]:
            ref = JobQueue.start(self.ctx)
            self.queues.append(ref)
            return ref

        supervise(self.ctx, "job_queue", make)
        wait_for(lambda: self.ctx.router.has("job_queue"), what="the job queue")

    def stop_queue(self) -> None:
        ref = self.queues[-1]
        ref.stop(block=True, timeout=DEADLINE)
        self.ctx.router.unregister("job_queue", ref)

    @property
    def queue(self) -> pykka.ActorRef[Any]:
        return self.queues[-1]

    def quiet(self) -> None:
        """Return once queue, governor and supervisor handled everything caused so far."""
        commits = self.queue.proxy().commits.get(timeout=DEADLINE)
        for _ in range(3):
            self.queue.ask(SessionEnded("-barrier-", "exited"), timeout=DEADLINE)
            assert commits.wait_idle(DEADLINE)  # and what waited for the journal's sync
            if self.governor is None:
                self.governor_ref.proxy().max_parallel.get(timeout=DEADLINE)
            self.supervisor.ask(ForgetChild("-nobody-"), timeout=DEADLINE)
        fakes = [self.gateway_ref, self.vault_ref, *self.sessions.all_refs()]
        if self.governor is not None:
            fakes.append(self.governor_ref)
        sync(*fakes)  # and the fakes recorded it all

    # -- what a client sends ---------------------------------------------------------------

    def job(
        self,
        *,
        key: FleetKey | None = None,
        user: str = "alice",
        deadline: float | None = None,
        job_id: str | None = None,
    ) -> StartJob:
        job_id = job_id or addresses.new_job_id()
        sealed = JobSpec(("echo", "hi")).seal((key or self.key).job_key(job_id))
        return StartJob(job_id, user, "node:node1", "laptop", sealed, NOW - 1, deadline)

    def control(self, job_id: str, op: str, *, key: FleetKey | None = None, **args: int) -> int:
        sealed = Control(op, **args).seal((key or self.key).job_key(job_id), VIEWER, 7)
        return self.deliver(ControlSent(job_id, VIEWER, 7, sealed))

    def deliver(self, message: object, **details: Any) -> int:
        self.tokens += 1
        assert self.ctx.router.tell("job_queue", Delivered(self.tokens, message, **details))
        return self.tokens

    # -- what the fakes saw ----------------------------------------------------------------

    def _look_in_journal(self, message: object) -> None:
        """At the moment of an ack, read the journal through a connection of our own."""
        if isinstance(message, Settle) and self.journal_path.exists():
            with closing(sqlite3.connect(self.journal_path)) as conn:
                rows = conn.execute("SELECT job_id, state FROM jobs").fetchall()
            self.journal_at_ack[message.token] = dict(rows)

    def settle(self, token: int) -> Settle:
        self.gateway.wait(
            lambda items: any(isinstance(m, Settle) and m.token == token for m in items),
            what=f"settle {token}",
        )
        return next(m for m in self.gateway.of(Settle) if m.token == token)

    def traffic(self) -> list[object]:
        """What the gateway got about jobs, in order: everything but the node's heartbeats."""
        return [m for m in self.gateway.all() if not _is_heartbeat(m)]

    def published(self) -> list[Publish]:
        """What the gateway was asked to publish, in order: directly, or once queues exist."""
        return [m for m in map(_publish_of, self.traffic()) if m is not None]

    def events(self, job_id: str | None = None) -> list[JobStateChanged]:
        decoded = [wire.decode_as(p.body, JobStateChanged) for p in self.published()]
        return [e for e in decoded if job_id is None or e.job_id == job_id]

    def opened_before(self, job_id: str, state: str, *, input_queue: bool) -> OpenJobQueues:
        """The job's OpenJobQueues for its input (or control) queue; fails if `state` was
        announced before it: whoever hears of the state must find the queue there."""
        for message in self.traffic():
            if (
                isinstance(message, OpenJobQueues)
                and message.job_id == job_id
                and (message.input if input_queue else message.control)
            ):
                return message
            publish = _publish_of(message)
            if publish is not None:
                event = wire.decode_as(publish.body, JobStateChanged)
                assert (event.job_id, event.state) != (job_id, state), f"{state} came too early"
        raise AssertionError(f"no OpenJobQueues for {job_id}")

    def states(self, job_id: str) -> list[str]:
        return [e.state for e in self.events(job_id)]

    def wait_state(self, job_id: str, state: str) -> JobStateChanged:
        self.gateway.wait(lambda _: state in self.states(job_id), what=f"{job_id} {state}")
        return next(e for e in self.events(job_id) if e.state == state)

    def requested(self) -> list[str]:
        assert self.governor is not None
        return [r.job_id for r in self.governor.of(RequestSlot)]

    def released(self) -> list[str]:
        assert self.governor is not None
        return [r.job_id for r in self.governor.of(ReleaseSlot)]

    def run(self, job: StartJob) -> None:
        """Take a queued job (fake governor) to running through a fake session."""
        count = len(self.sessions.started_ids())
        assert self.ctx.router.tell("job_queue", SlotGranted(job.job_id))
        assert self.sessions.wait_count(count + 1)[-1] == job.job_id
        wait_for(lambda: self.ctx.router.has(f"pty:{job.job_id}"), what="the session")
        self.sessions.run(job.job_id)
        self.wait_state(job.job_id, "running")


def _is_heartbeat(message: object) -> bool:
    return isinstance(message, Publish) and message.routing_key == addresses.presence_key("node1")


def _publish_of(message: object) -> Publish | None:
    if isinstance(message, Publish):
        return message
    if isinstance(message, OpenJobQueues):
        return message.announce
    return None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with running_context(tmp_path, clock=FakeClock(NOW)) as ctx:
        node = Node(ctx)
        node.start_queue()
        yield node


@pytest.fixture
def governed(tmp_path: Path) -> Iterator[Node]:
    with running_context(tmp_path, clock=FakeClock(NOW), max_parallel=2) as ctx:
        node = Node(ctx, real_governor=True)
        node.start_queue()
        yield node


# -- accepting -------------------------------------------------------------------------------


def test_a_job_is_journaled_then_acked_then_published_queued(node: Node) -> None:
    """A StartJob is in the journal when it is acked; then "queued" is published, durably."""
    job = node.job()
    token = node.deliver(job)
    node.wait_state(job.job_id, "queued")
    assert node.traffic()[0] == Settle(token, True, "")
    assert node.journal_at_ack[token] == {job.job_id: "queued"}
    [publish] = node.published()
    assert (publish.routing_key, publish.message_id) == (
        f"job.{job.job_id}.state",
        f"{job.job_id}:0",
    )
    assert publish.durable
    assert publish.mandatory
    event = wire.decode(publish.body)
    assert event == JobStateChanged(job.job_id, "node1", "queued", 0, NOW, "node:node1")
    opened = node.opened_before(job.job_id, "queued", input_queue=False)  # cancels can land
    assert not opened.input
    assert node.governor is not None
    assert node.governor.wait_of(RequestSlot) == [RequestSlot(job.job_id)]


def test_a_redelivered_job_is_acked_and_not_queued_twice(node: Node) -> None:
    """The same job id delivered again is acked, but neither published nor queued again."""
    job = node.job()
    first = node.deliver(job)
    second = node.deliver(job, redelivered=True)
    assert node.settle(first) == Settle(first, True, "")
    assert node.settle(second) == Settle(second, True, "")
    node.quiet()
    assert node.states(job.job_id) == ["queued"]
    assert node.requested() == [job.job_id]
    assert node.sessions.started_ids() == []


def test_a_job_sealed_with_another_fleet_key_is_rejected(node: Node) -> None:
    """A command that does not open with our key is dead-lettered and published "rejected"."""
    job = node.job(key=FleetKey.generate())
    token = node.deliver(job)
    settle = node.settle(token)
    assert not settle.ok
    assert "did not authenticate" in settle.reason
    event = node.wait_state(job.job_id, "rejected")
    assert event.detail == settle.reason
    node.quiet()
    assert node.states(job.job_id) == ["rejected"]
    assert node.requested() == []


def test_a_job_for_another_user_is_refused(node: Node) -> None:
    """A StartJob naming another user is dead-lettered, rejected, and never queued."""
    job = node.job(user="mallory")
    settle = node.settle(node.deliver(job))
    assert not settle.ok
    assert "mallory" in settle.reason
    node.wait_state(job.job_id, "rejected")
    node.quiet()
    assert node.requested() == []


def test_a_job_whose_deadline_has_passed_expires(node: Node) -> None:
    """A job arriving after its deadline is acked and published queued, then expired."""
    job = node.job(deadline=NOW - 5)
    assert node.settle(node.deliver(job)).ok
    node.wait_state(job.job_id, "expired")
    node.quiet()
    assert node.states(job.job_id) == ["queued", "expired"]
    assert node.requested() == []


def test_a_job_whose_deadline_passes_while_it_waits_expires_when_its_turn_comes(
    node: Node,
) -> None:
    """A slot granted after the deadline ends the job as expired and gives the slot back."""
    job = node.job(deadline=NOW + 5)
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    clock = node.ctx.clock
    assert isinstance(clock, FakeClock)
    clock.advance(10)
    assert node.ctx.router.tell("job_queue", SlotGranted(job.job_id))
    node.wait_state(job.job_id, "expired")
    node.quiet()
    assert node.released() == [job.job_id]
    assert node.sessions.started_ids() == []


# -- running ---------------------------------------------------------------------------------


def test_jobs_start_in_fifo_order_two_at_a_time(governed: Node) -> None:
    """With max_parallel=2 and six jobs, two sessions start; the rest follow in order."""
    jobs = [governed.job() for _ in range(6)]
    ids = [j.job_id for j in jobs]
    for job in jobs:
        governed.deliver(job)
    governed.quiet()
    assert governed.sessions.started_ids() == ids[:2]
    for running in ids[:2]:
        governed.sessions.run(running)
    for n, job_id in enumerate(ids):
        governed.wait_state(job_id, "running")
        governed.sessions.end(job_id, "exited", ExitStatus(n, None))
        governed.wait_state(job_id, "exited")
        governed.quiet()
        started = governed.sessions.started_ids()
        assert started == ids[: min(n + 3, 6)]
        if n + 2 < 6:
            governed.sessions.run(ids[n + 2])
    assert [governed.wait_state(i, "exited").exit_code for i in ids] == list(range(6))
    requests = governed.sessions.requests
    assert [wire.decode_as(r.request, StartJob) for r in requests] == jobs


def test_a_session_start_and_end_are_published(node: Node) -> None:
    """A granted job gets a session and an input queue before "running"; its end frees the slot."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    node.run(job)
    assert node.sessions.requests == [StartSession(job.job_id, wire.encode(job))]
    opened = node.opened_before(job.job_id, "running", input_queue=True)  # keys can land
    assert not opened.control
    node.sessions.end(job.job_id, "killed", ExitStatus(None, 9))
    event = node.wait_state(job.job_id, "killed")
    assert (event.exit_code, event.signal, event.seq) == (None, 9, 2)
    node.quiet()
    assert node.states(job.job_id) == ["queued", "running", "killed"]
    assert node.released() == [job.job_id]
    assert CloseJobQueues(job.job_id) in node.gateway.all()


def test_a_session_that_cannot_spawn_rejects_the_job(node: Node) -> None:
    """A session ending "failed" before its child ran makes the job rejected, slot released."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    assert node.ctx.router.tell(
        "job_queue", SessionEnded(job.job_id, "failed", detail="no such file")
    )
    assert node.wait_state(job.job_id, "rejected").detail == "no such file"
    node.quiet()
    assert node.released() == [job.job_id]


def test_a_crashed_session_interrupts_its_job(node: Node) -> None:
    """ChildDied for a job's session marks it interrupted, finalises its log, frees its slot."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    node.run(job)
    assert node.ctx.router.tell("job_queue", ChildDied(f"pty:{job.job_id}", "OSError(5)"))
    event = node.wait_state(job.job_id, "interrupted")
    assert event.detail is not None
    assert "OSError(5)" in event.detail
    assert node.vault.wait_of(OpenLog) == [OpenLog(job.job_id, finalise=True)]
    node.quiet()
    assert node.released() == [job.job_id]


# -- restart ---------------------------------------------------------------------------------


def test_a_restart_interrupts_the_running_job_and_resumes_the_queued_in_order(
    node: Node,
) -> None:
    """After a restart the job that was running is interrupted; queued ones are asked again."""
    running, first, second = node.job(), node.job(), node.job()
    for job in (running, first, second):
        node.deliver(job)
        node.wait_state(job.job_id, "queued")
    node.run(running)
    node.stop_queue()
    node.sessions.refs[running.job_id].stop(block=True, timeout=DEADLINE)  # the process died
    assert not node.ctx.router.has(f"pty:{running.job_id}")
    before = len(node.requested())
    node.start_queue()
    event = node.wait_state(running.job_id, "interrupted")
    assert event.seq == 2
    assert node.vault.wait_of(OpenLog) == [OpenLog(running.job_id, finalise=True)]
    node.quiet()
    assert node.released() == [running.job_id]  # its slot is free, its queues closed
    assert CloseJobQueues(running.job_id) in node.gateway.all()
    assert node.requested()[before:] == [first.job_id, second.job_id]
    assert node.states(first.job_id) == ["queued"]
    assert node.states(second.job_id) == ["queued"]


def test_a_restart_leaves_a_job_whose_session_lives_running(node: Node) -> None:
    """When only the job queue restarted and the session lives on, its job stays running."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    node.run(job)
    node.stop_queue()
    node.start_queue()
    node.quiet()
    assert node.states(job.job_id) == ["queued", "running"]
    assert node.vault.all() == []
    node.sessions.end(job.job_id, "exited", ExitStatus(0, None))
    assert node.wait_state(job.job_id, "exited").exit_code == 0


# -- control and replay ----------------------------------------------------------------------


def test_cancelling_a_queued_job_ends_it_and_releases_its_slot(node: Node) -> None:
    """A cancel for a job still queued makes it cancelled, releases its slot, closes queues."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    assert node.settle(node.control(job.job_id, "cancel")).ok
    node.wait_state(job.job_id, "cancelled")
    node.quiet()
    assert node.released() == [job.job_id]
    assert CloseJobQueues(job.job_id) in node.gateway.all()
    assert node.ctx.router.tell("job_queue", SlotGranted(job.job_id))  # a grant in flight
    node.quiet()
    assert node.sessions.started_ids() == []


def test_cancelling_a_running_job_terminates_its_session(node: Node) -> None:
    """A cancel for a running job sends Terminate with the grace period to its session."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    node.run(job)
    assert node.settle(node.control(job.job_id, "cancel")).ok
    session = node.sessions.inboxes[job.job_id]
    assert session.wait_of(Terminate) == [Terminate(job.job_id, 3.0, "cancelled")]
    node.sessions.end(job.job_id, "cancelled", ExitStatus(None, 15))
    assert node.wait_state(job.job_id, "cancelled").signal == 15


def test_resize_and_signal_reach_a_running_session(node: Node) -> None:
    """Resize and signal controls for a running job are handed to its session."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    node.run(job)
    node.control(job.job_id, "resize", rows=50, cols=132)
    node.control(job.job_id, "signal", signal=2)
    session = node.sessions.inboxes[job.job_id]
    session.wait(lambda items: len(items) == 2)
    assert session.all() == [ResizeSession(job.job_id, 50, 132), SignalSession(job.job_id, 2)]


def test_a_control_sealed_with_another_key_is_refused(node: Node) -> None:
    """A control that does not open with our key is dead-lettered and changes nothing."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    settle = node.settle(node.control(job.job_id, "cancel", key=FleetKey.generate()))
    assert not settle.ok
    assert "did not authenticate" in settle.reason
    node.quiet()
    assert node.states(job.job_id) == ["queued"]
    assert node.released() == []


def test_replay_of_a_job_we_hold_goes_to_the_vault_with_its_state(node: Node) -> None:
    """A ReplayRequested for a held job is acked and becomes a Replay carrying its end state."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    node.run(job)
    node.sessions.end(job.job_id, "exited", ExitStatus(3, None))
    node.wait_state(job.job_id, "exited")
    ask = ReplayRequested(job.job_id, from_seq=5)
    reply = addresses.reply_key(VIEWER, job.job_id)
    token = node.deliver(ask, reply_to=reply, correlation_id="c1")
    assert node.settle(token).ok
    assert node.vault.wait_of(Replay) == [Replay(job.job_id, 5, reply, "c1", "exited", 3, None)]


def test_replay_of_a_job_we_do_not_hold_is_only_acked(node: Node) -> None:
    """A ReplayRequested for an unknown job is acked and nothing is replayed."""
    held = node.job()
    node.deliver(held)
    node.wait_state(held.job_id, "queued")
    stranger = addresses.new_job_id()
    token = node.deliver(ReplayRequested(stranger), reply_to=addresses.reply_key(VIEWER, stranger))
    assert node.settle(token).ok
    node.deliver(ReplayRequested(held.job_id), reply_to=addresses.reply_key(VIEWER, held.job_id))
    replays = node.vault.wait_of(Replay)  # FIFO: the stranger's would have come first
    assert [r.job_id for r in replays] == [held.job_id]
    assert replays[0].state == "queued"


def test_a_cancel_while_the_session_is_starting_stops_the_session(node: Node) -> None:
    """A job cancelled after its session was made but before it reported started is ended
    through its session: it stays queued (its slot taken) until the session ends it."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    assert node.ctx.router.tell("job_queue", SlotGranted(job.job_id))
    node.sessions.wait_count(1)
    wait_for(lambda: node.ctx.router.has(f"pty:{job.job_id}"), what="the session")
    assert node.settle(node.control(job.job_id, "cancel")).ok
    session = node.sessions.inboxes[job.job_id]
    assert session.wait_of(Terminate) == [Terminate(job.job_id, 3.0, "cancelled")]
    node.quiet()
    assert node.states(job.job_id) == ["queued"]
    assert node.released() == []  # the session still runs: its slot is not free yet
    node.sessions.run(job.job_id)  # the child had started meanwhile
    node.sessions.end(job.job_id, "cancelled", ExitStatus(None, 15))
    assert node.wait_state(job.job_id, "cancelled").signal == 15
    node.quiet()
    assert node.states(job.job_id) == ["queued", "running", "cancelled"]
    assert node.released() == [job.job_id]
    assert node.sessions.started_ids() == [job.job_id]


def test_a_session_that_starts_for_a_cancelled_job_is_terminated(node: Node) -> None:
    """A session reporting started for a job that is no longer queued is told to stop."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    assert node.settle(node.control(job.job_id, "cancel")).ok
    node.wait_state(job.job_id, "cancelled")
    session_inbox, _ = add_fake(node.ctx, f"pty:{job.job_id}")  # a session made in a race
    node.sessions.ctx = node.ctx
    node.sessions.run(job.job_id)
    assert session_inbox.wait_of(Terminate) == [Terminate(job.job_id, 3.0, "cancelled")]
    node.quiet()
    assert node.states(job.job_id) == ["queued", "cancelled"]


def test_a_repeated_grant_for_a_job_whose_session_exists_is_ignored(node: Node) -> None:
    """A grant repeated by the governor (after a job queue restart) starts no second session."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    node.run(job)
    assert node.ctx.router.tell("job_queue", SlotGranted(job.job_id))
    node.quiet()
    assert node.sessions.started_ids() == [job.job_id]
    assert node.released() == []  # and the running job keeps its slot
    assert node.states(job.job_id) == ["queued", "running"]


@pytest.mark.parametrize(
    ("code", "detail"), [(0xC000013A, "exit code 0xc000013a"), (256, "exit code 0x100")]
)
def test_an_exit_code_outside_a_byte_is_reported_as_255(node: Node, code: int, detail: str) -> None:
    """A Windows-sized exit code is published as 255 with the real code in the detail."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    node.run(job)
    node.sessions.end(job.job_id, "exited", ExitStatus(code, None))
    event = node.wait_state(job.job_id, "exited")
    assert (event.exit_code, event.detail) == (255, detail)
    node.quiet()
    assert node.released() == [job.job_id]


def test_jobs_granted_to_a_job_queue_that_crashed_still_start(tmp_path: Path) -> None:
    """Jobs whose grant died with a crashed job queue start once the new instance asks again."""
    with running_context(tmp_path, clock=FakeClock(NOW), max_parallel=2) as ctx:
        node = Node(ctx, real_governor=True)
        node.supervise_queue()
        first, second, poison = node.job(), node.job(), node.job()
        hold_entered, hold_release = node.trapped.trap(first.job_id, crash=False)
        crash_entered, crash_release = node.trapped.trap(poison.job_id, crash=True)
        node.deliver(first)
        assert hold_entered.wait(DEADLINE)  # the queue is busy with `first`
        node.deliver(second)
        node.deliver(poison)
        hold_release.set()
        assert crash_entered.wait(DEADLINE)  # `first` and `second` asked for slots
        node.governor_ref.proxy().max_parallel.get(timeout=DEADLINE)  # both grants are sent
        crash_release.set()  # the queue crashes with both SlotGranted in its mailbox
        wait_for(lambda: len(node.queues) == 2, what="the restarted job queue")
        node.quiet()
        assert node.sessions.started_ids() == [first.job_id, second.job_id]
        for job in (first, second):  # and their slots come back when they end
            node.sessions.run(job.job_id)
            node.wait_state(job.job_id, "running")
            node.sessions.end(job.job_id, "exited", ExitStatus(0, None))
            node.wait_state(job.job_id, "exited")
        node.quiet()
        assert node.governor_ref.proxy().running.get(timeout=DEADLINE) == set()


# -- bugs: each test shows a defect and passes once it is fixed ------------------------------


def test_a_repeated_grant_before_the_supervisor_made_the_session_starts_one_session(
    node: Node,
) -> None:
    """Two grants for one job, handled while the supervisor is busy, make one session."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    busy, free = threading.Event(), threading.Event()

    def slow_factory() -> pykka.ActorRef[Any]:  # keeps the supervisor busy for a moment
        busy.set()
        free.wait(DEADLINE)
        return add_fake(node.ctx, "other")[1]

    supervise(node.ctx, "slow", slow_factory)
    try:
        assert busy.wait(DEADLINE)
        for _ in range(2):
            assert node.ctx.router.tell("job_queue", SlotGranted(job.job_id))
        node.queue.ask(SessionEnded("-barrier-", "exited"), timeout=DEADLINE)
    finally:
        free.set()
    node.quiet()
    assert node.sessions.started_ids() == [job.job_id]


def test_an_exit_code_outside_a_byte_is_kept_when_the_session_gave_a_detail(
    node: Node,
) -> None:
    """The real exit code is in the detail of a job ended by its timeout too."""
    job = node.job()
    node.deliver(job)
    node.wait_state(job.job_id, "queued")
    node.run(job)
    assert node.ctx.router.tell(
        "job_queue",
        SessionEnded(job.job_id, "timed_out", ExitStatus(0xC000013A, None), "ended by SIGTERM"),
    )
    event = node.wait_state(job.job_id, "timed_out")
    assert event.exit_code == 255
    assert event.detail is not None
    assert "0xc000013a" in event.detail


def test_a_servers_request_is_settled_and_answered_with_one_heartbeat(node: Node) -> None:
    """SendHeartbeat is acked and makes a heartbeat now, not at the next beat's time."""

    def beats() -> list[Publish]:
        return [m for m in node.gateway.all() if isinstance(m, Publish) and _is_heartbeat(m)]

    node.gateway.wait(lambda _: len(beats()) == 1, what="the first heartbeat at start")
    token = node.deliver(SendHeartbeat(NOW))
    assert node.settle(token).ok
    node.gateway.wait(lambda _: len(beats()) == 2, what="the asked-for heartbeat")
    beat = wire.decode_as(beats()[-1].body, NodeHeartbeat)
    assert beat.node == "node1"


def test_jobs_finished_long_ago_are_forgotten_on_a_heartbeat(tmp_path: Path) -> None:
    """Past the retention a finished job leaves the journal; a live or recent one stays."""
    clock = FakeClock(NOW)
    with running_context(tmp_path, clock=clock) as ctx:
        node = Node(ctx)
        node.start_queue()
        old, live = node.job(), node.job()
        for job in (old, live):
            node.deliver(job)
            node.wait_state(job.job_id, "queued")
        node.run(old)
        node.sessions.end(old.job_id, "exited", ExitStatus(0, None))
        node.wait_state(old.job_id, "exited")
        clock.advance(JOURNAL_RETENTION + JOURNAL_SWEEP_SECONDS + 1)
        recent = node.job()
        node.deliver(recent)
        node.wait_state(recent.job_id, "queued")
        assert ctx.router.tell("job_queue", HeartbeatDue())
        node.quiet()
        with Journal(node.journal_path) as journal:
            assert journal.get(old.job_id) is None
            assert journal.get(live.job_id) is not None
            assert journal.get(recent.job_id) is not None


class _Probe:
    """Vitals as a board would read them."""

    def sample(self) -> Vitals:
        return Vitals(12.5, 1 << 30, 4 << 30, 0.25, 3600.0, 47.5)


def test_the_heartbeat_carries_the_nodes_vitals(tmp_path: Path) -> None:
    """CPU %, memory, load, uptime and temperature from the vitals probe go in every heartbeat."""
    with running_context(tmp_path, clock=FakeClock(NOW)) as ctx:
        ctx.services["vitals"] = _Probe()
        node = Node(ctx)
        node.start_queue()
        wait_for(lambda: any(_is_heartbeat(m) for m in node.gateway.all()), what="a heartbeat sent")
        sent = next(m for m in node.gateway.all() if _is_heartbeat(m))
        assert isinstance(sent, Publish)
        beat = wire.decode_as(sent.body, NodeHeartbeat)
        assert (beat.cpu_percent, beat.mem_used, beat.mem_total) == (12.5, 1 << 30, 4 << 30)
        assert (beat.load1, beat.uptime, beat.temperature) == (0.25, 3600.0, 47.5)
