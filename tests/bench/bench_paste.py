"""#3 Paste: 10 KB typed at once into a remote `cat` (raw mode), timed until all is echoed.

- Runlet: one `Client.send_input` of 10 KB into `stty raw -echo; exec cat` on the daemon (a
  real `runlet start` process), read back through the viewer's queue and a `Reassembler`.
- `ssh -tt` to the bench's sshd, and a local PTY: write 10 KB, read until 10 KB are back.
"""

from __future__ import annotations

import asyncio
import os
import random
import string
import subprocess
import time
from typing import Any

from ptyprocess import PtyProcess

from runlet.client.ping import ECHO_JOB
from runlet.client.session import Client, Reassembler
from runlet.protocol.addresses import new_job_id
from runlet.protocol.messages import OutputChunk
from runlet.protocol.payloads import Control, JobSpec
from tests.bench.bench_keystroke import ECHO_COMMAND
from tests.bench.common import Bench, read_marker, read_until, wait_state
from tests.bench.report import Figure, Row, Section, Target

NODE = "edge-1"
SIZE = 10 * 1024


def paste_data(rng: random.Random) -> bytes:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=SIZE)).encode()


def run(bench: Bench) -> Section:
    pastes = bench.pick(20, 5)
    reps = bench.pick(3, 2)
    fleet = bench.fleet("paste")
    fleet.start_process(NODE)
    sshd = bench.sshd()
    runs: dict[str, list[list[float]]] = {"runlet": [], "ssh": [], "pty": []}
    for rep in range(reps):
        rng = random.Random(rep)
        data = [paste_data(rng) for _ in range(pastes)]
        runs["runlet"].append(runlet_pastes(fleet.client_config(), fleet.key, data))
        runs["ssh"].append(fd_pastes_ssh(sshd.argv(ECHO_COMMAND), data))
        runs["pty"].append(local_pty_pastes(data))

    def fig(name: str) -> Figure:
        return Figure.of([sorted(r)[len(r) // 2] * 1000 for r in runs[name]])

    note = (
        f"{SIZE} bytes at once, {pastes} pastes per repetition (median of them), {reps} repetitions"
    )
    rows = [
        Row(3, "paste 10 KB, until all echoed", "ms", fig("runlet"), "ssh -tt 127.0.0.1",
            fig("ssh"), Target("abs_max", 100.0, "< 100 ms"), note),
        Row(3, "paste 10 KB, until all echoed", "ms", fig("runlet"), "local PTY", fig("pty")),
    ]  # fmt: skip
    details: dict[str, Any] = {
        "bytes": SIZE,
        "pastes_per_repetition": pastes,
        **{n: [[round(t * 1000, 3) for t in r] for r in per] for n, per in runs.items()},
    }
    return Section(rows, details)


def runlet_pastes(config: Any, key: Any, pastes: list[bytes]) -> list[float]:
    async def go() -> list[float]:
        async with Client(config, key) as client:
            job_id = new_job_id()
            watch = await client.watch(job_id)
            await client.submit(JobSpec((ECHO_JOB,)), f"node:{NODE}", job_id=job_id)
            await wait_state(watch.inbox, job_id, {"running"}, 30)
            await asyncio.sleep(0.2)  # let stty take effect, as ping_pty does
            reasm = Reassembler(client.key, job_id)
            seen = bytearray()
            times: list[float] = []
            try:
                for data in pastes:
                    need = len(seen) + len(data)
                    started = time.perf_counter()
                    await client.send_input(job_id, data)
                    async with asyncio.timeout(30):
                        while len(seen) < need:
                            msg = await watch.inbox.get()
                            if isinstance(msg, OutputChunk):
                                for piece in reasm.feed(msg):
                                    seen += piece
                    times.append(time.perf_counter() - started)
                    if seen[need - len(data) : need] != data:
                        raise RuntimeError("the echo differs from the paste")
            finally:
                await client.control(job_id, Control("signal", signal=9))
            return times

    return asyncio.run(go())


def paste_loop(write_fd: int, read_fd: int, pastes: list[bytes]) -> list[float]:
    times: list[float] = []
    buf = bytearray()
    for data in pastes:
        buf.clear()
        started = time.perf_counter()
        view = memoryview(data)
        while view:  # a PTY master takes what fits; keep reading the echo meanwhile
            try:
                written = os.write(write_fd, view)
            except BlockingIOError:
                written = 0
            view = view[written:]
            if view:
                read_until(read_fd, len(buf) + 1, 30.0, buf)
        read_until(read_fd, len(data), 30.0, buf)
        times.append(time.perf_counter() - started)
        if bytes(buf[: len(data)]) != data:
            raise RuntimeError("the echo differs from the paste")
    return times


def fd_pastes_ssh(argv: list[str], pastes: list[bytes]) -> list[float]:
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        read_marker(proc.stdout.fileno(), b"READY")
        return paste_loop(proc.stdin.fileno(), proc.stdout.fileno(), pastes)
    finally:
        proc.kill()
        proc.wait(10)


def local_pty_pastes(pastes: list[bytes]) -> list[float]:
    pty = PtyProcess.spawn(["sh", "-c", ECHO_COMMAND])
    os.set_blocking(pty.fd, False)
    try:
        read_marker(pty.fd, b"READY")
        return paste_loop(pty.fd, pty.fd, pastes)
    finally:
        pty.terminate(force=True)
