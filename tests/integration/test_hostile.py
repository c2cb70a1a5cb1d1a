"""Bad input on every queue the daemon consumes: a clear error, dead-lettered, daemon unharmed."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from runlet.client.session import Client
from runlet.protocol import addresses, wire
from runlet.protocol.addresses import new_job_id
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import ControlSent, InputSent, OutputChunk, ReplayRequested, StartJob
from runlet.protocol.payloads import Control, JobSpec, seal_input
from tests.support import (
    EVENT_SECONDS,
    Fleet,
    follow_to_end,
    queue_info,
    run,
    wait_for,
    wait_state,
)


def _bad_bodies(job_id: str, user: str) -> list[tuple[str, bytes]]:
    valid = wire.encode(ReplayRequested(job_id))
    return [
        ("empty", b""),
        ("garbage", os.urandom(200)),
        ("truncated", valid[: len(valid) // 2]),
        ("trailing", valid + b"\x00"),
        ("oversize", b"\x92" + os.urandom(3 * 1024 * 1024)),
        ("unknown type", wire.encode(ReplayRequested(job_id))[:-40] + b"\x00" * 40),
        ("wrong type for queue", wire.encode(OutputChunk(job_id, 0, 0, b"x" * 40))),
        ("not a map", b"\x93\x01\x02\x03"),
    ]


def _wrong_key_start(job_id: str, user: str) -> bytes:
    other = FleetKey.generate()
    spec = JobSpec(("touch /tmp/runlet-must-not-run",))
    return wire.encode(
        StartJob(
            job_id, user, "node:edge-1", "mallory", spec.seal(other.job_key(job_id)), time.time()
        )
    )


def _dead_count(user: str) -> int:
    return (queue_info(user, addresses.dead_letter_queue(user)) or (0, 0))[0]


def _wait_dead_letters(user: str, count: int) -> None:
    """Until the dead-letter queue holds `count` messages (then exactly that many)."""
    wait_for(
        lambda: _dead_count(user) >= count,
        EVENT_SECONDS,
        f"{count} dead letters",
        seen=lambda: f"{_dead_count(user)} dead letters",
        interval=0.1,
    )
    assert _dead_count(user) == count


@pytest.mark.parametrize("key", ["dispatch.node.edge-1", "dispatch.any", "node.edge-1.rpc"])
def test_garbage_on_shared_queues_is_dead_lettered(fleet: Fleet, key: str) -> None:
    """Garbage, truncated, oversize, misplaced messages are dead-lettered; real jobs still run."""
    fleet.start_daemon("edge-1")
    bodies = _bad_bodies(new_job_id(), fleet.user)
    if key.startswith("dispatch"):
        bodies.append(("wrongly keyed", _wrong_key_start(new_job_id(), fleet.user)))

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            for n, (_, body) in enumerate(bodies):
                await client.broker.publish(
                    key, body, message_id=f"bad{n}", durable=True, mandatory=True
                )
            job_id = new_job_id()
            watch = await client.watch(job_id)
            await client.submit(JobSpec(("echo still-alive",)), "node:edge-1", job_id=job_id)
            out, final = await follow_to_end(client, watch, job_id)
            assert b"still-alive" in out
            assert final.state == "exited"

    run(scenario())
    _wait_dead_letters(fleet.user, len(bodies))
    assert not os.path.exists("/tmp/runlet-must-not-run")


def test_wrongly_keyed_job_is_reported_rejected(fleet: Fleet) -> None:
    """A job sealed with another fleet key is refused, said so on its state, and dead-lettered."""
    fleet.start_daemon("edge-1")
    job_id = new_job_id()

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            watch = await client.watch(job_id)
            await client.broker.publish(
                "dispatch.node.edge-1", _wrong_key_start(job_id, fleet.user), message_id=job_id
            )
            event = await wait_state(watch, job_id, "rejected")
            assert event.detail is not None
            assert "did not authenticate" in event.detail or "another fleet key" in event.detail

    run(scenario())
    _wait_dead_letters(fleet.user, 1)


def test_bad_input_and_control_for_a_running_job(fleet: Fleet) -> None:
    """Forged keystrokes and controls (wrong key, garbage) are dead-lettered; the job goes on."""
    fleet.start_daemon("edge-1")
    other = FleetKey.generate()

    async def scenario() -> None:
        async with Client(fleet.client_config(), fleet.key) as client:
            job_id = new_job_id()
            watch = await client.watch(job_id)
            await client.submit(
                JobSpec(("read line; echo got=$line",)), "node:edge-1", job_id=job_id
            )
            await wait_state(watch, job_id, "running")
            forged_input = InputSent(
                job_id, "mallory", 1, seal_input(other.job_key(job_id), "mallory", 1, b"rm -rf /\r")
            )
            forged_control = ControlSent(
                job_id, "mallory", 1, Control("cancel").seal(other.job_key(job_id), "mallory", 1)
            )
            other_job = InputSent(new_job_id(), "mallory", 1, b"x" * 40)
            bad = [
                (addresses.input_key(job_id), wire.encode(forged_input)),
                (addresses.input_key(job_id), wire.encode(other_job)),
                (addresses.input_key(job_id), os.urandom(64)),
                (addresses.control_key(job_id), wire.encode(forged_control)),
                (addresses.control_key(job_id), b""),
            ]
            for n, (key, body) in enumerate(bad):
                await client.broker.publish(
                    key, body, message_id=f"bad{n}", durable=True, mandatory=True
                )
            await asyncio.to_thread(_wait_dead_letters, fleet.user, len(bad))
            await client.send_input(job_id, b"hello\r", confirm=True)
            out, final = await follow_to_end(client, watch, job_id)
            assert b"got=hello" in out
            assert b"rm -rf" not in out
            assert final.state == "exited"

    run(scenario())
