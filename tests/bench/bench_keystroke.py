"""#1 Keystroke echo: one byte typed into a remote `cat`, timed until its echo is back.

- Runlet: `runlet.client.ping.ping_pty` — client → broker → daemon (a real `runlet start` process)
  → the job's PTY → `cat` → broker → client, sealed both ways.
- (a) the floor of any broker design: a bare two-hop aio-pika round trip through the same
  broker — publish to a queue, a consumer in another process republishes to a reply queue.
- (b) `ssh -tt` to the bench's own sshd on 127.0.0.1 running `stty raw -echo; cat`.
- (c) a local PTY: ptyprocess spawns the same, writes a byte, reads the echo.

Repetitions are interleaved (Runlet, a, b, c, Runlet, …) so background load hits all alike.
Also recorded, for diagnosis: `runlet ping` without the PTY (`ping_daemon`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from ptyprocess import PtyProcess

from runlet.client.ping import Probes, ping_daemon, ping_pty
from runlet.client.session import Client
from tests.bench.common import Bench, latency_summary, percentile, read_marker, read_until
from tests.bench.report import Figure, Row, Section, Target
from tests.support import BROKER_URL, REPO

ECHO_COMMAND = "stty raw -echo; printf READY; exec cat"
NODE = "edge-1"


def run(bench: Bench) -> Section:
    count = bench.pick(2000, 200)
    reps = bench.pick(3, 2)
    fleet = bench.fleet("key")
    fleet.start_process(NODE)
    sshd = bench.sshd()
    runs: dict[str, list[list[float]]] = {
        "runlet": [],
        "bare": [],
        "ssh": [],
        "pty": [],
        "daemon": [],
    }
    lost: dict[str, int] = {"runlet": 0, "daemon": 0}
    echo = EchoServer(f"runlet.{fleet.user}.bare")
    bench.stack.callback(echo.stop)
    echo.start()
    for _ in range(reps):
        times, missing = runlet_keystrokes(fleet.client_config(), fleet.key, count)
        runs["runlet"].append(times)
        lost["runlet"] += missing
        runs["bare"].append(asyncio.run(echo.round_trips(count)))
        runs["ssh"].append(fd_keystrokes_ssh(sshd.argv(ECHO_COMMAND), count))
        runs["pty"].append(local_pty_keystrokes(count))
        times, missing = daemon_pings(fleet.client_config(), fleet.key, count // 4)
        runs["daemon"].append(times)
        lost["daemon"] += missing
    echo.stop()

    def fig(name: str, q: float) -> Figure:
        return Figure.of([percentile(r, q) * 1000 for r in runs[name]])

    a = "(a) bare aio-pika 2-hop"
    b = "(b) ssh -tt 127.0.0.1"
    c = "(c) local PTY"
    note = (
        f"{count} keystrokes per repetition, {reps} repetitions; spread = min-max of the "
        "per-repetition percentile"
    )
    rows = [
        Row(1, "keystroke echo p50", "ms", fig("runlet", 0.5), a, fig("bare", 0.5),
            Target("ratio_max", 1.3, "≤ 1.3x (a)"), note),
        Row(1, "keystroke echo p50", "ms", fig("runlet", 0.5), target=Target(
            "abs_max", 2.0, "< 2 ms")),
        Row(1, "keystroke echo p50", "ms", fig("runlet", 0.5), b, fig("ssh", 0.5)),
        Row(1, "keystroke echo p50", "ms", fig("runlet", 0.5), c, fig("pty", 0.5)),
        Row(1, "keystroke echo p99", "ms", fig("runlet", 0.99), a, fig("bare", 0.99),
            Target("ratio_max", 2.0, "≤ 2x (a)")),
        Row(1, "keystroke echo p99", "ms", fig("runlet", 0.99), target=Target(
            "abs_max", 5.0, "< 5 ms")),
        Row(1, "keystroke echo p99", "ms", fig("runlet", 0.99), b, fig("ssh", 0.99)),
        Row(1, "keystroke echo p99", "ms", fig("runlet", 0.99), c, fig("pty", 0.99)),
        Row(1, "(info) daemon ping, no PTY, p50", "ms", fig("daemon", 0.5), a, fig("bare", 0.5),
            note="runlet ping NODE: client → broker → daemon gateway → broker → client"),
    ]  # fmt: skip
    details: dict[str, Any] = {
        "count_per_repetition": count,
        "repetitions": reps,
        "lost": lost,
        **{
            name: {
                "pooled": latency_summary([t for r in per_rep for t in r]),
                "per_repetition": [latency_summary(r) for r in per_rep],
            }
            for name, per_rep in runs.items()
        },
    }
    return Section(rows, details)


# -- Runlet ----------------------------------------------------------------------------------


def runlet_keystrokes(config: Any, key: Any, count: int) -> tuple[list[float], int]:
    """`ping_pty` against the daemon: (echo times in seconds, keystrokes without echo)."""

    async def go() -> tuple[list[float], int]:
        async with Client(config, key) as client:
            stats = await ping_pty(client, NODE, Probes(count))
        return stats.times, stats.sent - stats.received

    return asyncio.run(go())


def daemon_pings(config: Any, key: Any, count: int) -> tuple[list[float], int]:
    async def go() -> tuple[list[float], int]:
        async with Client(config, key) as client:
            stats = await ping_daemon(client, NODE, Probes(count))
        return stats.times, stats.sent - stats.received

    return asyncio.run(go())


# -- (a) bare aio-pika -----------------------------------------------------------------------


class EchoServer:
    """A process that republishes every message of `<prefix>.in` to its reply_to queue."""

    def __init__(self, prefix: str) -> None:
        self.inbound = f"{prefix}.in"
        self.reply = f"{prefix}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.bench_keystroke", "echo-server", self.inbound],
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        read_marker(self.proc.stdout.fileno(), b"ready", timeout=30)

    async def round_trips(self, count: int) -> list[float]:
        import aio_pika

        conn = await aio_pika.connect(BROKER_URL)
        try:
            channel = await conn.channel(publisher_confirms=False)
            replies = await channel.declare_queue(self.reply, exclusive=True, auto_delete=True)
            inbox: asyncio.Queue[bytes] = asyncio.Queue()

            async def on_reply(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
                inbox.put_nowait(msg.body)

            await replies.consume(on_reply, no_ack=True)
            times: list[float] = []
            body = os.urandom(64)
            for _ in range(count):
                started = time.perf_counter()
                await channel.default_exchange.publish(
                    aio_pika.Message(body, reply_to=self.reply), self.inbound
                )
                await asyncio.wait_for(inbox.get(), 5.0)
                times.append(time.perf_counter() - started)
            return times
        finally:
            await conn.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


async def serve_echo(inbound: str) -> None:
    import aio_pika

    conn = await aio_pika.connect(BROKER_URL)
    channel = await conn.channel(publisher_confirms=False)
    queue = await channel.declare_queue(inbound, auto_delete=True)

    async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        if msg.reply_to:
            await channel.default_exchange.publish(aio_pika.Message(msg.body), msg.reply_to)

    await queue.consume(on_message, no_ack=True)
    sys.stdout.buffer.write(b"ready\n")
    sys.stdout.buffer.flush()
    await asyncio.Event().wait()


# -- (b) ssh -tt and (c) local PTY -----------------------------------------------------------


def echo_loop(write_fd: int, read_fd: int, count: int) -> list[float]:
    """Write one byte at a time and time each echo."""
    times: list[float] = []
    buf = bytearray()
    for n in range(count):
        probe = bytes([0x41 + n % 26])
        buf.clear()
        started = time.perf_counter()
        os.write(write_fd, probe)
        read_until(read_fd, 1, 5.0, buf)
        times.append(time.perf_counter() - started)
    return times


def fd_keystrokes_ssh(argv: list[str], count: int) -> list[float]:
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        read_marker(proc.stdout.fileno(), b"READY")
        return echo_loop(proc.stdin.fileno(), proc.stdout.fileno(), count)
    finally:
        proc.kill()
        proc.wait(10)


def local_pty_keystrokes(count: int) -> list[float]:
    pty = PtyProcess.spawn(["sh", "-c", ECHO_COMMAND])
    try:
        read_marker(pty.fd, b"READY")
        return echo_loop(pty.fd, pty.fd, count)
    finally:
        pty.terminate(force=True)


if __name__ == "__main__" and sys.argv[1:2] == ["echo-server"]:
    asyncio.run(serve_echo(sys.argv[2]))
