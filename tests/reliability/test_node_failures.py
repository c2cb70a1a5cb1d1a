"""Failures of a node and of the services beside it, under load, counting what arrived.

Scenarios of DESIGN.md §9 (numbers are those of the reliability table):

3. a daemon killed (-9) mid-job with 20 jobs queued behind it;
4. the server down while two daemons run 50 jobs;
5. the object store down while 30 jobs finish;
7. a node offline when 21 jobs are sent to it, one with a deadline that passes;
8. 10,000 bad messages on every queue a daemon and the server consume, 20 real jobs among them;
9. the disk of a daemon's data_dir filling up mid-job (freed before the job ends; and still full
   when it ends, when the journal cannot take the change: the end is published anyway and
   journaled once there is room);

and a burst of 60 instant jobs, the regression test of the open/close race of a job's queues
that these scenarios tripped (the daemon's fast channel closed by a NOT_FOUND, state changes,
heartbeats and output lost; fixed in actors/broker_gateway.py and adapters/broker/). Every test
with a daemon also checks its log for broker errors (`trouble`).

Every broker URL comes from `cluster_urls` (the 3-node cluster; the local broker with
RUNLET_RELIABILITY_LOCAL=1), for daemons, clients, probes and the server alike, and every
test records its figures once with `record`. Conditions are polled with deadlines, never
slept on: every wait is for the event it needs (a state change seen, a line in a daemon's log,
a file on disk), with a bound generous enough for a busy 2-core machine, and one that runs out
says what it waited for and what it saw.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from runlet.adapters.blobstore import BlobStore, hash_file
from runlet.adapters.broker import Broker, Incoming, QueueSpec
from runlet.adapters.journal import Journal
from runlet.adapters.logfile import DamageKind, LogScan, open_output, read_records, scan_log
from runlet.client import queries
from runlet.client.session import Client
from runlet.config import Config, StorageConfig, load_config
from runlet.errors import BlobStoreUnavailable, ProtocolError, StorageError
from runlet.protocol import addresses, wire
from runlet.protocol.addresses import new_job_id
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import (
    ControlSent,
    InputSent,
    JobStateChanged,
    OutputChunk,
    Query,
    ReplayRequested,
    StartJob,
)
from runlet.protocol.payloads import Control, JobSpec, seal_input
from tests.integration.s3 import MotoServer, make_storage_config
from tests.integration.test_logs import storage_toml
from tests.integration.test_server import ServerUnderTest, free_port
from tests.integration.test_server import schema as schema  # noqa: PLC0414 - the fixture
from tests.reliability.results import record
from tests.support import (
    BROKER_URL,
    MANAGEMENT_URL,
    DaemonProcess,
    Fleet,
    follow_to_end,
    run,
    wait_for,
)

Urls = tuple[str, ...]
EDGE = "edge-1"
FULL_LIFE = ["queued", "running", "exited"]
# Bounds, not expectations (quiet, each takes a fraction of a second; see the docstring).
EVENT_SECONDS = 30.0  # one event after its cause: a state change, a log line, an upload
STARTUP_SECONDS = 60.0  # a daemon process started and its broker setup done


# --- the broker, through the configured URLs -----------------------------------------------


def management_url(urls: Urls) -> str:
    """The management API beside the first AMQP URL (each node serves it on port + 10000)."""
    if urls == (BROKER_URL,):
        return MANAGEMENT_URL
    parts = urllib.parse.urlsplit(urls[0])
    return f"http://{parts.hostname}:{(parts.port or 5672) + 10000}"


def management(urls: Urls, method: str, path: str) -> Any:
    request = urllib.request.Request(f"{management_url(urls)}{path}", method=method)  # noqa: S310
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        body = response.read()
    return json.loads(body) if body else None


def queue_names(urls: Urls, prefix: str) -> list[str]:
    rows = management(urls, "GET", "/api/queues/%2F?columns=name")
    return [str(r["name"]) for r in rows if str(r["name"]).startswith(prefix)]


def delete_resources(urls: Urls, user: str) -> None:
    prefix = addresses.exchange(user)
    for name in queue_names(urls, prefix):
        with contextlib.suppress(urllib.error.HTTPError):
            management(urls, "DELETE", f"/api/queues/%2F/{urllib.parse.quote(name, safe='')}")
    for row in management(urls, "GET", "/api/exchanges/%2F?columns=name"):
        if str(row["name"]).startswith(prefix):
            quoted = urllib.parse.quote(str(row["name"]), safe="")
            with contextlib.suppress(urllib.error.HTTPError):
                management(urls, "DELETE", f"/api/exchanges/%2F/{quoted}")


async def queue_info_async(urls: Urls, user: str, name: str) -> tuple[int, int] | None:
    """(messages, consumers) of a (non-exclusive) queue, exactly, over AMQP."""
    broker = Broker(urls, user, name="runlet-reliability-probe")
    await broker.connect()
    try:
        return await broker.queue_info(name)
    finally:
        await broker.close()


def queue_info(urls: Urls, user: str, name: str) -> tuple[int, int] | None:
    return asyncio.run(queue_info_async(urls, user, name))


def dead_letters(urls: Urls, user: str) -> int:
    return (queue_info(urls, user, addresses.dead_letter_queue(user)) or (0, 0))[0]


def consumers(urls: Urls, user: str, node: str) -> int:
    return (queue_info(urls, user, addresses.dispatch_queue(user, node)) or (0, 0))[1]


def wait_online(fleet: Fleet, urls: Urls, node: str, timeout: float = STARTUP_SECONDS) -> None:
    wait_for(
        lambda: consumers(urls, fleet.user, node) > 0,
        timeout,
        f"{node} online (a consumer on its dispatch queue)",
        seen=lambda: f"{consumers(urls, fleet.user, node)} consumers",
        interval=0.1,
    )


def wait_offline(fleet: Fleet, urls: Urls, node: str, timeout: float = STARTUP_SECONDS) -> None:
    wait_for(
        lambda: consumers(urls, fleet.user, node) == 0,
        timeout,
        f"{node} offline (no consumer on its dispatch queue)",
        seen=lambda: f"{consumers(urls, fleet.user, node)} consumers",
        interval=0.1,
    )


@pytest.fixture(autouse=True)
def _clean_cluster(fleet: Fleet, cluster_urls: Urls) -> Iterator[None]:
    """On the real cluster, the fleet's queues are deleted there too (the fleet cleans local)."""
    yield
    if cluster_urls != (BROKER_URL,):
        for proc in fleet.processes:
            proc.stop()
        delete_resources(cluster_urls, fleet.user)


# --- daemons, clients, server --------------------------------------------------------------


