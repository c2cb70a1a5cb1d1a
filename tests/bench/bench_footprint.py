"""#5 Footprint of a daemon: a real `runlet start` process, read from /proc.

Several daemons are started at once (each one repetition) and, after they settle:
- idle RSS: VmRSS of /proc/PID/status;
- idle CPU: utime + stime from /proc/PID/stat over a window (10 s; 3 s quick), as a share of
  one core;
- RSS with 10 interactive jobs running (`cat` in raw mode, each typed into once): the
  daemon's own VmRSS — the jobs' children are other processes and are not counted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from runlet.client.ping import ECHO_JOB
from runlet.client.session import Client, Reassembler
from runlet.protocol.addresses import new_job_id
from runlet.protocol.messages import OutputChunk
from runlet.protocol.payloads import Control, JobSpec
from tests.bench.common import Bench, cpu_seconds, threads, vm_rss_kib, wait_state
from tests.bench.report import Figure, Row, Section, Target
from tests.support import Fleet

INTERACTIVE_JOBS = 10


def run(bench: Bench) -> Section:
    daemons = bench.pick(3, 2)
    window = bench.pick(10.0, 3.0)
    fleet = bench.fleet("foot")
    procs = [
        fleet.start_process(f"edge-{n}", max_parallel=INTERACTIVE_JOBS + 2)
        for n in range(1, daemons + 1)
    ]
    pids = {f"edge-{n}": p.pid for n, p in enumerate(procs, start=1)}
    time.sleep(3.0)  # past start-up: imports done, queues declared, first heartbeat sent
    idle_rss = {node: vm_rss_kib(pid) for node, pid in pids.items()}
    before = {node: cpu_seconds(pid) for node, pid in pids.items()}
    time.sleep(window)
    idle_cpu = {node: (cpu_seconds(pid) - before[node]) / window for node, pid in pids.items()}
    busy_rss, busy_threads = asyncio.run(with_interactive_jobs(fleet, pids))

    def mib(values: dict[str, int]) -> Figure:
        return Figure.of([v / 1024 for v in values.values()])

    note = (
        f"{daemons} daemons (real `runlet start` processes), one sample each; CPU over "
        f"{window:.0f} s idle"
    )
    rows = [
        Row(5, "daemon RSS, idle", "MiB", mib(idle_rss),
            target=Target("abs_max", 32.0, "<= 32 MiB"), note=note),
        Row(5, "daemon RSS, 10 interactive jobs", "MiB", mib(busy_rss),
            note="the daemon process alone; its jobs' children are not counted"),
        Row(5, "daemon CPU, idle", "% of a core", Figure.of([c * 100 for c in idle_cpu.values()])),
    ]  # fmt: skip
    details: dict[str, Any] = {
        "idle_rss_kib": idle_rss,
        "busy_rss_kib": busy_rss,
        "idle_cpu_share": {k: round(v, 5) for k, v in idle_cpu.items()},
        "idle_threads": {node: threads(pid) for node, pid in pids.items()},
        "busy_threads": busy_threads,
        "cpu_window_s": window,
    }
    return Section(rows, details)


async def with_interactive_jobs(
    fleet: Fleet, pids: dict[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    """Start 10 `cat` jobs on every daemon, type into each, read RSS, then end them."""
    async with Client(fleet.client_config(), fleet.key) as client:
        jobs: list[tuple[str, Any]] = []
        for node in pids:
            for _ in range(INTERACTIVE_JOBS):
                job_id = new_job_id()
                watch = await client.watch(job_id)
                await client.submit(JobSpec((ECHO_JOB,)), f"node:{node}", job_id=job_id)
                jobs.append((job_id, watch))
        for job_id, watch in jobs:
            await wait_state(watch.inbox, job_id, {"running"}, 60)
        await asyncio.sleep(0.3)
        for job_id, watch in jobs:  # each job is live: a keystroke goes in, its echo comes back
            await client.send_input(job_id, b"x")
            reasm = Reassembler(client.key, job_id)
            got = bytearray()
            async with asyncio.timeout(30):
                while not got:
                    msg = await watch.inbox.get()
                    if isinstance(msg, OutputChunk):
                        for piece in reasm.feed(msg):
                            got += piece
        await asyncio.sleep(2.0)
        rss = {node: vm_rss_kib(pid) for node, pid in pids.items()}
        counts = {node: threads(pid) for node, pid in pids.items()}
        for job_id, _ in jobs:
            await client.control(job_id, Control("signal", signal=9))
        for job_id, watch in jobs:
            await wait_state(watch.inbox, job_id, {"killed", "exited"}, 60)
    return rss, counts
