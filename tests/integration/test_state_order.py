"""A job's states reach every watcher and the ledger in the order they happened, under load.

The daemon publishes a job's `queued`, `running` and end state one after the other and its
output only once `running` has left, so a watcher never has to sort them out: these tests
check the order of arrival itself, on a machine made busy on purpose.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import asyncpg

from runlet.client.session import Client, Reassembler, Watch
from runlet.protocol.addresses import new_job_id
from runlet.protocol.messages import JobStateChanged, OutputChunk
from runlet.protocol.payloads import JobSpec
from tests.integration.test_server import DSN, ServerUnderTest, schema  # noqa: F401 - fixture
from tests.support import Fleet, run, wait_for

JOBS = 200


@contextmanager
def cpu_hog(processes: int = 2) -> Iterator[None]:
    """Keep every core of this 2-core machine busy with spinning processes while inside."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(10)


@dataclass
class Seen:
    """What one watcher received for its job, in the order it arrived."""

    reasm: Reassembler
    events: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, state, seq)
    final: bool = False

    @property
    def done(self) -> bool:
        return self.final and self.reasm.finished

    def running_before_output(self) -> bool:
        """The first output chunk arrived after `running` (every job has one: its FINAL)."""
        kinds = [state or kind for kind, state, _ in self.events]
        return (
            "running" in kinds
            and "output" in kinds
            and kinds.index("running") < kinds.index("output")
        )

    def states(self) -> list[str]:
        """The states in arrival order, a redelivered copy (same seq) counted once."""
        out: list[str] = []
        seqs: set[int] = set()
        for kind, state, seq in self.events:
            if kind == "state" and seq not in seqs:
                seqs.add(seq)
                out.append(state)
        return out


async def _collect(client: Client, job_id: str, watch: Watch, seen: Seen) -> None:
    while not seen.done:
        try:
            msg = await asyncio.wait_for(watch.inbox.get(), 30.0)
        except TimeoutError:
            raise AssertionError(
                f"job {job_id}: nothing new for 30 s; seen so far {seen.events}"
            ) from None
        match msg:
            case JobStateChanged(job_id=jid) if jid == job_id:
                seen.events.append(("state", msg.state, msg.seq))
                seen.final = seen.final or msg.terminal
            case OutputChunk(job_id=jid) if jid == job_id:
                seen.events.append(("output", "", msg.seq))
                seen.reasm.feed(msg)


async def _submit_and_watch(fleet: Fleet) -> dict[str, Seen]:
    async with Client(fleet.client_config(), fleet.key) as client:
        seen: dict[str, Seen] = {}
        tasks = []
        for n in range(JOBS):
            job_id = new_job_id()
            watch = await client.watch(job_id)
            seen[job_id] = Seen(Reassembler(client.key, job_id))
            command = "true" if n % 2 == 0 else f"echo line-{n}"
            await client.submit(JobSpec((command,)), "node:edge-1", job_id=job_id)
            tasks.append(asyncio.create_task(_collect(client, job_id, watch, seen[job_id])))
        await asyncio.gather(*tasks)
        return seen


async def _ledger_histories(schema_name: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(DSN, server_settings={"search_path": schema_name})
    try:
        rows = await conn.fetch(
            "SELECT job_id, array_agg(state ORDER BY seq) AS states FROM job_states GROUP BY job_id"
        )
    finally:
        await conn.close()
    return {row["job_id"]: list(row["states"]) for row in rows}


def test_fast_jobs_states_arrive_in_order_on_a_loaded_machine(
    fleet: Fleet,
    schema: str,  # noqa: F811 - the fixture imported above
) -> None:
    """200 fast jobs with every core busy: each watcher sees queued → running → exited in that
    order of arrival, `running` before any output, and the ledger records the same history."""
    server = ServerUnderTest(fleet, schema)
    server.start()
    try:
        fleet.start_daemon("edge-1", max_parallel=4)
        with cpu_hog():
            seen = run(_submit_and_watch(fleet), timeout=600)
        out_of_order = {
            job_id: s.events
            for job_id, s in seen.items()
            if s.states() != ["queued", "running", "exited"]
        }
        assert not out_of_order, (
            f"{len(out_of_order)} jobs saw their states out of order: {out_of_order}"
        )
        early_output = {
            job_id: s.events for job_id, s in seen.items() if not s.running_before_output()
        }
        assert not early_output, f"output before `running`: {early_output}"

        histories: dict[str, list[str]] = {}

        def recorded() -> bool:
            histories.update(run(_ledger_histories(schema)))
            return all(len(histories.get(job_id, [])) == 3 for job_id in seen)

        wait_for(recorded, 60, f"the ledger to record 3 states of each of {JOBS} jobs")
        wrong = {
            job_id: histories[job_id]
            for job_id in seen
            if histories[job_id] != ["queued", "running", "exited"]
        }
        assert not wrong, f"ledger histories out of order: {wrong}"
    finally:
        server.stop()