def start_node(fleet: Fleet, urls: Urls, node: str, **options: Any) -> DaemonProcess:
    """A real `runlet start` process on `urls`; returns once its broker setup is done."""
    proc = DaemonProcess(fleet.config_file(node, urls=urls, **options), fleet.root / f"{node}.log")
    fleet.processes.append(proc)
    restart(fleet, urls, node, proc)
    return proc


def restart(fleet: Fleet, urls: Urls, node: str, proc: DaemonProcess) -> None:
    """(Re)start the process; return once it consumes its queues and said `broker_ready`."""
    ready = _count_ready(proc)
    proc.start()
    wait_online(fleet, urls, node)
    wait_for(
        lambda: _count_ready(proc) > ready,
        STARTUP_SECONDS,
        f"{node}'s broker setup (`broker_ready` in its log)",
        seen=lambda: f"the end of its log:\n{log_tail(proc)}",
    )


def log_tail(proc: DaemonProcess, lines: int = 15) -> str:
    """The last lines of a daemon's log (each cut to 300 characters), for a failure message."""
    if not proc.log_path.exists():
        return "(no log yet)"
    return "\n".join(line[:300] for line in proc.log().splitlines()[-lines:])


def _count_ready(proc: DaemonProcess) -> int:
    return proc.log().count('"broker_ready"') if proc.log_path.exists() else 0


def client_config(fleet: Fleet, urls: Urls, name: str = "client") -> Config:
    return fleet.config(name, role="client", urls=urls)


def alive(proc: DaemonProcess) -> bool:
    return proc.proc is not None and proc.proc.poll() is None


TROUBLE = (
    "actor_crashed",
    "broker_setup_failed",
    "broker_operation_failed",
    "job_queues_deferred",
    "publish_failed",
)


def trouble(proc: DaemonProcess) -> list[str]:
    """The daemon's log lines saying its broker link is broken (deferred opens before the first
    connection are fine: they are restored on connect)."""
    found = []
    for line in proc.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("event") not in TROUBLE:
            continue
        if "not connected to RabbitMQ" in str(entry.get("error")):
            continue
        found.append(f"{entry['event']}: {str(entry.get('error'))[:160]}")
    return found


class Server(ServerUnderTest):
    """`ServerUnderTest` whose broker URLs are the scenario's (it defaults to the local one)."""

    def __init__(self, fleet: Fleet, schema: str, urls: Urls, **options: Any) -> None:
        super().__init__(fleet, schema, **options)
        path = fleet.root / "server.toml"
        listed = ", ".join(json.dumps(u) for u in urls)
        path.write_text(path.read_text() + f"[broker]\nurls = [{listed}]\nheartbeat = 5\n")
        self.config = load_config(path, env={})

    def metric(self, name: str) -> float:
        return metric(self.metrics(), name)


