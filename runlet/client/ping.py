"""`runlet ping NODE`: round-trip latency to a node's daemon through the broker, like ping(8).

Plain probes go client → broker → daemon → broker → client and are answered by the daemon's
gateway on its I/O loop. With `--pty` each probe is one keystroke typed into a `cat` running
in a PTY on the node, timed until its echo comes back: the path of interactive use, the same
one the keystroke benchmark measures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runlet.adapters.broker import Incoming, QueueSpec
from runlet.client.session import Client, Reassembler, Watch
from runlet.errors import NoSuchTarget
from runlet.protocol import addresses, wire
from runlet.protocol.messages import JobStateChanged, OutputChunk, Ping, Pong
from runlet.protocol.payloads import Control, JobSpec

ECHO_JOB = "stty raw -echo; exec cat"


@dataclass
class PingStats:
    """What a ping run measured, in seconds."""

    sent: int = 0
    times: list[float] = field(default_factory=list)

    @property
    def received(self) -> int:
        return len(self.times)

    @property
    def loss(self) -> float:
        return 0.0 if self.sent == 0 else 1 - self.received / self.sent

    def summary(self) -> dict[str, float | int]:
        ordered = sorted(self.times)
        pick = (
            (lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else None
        )
        return {
            "sent": self.sent,
            "received": self.received,
            "loss": round(self.loss, 4),
            "min_ms": round(ordered[0] * 1000, 3) if ordered else 0.0,
            "median_ms": round(statistics.median(ordered) * 1000, 3) if ordered else 0.0,
            "p99_ms": round(pick(0.99) * 1000, 3) if pick else 0.0,
            "max_ms": round(ordered[-1] * 1000, 3) if ordered else 0.0,
        }


Report = Callable[[int, float | None], None]


def _quiet(seq: int, elapsed: float | None) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Probes:
    """How to probe: how many, how far apart, how long to wait for each, whom to tell."""

    count: int
    interval: float = 0.0
    timeout: float = 5.0
    report: Report = _quiet  # report(seq, seconds or None) after each probe


async def ping_daemon(
    client: Client,
    node: str,
    probes: Probes,
) -> PingStats:
    """Probe the daemon of `node` as `probes` says."""
    info = await client.broker.queue_info(addresses.dispatch_queue(client.config.user, node))
    if info is None:
        raise NoSuchTarget(f"node:{node}")
    reply = addresses.reply_key(client.viewer, "0" * 32)
    pongs: asyncio.Queue[Pong] = asyncio.Queue()

    async def on_pong(incoming: Incoming) -> None:
        await incoming.ack()
        msg = wire.decode(incoming.body)
        if isinstance(msg, Pong):
            pongs.put_nowait(msg)

    name = addresses.job_queue(client.config.user, "0" * 32, "pongs", client.viewer)
    spec = QueueSpec(name, "exclusive", (reply,), dead_letter=False, acks=False)
    await client.broker.consume(spec, on_pong)
    stats = PingStats()
    for seq in range(1, probes.count + 1):
        stats.sent += 1
        started = time.perf_counter()
        await client.broker.publish(
            addresses.rpc_key(node),
            wire.encode(Ping(seq, time.time())),
            message_id=f"{client.viewer}:ping:{seq}",
            durable=False,
            mandatory=False,
            reply_to=reply,
        )
        elapsed = await _wait_pong(pongs, seq, started, probes.timeout)
        if elapsed is not None:
            stats.times.append(elapsed)
        probes.report(seq, elapsed)
        if seq < probes.count:
            await asyncio.sleep(probes.interval)
    return stats


async def _wait_pong(
    pongs: asyncio.Queue[Pong], seq: int, started: float, timeout: float
) -> float | None:
    end = started + timeout
    while (left := end - time.perf_counter()) > 0:
        try:
            pong = await asyncio.wait_for(pongs.get(), left)
        except TimeoutError:
            return None
        if pong.seq == seq:
            return time.perf_counter() - started
    return None


async def ping_pty(
    client: Client,
    node: str,
    probes: Probes,
) -> PingStats:
    """Type one byte at a time into `cat` on the node and time each echo."""
    job_id = addresses.new_job_id()
    watch = await client.watch(job_id)
    await client.submit(JobSpec((ECHO_JOB,)), f"node:{node}", job_id=job_id)
    reasm = Reassembler(client.key, job_id)
    seen = bytearray()
    await _until_running(watch, job_id, timeout=30)
    await asyncio.sleep(0.2)  # let stty take effect before the first probe
    stats = PingStats()
    try:
        for seq in range(1, probes.count + 1):
            probe = bytes([0x41 + seq % 26])
            stats.sent += 1
            before = len(seen)
            started = time.perf_counter()
            await client.send_input(job_id, probe)
            elapsed = await _wait_echo(
                watch, reasm, seen, before=before, started=started, timeout=probes.timeout
            )
            if elapsed is not None:
                stats.times.append(elapsed)
            probes.report(seq, elapsed)
            if seq < probes.count and probes.interval > 0:
                await asyncio.sleep(probes.interval)
    finally:
        await client.control(job_id, Control("signal", signal=9))
    return stats


async def _until_running(watch: Watch, job_id: str, timeout: float) -> None:
    inbox = watch.inbox
    async with asyncio.timeout(timeout):
        while True:
            msg = await inbox.get()
            if isinstance(msg, JobStateChanged) and msg.job_id == job_id:
                if msg.state == "running":
                    return
                if msg.terminal:
                    raise NoSuchTarget(f"echo job ended early: {msg.state}")


async def _wait_echo(
    watch: Watch,
    reasm: Reassembler,
    seen: bytearray,
    *,
    before: int,
    started: float,
    timeout: float,
) -> float | None:
    inbox = watch.inbox
    end = started + timeout
    while len(seen) <= before:
        left = end - time.perf_counter()
        if left <= 0:
            return None
        try:
            async with asyncio.timeout(left):  # no task per wait, unlike wait_for
                msg = await inbox.get()
        except TimeoutError:
            return None
        if isinstance(msg, OutputChunk):
            for piece in reasm.feed(msg):
                seen += piece
    return time.perf_counter() - started


def as_dict(stats: PingStats) -> dict[str, object]:
    return {**stats.summary(), "times_ms": [round(t * 1000, 3) for t in stats.times]}
