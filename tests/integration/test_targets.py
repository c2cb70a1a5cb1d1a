"""Targets: a node, any node, all nodes, a tag; unknown targets fail at once; offline nodes wait."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from runlet.client.session import Client
from runlet.errors import NoSuchTarget
from runlet.protocol.addresses import new_job_id
from runlet.protocol.messages import JobStateChanged
from runlet.protocol.payloads import JobSpec
from tests.support import EVENT_SECONDS, Fleet, follow_to_end, run, wait_state

HOSTNAME_JOB = JobSpec(("echo ran-on-$RUNLET_JOB_ID",))


async def _collect_states(
    watch: object,
    count: int,
    state: str,
    timeout: float = EVENT_SECONDS,
    every: list[JobStateChanged] | None = None,
) -> list[JobStateChanged]:
    """The first `count` jobs' `state` events on a fan-out watch (TimeoutError naming them).

    Every state event taken meanwhile is also appended to `every`.
    """
    seen: dict[str, JobStateChanged] = {}
    taken: list[JobStateChanged] = [] if every is None else every
    try:
        async with asyncio.timeout(timeout):
            while len(seen) < count:
                msg = await watch.inbox.get()  # type: ignore[attr-defined]
                if isinstance(msg, JobStateChanged):
                    taken.append(msg)
                    if msg.state == state:
                        seen[msg.job_id] = msg
    except TimeoutError:
        others = [(e.job_id, e.state) for e in taken]
        raise TimeoutError(
            f"timed out after {timeout} s waiting for {count} jobs to be {state!r};"
            f" states seen: {others}"
        ) from None
    return list(seen.values())


async def _listen(watch: object, seconds: float, every: list[JobStateChanged]) -> None:
    """Append every state event that reaches a watch within `seconds` s to `every`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                msg = await watch.inbox.get()  # type: ignore[attr-defined]
                if isinstance(msg, JobStateChanged):
                    every.append(msg)


def test_unknown_node_is_an_error_at_once(fleet: Fleet) -> None:
    """A node that never ran is refused before anything is sent, not waited for."""
    fleet.start_daemon("edge-1")

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            started = time.monotonic()
            with pytest.raises(NoSuchTarget) as caught:
                await client.submit(HOSTNAME_JOB, "node:nowhere")
            assert caught.value.target == "node:nowhere"
            assert time.monotonic() - started < 5

    run(scenario())


def test_unknown_tag_is_an_error_at_once(fleet: Fleet) -> None:
    """A tag no node has makes the mandatory publish bounce: NoSuchTarget."""
    fleet.start_daemon("edge-1", tags=("arm",))

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            with pytest.raises(NoSuchTarget):
                await client.submit(HOSTNAME_JOB, "tag:gpu")

    run(scenario())


def test_any_runs_once_on_some_node(fleet: Fleet) -> None:
    """`any`: exactly one of the nodes takes each job; several jobs spread over them."""
    fleet.start_daemon("edge-1")
    fleet.start_daemon("edge-2")

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            nodes = []
            for _ in range(6):
                job_id = new_job_id()
                watch = await client.watch(job_id)
                await client.submit(JobSpec(("sleep 0.2",)), "any", job_id=job_id)
                _, final = await follow_to_end(client, watch, job_id)
                assert final.state == "exited"
                nodes.append(final.node)
            assert set(nodes) <= {"edge-1", "edge-2"}

    run(scenario())


def test_all_runs_once_per_node_with_own_ids(fleet: Fleet) -> None:
    """`all`: one execution per node, each under `<id>.<node>`, each with its own output."""
    for node in ("edge-1", "edge-2", "edge-3"):
        fleet.start_daemon(node)

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            job_id = new_job_id()
            watch = await client.watch(job_id, fans_out=True)
            await client.submit(HOSTNAME_JOB, "all", job_id=job_id)
            finals = await _collect_states(watch, 3, "exited")
            assert sorted(f.job_id for f in finals) == sorted(
                f"{job_id}.{n}" for n in ("edge-1", "edge-2", "edge-3")
            )
            assert {f.node for f in finals} == {"edge-1", "edge-2", "edge-3"}

    run(scenario())


def test_tag_reaches_only_tagged_nodes(fleet: Fleet) -> None:
    """`tag:gpu` runs on the two gpu nodes and not on the third."""
    fleet.start_daemon("edge-1", tags=("gpu",))
    fleet.start_daemon("edge-2", tags=("gpu", "arm"))
    fleet.start_daemon("edge-3", tags=("arm",))

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            job_id = new_job_id()
            watch = await client.watch(job_id, fans_out=True)
            await client.submit(HOSTNAME_JOB, "tag:gpu", job_id=job_id)
            every: list[JobStateChanged] = []
            finals = await _collect_states(watch, 2, "exited", every=every)
            assert {f.node for f in finals} == {"edge-1", "edge-2"}
            # edge-3 must stay silent: any event of its own, before or after, is the failure
            # (a late one from the gpu nodes is not); the window is how long we listen for it
            await _listen(watch, 1.5, every)
            assert [(e.job_id, e.state) for e in every if e.node not in ("edge-1", "edge-2")] == []

    run(scenario())


def test_offline_node_gets_its_job_when_it_starts(fleet: Fleet) -> None:
    """A known node that is offline keeps the job in its queue and runs it on start."""
    daemon = fleet.start_daemon("edge-2")
    daemon.stop()
    fleet.daemons.remove(daemon)
    fleet.wait_offline("edge-2")

    async def submit() -> tuple[str, bool]:
        async with Client(fleet.client_config(), fleet.key) as client:
            job_id = new_job_id()
            sent = await client.submit(HOSTNAME_JOB, "node:edge-2", job_id=job_id)
            return job_id, sent.offline

    job_id, offline = run(submit())
    assert offline, "the client must tell the user the node is offline"

    async def later() -> None:
        async with Client(fleet.client_config("viewer"), fleet.key) as client:
            watch = await client.watch(job_id)
            await asyncio.to_thread(fleet.start_daemon, "edge-2")
            await client.request_replay(job_id, watch)
            out, final = await follow_to_end(client, watch, job_id)
            assert final.state == "exited"
            assert f"ran-on-{job_id}".encode() in out

    run(later())


def test_offline_node_past_deadline_expires(fleet: Fleet) -> None:
    """A job whose deadline passes while its node is offline is `expired`, never run."""
    daemon = fleet.start_daemon("edge-2")
    daemon.stop()
    fleet.daemons.remove(daemon)
    fleet.wait_offline("edge-2")

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            job_id = new_job_id()
            watch = await client.watch(job_id)
            await client.submit(
                JobSpec(("touch should-not-exist",)),
                "node:edge-2",
                job_id=job_id,
                deadline=time.time() + 0.5,
            )
            await asyncio.sleep(1.0)  # the deadline passes while the node is offline
            await asyncio.to_thread(fleet.start_daemon, "edge-2")
            event = await wait_state(watch, job_id, "expired")
            assert event.node == "edge-2"

    run(scenario())