def metric(text: str, name: str) -> float:
    """The value of one sample (`name` with its labels exactly as exported), 0 if absent."""
    for line in text.splitlines():
        if line.split(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def metrics_sum(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body: bytes = r.read()
    return body.decode()


def ask(fleet: Fleet, urls: Urls, query: Query) -> list[dict[str, Any]]:
    return run(queries.ask(client_config(fleet, urls, "asker"), query), 30)


# --- watching every state change -----------------------------------------------------------


class StateSpy:
    """Every `job.*.state` event of the user, through one exclusive queue of a client."""

    def __init__(self) -> None:
        self.events: dict[str, dict[int, JobStateChanged]] = defaultdict(dict)
        self.reached: dict[tuple[str, str], float] = {}  # (job, state) → first seen (monotonic)
        self.output: dict[str, int] = Counter()  # output chunks seen, by job

    async def attach(self, client: Client, *, output: bool = False) -> None:
        keys = ("job.*.state", "job.*.output") if output else ("job.*.state",)
        name = addresses.job_queue(client.config.user, "0" * 32, "spy", client.viewer)

        async def on_message(incoming: Incoming) -> None:
            await incoming.ack()
            try:
                msg = wire.decode(incoming.body)
            except ProtocolError:
                return
            if isinstance(msg, JobStateChanged):
                self.events[msg.job_id].setdefault(msg.seq, msg)
                self.reached.setdefault((msg.job_id, msg.state), time.monotonic())
            elif isinstance(msg, OutputChunk):
                self.output[msg.job_id] += 1

        await client.broker.consume(
            QueueSpec(name, "exclusive", keys, dead_letter=False), on_message
        )

    def history(self, job_id: str) -> list[str]:
        """The job's states in seq order (a redelivered event counts once: same seq)."""
        return [e.state for _, e in sorted(self.events.get(job_id, {}).items())]

    def last(self, job_id: str) -> JobStateChanged | None:
        found = self.events.get(job_id)
        return found[max(found)] if found else None

    def state(self, job_id: str) -> str | None:
        event = self.last(job_id)
        return None if event is None else event.state

    def count(self, job_ids: list[str], state: str) -> int:
        return sum(1 for j in job_ids if self.state(j) == state)

    def complete(self, job_ids: list[str], *states: str) -> int:
        """How many of the jobs have exactly this history (default: queued, running, exited).

        A job's "exited" seen says nothing of its earlier events having come (a publish that
        was retried comes late), so whole histories are waited for on their own.
        """
        wanted = list(states or ("queued", "running", "exited"))
        return sum(1 for j in job_ids if self.history(j) == wanted)

    def incomplete(self, job_ids: list[str], *states: str) -> dict[str, list[str]]:
        """The histories (in seq order) of the jobs that do not have exactly `states`."""
        wanted = list(states or ("queued", "running", "exited"))
        return {j: self.history(j) for j in job_ids if self.history(j) != wanted}

    def summary(self) -> str:
        """How many jobs have each history so far, e.g. `3 x queued>running>exited`."""
        counts = Counter(">".join(self.history(j)) for j in self.events)
        return ", ".join(f"{n} x {h}" for h, n in counts.most_common()) or "no state event"

    async def until(
        self,
        check: Callable[[], bool],
        timeout: float,
        what: str,
        *,
        seen: Callable[[], object] | None = None,
    ) -> None:
        """Until `check()` holds; on timeout, say `what`, and what was seen: `seen()`, or the
        histories of every job the spy heard of."""
        end = time.monotonic() + timeout
        while not check():
            if time.monotonic() > end:
                found = self.summary() if seen is None else seen()
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; saw {found}")
            await asyncio.sleep(0.02)


async def poll(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    *,
    seen: Callable[[], object] | None = None,
) -> None:
    end = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > end:
            found = "" if seen is None else f"; saw {seen()}"
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{found}")
        await asyncio.sleep(0.1)


def trace_counts(trace: Path) -> Counter[str]:
    return Counter(trace.read_text().split()) if trace.exists() else Counter()


# --- 3. daemon killed mid-job --------------------------------------------------------------


@pytest.mark.timeout(400)  # two daemon starts and ~60 s of waits, on a busy machine
def test_daemon_killed_mid_job_resumes_queue_and_finalises_the_interrupted_log(
    fleet: Fleet, cluster_urls: Urls, storage_config: StorageConfig, tmp_path: Path
) -> None:
    """kill -9 with 1 job running and 20 queued: on restart the 20 run once each, the running
    one is `interrupted` and its partial log is finalised and uploaded; the broker link of the
    restarted daemon stays whole."""
    urls = cluster_urls
    proc = start_node(fleet, urls, EDGE, max_parallel=1, extra=storage_toml(storage_config))
    trace = tmp_path / "trace.txt"
    spy = StateSpy()
    running = new_job_id()
    queued = [new_job_id() for _ in range(20)]
    vault = fleet.root / EDGE / "vault"
    log = vault / f"{running}.rlog"
    recovery: list[float] = []

    async def scenario() -> None:
        async with Client(client_config(fleet, urls), fleet.key) as client:
            await spy.attach(client, output=True)
            # still running at the kill however slow the machine (the hangup ends it then)
            command = f"echo R >> {trace}; echo working-before-the-kill; sleep 600"
            await client.submit(JobSpec((command,)), f"node:{EDGE}", job_id=running)
            for n, job_id in enumerate(queued):
                spec = JobSpec((f"echo q{n} >> {trace}; echo queued-{n}",))
                await client.submit(spec, f"node:{EDGE}", job_id=job_id)
            await spy.until(
                lambda: spy.state(running) == "running" and spy.output[running] > 0,
                EVENT_SECONDS,
                "the running job's first output",
                seen=lambda: f"{spy.history(running)}, {spy.output[running]} output chunks",
            )
            await spy.until(
                lambda: spy.count(queued, "queued") == 20, EVENT_SECONDS, "20 queued jobs"
            )
            assert trace_counts(trace) == Counter({"R": 1})  # nothing else started yet

            await asyncio.to_thread(proc.kill, signal.SIGKILL)
            await asyncio.to_thread(wait_offline, fleet, urls, EDGE)
            partial = scan_log(log, job_id=running)
            assert partial.records >= 1
            assert not partial.finished

            restarted = time.monotonic()
            await asyncio.to_thread(restart, fleet, urls, EDGE, proc)
            await spy.until(
                lambda: spy.count(queued, "exited") >= 1,
                STARTUP_SECONDS,
                "the first queued job to exit",
            )
            first = min(t for (j, state), t in spy.reached.items() if state == "exited")
            recovery.append(first - restarted)
            await spy.until(
                lambda: spy.state(running) == "interrupted",
                EVENT_SECONDS,
                "interrupted",
                seen=lambda: spy.history(running),
            )
            await spy.until(
                lambda: spy.count(queued, "exited") == 20, STARTUP_SECONDS, "all 20 queued jobs"
            )
            # the last of a history's events may come after the end was seen; if one never
            # comes, the assertions below say which (the figures are recorded first)
            with contextlib.suppress(AssertionError):
                await spy.until(lambda: spy.complete(queued) == 20, EVENT_SECONDS, "histories")

            async def uploaded() -> bool:
                async with BlobStore(storage_config, fleet.user) as store:
                    found = await store.head_log(EDGE, running)
                return found is not None and found.final and found.hash == hash_file(log)

            await poll(uploaded, EVENT_SECONDS, "the interrupted job's final upload")

    try:
        run(scenario(), 270)
    finally:
        counts = trace_counts(trace)
        lost = sum(1 for n in range(20) if counts[f"q{n}"] == 0)
        duplicated = sum(max(0, c - 1) for c in counts.values())
        problems = trouble(proc)
        record(
            "daemon killed mid-job",
            "1 running + 20 queued, max_parallel=1",
            lost=lost,
            duplicated=duplicated,
            recovery_s=recovery[0] if recovery else None,
            note="recovery: restart -> first queued job exited; "
            + _troubled(spy, queued, problems),
        )
    assert lost == 0
    assert duplicated == 0
    assert counts["R"] == 1  # the interrupted job never ran again
    event = spy.last(running)
    assert event is not None
    assert (event.state, event.node) == ("interrupted", EDGE)
    assert spy.history(running) == ["queued", "running", "interrupted"]
    scan = scan_log(log, job_id=running)
    assert scan.finished
    assert scan.intact
    key = fleet.key.job_key(running)
    text = b"".join(open_output(key, r.seq, r.flags, r.sealed)[1] for r in read_records(log))
    assert b"working-before-the-kill" in text
    assert alive(proc)
    assert problems == []
    assert spy.complete(queued) == 20, spy.incomplete(queued)


def _troubled(spy: StateSpy, jobs: list[str], problems: list[str]) -> str:
    """Jobs missing a state event and broker errors in the daemon's log (the signature of the
    open/close race of a job's queues, see test_burst_of_instant_jobs_keeps_the_daemon_healthy)."""
    missing = sum(1 for j in jobs if spy.history(j) and spy.history(j) != FULL_LIFE)
    return f"{missing} jobs missing a state event, {len(problems)} broker errors logged"


# --- 4. server down ------------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_server_down_fifty_jobs_are_recorded_when_it_returns(
    fleet: Fleet, cluster_urls: Urls, schema: str
) -> None:
    """Server stopped, 50 jobs on 2 daemons: they run; on its return every state is recorded."""
    urls = cluster_urls
    server = Server(fleet, schema, urls)
    server.start()
    try:
        procs = [start_node(fleet, urls, "edge-1"), start_node(fleet, urls, "edge-2")]
        wait_for(
            lambda: len(_try_ask(fleet, urls, Query("nodes")) or []) == 2,
            STARTUP_SECONDS,
            "2 nodes recorded",
            seen=lambda: _try_ask(fleet, urls, Query("nodes")),
            interval=0.2,
        )
        server.stop()
        spy = StateSpy()
        ids = [new_job_id() for _ in range(50)]

        async def fifty_jobs() -> None:
            async with Client(client_config(fleet, urls), fleet.key) as client:
                await spy.attach(client)
                for n, job_id in enumerate(ids):
                    node = "edge-1" if n % 2 == 0 else "edge-2"
                    await client.submit(JobSpec((f"echo job-{n}",)), f"node:{node}", job_id=job_id)
                await spy.until(lambda: spy.count(ids, "exited") == 50, 90, "50 exited jobs")
                # a history's last event may come after the end was seen (figures only here:
                # the ledger's histories are what this test checks)
                with contextlib.suppress(AssertionError):
                    await spy.until(lambda: spy.complete(ids) == 50, EVENT_SECONDS, "histories")

        run(fifty_jobs(), 150)
        waiting = (queue_info(urls, fleet.user, addresses.ledger_queue(fleet.user)) or (0, 0))[0]

        started = time.monotonic()
        server.start()
        recovery: float | None = None
        rows: dict[str, dict[str, Any]] = {}
        histories: dict[str, list[str]] = {}

        def all_exited() -> bool:
            found = _try_ask(fleet, urls, Query("jobs", state="exited", limit=1000)) or []
            rows.update({str(r["job_id"]): r for r in found})
            return set(ids) <= set(rows)

        def all_histories() -> bool:
            for job_id in ids:
                if histories.get(job_id) != FULL_LIFE:
                    found = _try_ask(fleet, urls, Query("job", job_id=job_id))
                    if found:
                        histories[job_id] = [str(h["state"]) for h in found[0]["history"]]
            return all(histories.get(j) == FULL_LIFE for j in ids)

        try:
            wait_for(
                all_exited,
                90,  # the server starts first
                "the 50 jobs recorded as exited",
                seen=lambda: f"{len(set(ids) & set(rows))} of them",
                interval=0.2,
            )
            # up to 50 queries a round, each over its own connection: a minute is only a bound
            wait_for(
                all_histories,
                STARTUP_SECONDS,
                "the 50 jobs' whole histories",
                seen=lambda: {j: histories.get(j) for j in ids if histories.get(j) != FULL_LIFE},
                interval=0.2,
            )
            recovery = time.monotonic() - started
        finally:
            lost = sum(1 for j in ids if histories.get(j) != FULL_LIFE)
            duplicated = sum(len(h) - len(set(h)) for h in histories.values())
            record(
                "server down",
                "50 jobs on 2 daemons while the server is stopped",
                lost=lost,
                duplicated=duplicated,
                recovery_s=recovery,
                note=f"lost = jobs without queued/running/exited in the ledger; {waiting} of"
                " 150 state events waited in the ledger queue; recovery: server start -> all"
                f" recorded; {_troubled(spy, ids, [t for p in procs for t in trouble(p)])}",
            )
        assert lost == 0
        assert duplicated == 0
        assert {rows[j]["node"] for j in ids} == {"edge-1", "edge-2"}
        assert all(alive(p) for p in procs)
    finally:
        server.stop()


def _try_ask(fleet: Fleet, urls: Urls, query: Query) -> list[dict[str, Any]] | None:
    try:
        return ask(fleet, urls, query)
    except Exception:
        return None


# --- 5. object store down ------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_store_down_thirty_logs_upload_when_it_returns(
    fleet: Fleet, cluster_urls: Urls, private_s3_server: MotoServer
) -> None:
    """Store stopped, 30 jobs finish: their logs wait; store back: all 30 land, hash for hash."""
    urls = cluster_urls
    cfg = make_storage_config(private_s3_server.endpoint, fleet.root, timeout=2.0)

    async def make_bucket() -> None:
        async with BlobStore(cfg, fleet.user) as store:
            await store.ensure_bucket()

    run(make_bucket())
    proc = start_node(fleet, urls, EDGE, extra=storage_toml(cfg))
    vault = fleet.root / EDGE / "vault"
    spy = StateSpy()
    ids = [new_job_id() for _ in range(30)]
    first = new_job_id()

    async def submit_and_wait(client: Client, jobs: list[str]) -> None:
        for job_id in jobs:
            spec = JobSpec((f"echo log-of-{job_id}; seq 1 200",))
            await client.submit(spec, f"node:{EDGE}", job_id=job_id)
        await spy.until(lambda: spy.count(jobs, "exited") == len(jobs), 90, "the jobs to exit")
        # a history's last event may come after the end was seen (figures only here)
        with contextlib.suppress(AssertionError):
            await spy.until(lambda: spy.complete(jobs) == len(jobs), EVENT_SECONDS, "histories")

    async def head_all(jobs: list[str]) -> dict[str, tuple[bool, str]]:
        found: dict[str, tuple[bool, str]] = {}
        with contextlib.suppress(BlobStoreUnavailable):  # just back: try again
            async with BlobStore(cfg, fleet.user) as store:
                for job_id in jobs:
                    remote = await store.head_log(EDGE, job_id)
                    if remote is not None:
                        found[job_id] = (remote.final, remote.hash)
        return found

    def done(found: dict[str, tuple[bool, str]]) -> list[str]:
        return [
            j
            for j, (final, digest) in found.items()
            if final and digest == hash_file(vault / f"{j}.rlog")
        ]

    async def before() -> None:
        async with Client(client_config(fleet, urls), fleet.key) as client:
            await spy.attach(client)
            await submit_and_wait(client, [first])
        await poll(
            lambda: _uploaded_now(head_all, done, [first]), EVENT_SECONDS, "the first upload"
        )

    run(before(), 150)
    recovery: float | None = None
    uploaded: list[str] = []
    try:
        private_s3_server.stop()

        async def during() -> None:
            async with Client(client_config(fleet, urls), fleet.key) as client:
                await spy.attach(client)
                await submit_and_wait(client, ids)

        run(during(), 150)
        wait_for(
            lambda: "upload_failed" in proc.log(),
            EVENT_SECONDS,
            "an upload to fail",
            seen=lambda: f"the end of the daemon's log:\n{log_tail(proc)}",
        )
        # kept locally: each log is written before its job's end is published, but by another
        # actor than the one publishing it, so the file is waited for, not assumed
        wait_for(
            lambda: all((vault / f"{j}.rlog").exists() for j in ids),
            EVENT_SECONDS,
            "the 30 logs in the vault",
            seen=lambda: f"{sum((vault / f'{j}.rlog').exists() for j in ids)} of them",
        )
        assert not any((vault / f"{j}.rlog.uploaded").exists() for j in ids)
        private_s3_server.start()
        back = time.monotonic()

        async def after() -> None:
            async def check() -> bool:
                uploaded[:] = done(await head_all(ids))
                return len(uploaded) == len(ids)

            await poll(check, 120, "all 30 uploads", seen=lambda: f"{len(uploaded)} uploaded")

        try:
            run(after(), 180)
            recovery = time.monotonic() - back
        finally:
            record(
                "object store down",
                "30 jobs finished while the store is stopped",
                lost=len(ids) - len(uploaded),
                duplicated=0,
                recovery_s=recovery,
                note="recovery: store back -> all 30 uploaded (final, hash = local); "
                + _troubled(spy, ids, trouble(proc)),
            )
    finally:
        private_s3_server.start()
    assert sorted(uploaded) == sorted(ids)
    assert alive(proc)


