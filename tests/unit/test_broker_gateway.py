"""The Broker Gateway keeps each job's messages in order, on a fake broker (no network).

The gateway is driven through its `handle` on a real loop thread; its broker adapter is
replaced by `HeldBroker`, which records every publish and holds it until the test confirms it,
the way a real broker's confirm arrives some milliseconds later.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.broker_gateway import BrokerGateway
from runlet.adapters.broker import Handler, QueueSpec
from runlet.runtime.actor import Context
from runlet.runtime.local_messages import CloseJobQueues, OpenJobQueues, Publish
from tests.unit.fakes import DEADLINE, running_context, wait_for


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
    user: str = "alice"
    tags: tuple[str, ...] = ()
    broker: _Broker = field(default_factory=_Broker)


class HeldBroker:
    """Records publishes as they start; each finishes only once the test confirms it."""

    generation = 1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: list[str] = []  # message ids, in the order their publish began
        self.confirms: dict[str, asyncio.Event] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.consumed: list[str] = []
        self.deleted: list[str] = []

    async def publish(self, routing_key: str, body: bytes, *, message_id: str, **_: Any) -> None:
        self.loop = asyncio.get_running_loop()
        confirm = self.confirms.setdefault(message_id, asyncio.Event())
        with self._lock:
            self.started.append(message_id)
        await confirm.wait()

    async def consume(self, spec: QueueSpec, handler: Handler) -> None:
        self.consumed.append(spec.name)

    def known_queues(self, prefix: str) -> list[str]:
        return [name for name in self.consumed if name.startswith(prefix)]

    async def forget(self, name: str, *, delete: bool = False) -> None:
        self.deleted.append(name)

    async def close(self) -> None:
        return None

    def begun(self) -> list[str]:
        with self._lock:
            return list(self.started)

    def confirm(self, message_id: str) -> None:
        """Let the publish of `message_id` finish (it may not have begun yet)."""
        wait_for(lambda: self.loop is not None, what="a first publish")
        assert self.loop is not None

        def release() -> None:
            self.confirms.setdefault(message_id, asyncio.Event()).set()

        self.loop.call_soon_threadsafe(release)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[BrokerGateway, HeldBroker, Context]]:
    with running_context(tmp_path) as ctx:
        ctx.settings = _Settings(data_dir=tmp_path)
        gw = BrokerGateway(ctx)  # not started: the test calls `handle` itself, in its thread
        held = HeldBroker()
        gw.broker = held  # type: ignore[assignment]
        yield gw, held, ctx


def state(job_id: str, seq: int) -> Publish:
    return Publish(
        f"job.{job_id}.state", b"s", message_id=f"{job_id}:{seq}", durable=True, job_id=job_id
    )


def output(job_id: str, seq: int) -> Publish:
    return Publish(
        f"job.{job_id}.output", b"o", message_id=f"{job_id}:o{seq}", job_id=job_id, after_start=True
    )


def settled(held: HeldBroker, ids: list[str]) -> None:
    wait_for(lambda: held.begun() == ids, DEADLINE, f"publishes {ids} (begun: {held.begun()})")


def test_a_jobs_state_changes_leave_one_after_the_other(
    gateway: tuple[BrokerGateway, HeldBroker, Context],
) -> None:
    """A job's next state change is not published before its previous one is confirmed."""
    gw, held, _ = gateway
    gw.handle(state("j1", 0))
    gw.handle(state("j1", 1))
    gw.handle(state("j1", 2))
    settled(held, ["j1:0"])
    held.confirm("j1:0")
    settled(held, ["j1:0", "j1:1"])
    held.confirm("j1:1")
    held.confirm("j1:2")
    settled(held, ["j1:0", "j1:1", "j1:2"])
    wait_for(lambda: not gw._lanes, what="the idle lane to go")


def test_other_jobs_are_not_held_by_a_slow_confirm(
    gateway: tuple[BrokerGateway, HeldBroker, Context],
) -> None:
    """Order is per job: another job's state change leaves while the first one waits."""
    gw, held, _ = gateway
    gw.handle(state("j1", 0))
    gw.handle(state("j1", 1))
    gw.handle(state("j2", 0))
    wait_for(lambda: sorted(held.begun()) == ["j1:0", "j2:0"], what="both jobs' first states")
    held.confirm("j2:0")
    held.confirm("j1:0")
    wait_for(lambda: "j1:1" in held.begun(), what="j1's second state")


def test_output_waits_for_running_then_follows_it(
    gateway: tuple[BrokerGateway, HeldBroker, Context],
) -> None:
    """Output produced before `running` has left is published only after it."""
    gw, held, _ = gateway
    gw.handle(OpenJobQueues("j1", input=False, control=True, announce=state("j1", 0)))
    settled(held, ["j1:0"])
    held.confirm("j1:0")
    gw.handle(output("j1", 0))  # the session's first chunk overtook SessionStarted
    gw.handle(OpenJobQueues("j1", input=True, control=False, announce=state("j1", 1)))
    settled(held, ["j1:0", "j1:1"])
    held.confirm("j1:1")
    settled(held, ["j1:0", "j1:1", "j1:o0"])
    held.confirm("j1:o0")
    gw.handle(output("j1", 1))  # `running` has left: output goes at once now
    settled(held, ["j1:0", "j1:1", "j1:o0", "j1:o1"])
    held.confirm("j1:o1")


def test_closing_a_job_that_never_ran_releases_its_output(
    gateway: tuple[BrokerGateway, HeldBroker, Context],
) -> None:
    """A job cancelled before `running` still gets its final chunk out, after its end state."""
    gw, held, _ = gateway
    gw.handle(OpenJobQueues("j1", input=False, control=True, announce=state("j1", 0)))
    held.confirm("j1:0")
    gw.handle(output("j1", 0))
    gw.handle(state("j1", 1))  # cancelled
    gw.handle(CloseJobQueues("j1"))
    settled(held, ["j1:0", "j1:1"])
    held.confirm("j1:1")
    settled(held, ["j1:0", "j1:1", "j1:o0"])
    held.confirm("j1:o0")
    wait_for(lambda: not gw._lanes, what="the closed job's lane to go")
    assert held.consumed  # its control queue, opened ...
    assert held.deleted == held.consumed  # ... and deleted


def test_output_of_a_job_without_a_lane_leaves_at_once(
    gateway: tuple[BrokerGateway, HeldBroker, Context],
) -> None:
    """Output after the job's queues are closed (or of an unknown job) is never held."""
    gw, held, _ = gateway
    gw.handle(output("j9", 3))
    settled(held, ["j9:o3"])
    held.confirm("j9:o3")
    assert not gw._lanes
