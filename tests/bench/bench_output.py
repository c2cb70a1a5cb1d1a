"""#2 Output throughput: ~200 MB written by a remote job, read by an attached viewer.

- Runlet: `Client.watch` + `submit` + `Reassembler`, counting plaintext bytes until the
  FINAL chunk; meanwhile the daemon (a real `runlet start` process) seals every chunk and
  appends it to the job's log in its vault, as always. The log's size is recorded.
- `ssh -tt` with the same command, stdout read to EOF; a local PTY (ptyprocess) likewise.

The rate is bytes over the time from the first output byte to the last, so connection set-up
(ssh's handshake, Runlet's dispatch) is left out; the wall time from start is recorded too.
All three read through a PTY, so `\\n` becomes `\\r\\n` alike; bytes are counted as received.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptyprocess import PtyProcess

from runlet.client.session import Client, Reassembler
from runlet.protocol.addresses import new_job_id
from runlet.protocol.messages import JobStateChanged, OutputChunk
from runlet.protocol.payloads import JobSpec
from tests.bench.common import Bench
from tests.bench.report import Figure, Row, Section, Target

NODE = "edge-1"
MB = 1_000_000


@dataclass(frozen=True, slots=True)
class Transfer:
    """One read of a job's output."""

    bytes: int
    streaming_s: float  # first byte → last byte
    wall_s: float  # start → end

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.streaming_s

    def as_dict(self) -> dict[str, float]:
        return {
            "bytes": self.bytes,
            "streaming_s": round(self.streaming_s, 4),
            "wall_s": round(self.wall_s, 4),
            "mb_per_s": round(self.mb_per_s, 2),
        }


def command(raw_bytes: int) -> str:
    """base64 of zeros: 4/3 of `raw_bytes` printable bytes in 77-byte lines."""
    return f"head -c {raw_bytes} /dev/zero | base64"


def run(bench: Bench) -> Section:
    raw = bench.pick(150_000_000, 15_000_000)  # → ~205 MB (~20 MB quick) on the terminal
    reps = bench.pick(2, 2)  # a Runlet repetition of ~200 MB takes 20-50 s on 2 cores
    cmd = command(raw)
    fleet = bench.fleet("out")
    fleet.start_process(NODE)
    sshd = bench.sshd()
    runs: dict[str, list[Transfer]] = {"runlet": [], "ssh": [], "pty": []}
    logs: list[int] = []
    for _ in range(reps):
        transfer, log_size = runlet_output(fleet.client_config(), fleet.key, fleet.root, cmd)
        runs["runlet"].append(transfer)
        logs.append(log_size)
        runs["ssh"].append(fd_output(sshd.argv(cmd)))
        runs["pty"].append(local_pty_output(cmd))
    expected = {t.bytes for r in runs.values() for t in r}
    if len(expected) != 1:
        raise RuntimeError(f"byte counts differ between runs: {runs}")

    def fig(name: str) -> Figure:
        return Figure.of([t.mb_per_s for t in runs[name]])

    size = expected.pop() / MB
    note = (
        f"`{cmd}`: {size:.0f} MB through a PTY per run, {reps} repetitions; rate from the "
        "first byte to the last (FINAL chunk for Runlet)"
    )
    rows = [
        Row(2, "output throughput", "MB/s", fig("runlet"), "ssh -tt 127.0.0.1", fig("ssh"),
            Target("ratio_min", 1.0, "≥ 1.0x ssh"), note),
        Row(2, "output throughput", "MB/s", fig("runlet"), "local PTY", fig("pty")),
    ]  # fmt: skip
    details: dict[str, Any] = {
        "command": cmd,
        "repetitions": reps,
        "log_bytes": logs,
        **{name: [t.as_dict() for t in r] for name, r in runs.items()},
    }
    return Section(rows, details)


def runlet_output(config: Any, key: Any, root: Path, cmd: str) -> tuple[Transfer, int]:
    """Run `cmd` on the daemon and read its output as an attached viewer; + its log size."""

    async def go() -> tuple[Transfer, str]:
        async with Client(config, key) as client:
            job_id = new_job_id()
            watch = await client.watch(job_id)
            reasm = Reassembler(client.key, job_id)
            count = 0
            first: float | None = None
            state: str | None = None
            started = time.perf_counter()
            await client.submit(JobSpec((cmd,)), f"node:{NODE}", job_id=job_id)
            async with asyncio.timeout(600):
                while not reasm.finished:
                    msg = await watch.inbox.get()
                    if isinstance(msg, OutputChunk):
                        for piece in reasm.feed(msg):
                            if first is None and piece:
                                first = time.perf_counter()
                            count += len(piece)
                    elif isinstance(msg, JobStateChanged) and msg.terminal:
                        state = msg.state
            end = time.perf_counter()
            while state is None:  # the exit status follows (or preceded) the FINAL chunk
                msg = await asyncio.wait_for(watch.inbox.get(), 30)
                if isinstance(msg, JobStateChanged) and msg.terminal:
                    state = msg.state
            if state != "exited" or reasm.bad_chunks:
                raise RuntimeError(f"job ended {state}, {reasm.bad_chunks} bad chunks")
            assert first is not None
            return Transfer(count, end - first, end - started), job_id

    transfer, job_id = asyncio.run(go())
    log = root / NODE / "vault" / f"{job_id}.rlog"
    return transfer, log.stat().st_size if log.exists() else -1


def _drain(fd: int, started: float) -> Transfer:
    count = 0
    first: float | None = None
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except OSError as exc:  # a PTY master says EIO once the child side is gone
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        if first is None:
            first = time.perf_counter()
        count += len(chunk)
    end = time.perf_counter()
    assert first is not None
    return Transfer(count, end - first, end - started)


def fd_output(argv: list[str]) -> Transfer:
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        transfer = _drain(proc.stdout.fileno(), started)
    finally:
        proc.stdin.close()
        if proc.wait(30) != 0:
            raise RuntimeError(f"ssh exited {proc.returncode}")
    return transfer


def local_pty_output(cmd: str) -> Transfer:
    started = time.perf_counter()
    pty = PtyProcess.spawn(["sh", "-c", cmd])
    try:
        return _drain(pty.fd, started)
    finally:
        pty.terminate(force=True)