async def _uploaded_now(
    head_all: Callable[[list[str]], Awaitable[dict[str, tuple[bool, str]]]],
    done: Callable[[dict[str, tuple[bool, str]]], list[str]],
    jobs: list[str],
) -> bool:
    return len(done(await head_all(jobs))) == len(jobs)


# --- 7. node offline when jobs are sent ----------------------------------------------------


@pytest.mark.timeout(300)
def test_offline_node_runs_waiting_jobs_once_and_expires_the_late_one(
    fleet: Fleet, cluster_urls: Urls, tmp_path: Path
) -> None:
    """20 jobs (long deadline) and 1 (1 s deadline) sent to an offline node: on start the 20 run
    exactly once, the one is `expired` and never runs, and every state change is published."""
    urls = cluster_urls
    node = "edge-2"
    proc = start_node(fleet, urls, node)
    proc.stop()
    wait_offline(fleet, urls, node)
    trace = tmp_path / "trace.txt"
    spy = StateSpy()
    ids = [new_job_id() for _ in range(20)]
    late = new_job_id()
    recovery: list[float] = []

    deadline = 0.0

    async def scenario() -> None:
        nonlocal deadline
        async with Client(client_config(fleet, urls), fleet.key) as client:
            await spy.attach(client)
            for n, job_id in enumerate(ids):
                if n == 10:
                    deadline = time.time() + 1.0
                    sent = await client.submit(
                        JobSpec((f"echo LATE >> {trace}",)),
                        f"node:{node}",
                        job_id=late,
                        deadline=deadline,
                    )
                    assert sent.offline
                spec = JobSpec((f"echo j{n} >> {trace}",))
                sent = await client.submit(
                    spec, f"node:{node}", job_id=job_id, deadline=time.time() + 600
                )
                assert sent.offline
            # the point of the test: the late job's deadline passes while its node is offline
            await asyncio.sleep(max(0.0, deadline - time.time()) + 0.5)
            started = time.monotonic()
            await asyncio.to_thread(restart, fleet, urls, node, proc)
            await spy.until(
                lambda: spy.count(ids, "exited") == 20, STARTUP_SECONDS, "the 20 jobs to exit"
            )
            recovery.append(time.monotonic() - started)
            # both of its events (queued, then expired), not only the last one to arrive
            await spy.until(
                lambda: spy.state(late) == "expired" and len(spy.history(late)) >= 2,
                EVENT_SECONDS,
                "the late job to expire",
                seen=lambda: spy.history(late),
            )
            # the last of a history's events may come after the end was seen; if one never
            # comes, the assertions below say which (the figures are recorded first)
            with contextlib.suppress(AssertionError):
                await spy.until(lambda: spy.complete(ids) == 20, EVENT_SECONDS, "histories")

    try:
        run(scenario(), 240)
    finally:
        counts = trace_counts(trace)
        lost = sum(1 for n in range(20) if counts[f"j{n}"] == 0)
        duplicated = sum(max(0, c - 1) for c in counts.values())
        problems = trouble(proc)
        record(
            "node offline when jobs are sent",
            "20 jobs + 1 with a 1 s deadline to an offline node",
            lost=lost,
            duplicated=duplicated,
            recovery_s=recovery[0] if recovery else None,
            note="recovery: node start -> 20 exited, late one expired; "
            + _troubled(spy, ids, problems),
        )
    assert lost == 0
    assert duplicated == 0
    assert counts["LATE"] == 0
    assert spy.history(late) == ["queued", "expired"]
    event = spy.last(late)
    assert event is not None
    assert event.node == node
    assert alive(proc)
    assert problems == []
    assert spy.complete(ids) == 20, spy.incomplete(ids)


