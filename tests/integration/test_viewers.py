"""Late joiners, several viewers at once, and output that arrives whole, in order, exactly once."""

from __future__ import annotations

from runlet.client.session import Client
from runlet.protocol.addresses import new_job_id
from runlet.protocol.payloads import JobSpec
from tests.support import Fleet, Follower, follow_to_end, run

COUNT_JOB = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo line-$i; done; read x; echo bye-$x"


def _lines(out: bytes) -> list[str]:
    return [line for line in out.decode().replace("\r", "").split("\n") if line.startswith("line-")]


def test_late_joiner_gets_everything_once_in_order(fleet: Fleet) -> None:
    """A viewer joining mid-stream replays from 0 and follows live: no gap, no duplicate."""
    fleet.start_daemon("edge-1")

    async def scenario() -> None:
        async with (
            Client(fleet.client_config("a"), fleet.key) as starter,
            Client(fleet.client_config("b"), fleet.key) as late,
        ):
            job_id = new_job_id()
            starter_view = Follower(starter, await starter.watch(job_id), job_id)
            await starter.submit(JobSpec((COUNT_JOB,)), "node:edge-1", job_id=job_id)
            await starter_view.output(b"line-1\r\n")  # join once the output is flowing
            w2 = await late.watch(job_id)
            late_view = Follower(late, w2, job_id)
            await late.request_replay(job_id, w2)
            # the replay has caught up with the job (it waits for a line now): what comes
            # after the line is typed reaches the late joiner live
            await late_view.output(b"line-3000\r\n")
            await late.send_input(job_id, b"ok\r", confirm=True)
            first, f1 = await starter_view.to_end()
            second, f2 = await late_view.to_end()
            expected = [f"line-{i}" for i in range(1, 3001)]
            assert _lines(first) == expected
            assert _lines(second) == expected
            assert first == second
            assert b"bye-ok" in second
            assert f1.state == f2.state == "exited"

    run(scenario())


def test_three_viewers_type_in_turn_and_all_see_everything(fleet: Fleet) -> None:
    """Three viewers on one job: each types a line, every viewer sees all three answers."""
    fleet.start_daemon("edge-1")
    job = 'for i in 1 2 3; do read x; echo "answer $i: $x"; done'

    async def scenario() -> None:
        clients = [Client(fleet.client_config(f"v{n}"), fleet.key) for n in range(3)]
        for client in clients:
            await client.__aenter__()
        try:
            job_id = new_job_id()
            views = [Follower(c, await c.watch(job_id), job_id) for c in clients]
            await clients[0].submit(JobSpec((job,)), "node:edge-1", job_id=job_id)
            await views[0].reached("running")
            for n, (client, view) in enumerate(zip(clients, views, strict=True)):
                await client.send_input(job_id, f"from-v{n}\r".encode(), confirm=True)
                # the job has read this viewer's line before the next one types
                await view.output(f"answer {n + 1}: from-v{n}".encode())
            results = [await view.to_end() for view in views]
            for out, final in results:
                text = out.decode()
                assert (
                    text.index("answer 1: from-v0")
                    < text.index("answer 2: from-v1")
                    < text.index("answer 3: from-v2")
                )
                assert final.state == "exited"
            assert results[0][0] == results[1][0] == results[2][0]
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)

    run(scenario())


def test_replay_of_a_finished_job(fleet: Fleet) -> None:
    """Attaching after the end replays the whole output and reports the final state."""
    fleet.start_daemon("edge-1")

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            job_id = new_job_id()
            w = await client.watch(job_id)
            await client.submit(JobSpec(("echo done-once; exit 4",)), "node:edge-1", job_id=job_id)
            await follow_to_end(client, w, job_id)
        async with Client(fleet.client_config("later"), fleet.key) as later:
            w2 = await later.watch(job_id)
            await later.request_replay(job_id, w2)
            out, final = await follow_to_end(later, w2, job_id)
            assert out.count(b"done-once") == 1
            assert (final.state, final.exit_code) == ("exited", 4)

    run(scenario())
