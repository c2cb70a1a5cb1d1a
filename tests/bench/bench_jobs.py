"""#4 Job throughput: N trivial jobs (`true`) over two workers, submit → `exited` received.

- Runlet: two daemons as real `runlet start` processes; the client submits every job with
  target `any` through `Client.submit` (durable quorum queue, persistent, publisher
  confirms), up to 64 submits in flight, and follows every job's state on one private queue
  bound to `job.*.state` (as a batch submitter would; `runlet run` binds one per job).
  Dispatch-to-start = the `running` event's time - the moment `submit` was called.
- Celery over the same RabbitMQ: two worker processes `celery -A tests.bench.celery_app
  worker -c 1`, result backend rpc://, a task that runs `subprocess.run(["true"])`;
  dispatch-to-start = the task's own start time - the moment `apply_async` was called.

Both sides get the same number of execution slots (two: `jobs.max_parallel = 1` per daemon,
`-c 1` per worker); Runlet with its default `max_parallel = 4` is reported as information.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from runlet.adapters.broker import Incoming, QueueSpec
from runlet.client.session import Client
from runlet.protocol import addresses, wire
from runlet.protocol.addresses import new_job_id
from runlet.protocol.messages import JobStateChanged
from runlet.protocol.payloads import JobSpec
from tests.bench.common import (
    Bench,
    latency_summary,
    management_delete,
    management_get,
    percentile,
)
from tests.bench.report import Figure, Row, Section, Target
from tests.support import REPO, Fleet, wait_for

SUBMITS_IN_FLIGHT = 64


@dataclass(slots=True)
class JobsRun:
    """One batch: when it began and ended, and each job's dispatch-to-start delay."""

    jobs: int
    began: float
    submitted: float  # every submit returned
    ended: float  # the last job's end was received
    to_start: list[float] = field(default_factory=list)
    failed: int = 0
    announcements: dict[str, int] | None = None  # state events the client heard (Runlet)

    @property
    def per_second(self) -> float:
        return self.jobs / (self.ended - self.began)

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "seconds": round(self.ended - self.began, 3),
            "submit_seconds": round(self.submitted - self.began, 3),
            "jobs_per_s": round(self.per_second, 2),
            "failed": self.failed,
            "dispatch_to_start": latency_summary(self.to_start) if self.to_start else None,
            "state_events_heard": self.announcements,
        }