# --- 8. 10,000 bad messages ----------------------------------------------------------------

TOTAL_BAD = 10_000
OVERSIZE = 20
WRONG_KEY_STARTS = 100  # StartJob sealed with another fleet key, on the two dispatch queues
WRONG_KEY_INPUTS = 100  # InputSent for the running job, sealed with another key
WRONG_KEY_CONTROLS = 100  # ControlSent for the running job, sealed with another key
REAL_JOBS = 20


def _malformed(n: int, job_id: str) -> bytes:
    """One of ten kinds of undecodable or misplaced body, by `n`."""
    valid = wire.encode(ReplayRequested(job_id, n))
    kinds: list[Callable[[], bytes]] = [
        lambda: b"",  # empty
        lambda: os.urandom(1 + n % 300),  # garbage
        lambda: valid[: len(valid) // 2],  # truncated
        lambda: valid + b"\x00",  # trailing bytes
        lambda: b"\x93\x01\x02\x03",  # not a map
        lambda: _pack({"t": "no_such_message", "v": 1, "job_id": job_id}),  # unknown type
        lambda: wire.encode(OutputChunk(job_id, n, 0, b"x" * 40)),  # wrong type for any queue
        lambda: _pack({"t": "replay", "v": 99, "job_id": job_id, "from_seq": 0}),  # version
        lambda: _pack({"t": "start_job", "v": 1, "job_id": job_id}),  # missing fields
        lambda: _pack({"t": "replay", "v": 1, "job_id": job_id, "from_seq": "x"}),  # mistyped
    ]
    return kinds[n % len(kinds)]()


def _pack(value: dict[str, object]) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


@pytest.mark.timeout(500)  # 10,000 messages of up to 3 MiB through a 3-node cluster
def test_ten_thousand_bad_messages_are_dead_lettered_and_harm_nothing(
    fleet: Fleet, cluster_urls: Urls, schema: str, tmp_path: Path
) -> None:
    """10,000 malformed, truncated, oversize and wrongly keyed messages over every queue a daemon
    and the server consume, with 20 real jobs among them: all dead-lettered (presence: counted),
    nothing crashes, the real jobs exit."""
    urls = cluster_urls
    user = fleet.user
    server = Server(fleet, schema, urls)
    server.start()
    port = free_port()
    try:
        proc = start_node(fleet, urls, EDGE, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        wait_for(
            lambda: _try_ask(fleet, urls, Query("nodes")) is not None,
            STARTUP_SECONDS,
            "the server to answer",
            interval=0.2,
        )
        rpc = addresses.rpc_queue(user, EDGE)
        wait_for(
            lambda: rpc in queue_names(urls, rpc),
            EVENT_SECONDS,
            "the node's rpc queue",
            seen=lambda: queue_names(urls, addresses.exchange(user)),
            interval=0.2,
        )
        trace = tmp_path / "trace.txt"
        spy = StateSpy()
        target = new_job_id()  # a running job that waits for a line of input
        real = [new_job_id() for _ in range(REAL_JOBS)]
        other = FleetKey.generate()
        presence_before = server.metric(
            'runlet_rejected_messages_total{queue="presence",reason="invalid"}'
        )
        daemon_before = metrics_sum(scrape(port), "runlet_rejected_messages_total{")
        sent: Counter[str] = Counter()  # bad messages by destination queue
        finished: list[float] = []
        daemon_queues = ("dispatch", "any", "rpc", "rpc.jobs", "input", "control")
        server_queues = ("ledger", "server.rpc")
        everywhere = (*daemon_queues, *server_queues, "presence")

        fixed_keys = {
            "dispatch": addresses.dispatch_node_key(EDGE),
            "any": addresses.DISPATCH_ANY,
            "rpc": addresses.rpc_key(EDGE),
            "rpc.jobs": addresses.RPC_JOBS,
            "input": addresses.input_key(target),
            "control": addresses.control_key(target),
            "server.rpc": addresses.SERVER_RPC,
        }

        def key_of(queue: str) -> str:
            if queue == "ledger":
                return addresses.state_key(new_job_id())  # any job's state: the ledger's
            if queue == "presence":
                return addresses.presence_key(f"ghost-{sum(sent.values()) % 7}")
            return fixed_keys[queue]

        def wrong_key_start() -> bytes:
            job_id = new_job_id()
            spec = JobSpec((f"echo FORGED >> {trace}",))
            sealed = spec.seal(other.job_key(job_id))
            return wire.encode(
                StartJob(job_id, user, f"node:{EDGE}", "mallory", sealed, time.time())
            )

        def bodies() -> Iterator[tuple[str, bytes]]:
            """(destination queue, body) for every bad message, kinds interleaved."""
            dead_lettering = (*daemon_queues, *server_queues)
            for n in range(OVERSIZE):
                yield dead_lettering[n % len(dead_lettering)], b"\x92" + os.urandom(3 << 20)
            for n in range(WRONG_KEY_STARTS):
                yield ("dispatch", "any")[n % 2], wrong_key_start()
            for n in range(WRONG_KEY_INPUTS):
                sealed = seal_input(other.job_key(target), "mallory", n + 1, b"rm -rf /\r")
                yield "input", wire.encode(InputSent(target, "mallory", n + 1, sealed))
            for n in range(WRONG_KEY_CONTROLS):
                sealed = Control("cancel").seal(other.job_key(target), "mallory", n + 1)
                yield "control", wire.encode(ControlSent(target, "mallory", n + 1, sealed))
            rest = TOTAL_BAD - OVERSIZE - WRONG_KEY_STARTS - WRONG_KEY_INPUTS - WRONG_KEY_CONTROLS
            for n in range(rest):
                yield everywhere[n % len(everywhere)], _malformed(n, new_job_id())

        def dead_lettered() -> int:
            return sum(sent[q] for q in (*daemon_queues, *server_queues))

        async def scenario() -> None:
            flood = Broker(urls, user, name="runlet-reliability-flood")
            await flood.connect()
            try:
                async with Client(client_config(fleet, urls), fleet.key) as client:
                    await spy.attach(client)
                    watch = await client.watch(target)
                    await client.submit(
                        JobSpec(("read line; echo got=$line",)), f"node:{EDGE}", job_id=target
                    )
                    await spy.until(
                        lambda: spy.state(target) == "running",
                        EVENT_SECONDS,
                        "the target job to run",
                        seen=lambda: spy.history(target),
                    )
                    every = TOTAL_BAD // REAL_JOBS
                    started = time.monotonic()
                    for n, (queue, body) in enumerate(bodies()):
                        if n % every == every // 2:
                            job = real[n // every]
                            spec = JobSpec((f"echo real-{n // every} >> {trace}",))
                            on = f"node:{EDGE}" if n // every % 2 == 0 else "any"
                            await client.submit(spec, on, job_id=job)
                        await flood.publish(
                            key_of(queue),
                            body,
                            message_id=f"bad-{n}",
                            durable=False,
                            mandatory=False,
                        )
                        sent[queue] += 1
                    published = time.monotonic() - started
                    await spy.until(
                        lambda: spy.count(real, "exited") == REAL_JOBS, 120, "the 20 real jobs"
                    )
                    if await _dead_letters_settle(urls, user, dead_lettered()):
                        finished.extend([time.monotonic() - started, published])
                    # the forged keystrokes never reached it; a real one does
                    await client.send_input(target, b"hello\r", confirm=True)
                    await spy.until(
                        lambda: spy.state(target) == "exited",
                        EVENT_SECONDS,
                        "the target job to exit",
                        seen=lambda: spy.history(target),
                    )
                    await client.request_replay(target, watch)
                    out, _ = await follow_to_end(client, watch, target, timeout=EVENT_SECONDS)
                    assert b"got=hello" in out
                    assert b"rm -rf" not in out
            finally:
                await flood.close()

        try:
            run(scenario(), 420)
        finally:
            dead = dead_letters(urls, user)
            presence = (
                server.metric('runlet_rejected_messages_total{queue="presence",reason="invalid"}')
                - presence_before
            )
            exited = spy.count(real, "exited")
            problems = trouble(proc)
            record(
                "10,000 bad messages",
                f"{sum(sent.values())} bad over 9 queues"
                f" ({OVERSIZE} of 3 MiB) + {REAL_JOBS} real jobs",
                lost=REAL_JOBS - exited,
                duplicated=max(0, dead - dead_lettered()),
                recovery_s=finished[0] if finished else None,
                note=(
                    f"dead-lettered {dead}/{dead_lettered()}, presence rejected "
                    f"{presence:.0f}/{sent['presence']};"
                    " recovery: first publish -> all dead-lettered"
                    + (f"; published in {finished[1]:.1f} s" if finished else "")
                    + f"; {_troubled(spy, real, problems)}"
                ),
            )
        assert sum(sent.values()) == TOTAL_BAD
        assert alive(proc), proc.log()[-3000:]
        assert exited == REAL_JOBS
        assert all((e := spy.last(j)) is not None and e.exit_code == 0 for j in real)
        assert dead == dead_lettered()
        presence_key = 'runlet_rejected_messages_total{queue="presence",reason="invalid"}'
        wait_for(
            lambda: server.metric(presence_key) - presence_before >= sent["presence"],
            STARTUP_SECONDS,
            "every bad heartbeat counted",
            seen=lambda: f"{server.metric(presence_key) - presence_before:.0f} counted",
        )
        assert server.metric(presence_key) - presence_before == sent["presence"]

        # the daemon counts a rejected message beside dead-lettering it: the dead letters being
        # in is no promise that the count shows them yet
        def daemon_rejected() -> float:
            return metrics_sum(scrape(port), "runlet_rejected_messages_total{") - daemon_before

        to_daemon = sum(sent[q] for q in daemon_queues)
        wait_for(
            lambda: daemon_rejected() >= to_daemon,
            EVENT_SECONDS,
            f"the daemon to count {to_daemon} rejected messages",
            seen=lambda: f"{daemon_rejected():.0f} counted",
            interval=0.2,
        )
        assert daemon_rejected() == to_daemon
        counts = trace_counts(trace)
        assert counts == Counter({f"real-{n}": 1 for n in range(REAL_JOBS)})  # nothing forged ran
        recorded: set[str] = set()

        def all_recorded() -> bool:
            found = _try_ask(fleet, urls, Query("jobs", state="exited", limit=1000)) or []
            recorded.update(str(r["job_id"]) for r in found)
            return set(real) | {target} <= recorded

        # the ledger records the ends after the spy saw them (another consumer, another queue)
        wait_for(
            all_recorded,
            STARTUP_SECONDS,
            "the ledger to record the 21 real jobs as exited",
            seen=lambda: f"missing {sorted((set(real) | {target}) - recorded)}",
            interval=0.2,
        )
        assert "Traceback" not in proc.log()
        assert problems == []
    finally:
        server.stop()


async def _dead_letters_settle(urls: Urls, user: str, expected: int) -> bool:
    """Wait until the dead-letter queue holds `expected` messages (True), or stops growing for
    60 s (False: the assertions on the count say what is missing); at most 240 s."""
    end = time.monotonic() + 240
    last, moved = -1, time.monotonic()
    while time.monotonic() < end:
        found = await queue_info_async(urls, user, addresses.dead_letter_queue(user))
        count = 0 if found is None else found[0]
        if count >= expected:
            return True
        if count != last:
            last, moved = count, time.monotonic()
        elif time.monotonic() - moved > 60:
            return False
        await asyncio.sleep(0.2)
    return False


# --- 9. disk fills mid-job -----------------------------------------------------------------

PATTERN = b"runlet-fills-the-disk\r\n"


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        check=True,
        timeout=30,
    )
    try:
        yield folder
    finally:
        done = subprocess.run(["umount", str(folder)], check=False, timeout=30)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)


def grow(folder: Path, size: str) -> None:
    """Give the tmpfs at `folder` a new size (its files stay)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, timeout=30)


def fill_up(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte with a filler file; returns it."""
    filler = folder / "filler"
    block = b"\0" * 4096
    with contextlib.suppress(OSError), filler.open("ab") as out:
        while True:
            out.write(block)
            out.flush()
    return filler


BIG_OUTPUT = "yes runlet-fills-the-disk | head -c 10000000; read line; echo after-$line"


async def _fill(fleet: Fleet, urls: Urls, proc: DaemonProcess, spy: StateSpy, big: str) -> None:
    """Submit the big job; returns once the vault said `log_append_failed` and the job's state
    after `queued` is in: `running` (the job waits for a line)."""
    async with Client(client_config(fleet, urls), fleet.key) as client:
        await spy.attach(client)
        await client.submit(JobSpec((BIG_OUTPUT,)), f"node:{EDGE}", job_id=big)
        await spy.until(
            lambda: "log_append_failed" in proc.log(),
            STARTUP_SECONDS,
            "log_append_failed",
            seen=lambda: f"{spy.history(big)}; the end of the daemon's log:\n{log_tail(proc)}",
        )
        # the daemon's log is written at once, the state change travels through the broker:
        # `log_append_failed` there does not mean the `running` event has reached the spy
        await spy.until(
            lambda: len(spy.history(big)) >= 2,
            EVENT_SECONDS,
            "the big job's state after `queued`",
            seen=lambda: spy.history(big),
        )
        assert spy.state(big) == "running", spy.history(big)


async def _end_big_job(fleet: Fleet, urls: Urls, spy: StateSpy, big: str, wait: float) -> None:
    """Type the line the big job waits for; wait up to `wait` s for its terminal state (the
    caller checks what came: the figures are recorded either way)."""
    async with Client(client_config(fleet, urls), fleet.key) as client:
        await spy.attach(client)
        await client.send_input(big, b"go\r", confirm=True)
        with contextlib.suppress(AssertionError):
            await spy.until(
                lambda: (e := spy.last(big)) is not None and e.terminal, wait, "the big job"
            )


async def _restart_and_watch(
    fleet: Fleet, urls: Urls, proc: DaemonProcess, spy: StateSpy, job_id: str
) -> None:
    """Restart the daemon while watching; wait a while for the job's terminal state (what a
    restart says of it is a figure of the record only)."""
    async with Client(client_config(fleet, urls), fleet.key) as client:
        await spy.attach(client)
        await asyncio.to_thread(proc.stop)
        await asyncio.to_thread(restart, fleet, urls, EDGE, proc)
        with contextlib.suppress(AssertionError):
            await spy.until(
                lambda: (e := spy.last(job_id)) is not None and e.terminal,
                EVENT_SECONDS,
                "a final state",
            )


def _scan(path: Path, job_id: str) -> LogScan | str:
    """The log's scan, or why there is none (yet)."""
    try:
        return scan_log(path, job_id=job_id)
    except StorageError as exc:
        return str(exc)


def _incomplete_from(event: JobStateChanged | None) -> int:
    """The chunk the state's detail says the log is incomplete from."""
    assert event is not None
    assert (event.state, event.exit_code) == ("exited", 0), (event.state, event.detail)
    found = re.search(r"its log is incomplete from chunk (\d+): ", event.detail or "")
    assert found is not None, event.detail
    return int(found.group(1))


@pytest.mark.timeout(400)  # three daemon starts and up to 10 MB through a PTY, on a busy machine
def test_disk_full_mid_job_is_reported_and_nothing_is_corrupted(
    fleet: Fleet, cluster_urls: Urls
) -> None:
    """A 2 MiB data_dir and ~10 MB of output: a clear error, the daemon alive, an honest terminal
    state once space is freed, a sound journal and log prefix, the next jobs run."""
    urls = cluster_urls
    data_dir = fleet.root / EDGE
    spy = StateSpy()
    big, small, later = new_job_id(), new_job_id(), new_job_id()
    recovery: float | None = None
    ran = 0
    with tmpfs(data_dir, "2m"):
        ballast = data_dir / "ballast"
        ballast.write_bytes(b"\0" * (256 << 10))
        proc = start_node(fleet, urls, EDGE)
        try:
            run(_fill(fleet, urls, proc, spy, big), 150)
            assert alive(proc)
            ballast.unlink()
            freed = time.monotonic()
            run(_end_big_job(fleet, urls, spy, big, STARTUP_SECONDS), 120)
            event = spy.last(big)
            failed_at = _incomplete_from(event)
            assert event is not None

            log = data_dir / "vault" / f"{big}.rlog"
            scan = scan_log(log, job_id=big)
            assert not scan.finished
            assert scan.damage is None or scan.damage.kind == DamageKind.TORN_TAIL, scan.damage
            assert scan.records == failed_at
            key = fleet.key.job_key(big)
            text = b"".join(
                open_output(key, r.seq, r.flags, r.sealed)[1]
                for r in read_records(log, job_id=big)
                if r.seq < scan.records
            )
            assert len(text) > 100_000
            assert text == (PATTERN * (len(text) // len(PATTERN) + 1))[: len(text)]

            async def small_job(job_id: str) -> None:
                async with Client(client_config(fleet, urls), fleet.key) as client:
                    await spy.attach(client)
                    await client.submit(JobSpec(("echo small",)), f"node:{EDGE}", job_id=job_id)
                    await spy.until(
                        lambda: spy.state(job_id) == "exited",
                        STARTUP_SECONDS,
                        "a small job",
                        seen=lambda: spy.history(job_id),
                    )

            run(small_job(small), 120)
            recovery = time.monotonic() - freed
            ran += 1
            small_event = spy.last(small)
            assert small_event is not None
            assert small_event.detail is None
            # its FINAL chunk is written by the vault, its end published by the job queue: the
            # end seen does not mean the chunk is on disk yet
            small_log = data_dir / "vault" / f"{small}.rlog"
            wait_for(
                lambda: isinstance(found := _scan(small_log, small), LogScan) and found.finished,
                EVENT_SECONDS,
                "the small job's log to be finished (its FINAL chunk written)",
                seen=lambda: _scan(small_log, small),
            )

            proc.stop()
            with Journal(data_dir / "journal.sqlite3") as journal:
                entry = journal.get(big)
                assert entry is not None
                assert entry.state == "exited"
                assert entry.detail == event.detail
            restart(fleet, urls, EDGE, proc)
            run(small_job(later), 120)
            ran += 1
        finally:
            record(
                "disk fills mid-job",
                "~10 MB of output into a 2 MiB data_dir, space freed before the job ends",
                lost=2 - ran,
                duplicated=0,
                recovery_s=recovery,
                note="recovery: space freed -> big job ended honestly and the next job exited",
            )
            proc.stop()


@pytest.mark.timeout(400)
def test_disk_still_full_when_the_job_ends_still_reports_its_end(
    fleet: Fleet, cluster_urls: Urls
) -> None:
    """The disk is still full (to the last byte) when the job that filled it ends: the job still
    reaches its terminal state, saying its log is incomplete."""
    urls = cluster_urls
    data_dir = fleet.root / EDGE
    spy = StateSpy()
    big = new_job_id()
    with tmpfs(data_dir, "2m"):
        proc = start_node(fleet, urls, EDGE)
        try:
            run(_fill(fleet, urls, proc, spy, big), 150)
            filler = fill_up(data_dir)
            run(_end_big_job(fleet, urls, spy, big, STARTUP_SECONDS), 120)
            ended = spy.last(big)
            filler.unlink()
            grow(data_dir, "8m")  # room to spare from now on
            refused = "job_state_refused" in proc.log()
            survived = alive(proc)
            later = "-"
            if ended is None or not ended.terminal:  # what a restart, with space, says of it
                run(_restart_and_watch(fleet, urls, proc, spy, big), 180)
                last = spy.last(big)
                later = "still running" if last is None else f"{last.state}: {last.detail}"
        finally:
            record(
                "disk still full when the job ends",
                "~10 MB of output into a 2 MiB data_dir, filled to the last byte",
                lost=0 if ended is not None and ended.terminal else 1,
                duplicated=0,
                recovery_s=None,
                note=f"lost = the job never reported its end; after a restart it is {later}",
            )
            proc.stop()
    assert survived
    assert not refused
    _incomplete_from(ended)


# --- a burst of instant jobs ---------------------------------------------------------------


@pytest.mark.timeout(300)
def test_burst_of_instant_jobs_keeps_the_daemon_healthy(fleet: Fleet, cluster_urls: Urls) -> None:
    """60 jobs that end at once, 8 at a time: every state is published, the broker link stays
    whole, and a later job still streams its output.

    Regression test: a job that ended before its queues were open had them deleted half-way
    through their declaration; the NOT_FOUND closed the daemon's fast channel for good (47-54
    of 60 jobs lost a `queued`/`running` event, 170+ broker errors, heartbeats and output dead).
    """
    urls = cluster_urls
    proc = start_node(fleet, urls, EDGE, max_parallel=8)
    spy = StateSpy()
    ids = [new_job_id() for _ in range(60)]
    after = new_job_id()
    streamed: list[bytes] = []
    not_streamed: list[str] = []  # why not, if it did not

    async def scenario() -> None:
        async with Client(client_config(fleet, urls), fleet.key) as client:
            await spy.attach(client)
            for job_id in ids:
                await client.submit(JobSpec(("true",)), f"node:{EDGE}", job_id=job_id)
            await spy.until(lambda: spy.count(ids, "exited") == len(ids), 90, "60 exited jobs")
            # a history's last event may come after the end was seen; one that never comes is
            # counted as lost below (the figures are recorded first)
            with contextlib.suppress(AssertionError):
                await spy.until(
                    lambda: spy.complete(ids) == len(ids), EVENT_SECONDS, "complete histories"
                )
            watch = await client.watch(after)
            await client.submit(JobSpec(("echo still-streaming",)), f"node:{EDGE}", job_id=after)
            try:
                out, _ = await follow_to_end(client, watch, after, timeout=EVENT_SECONDS)
            except TimeoutError as exc:
                not_streamed.append(str(exc))
            else:
                streamed.append(out)

    try:
        run(scenario(), 240)
    finally:
        problems = trouble(proc)
        incomplete = len(ids) - spy.complete(ids)
        record(
            "burst of instant jobs",
            "60 x `true`, max_parallel=8",
            lost=incomplete,
            duplicated=0,
            recovery_s=None,
            note="lost = jobs missing a state event; " + _troubled(spy, ids, problems),
        )
    assert alive(proc)
    assert problems == []
    assert incomplete == 0, spy.incomplete(ids)
    assert streamed, not_streamed
    assert b"still-streaming" in streamed[0]
