"""The Parallelism Governor: at most max_parallel jobs, granted in FIFO order, load aware."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

import actors.governor as governor_module
from actors.governor import Governor
from runlet.runtime.actor import Context
from runlet.runtime.local_messages import AdmissionTick, ReleaseSlot, RequestSlot, SlotGranted
from tests.unit.fakes import DEADLINE, Inbox, add_fake, running_context, sync

JOBS = [f"job{n}" for n in range(6)]


class FakeLoad:
    """A settable one-minute load average, in place of os.getloadavg."""

    def __init__(self, value: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._value = value

    def set(self, value: float) -> None:
        with self._lock:
            self._value = value

    def __call__(self) -> tuple[float, float, float]:
        with self._lock:
            return (self._value, 0.0, 0.0)


class LoadedGovernor(Governor):
    """The real Governor reading a fake load average."""

    def __init__(self, ctx: Context, load: FakeLoad) -> None:
        super().__init__(ctx)
        self.load_average = load


class Harness:
    def __init__(self, ctx: Context, load: FakeLoad | None = None) -> None:
        self.ctx = ctx
        self.queue, self.queue_ref = add_fake(ctx, "job_queue")
        self.load = load or FakeLoad()
        self.ref: pykka.ActorRef[Any] = LoadedGovernor.start(ctx, self.load)
        ctx.router.register("governor", self.ref)

    def tell(self, *messages: object) -> None:
        for message in messages:
            self.ref.tell(message)

    def settled(self) -> list[str]:
        """The job ids granted so far, once the governor handled everything told before."""
        # A read through the mailbox: it returns after everything told before was handled,
        # without running any of the governor's own cases.
        self.ref.proxy().max_parallel.get(timeout=DEADLINE)
        sync(self.queue_ref)  # and the fake job queue recorded the grants
        return [g.job_id for g in self.queue.of(SlotGranted)]


@pytest.fixture
def two_slots(tmp_path: Path) -> Iterator[Harness]:
    with running_context(tmp_path, max_parallel=2) as ctx:
        yield Harness(ctx)


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[Harness]:
    with running_context(tmp_path, max_parallel=3, max_load=1.0) as ctx:
        yield Harness(ctx, FakeLoad(4.0))


def test_only_max_parallel_jobs_are_granted_first_come_first_served(two_slots: Harness) -> None:
    """Six requests with max_parallel=2 give exactly two grants: the first two, in order."""
    two_slots.tell(*(RequestSlot(j) for j in JOBS))
    assert two_slots.settled() == JOBS[:2]
    assert all(isinstance(m, SlotGranted) for m in two_slots.queue.all())


def test_each_release_grants_the_next_in_line(two_slots: Harness) -> None:
    """Every ReleaseSlot lets exactly the next waiting job start, in request order."""
    two_slots.tell(*(RequestSlot(j) for j in JOBS))
    assert two_slots.settled() == JOBS[:2]
    two_slots.tell(ReleaseSlot(JOBS[1]))
    assert two_slots.settled() == JOBS[:3]
    two_slots.tell(ReleaseSlot(JOBS[0]), ReleaseSlot(JOBS[2]))
    assert two_slots.settled() == JOBS[:5]
    two_slots.tell(ReleaseSlot(JOBS[3]), ReleaseSlot(JOBS[4]))
    assert two_slots.settled() == JOBS


def test_releasing_a_waiting_job_takes_it_out_of_line(two_slots: Harness) -> None:
    """A job released before it started (cancelled) is never granted; the one after it is."""
    two_slots.tell(*(RequestSlot(j) for j in JOBS[:4]))
    two_slots.tell(ReleaseSlot(JOBS[2]))
    assert two_slots.settled() == JOBS[:2]
    two_slots.tell(ReleaseSlot(JOBS[0]))
    assert two_slots.settled() == [JOBS[0], JOBS[1], JOBS[3]]
    two_slots.tell(ReleaseSlot(JOBS[1]))
    assert two_slots.settled() == [JOBS[0], JOBS[1], JOBS[3]]


def test_a_duplicate_request_for_a_waiting_job_is_ignored(two_slots: Harness) -> None:
    """Asking twice for a job still in line neither queues it twice nor grants it twice."""
    two_slots.tell(RequestSlot("a"), RequestSlot("b"), RequestSlot("c"), RequestSlot("c"))
    assert two_slots.settled() == ["a", "b"]
    two_slots.tell(ReleaseSlot("a"))
    assert two_slots.settled() == ["a", "b", "c"]
    two_slots.tell(ReleaseSlot("b"))
    assert two_slots.settled() == ["a", "b", "c"]  # "c" was in line once, not twice


def test_a_request_for_a_running_job_repeats_its_grant(two_slots: Harness) -> None:
    """A grant lost with a crashed job queue is sent again, without taking another slot."""
    two_slots.tell(RequestSlot("a"), RequestSlot("b"), RequestSlot("c"))
    assert two_slots.settled() == ["a", "b"]
    two_slots.tell(RequestSlot("a"))  # the restarted job queue asks again for its queued "a"
    assert two_slots.settled() == ["a", "b", "a"]
    two_slots.tell(ReleaseSlot("b"))
    assert two_slots.settled() == ["a", "b", "a", "c"]  # "a" still holds just one slot
    two_slots.tell(ReleaseSlot("a"), RequestSlot("d"))
    assert two_slots.settled() == ["a", "b", "a", "c", "d"]


def test_releasing_an_unknown_job_changes_nothing(two_slots: Harness) -> None:
    """A ReleaseSlot for a job the governor never saw frees no slot."""
    two_slots.tell(*(RequestSlot(j) for j in JOBS[:3]))
    two_slots.tell(ReleaseSlot("stranger"))
    assert two_slots.settled() == JOBS[:2]


def test_under_high_load_one_job_runs_at_a_time(loaded: Harness) -> None:
    """With the load above max_load only one job runs; each release lets in only the next."""
    loaded.tell(*(RequestSlot(j) for j in JOBS[:3]))
    assert loaded.settled() == JOBS[:1]
    loaded.tell(ReleaseSlot(JOBS[0]))
    assert loaded.settled() == JOBS[:2]


def test_when_the_load_drops_the_next_jobs_start(loaded: Harness) -> None:
    """An AdmissionTick after the load fell below max_load grants the waiting jobs, in order."""
    loaded.tell(*(RequestSlot(j) for j in JOBS[:4]))
    assert loaded.settled() == JOBS[:1]
    loaded.load.set(0.5)
    assert loaded.settled() == JOBS[:1]  # nothing changes until the governor looks again
    loaded.tell(AdmissionTick())
    assert loaded.settled() == JOBS[:3]  # max_parallel=3


def test_the_governor_looks_at_the_load_again_by_itself(
    loaded: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While overloaded, the governor schedules its own re-check and grants once load drops."""
    monkeypatch.setattr(governor_module, "LOAD_RECHECK_SECONDS", 0.01)
    loaded.tell(*(RequestSlot(j) for j in JOBS[:2]))
    loaded.queue.wait_of(SlotGranted, 1)
    loaded.load.set(0.2)
    granted = loaded.queue.wait_of(SlotGranted, 2)
    assert [g.job_id for g in granted] == JOBS[:2]


def test_no_load_limit_means_load_is_not_consulted(two_slots: Harness) -> None:
    """Without max_load a high load average does not hold jobs back."""
    two_slots.load.set(100.0)
    two_slots.tell(*(RequestSlot(j) for j in JOBS[:3]))
    assert two_slots.settled() == JOBS[:2]


def test_an_unexpected_message_does_not_stop_the_governor(two_slots: Harness) -> None:
    """A message the governor has no case for is ignored and it goes on granting."""
    two_slots.tell("nonsense", RequestSlot("a"))
    assert two_slots.settled() == ["a"]
    assert two_slots.ref.is_alive()


def test_grants_go_to_the_job_queue_by_name(two_slots: Harness) -> None:
    """Grants are addressed to "job_queue" through the router: a new instance receives them."""
    two_slots.tell(RequestSlot("a"), RequestSlot("b"), RequestSlot("c"))
    assert two_slots.settled() == ["a", "b"]
    fresh: Inbox
    fresh, _ = add_fake(two_slots.ctx, "job_queue")
    two_slots.tell(ReleaseSlot("a"))
    assert [g.job_id for g in fresh.wait_of(SlotGranted)] == ["c"]