def run(bench: Bench) -> Section:
    count = bench.pick(1000, 100)
    reps = bench.pick(2, 2)  # a Runlet repetition of 1000 jobs takes about a minute
    equal = bench.fleet("jobs")
    for node in ("edge-1", "edge-2"):
        equal.start_process(node, max_parallel=1)
    default = bench.fleet("jobsdef")
    for node in ("edge-1", "edge-2"):
        default.start_process(node, max_parallel=4)
    workers = CeleryWorkers(f"runlet-bench-celery-{uuid.uuid4().hex[:8]}", 2)
    bench.stack.callback(workers.stop)
    workers.start()
    runs: dict[str, list[JobsRun]] = {"runlet": [], "celery": [], "runlet_default": []}
    warm = bench.pick(20, 5)  # first jobs after a start pay for imports and connections
    runlet_batch(equal, warm)
    runlet_batch(default, warm)
    workers.batch(warm)
    for rep in range(reps):
        runs["runlet"].append(runlet_batch(equal, count))
        runs["celery"].append(workers.batch(count))
        if rep == 0:  # information only: one repetition, a quarter of the jobs
            runs["runlet_default"].append(runlet_batch(default, count // 4))
    workers.stop()
    broken = {k: sum(r.failed for r in v) for k, v in runs.items()}
    if any(broken.values()):
        raise RuntimeError(f"jobs did not exit 0: {broken}")

    def rate(name: str) -> Figure:
        return Figure.of([r.per_second for r in runs[name]])

    def delay(name: str, q: float) -> Figure:
        return Figure.of([percentile(r.to_start, q) * 1000 for r in runs[name]])

    celery = "Celery, 2 workers -c 1"
    note = (
        f"{count} x `true` per repetition, {reps} repetitions, 2 slots each side; Runlet "
        "submits with target any, durable + confirmed; Celery with its defaults (rpc:// "
        "results, no publisher confirms)"
    )
    rows = [
        Row(4, "job throughput", "jobs/s", rate("runlet"), celery, rate("celery"),
            Target("ratio_min", 1.5, "≥ 1.5x Celery"), note),
        Row(4, "dispatch-to-start p50", "ms", delay("runlet", 0.5), celery, delay("celery", 0.5),
            note="includes the wait in the queue behind earlier jobs, on both sides"),
        Row(4, "dispatch-to-start p99", "ms", delay("runlet", 0.99), celery,
            delay("celery", 0.99)),
        Row(4, "(info) state events heard after the job ended", "per 100 jobs", Figure.of(
            [100 * (r.announcements or {}).get("after_the_end", 0) / r.jobs
             for r in runs["runlet"]]),
            note="`queued`/`running` published after `exited` (out of order; seq restores it)"),
        Row(4, "(info) job throughput, max_parallel=4", "jobs/s", rate("runlet_default"),
            celery, rate("celery"), note="default 4 slots per daemon; 1 repetition of N/4 jobs"),
    ]  # fmt: skip
    details: dict[str, Any] = {
        "jobs_per_repetition": count,
        "repetitions": reps,
        **{name: [r.as_dict() for r in per] for name, per in runs.items()},
    }
    return Section(rows, details)


# -- Runlet ----------------------------------------------------------------------------------


def runlet_batch(fleet: Fleet, count: int) -> JobsRun:
    return asyncio.run(_runlet_batch(fleet, count))


async def _runlet_batch(fleet: Fleet, count: int) -> JobsRun:
    async with Client(fleet.client_config(), fleet.key) as client:
        ids = [new_job_id() for _ in range(count)]
        wanted = set(ids)
        submitted: dict[str, float] = {}
        ended: dict[str, float] = {}
        heard: Counter[str] = Counter()
        failed = 0
        done = asyncio.Event()
        everything = asyncio.Event()  # every job's queued, running and final state heard

        async def on_state(incoming: Incoming) -> None:
            nonlocal failed
            await incoming.ack()
            msg = wire.decode(incoming.body)
            if not isinstance(msg, JobStateChanged) or msg.job_id not in wanted:
                return
            heard[msg.state] += 1
            if msg.job_id in ended and not msg.terminal:
                heard["after_the_end"] += 1  # published after the job's end: out of order
            if msg.terminal and msg.job_id not in ended:
                ended[msg.job_id] = time.time()
                failed += msg.state != "exited" or msg.exit_code != 0
                if len(ended) == count:
                    done.set()
            if done.is_set() and heard["queued"] + heard["running"] >= 2 * count:
                everything.set()

        name = addresses.job_queue(fleet.user, "0" * 32, "bench", client.viewer)
        spec = QueueSpec(name, "exclusive", (addresses.state_key("*"),), dead_letter=False)
        await client.broker.consume(spec, on_state)
        gate = asyncio.Semaphore(SUBMITS_IN_FLIGHT)
        job = JobSpec(("true",))

        async def submit(job_id: str) -> None:
            async with gate:
                submitted[job_id] = time.time()
                await client.submit(job, "any", job_id=job_id)

        began = time.time()
        await asyncio.gather(*(submit(j) for j in ids))
        all_submitted = time.time()
        await asyncio.wait_for(done.wait(), timeout=max(120, count))
        # Not timed: `queued`/`running` may come after `exited`; count them for up to 10 s.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everything.wait(), 10.0)
        await client.broker.forget(name, delete=True)
    # Start times come from the daemons' journals: the `running` event carries the same
    # instant, but a client may not hear it (see `announcements` in the details).
    started = journal_start_times(fleet, wanted)
    result = JobsRun(
        count,
        began,
        all_submitted,
        max(ended.values()),
        [started[j] - submitted[j] for j in ids if j in started],
        failed,
    )
    result.announcements = dict(heard)
    return result


def journal_start_times(fleet: Fleet, wanted: set[str]) -> dict[str, float]:
    """job id → `started_at` from every daemon's journal (read-only)."""
    found: dict[str, float] = {}
    for journal in fleet.root.glob("*/journal.sqlite3"):
        conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT job_id, started_at FROM jobs WHERE started_at IS NOT NULL")
            found.update((j, float(t)) for j, t in rows if j in wanted)
        finally:
            conn.close()
    return found


# -- Celery ----------------------------------------------------------------------------------


class CeleryWorkers:
    """`celery worker -c 1` processes on their own queue, and a client for them."""

    def __init__(self, queue: str, count: int) -> None:
        self.queue = queue
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []
        self.exchanges_before: set[str] = set()

    def start(self) -> None:
        self.exchanges_before = {e["name"] for e in management_get("/api/exchanges/%2F")}
        os.environ["BENCH_CELERY_QUEUE"] = self.queue
        env = {**os.environ, "BENCH_CELERY_QUEUE": self.queue}
        for n in range(self.count):
            self.procs.append(
                subprocess.Popen(
                    [
                        *(sys.executable, "-m", "celery", "-A", "tests.bench.celery_app"),
                        *("worker", "-c", "1", "-n", f"bench{n}-{self.queue[-8:]}@%h"),
                        *("-l", "WARNING", "--without-gossip", "--without-mingle"),
                        "--without-heartbeat",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        path = f"/api/queues/%2F/{urllib.parse.quote(self.queue, safe='')}"

        def consumers() -> int:
            try:
                return int(management_get(path).get("consumers", 0))
            except OSError:
                return 0

        wait_for(lambda: consumers() >= self.count, 60, "the Celery workers to consume")

    def batch(self, count: int) -> JobsRun:
        from celery.result import ResultSet  # type: ignore[import-untyped, import-not-found, unused-ignore]

        from tests.bench import celery_app

        if self.queue != celery_app.QUEUE:
            raise RuntimeError("celery_app was imported before its queue was chosen")
        submitted: list[float] = []
        results: list[Any] = []
        began = time.time()
        for _ in range(count):
            submitted.append(time.time())
            results.append(celery_app.run_true.apply_async())
        all_submitted = time.time()
        values = ResultSet(results).join(timeout=max(120, count), propagate=False)
        ended = time.time()
        to_start: list[float] = []
        failed = 0
        for sent, value in zip(submitted, values, strict=True):
            if isinstance(value, list | tuple) and len(value) == 2:
                to_start.append(float(value[0]) - sent)
            else:
                failed += 1
        for result in results:
            result.forget()
        return JobsRun(count, began, all_submitted, ended, to_start, failed)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        if self.exchanges_before:
            management_delete(f"/api/queues/%2F/{urllib.parse.quote(self.queue, safe='')}")
            with contextlib.suppress(OSError):
                for exchange in management_get("/api/exchanges/%2F"):
                    name = exchange["name"]
                    if name == self.queue or (
                        name not in self.exchanges_before and name.startswith(("celery", "c."))
                    ):
                        management_delete(f"/api/exchanges/%2F/{urllib.parse.quote(name, safe='')}")
            self.exchanges_before = set()
