"""The daemon's queue: max_parallel holds, order is FIFO, cancel escalates, restarts resume."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from runlet.client.session import Client
from runlet.protocol.addresses import new_job_id
from runlet.protocol.messages import JobStateChanged
from runlet.protocol.payloads import Control, JobSpec
from tests.support import STARTUP_SECONDS, Fleet, Follower, follow_to_end, run, wait_state


def _overlap(events: list[tuple[str, int]]) -> int:
    running = peak = 0
    for kind, _ in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


def test_max_parallel_two_holds_six_jobs_in_fifo_order(fleet: Fleet, tmp_path: Path) -> None:
    """With max_parallel=2, six jobs never run more than two at once and start in sent order."""
    fleet.start_daemon("edge-1", max_parallel=2)
    trace = tmp_path / "trace.txt"

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            jobs = []
            for n in range(6):
                job_id = new_job_id()
                jobs.append(Follower(client, await client.watch(job_id), job_id))
                # each job ends when the test types a line into it, so the test frees one slot
                # at a time whatever the machine's speed, and the start order is observable
                cmd = f"echo start {n} >> {trace}; echo started; read x; echo end {n} >> {trace}"
                await client.submit(JobSpec((cmd,)), "node:edge-1", job_id=job_id)
            for job in jobs[:2]:
                await job.output(b"started")  # its start is in the trace
            for n, job in enumerate(jobs):
                await client.send_input(job.job_id, b"go\r", confirm=True)
                _, final = await job.to_end()
                assert final.state == "exited"
                if n + 2 < len(jobs):  # the slot it freed goes to the next job in line
                    await jobs[n + 2].output(b"started")

    run(scenario())
    events = [
        (kind, int(n)) for kind, n in (line.split() for line in trace.read_text().splitlines())
    ]
    starts = [n for kind, n in events if kind == "start"]
    assert set(starts[:2]) == {0, 1}  # the first two start together; their shells may race
    assert starts[2:] == [2, 3, 4, 5]
    assert _overlap(events) == 2


def test_cancel_escalates_to_sigkill_when_sigterm_is_ignored(fleet: Fleet) -> None:
    """A job ignoring SIGTERM is killed after the grace period, and the state says SIGKILL."""
    fleet.start_daemon("edge-1", grace=0.5)

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            stubborn, polite = new_job_id(), new_job_id()
            w1, w2 = await client.watch(stubborn), await client.watch(polite)
            await client.submit(
                JobSpec(("trap '' TERM; echo up; while :; do sleep 0.05; done",)),
                "node:edge-1",
                job_id=stubborn,
            )
            await client.submit(
                JobSpec(("echo up; while :; do sleep 0.05; done",)), "node:edge-1", job_id=polite
            )
            f1, f2 = Follower(client, w1, stubborn), Follower(client, w2, polite)
            # "up" is printed once the trap is installed (the stubborn job sets it first)
            await f1.output(b"up")
            await f2.output(b"up")
            await client.control(stubborn, Control("cancel"), confirm=True)
            await client.control(polite, Control("cancel"), confirm=True)
            _, hard = await f1.to_end()
            _, soft = await f2.to_end()
            assert (hard.state, hard.detail, hard.signal) == (
                "cancelled",
                "ended by SIGKILL",
                signal.SIGKILL,
            )
            assert (soft.state, soft.detail, soft.signal) == (
                "cancelled",
                "ended by SIGTERM",
                signal.SIGTERM,
            )

    run(scenario())


def test_cancel_of_a_queued_job_never_runs_it(fleet: Fleet, tmp_path: Path) -> None:
    """A job cancelled while it waits for a slot is `cancelled` and its command never runs."""
    fleet.start_daemon("edge-1", max_parallel=1)
    marker = tmp_path / "ran"

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            blocker, waiting = new_job_id(), new_job_id()
            wb, ww = await client.watch(blocker), await client.watch(waiting)
            # it holds the only slot until cancelled, however long the test takes to get there
            await client.submit(JobSpec(("sleep 600",)), "node:edge-1", job_id=blocker)
            await wait_state(wb, blocker, "running")
            await client.submit(JobSpec((f"touch {marker}",)), "node:edge-1", job_id=waiting)
            await wait_state(ww, waiting, "queued")
            await client.control(waiting, Control("cancel"), confirm=True)
            event = await wait_state(ww, waiting, "cancelled")
            assert event.detail == "cancelled before it started"
            await client.control(blocker, Control("cancel"), confirm=True)
            await wait_state(wb, blocker, "cancelled")

    run(scenario())
    assert not marker.exists()


def test_killed_daemon_resumes_queued_and_reports_running_interrupted(
    fleet: Fleet, tmp_path: Path
) -> None:
    """kill -9 mid-job: on restart the running job is `interrupted`, queued ones run in order."""
    proc = fleet.start_process("edge-1", max_parallel=1)
    trace = tmp_path / "trace.txt"

    async def before() -> tuple[str, list[str]]:
        async with Client(fleet.client_config(), fleet.key) as client:
            running = new_job_id()
            watch = await client.watch(running)
            # still running at the kill however slow the machine (the hangup ends it then)
            await client.submit(
                JobSpec(("echo working; sleep 600",)), "node:edge-1", job_id=running
            )
            await wait_state(watch, running, "running")
            queued = []
            for n in range(3):
                job_id = new_job_id()
                w = await client.watch(job_id)
                await client.submit(
                    JobSpec((f"echo {n} >> {trace}",)), "node:edge-1", job_id=job_id
                )
                await wait_state(w, job_id, "queued")
                queued.append(job_id)
            return running, queued

    running, queued = run(before())
    proc.kill(signal.SIGKILL)
    fleet.wait_offline("edge-1")

    async def after() -> None:
        async with Client(fleet.client_config("viewer"), fleet.key) as client:
            watches = {job_id: await client.watch(job_id) for job_id in [running, *queued]}
            await asyncio.to_thread(proc.start)
            # the first event after the restart waits for a whole daemon process to start
            event = await wait_state(
                watches[running], running, "interrupted", timeout=STARTUP_SECONDS
            )
            assert event.node == "edge-1"
            for job_id in queued:
                await wait_state(watches[job_id], job_id, "exited")
            # the interrupted job's log was finalised: a replay ends with FINAL
            await client.request_replay(running, watches[running])
            out, final = await follow_to_end(client, watches[running], running)
            assert b"working" in out
            assert isinstance(final, JobStateChanged)

    run(after(), STARTUP_SECONDS + 60)
    assert trace.read_text().split() == ["0", "1", "2"]
