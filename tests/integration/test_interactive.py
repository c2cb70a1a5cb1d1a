"""A job started from one device runs on another and is answered from a third."""

from __future__ import annotations

import asyncio

from runlet.client.session import Client
from runlet.protocol import addresses
from runlet.protocol.payloads import JobSpec
from tests.support import (
    EVENT_SECONDS,
    Fleet,
    follow_to_end,
    queue_names,
    run,
    wait_for,
    wait_state,
)

PROMPT = 'printf "Continue? [y/N] "; read a; echo "answer=$a"; exit 3'


def test_prompt_answered_from_another_device(fleet: Fleet) -> None:
    """edge-1 starts a prompting job on edge-2, edge-3's client types y: output and status 3."""
    fleet.start_daemon("edge-2")

    async def scenario() -> None:
        async with (
            Client(fleet.client_config("edge-1"), fleet.key) as starter,
            Client(fleet.client_config("edge-3"), fleet.key) as helper,
        ):
            watch = await starter.watch(job_id := "0" * 31 + "1")
            await starter.submit(JobSpec((PROMPT,)), "node:edge-2", job_id=job_id)
            await wait_state(watch, job_id, "running")
            await helper.send_input(job_id, b"y\r", confirm=True)
            out, final = await follow_to_end(starter, watch, job_id)
            assert b"Continue? [y/N] " in out
            assert b"answer=y" in out
            assert final.state == "exited"
            assert final.exit_code == 3
            assert final.node == "edge-2"

    run(scenario())


def test_ping_reaches_the_daemon_and_a_pty_echo(fleet: Fleet) -> None:
    """`runlet ping`: pongs come back from the daemon, keystrokes echo back through a PTY."""
    from runlet.client import ping
    from runlet.errors import NoSuchTarget

    fleet.start_daemon("edge-2")
    seen: list[tuple[int, float | None]] = []

    async def scenario() -> None:
        async with Client(fleet.client_config("edge-1"), fleet.key) as client:
            # each probe's timeout is only a bound: a pong or an echo late on a busy machine
            # is still a pong, where the test's point is that none is lost
            probes = ping.Probes(5, 0.0, EVENT_SECONDS, lambda seq, t: seen.append((seq, t)))
            plain = await ping.ping_daemon(client, "edge-2", probes)
            echo = await ping.ping_pty(client, "edge-2", ping.Probes(5, 0.0, EVENT_SECONDS))
            assert (plain.sent, plain.received, echo.sent, echo.received) == (5, 5, 5, 5)
            assert all(t > 0 for t in plain.times + echo.times)
            try:
                await ping.ping_daemon(client, "nowhere", ping.Probes(1, timeout=1.0))
            except NoSuchTarget:
                return
            raise AssertionError("pinging an unknown node must fail at once")

    run(scenario())
    assert [seq for seq, _ in seen] == [1, 2, 3, 4, 5]


def test_a_finished_jobs_own_queues_are_gone_from_the_broker(fleet: Fleet) -> None:
    """A running job has its input and control queues; once it has ended both are gone."""
    fleet.start_daemon("edge-2")
    job_id = "0" * 31 + "2"
    own = (
        addresses.job_queue(fleet.user, job_id, "input"),
        addresses.job_queue(fleet.user, job_id, "control"),
    )

    def queues() -> list[str]:
        return [name for prefix in own for name in queue_names(prefix)]

    async def scenario() -> None:
        async with Client(fleet.client_config("edge-1"), fleet.key) as client:
            watch = await client.watch(job_id)
            await client.submit(JobSpec(("cat",)), "node:edge-2", job_id=job_id)
            await wait_state(watch, job_id, "running")
            await asyncio.to_thread(
                wait_for, lambda: len(queues()) == 2, EVENT_SECONDS, "both queues"
            )
            await client.send_input(job_id, b"\x04", confirm=True)  # Ctrl-D: cat ends
            _, final = await follow_to_end(client, watch, job_id)
            assert final.state == "exited"

    run(scenario())
    wait_for(lambda: queues() == [], EVENT_SECONDS, "the job's queues deleted")
