"""A watch with a limit (a UI tab's): output past it is dropped, states always go in."""

from __future__ import annotations

import time
from pathlib import Path

from runlet.adapters.logfile import seal_output
from runlet.client.session import Client
from runlet.protocol import addresses, wire
from runlet.protocol.messages import JobStateChanged, OutputChunk
from runlet.testing import MemoryBroker
from tests.support import Fleet, run

JOB = "0123456789abcdef0123456789abcdef"


def test_output_past_the_limit_is_dropped_and_counted_states_are_kept(tmp_path: Path) -> None:
    """Five chunks into a watch of limit 2: two wait, three are dropped; a state still goes in."""
    fleet = Fleet(tmp_path, user="alice")
    client = Client(fleet.client_config("laptop"), fleet.key)
    broker = MemoryBroker("alice")
    client.broker = broker  # type: ignore[assignment]  # the in-memory broker fills the port

    async def scenario() -> None:
        watch = await client.watch(JOB, limit=2)
        key = fleet.key.job_key(JOB)
        for seq in range(5):
            flags, sealed = seal_output(key, seq, time.time(), b"x")
            body = wire.encode(OutputChunk(JOB, seq, flags, sealed))
            await broker.publish(addresses.output_key(JOB), body, message_id=f"o{seq}")
        body = wire.encode(JobStateChanged(JOB, "edge-1", "running", 1, 1.0))
        await broker.publish(addresses.state_key(JOB), body, message_id="s")
        await broker.idle()
        assert (watch.inbox.qsize(), watch.dropped) == (3, 3)
        unlimited = await client.watch(JOB, viewer="other")
        await broker.publish(addresses.output_key(JOB), body, message_id="again")
        await broker.idle()
        assert (unlimited.inbox.qsize(), unlimited.dropped) == (1, 0)

    run(scenario())
