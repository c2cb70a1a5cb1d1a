"""Broker failures under load, on the real 3-node cluster (DESIGN §9: "broker restarts (or a
cluster node dies)" and "viewer disconnects"), and the runlet bugs they brought to light.

Scenarios (each records its figures with `results.record`):

1. A node killed under load: two daemons (real processes) sit on c1, a client on c2 submits 500
   jobs, and c1 is killed with SIGKILL mid-dispatch. Every job runs exactly once, every log ends
   with its FINAL chunk, streamed output is whole.
2. The whole cluster stopped and started mid-dispatch: the client's publishes wait it out.
3. A viewer whose connection is slowed, then cut (a TCP proxy in between): its output is whole,
   in order, without duplicates.

Ground truth is on disk, not on the broker: each job appends its id to a trace file (so a lost
job is a missing line and a job run twice is a repeated one) and each daemon's vault holds the
job's log.

Bugs they brought to light and that are now fixed keep their tests as regressions: state
changes of jobs starting while a daemon reconnects were never published (BUG_ERRORS_ESCAPE),
an error answer during a reconnect ended the adapter's supervisor for good
(BUG_RECONNECT_DIES), a channel error left the adapter's channel dead, a half-restored
reconnect leaked its connection, a lost connection was never closed. One limit stands, pinned
by a strict xfail: an `any` job whose ack is lost after its node journaled it is redelivered
to another node and runs twice (BUG_ANY_TWICE) — `any` is at-least-once across nodes, so
the load scenarios use node targets, where a job runs exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import shlex
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest

from runlet.adapters.broker import Broker, Incoming, QueueSpec
from runlet.adapters.logfile import scan_log
from runlet.client.logview import show_log
from runlet.client.session import Client
from runlet.config import load_config
from runlet.errors import BrokerUnavailable, ProtocolError, StorageError
from runlet.protocol import addresses, wire
from runlet.protocol.addresses import new_job_id
from runlet.protocol.messages import JobStateChanged
from runlet.protocol.payloads import JobSpec
from runlet.roots.daemon import Daemon
from tests.reliability.cluster import Cluster
from tests.reliability.proxy import Proxy
from tests.reliability.results import record
from tests.support import DaemonProcess, Fleet, Follower, follow_to_end, run, wait_state

NODES = ("edge-1", "edge-2")
TARGETS = ("node:edge-1", "node:edge-2")  # `any` is at-least-once across nodes: BUG_ANY_TWICE
STREAM_LINES = 60  # a streaming job prints stream-1 .. stream-60, one every 0.05 s (3 s)
MANAGEMENT_PORTS = (15701, 15702, 15703)  # the cluster nodes' management API (cluster.sh)
CLUSTER_PORTS = (5701, 5702, 5703)
# Bounds, not expectations: quiet, each of these takes a second or two at most. A busy 2-core
# machine stretches them, and the cluster fixture's setup (25-60 s) counts against the
# pytest-timeout of whichever test needs it first.
EVENT_SECONDS = 30.0  # one event after its cause: a reconnect, a state change, a consumer
STARTUP_SECONDS = 60.0  # daemons started and consuming

BUG_ERRORS_ESCAPE = (
    "runlet/adapters/broker/connection.py Broker._with_broker / "
    "_publish_confirmed / _publish_fast translate and "
    "retry only _BROKER_ERRORS; aiormq's ChannelInvalidStateError (a RuntimeError, raised by "
    "any call on the channel of a connection that just died) escapes the adapter. In "
    "actors/broker_gateway.py BrokerGateway._open_job it skips the `await self._publish("
    "message.announce)` that follows _declare_job, so a job that is queued or starts while "
    "the daemon reconnects never has its durable `queued`/`running` state change published "
    "(journaled, never sent: the ledger and every watcher miss it)"
)
BUG_RECONNECT_DIES = (
    "runlet/adapters/broker/connection.py Broker._reconnect retries only on _BROKER_ERRORS: "
    "when _restore() meets "
    "aiormq's ChannelInvalidStateError (a RuntimeError: another task's error answer closed the "
    "new channel half-way, e.g. a RESOURCE_LOCKED on a job queue the old connection still "
    "holds), the exception ends the supervisor task; the adapter then never reconnects and "
    "wait_ready() times out for good"
)
ACK_DELAY = 15.0  # the proxy's added latency in test_an_any_job_whose_ack_is_lost_runs_once
BUG_ANY_TWICE = (
    "actors/job_queue.py JobQueue._accept: dispatch duplicates are dropped by the *node's* "
    "journal only, so a `--on any` job whose ack is lost (connection cut after the journal "
    "commit) is redelivered from the shared queue to another node and runs twice"
)


# -- fixtures and helpers ---------------------------------------------------------------------


class SetupFailed(RuntimeError):
    """The stage was not set as a test needs it: a failure, never an expected one (xfail)."""


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Finalise now what a test left unclosed, so the warning it makes is that test's own."""
    yield
    gc.collect()


@pytest.fixture
def on_cluster(cluster: Cluster, fleet: Fleet) -> Iterator[Fleet]:
    """The fleet, every cluster node up first; its daemon processes and queues gone after."""
    cluster.up()  # a node a failed run left down is started again
    try:
        yield fleet
    finally:
        for proc in fleet.processes:
            proc.stop()
        _delete_cluster_resources(fleet.user)


@pytest.fixture
def in_process(cluster_urls: tuple[str, ...], fleet: Fleet) -> Iterator[Callable[[Path], Daemon]]:
    """Starts daemons in this process from a config file; stops them and cleans up after."""
    daemons: list[Daemon] = []

    def start(config: Path) -> Daemon:
        daemon = Daemon(load_config(config, env={}), fleet.key)
        daemons.append(daemon)
        daemon.start()
        return daemon

    try:
        yield start
    finally:
        for daemon in daemons:
            daemon.stop()
        if urllib.parse.urlsplit(cluster_urls[0]).port in CLUSTER_PORTS:
            _delete_cluster_resources(fleet.user)


def _management(port: int, method: str, path: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    request = urllib.request.Request(url, method=method)
    token = base64.b64encode(b"guest:guest").decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the socket
        raise OSError(f"{method} {path}: HTTP {exc.code} {exc.reason}") from None
    return json.loads(body) if body else None


def _delete_cluster_resources(user: str) -> None:
    """Delete the user's durable queues and exchanges on the cluster, through any live node.

    Exclusive queues are left alone: they go with the connection that owns them.
    """
    prefix = f"runlet.{user}"
    problems: list[str] = []
    for port in MANAGEMENT_PORTS:
        problems.clear()
        try:
            for kind in ("queues", "exchanges"):
                for item in _management(port, "GET", f"/api/{kind}/%2F?columns=name,exclusive"):
                    if not item["name"].startswith(prefix) or item.get("exclusive"):
                        continue
                    name = urllib.parse.quote(item["name"], safe="")
                    try:
                        _management(port, "DELETE", f"/api/{kind}/%2F/{name}")
                    except OSError as exc:
                        problems.append(str(exc))
        except (OSError, ValueError) as exc:  # this node is down: ask the next one
            problems.append(str(exc))
            continue
        break
    if problems:
        print(f"cleaning {prefix}.* up on the cluster: {problems[:5]}")


def _config(
    fleet: Fleet,
    node: str,
    urls: tuple[str, ...],
    *,
    role: str = "daemon",
    publish_timeout: float | None = None,
    heartbeat: int | None = None,
    max_parallel: int = 4,
) -> Path:
    """Fleet.config_file, plus `[broker] publish_timeout` and `heartbeat` (it writes 5)."""
    path = fleet.config_file(node, role=role, urls=urls, max_parallel=max_parallel)
    text = path.read_text()
    anchor = "heartbeat = 5\n"
    assert anchor in text, f"unexpected config layout:\n{text}"
    broker = f"heartbeat = {heartbeat or 5}\n"
    if publish_timeout is not None:
        broker += f"publish_timeout = {publish_timeout}\n"
    path.write_text(text.replace(anchor, broker, 1))
    return path


def _client(path: Path, fleet: Fleet) -> Client:
    return Client(load_config(path, env={}), fleet.key)


def _start_process(fleet: Fleet, node: str, config: Path) -> DaemonProcess:
    """Fleet.start_process without its wait (that one asks the local broker, not the cluster)."""
    proc = DaemonProcess(config, fleet.root / f"{node}.log")
    fleet.processes.append(proc)
    proc.start()
    return proc


async def _until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` s have passed (False)."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > end:
            return False
        await asyncio.sleep(interval)


async def _wait_consumers(
    client: Client, queue: str, count: int, timeout: float = STARTUP_SECONDS
) -> None:
    end = time.monotonic() + timeout
    while True:
        info = await client.broker.queue_info(queue)
        if info is not None and info[1] >= count:
            return
        if time.monotonic() > end:
            raise SetupFailed(f"{queue}: {info} (messages, consumers) after {timeout} s")
        await asyncio.sleep(0.1)


async def _wait_fleet_online(client: Client, user: str) -> None:
    for node in NODES:
        await _wait_consumers(client, addresses.dispatch_queue(user, node), 1)
    await _wait_consumers(client, addresses.any_queue(user), len(NODES))


async def _queues_drained(client: Client, user: str) -> bool:
    queues = [addresses.dispatch_queue(user, node) for node in NODES]
    queues.append(addresses.any_queue(user))
    for queue in queues:
        info = await client.broker.queue_info(queue)
        if info is None or info[0] != 0:
            return False
    return True


@dataclass
class States:
    """Every job state change of the user that reaches one watcher: job → state → arrival."""

    seen: dict[str, dict[str, float]] = field(default_factory=dict)

    async def follow(self, client: Client, user: str) -> None:
        name = addresses.job_queue(user, "all", "states", client.viewer)
        spec = QueueSpec(name, "exclusive", ("job.*.state",), dead_letter=False)
        await client.broker.consume(spec, self._on_message)

    async def _on_message(self, incoming: Incoming) -> None:
        await incoming.ack()
        try:
            msg = wire.decode(incoming.body)
        except ProtocolError:
            return
        if isinstance(msg, JobStateChanged):
            self.seen.setdefault(msg.job_id, {}).setdefault(msg.state, time.monotonic())

    def missing(self, job_ids: list[str], state: str) -> int:
        return sum(1 for job_id in job_ids if state not in self.seen.get(job_id, {}))


@dataclass(frozen=True)
class Job:
    job_id: str
    target: str
    streams: bool


def _plan(count: int, streaming: range) -> list[Job]:
    """`count` jobs over edge-1, edge-2 and `any` in turn; those at `streaming` stream output."""
    return [Job(new_job_id(), TARGETS[i % len(TARGETS)], i in streaming) for i in range(count)]


def _command(job: Job, trace: Path) -> JobSpec:
    note = f"echo $RUNLET_JOB_ID >> {shlex.quote(str(trace))}"
    if not job.streams:
        return JobSpec((note,))
    loop = f"i=0; while [ $i -lt {STREAM_LINES} ]; do i=$((i+1)); echo stream-$i; sleep 0.05; done"
    return JobSpec((f"{note}; {loop}",))


def _trace(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def _wait_trace(trace: Path, job_ids: list[str], timeout: float) -> float | None:
    """When every one of `job_ids` had run (monotonic time), or None after `timeout`."""
    end = time.monotonic() + timeout
    while not set(job_ids) <= set(_trace(trace)):
        if time.monotonic() > end:
            return None
        await asyncio.sleep(0.05)
    return time.monotonic()


def _logs(fleet: Fleet, job_id: str) -> list[Path]:
    """The job's log in every daemon's vault (one, unless the job ran twice)."""
    found = (fleet.root / node / "vault" / f"{job_id}.rlog" for node in NODES)
    return [path for path in found if path.exists()]


def _log_finished(path: Path) -> bool:
    try:
        scan = scan_log(path)
    except StorageError:
        return False
    return scan.finished and scan.intact


def _stream_lines(fleet: Fleet, path: Path, job_id: str) -> Counter[str]:
    out = bytearray()
    show_log(path, job_id, fleet.key, out.extend, lambda _problem: None)
    text = out.decode(errors="replace").replace("\r", "")
    return Counter(line for line in text.split("\n") if line.startswith("stream-"))


@dataclass
class Outcome:
    """What the disk says about a load of jobs once it has settled."""

    lost: int  # jobs that never ran
    duplicated: int  # extra runs
    incomplete_logs: int  # jobs with no finished log, or a log left unfinished
    lines_lost: int  # streamed lines missing from the logs
    lines_duplicated: int
    problems: list[str]

    def figures(self) -> str:
        return (
            f"runs lost {self.lost}, doubled {self.duplicated}; incomplete logs "
            f"{self.incomplete_logs}; streamed lines lost {self.lines_lost}, doubled "
            f"{self.lines_duplicated}"
        )


async def _settle(
    client: Client, fleet: Fleet, jobs: list[Job], trace: Path, timeout: float
) -> Outcome:
    """Wait until every job ran and logged (or `timeout`), the queues are empty and the trace
    is still; then count what is missing or doubled."""
    expected = {job.job_id for job in jobs}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if expected <= set(_trace(trace)) and all(
            any(_log_finished(p) for p in _logs(fleet, job_id)) for job_id in expected
        ):
            break
        await asyncio.sleep(0.25)
    # a redelivery would have run by now; make sure nothing is still on its way
    while time.monotonic() < end:
        if await _queues_drained(client, fleet.user):
            break
        await asyncio.sleep(0.25)
    before = len(_trace(trace))
    # a last look, on purpose a fixed one: a job run twice would show as the trace growing
    await asyncio.sleep(1.0)
    runs = Counter(_trace(trace))
    problems = [] if before == sum(runs.values()) else ["the trace was still growing"]
    lost = sorted(expected - set(runs))
    duplicated = {j: n - 1 for j, n in runs.items() if n > 1}
    strangers = set(runs) - expected
    if lost:
        problems.append(f"never ran: {lost[:5]}{' ...' if len(lost) > 5 else ''}")
    if duplicated:
        problems.append(f"ran more than once: {sorted(duplicated)[:5]}")
    if strangers:
        problems.append(f"unknown ids in the trace: {sorted(strangers)[:5]}")
    incomplete, lines_lost, lines_duplicated = _check_logs(fleet, jobs, problems)
    return Outcome(
        len(lost), sum(duplicated.values()), incomplete, lines_lost, lines_duplicated, problems
    )


def _check_logs(fleet: Fleet, jobs: list[Job], problems: list[str]) -> tuple[int, int, int]:
    """(jobs without a whole log, streamed lines lost, streamed lines doubled)."""
    incomplete = lines_lost = lines_duplicated = 0
    for job in jobs:
        logs = _logs(fleet, job.job_id)
        finished = [p for p in logs if _log_finished(p)]
        if not finished or len(finished) != len(logs):
            incomplete += 1
            problems.append(f"{job.job_id}: {len(logs)} logs, {len(finished)} finished")
            continue
        for path in finished if job.streams else ():
            lines = _stream_lines(fleet, path, job.job_id)
            for n in range(1, STREAM_LINES + 1):
                count = lines.pop(f"stream-{n}", 0)
                lines_lost += count == 0
                lines_duplicated += max(0, count - 1)
            lines_duplicated += sum(lines.values())  # lines that should not be there at all
    if lines_lost or lines_duplicated:
        problems.append(f"streamed lines: {lines_lost} lost, {lines_duplicated} doubled")
    return incomplete, lines_lost, lines_duplicated


def _dump_daemon_logs(fleet: Fleet, lines: int = 30) -> None:
    for proc in fleet.processes:
        tail = proc.log().splitlines()[-lines:]
        print(f"\n--- last {len(tail)} lines of {proc.log_path.name} ---")
        print("\n".join(line[:300] for line in tail))


def _start_fleet(fleet: Fleet, urls: tuple[str, ...], publish_timeout: float) -> None:
    """edge-1 and edge-2 as real processes, both on the first of `urls`."""
    for node in NODES:
        config = _config(fleet, node, urls, publish_timeout=publish_timeout, max_parallel=8)
        _start_process(fleet, node, config)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


# -- 1. a node killed under load ----------------------------------------------------------------

KILL_JOBS = 500
KILL_AFTER = 100  # submitted jobs before c1 is killed
KILL_STREAMING = range(85, 95)  # streaming while the node dies


@pytest.mark.timeout(400)
def test_broker_node_killed_under_load(on_cluster: Fleet, cluster: Cluster, tmp_path: Path) -> None:
    """kill -9 of the node both daemons use, mid-dispatch: each job runs once, logs are whole."""
    fleet = on_cluster
    c1, c2, c3 = cluster.urls
    _start_fleet(fleet, (c1, c2, c3), publish_timeout=60)
    client_config = _config(fleet, "submitter", (c2, c3, c1), role="client", publish_timeout=60)
    trace = tmp_path / "trace.txt"
    jobs = _plan(KILL_JOBS, KILL_STREAMING)
    probes = [Job(new_job_id(), f"node:{node}", streams=False) for node in NODES]
    states = States()
    times: dict[str, float | None] = {}

    async def kill_and_probe(client: Client) -> None:
        times["kill"] = time.monotonic()
        await asyncio.to_thread(cluster.kill, 1)
        times["dead"] = time.monotonic()
        for probe in probes:  # sent right after the kill: the daemons must take them from c2/c3
            await client.submit(_command(probe, trace), probe.target, job_id=probe.job_id)
        times["probes_ran"] = await _wait_trace(trace, [p.job_id for p in probes], 120)

    async def scenario() -> Outcome:
        async with _client(client_config, fleet) as client:
            await _wait_fleet_online(client, fleet.user)
            await states.follow(client, fleet.user)
            started = time.monotonic()
            killer: asyncio.Task[None] | None = None
            for n, job in enumerate(jobs):
                if n == KILL_AFTER:
                    killer = asyncio.create_task(kill_and_probe(client))
                await client.submit(_command(job, trace), job.target, job_id=job.job_id)
            times["submitted"] = time.monotonic() - started
            assert killer is not None
            await killer
            outcome = await _settle(client, fleet, jobs + probes, trace, timeout=90)
            times["settled"] = time.monotonic() - started
            # state changes are durable: late ones may still be on their way to the watcher
            # (a figure of the record, not asserted)
            ids = [job.job_id for job in jobs]
            await _until(lambda: states.missing(ids, "exited") == 0, EVENT_SECONDS, 0.2)
            return outcome

    try:
        try:
            outcome = run(scenario(), timeout=270)
        finally:
            cluster.start(1)  # heal: c1 rejoins by itself
    except BaseException:
        _dump_daemon_logs(fleet)
        raise
    kill = times["kill"]
    assert kill is not None
    ran = times["probes_ran"]
    recovery = None if ran is None else ran - kill
    ids = [job.job_id for job in jobs]
    silent = ", ".join(f"{s} {states.missing(ids, s)}" for s in ("queued", "running", "exited"))
    print(
        f"\nnode kill: {KILL_JOBS} jobs submitted in {_seconds(times['submitted'])}, settled "
        f"after {_seconds(times['settled'])}; probes sent after the kill ran "
        f"{_seconds(recovery)} after it; state changes never seen by a watcher: {silent}"
    )
    record(
        "broker node killed under load",
        f"{KILL_JOBS} jobs over edge-1/edge-2, {len(KILL_STREAMING)} streaming 3 s; "
        f"kill -9 of their node c1 after {KILL_AFTER}",
        lost=outcome.lost + outcome.incomplete_logs + outcome.lines_lost,
        duplicated=outcome.duplicated + outcome.lines_duplicated,
        recovery_s=recovery,
        note=(
            "recovery = kill until a probe job sent right after it ran on each daemon; "
            f"{outcome.figures()}; state changes unseen: {silent}"
        ),
    )
    if outcome.problems:
        _dump_daemon_logs(fleet)
    assert recovery is not None, "a daemon never consumed again after the kill"
    assert not outcome.problems, outcome.problems


# -- 2. the whole cluster stopped and started ----------------------------------------------------

OUTAGE_JOBS = 200
OUTAGE_AFTER = 70  # jobs sent before the cluster is stopped
OUTAGE_PACED = 30  # then one every 0.3 s while the nodes stop one after the other
OUTAGE_STREAMING = range(60, 66)


@pytest.mark.timeout(400)
def test_whole_cluster_stopped_and_started(
    on_cluster: Fleet, cluster: Cluster, tmp_path: Path
) -> None:
    """All three nodes stopped mid-dispatch and started again: publishes wait, nothing is lost."""
    fleet = on_cluster
    c1, c2, c3 = cluster.urls
    _start_fleet(fleet, (c1, c2, c3), publish_timeout=120)
    client_config = _config(fleet, "submitter", (c2, c3, c1), role="client", publish_timeout=120)
    trace = tmp_path / "trace.txt"
    jobs = _plan(OUTAGE_JOBS, OUTAGE_STREAMING)
    times: dict[str, float | None] = {}

    async def first_job_after(ran: int) -> None:
        """When the trace grows again: the first job taken from the restarted cluster."""
        if await _until(lambda: len(_trace(trace)) > ran, 240, 0.02):
            times["first_job"] = time.monotonic()

    async def outage() -> None:
        times["down"] = time.monotonic()
        await asyncio.to_thread(cluster.down)
        times["stopped"] = time.monotonic()
        watch = asyncio.create_task(first_job_after(len(_trace(trace))))
        await asyncio.to_thread(cluster.up)  # the daemons may be back before it returns
        times["up"] = time.monotonic()
        await asyncio.wait_for(watch, 240)

    async def scenario() -> Outcome:
        async with _client(client_config, fleet) as client:
            await _wait_fleet_online(client, fleet.user)
            started = time.monotonic()
            stopper: asyncio.Task[None] | None = None
            for n, job in enumerate(jobs):
                if n == OUTAGE_AFTER:
                    stopper = asyncio.create_task(outage())
                elif OUTAGE_AFTER < n <= OUTAGE_AFTER + OUTAGE_PACED:
                    await asyncio.sleep(0.3)  # the scenario: jobs sent while the nodes stop
                elif n == OUTAGE_AFTER + OUTAGE_PACED + 1:  # the rest is sent into the outage
                    assert await _until(lambda: "stopped" in times, 150), "down() never ended"
                await client.submit(_command(job, trace), job.target, job_id=job.job_id)
            times["submitted"] = time.monotonic() - started
            assert stopper is not None
            await stopper
            outcome = await _settle(client, fleet, jobs, trace, timeout=90)
            times["settled"] = time.monotonic() - started
            return outcome

    try:
        try:
            outcome = run(scenario(), timeout=270)
        finally:
            cluster.up()
    except BaseException:
        _dump_daemon_logs(fleet)
        raise
    down, stopped, up = (times[k] for k in ("down", "stopped", "up"))
    first = times.get("first_job")
    assert down is not None
    assert stopped is not None
    assert up is not None
    # the brief's figure: from up() returning; 0 when a job ran while up() was still checking
    recovery = None if first is None else max(0.0, first - up)
    since_start = "never" if first is None else f"{first - stopped:.1f} s"
    print(
        f"\ncluster restart: down took {stopped - down:.1f} s, up {up - stopped:.1f} s; first "
        f"job ran {since_start} after up() was called, {_seconds(recovery)} after it returned; "
        f"{OUTAGE_JOBS} jobs submitted in {_seconds(times['submitted'])}, settled after "
        f"{_seconds(times['settled'])}"
    )
    record(
        "whole cluster stopped and started",
        f"{OUTAGE_JOBS} jobs over edge-1/edge-2, {len(OUTAGE_STREAMING)} streaming 3 s; "
        f"cluster down and up after {OUTAGE_AFTER}, {OUTAGE_JOBS - OUTAGE_AFTER} sent into it",
        lost=outcome.lost + outcome.incomplete_logs + outcome.lines_lost,
        duplicated=outcome.duplicated + outcome.lines_duplicated,
        recovery_s=recovery,
        note=(
            "recovery = up() returned until the first job ran (0 if one ran before); first "
            f"job {since_start} after up() was called; outage {up - down:.0f} s; "
            f"{outcome.figures()}"
        ),
    )
    if outcome.problems:
        _dump_daemon_logs(fleet)
    assert recovery is not None, "no job ran after the cluster came back"
    assert not outcome.problems, outcome.problems


# -- 3. a viewer's connection slowed, then cut ---------------------------------------------------

VIEW_LINES = 3000
# 3000 numbered lines in about 4 s: a pause of 0.1 s every 75 lines
VIEW_JOB = (
    f"i=0; while [ $i -lt {VIEW_LINES} ]; do i=$((i+1)); echo line-$i; "
    "if [ $((i % 75)) -eq 0 ]; then sleep 0.1; fi; done"
)


@pytest.mark.timeout(240)
def test_viewer_connection_cut_and_slowed(
    cluster_urls: tuple[str, ...], fleet: Fleet, in_process: Callable[[Path], Daemon]
) -> None:
    """A viewer behind a proxy that adds 0.2 s, then cuts: every line once, in order."""
    target = cluster_urls[0]
    in_process(_config(fleet, "edge-1", (target,)))
    times: dict[str, float] = {}
    with Proxy(urllib.parse.urlsplit(target).port or 5672) as proxy:
        viewer_config = _config(fleet, "viewer", (proxy.url(),), role="client")
        starter_config = _config(fleet, "starter", (target,), role="client")

        async def reconnected(viewer: Client) -> None:
            if await _until(lambda: viewer.broker.stats.reconnects > 0, EVENT_SECONDS, 0.01):
                times["reconnected"] = time.monotonic()

        async def scenario() -> tuple[bytes, bytes, int, int]:
            async with (
                _client(starter_config, fleet) as starter,
                _client(viewer_config, fleet) as viewer,
            ):
                await _wait_consumers(starter, addresses.dispatch_queue(fleet.user, "edge-1"), 1)
                job_id = new_job_id()
                w_starter = await starter.watch(job_id)
                w_viewer = await viewer.watch(job_id)
                await starter.submit(JobSpec((VIEW_JOB,)), "node:edge-1", job_id=job_id)
                following = asyncio.create_task(follow_to_end(viewer, w_viewer, job_id, 90))
                undisturbed = Follower(starter, w_starter, job_id)
                await undisturbed.output(b"line-1\r\n")  # the output flows
                proxy.delay(0.2)
                await asyncio.sleep(1.0)  # the scenario: the viewer's link slowed for a second
                times["cut"] = time.monotonic()
                cut = proxy.cut()  # drops what the delay still holds, too
                proxy.heal()
                back = asyncio.create_task(reconnected(viewer))
                seen, final = await following
                times["complete"] = time.monotonic()
                await asyncio.wait_for(back, EVENT_SECONDS + 5)
                assert final.state == "exited"
                direct, _ = await undisturbed.to_end(90)
                return seen, direct, cut, viewer.broker.stats.reconnects

        seen, direct, cut, reconnects = run(scenario(), timeout=200)
    lines = [x for x in seen.decode().replace("\r", "").split("\n") if x.startswith("line-")]
    expected = [f"line-{i}" for i in range(1, VIEW_LINES + 1)]
    counts = Counter(lines)
    lost = sum(1 for line in expected if line not in counts)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    back_at = times.get("reconnected")  # None: no reconnect within EVENT_SECONDS of the cut
    recovery = None if back_at is None else back_at - times["cut"]
    whole = times["complete"] - times["cut"]
    print(
        f"\nviewer cut: {cut} connection(s) cut, viewer reconnected {reconnects}x, "
        f"{_seconds(recovery)} after the cut; its output was whole {whole:.2f} s after the cut"
    )
    record(
        "viewer connection cut and slowed",
        f"{VIEW_LINES} lines in ~4 s; +0.2 s latency for 1 s, then the connection cut",
        lost=lost,
        duplicated=duplicated,
        recovery_s=recovery,
        note=f"recovery = cut until the viewer reconnected; output whole {whole:.1f} s after",
    )
    assert cut >= 1
    assert reconnects >= 1
    assert recovery is not None, f"the viewer did not reconnect within {EVENT_SECONDS} s"
    assert lines == expected
    assert seen == direct  # the same bytes as a viewer that was never disturbed


# -- the bugs, one deterministic test each ------------------------------------------------------


@pytest.mark.timeout(150)
def test_a_channel_error_does_not_break_the_adapter(
    cluster_urls: tuple[str, ...], fleet: Fleet
) -> None:
    """After one refused declare, the same adapter declares and publishes again.

    (A regression test: the broker used to close the channel and the adapter kept using it.)
    """
    user = fleet.user
    outcome: dict[str, Any] = {}

    async def scenario() -> None:
        broker = Broker(cluster_urls[:1], user, name="bug-channel", heartbeat=5)
        await broker.connect()
        try:
            # a binding to an exchange that does not exist: NOT_FOUND, the channel is closed
            bad = QueueSpec(f"runlet.{user}.bug.bad", "exclusive", ("k",), f"runlet.{user}.none")
            with pytest.raises(BrokerUnavailable):
                await broker.declare(bad)
            await broker.forget(bad.name)
            started = time.monotonic()
            errors: Counter[str] = Counter()
            while time.monotonic() - started < EVENT_SECONDS:  # quiet, it works at once
                try:
                    good = QueueSpec(f"runlet.{user}.bug.good", "exclusive", ("k",))
                    await broker.declare(good)
                    await broker.publish("k", b"x", message_id="m1", durable=False)
                except Exception as exc:  # what escapes the adapter is the point
                    errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.2)
                    continue
                outcome["recovered"] = time.monotonic() - started
                break
            outcome["errors"] = dict(errors)
        finally:
            await broker.close()

    try:
        run(scenario(), timeout=EVENT_SECONDS + 60)
    finally:
        if urllib.parse.urlsplit(cluster_urls[0]).port in CLUSTER_PORTS:
            _delete_cluster_resources(user)
    recovered = outcome.get("recovered")
    record(
        "adapter after a channel error",
        f"1 refused declare, then declare + publish for up to {EVENT_SECONDS:.0f} s",
        lost=0 if recovered is not None else 1,
        duplicated=0,
        recovery_s=recovered,
        note=f"recovery = refused declare until a declare and a publish work; errors: "
        f"{outcome.get('errors')}",
    )
    assert recovered is not None, f"the adapter never worked again: {outcome.get('errors')}"


@pytest.mark.timeout(240)
def test_a_failed_reconnect_does_not_lock_out_the_next(
    cluster_urls: tuple[str, ...], fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect that fails half-way (a queue is locked) must not block the next one.

    (A regression test: the half-restored connection used to stay open, holding the queues it
    had re-declared, so every later attempt failed with RESOURCE_LOCKED.)
    """
    user = fleet.user
    target = cluster_urls[0]
    first = QueueSpec(f"runlet.{user}.bug.first", "exclusive")
    second = QueueSpec(f"runlet.{user}.bug.second", "exclusive")
    outcome: dict[str, Any] = {}
    # Every connection opened is kept referenced here, as any observer might keep it: the
    # adapter must close what it gives up on, not count on aio-pika's __del__ to (that runs
    # only when the last reference goes, and cannot close from a thread without a loop).
    opened: list[Any] = []
    real_connect = aio_pika.connect

    async def connect(*args: Any, **kwargs: Any) -> Any:
        connection = await real_connect(*args, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(aio_pika, "connect", connect)

    async def hold(name: str, timeout: float) -> aio_pika.abc.AbstractConnection:
        """Declare `name` exclusively on a connection of our own, once the broker lets us."""
        other = await aio_pika.connect(target)
        end = time.monotonic() + timeout
        while True:
            channel = await other.channel()
            try:
                await channel.declare_queue(name, exclusive=True, auto_delete=True)
                return other
            except aiormq.exceptions.ChannelLockedResource:
                if time.monotonic() > end:
                    await other.close()
                    raise
                await asyncio.sleep(0.05)

    async def ignore(incoming: Incoming) -> None:
        await incoming.ack()

    async def scenario(proxy: Proxy) -> None:
        broker = Broker([proxy.url()], user, name="bug-reconnect", heartbeat=5)
        await broker.connect()
        try:
            await broker.consume(first, ignore)
            await broker.consume(second, ignore)
            proxy.refuse()
            proxy.cut()
            # `second` is taken while the adapter is away (once the broker has dropped the
            # adapter's old connection, which held it)
            other = await hold(second.name, EVENT_SECONDS)
            attempts = proxy.accepted
            proxy.refuse(False)
            # its next reconnect restores `first`, then fails on `second`; wait for the retry
            if not await _until(lambda: proxy.accepted >= attempts + 2, STARTUP_SECONDS):
                raise SetupFailed(
                    f"the adapter did not try to reconnect twice in {STARTUP_SECONDS} s"
                    f" ({proxy.accepted - attempts} attempts)"
                )
            await other.close()  # `second` is free again: the adapter can come back now
            freed = time.monotonic()
            if await _until(lambda: broker.stats.reconnects > 0, STARTUP_SECONDS):
                outcome["recovered"] = time.monotonic() - freed
            outcome["open_connections"] = proxy.connections
        finally:
            await broker.close()
            for connection in opened:
                if not connection.is_closed:
                    await connection.close()

    with Proxy(urllib.parse.urlsplit(target).port or 5672) as proxy:
        try:
            run(scenario(proxy), timeout=200)
        finally:
            proxy.cut()  # the leaked connections, if any
            if urllib.parse.urlsplit(target).port in CLUSTER_PORTS:
                _delete_cluster_resources(user)
    recovered = outcome.get("recovered")
    record(
        "reconnect after a failed reconnect",
        "an exclusive queue locked by another client during one reconnect, then freed",
        lost=0,
        duplicated=0,
        recovery_s=recovered,
        note=(
            "recovery = lock released until reconnected; connections open through the proxy "
            f"at the end: {outcome.get('open_connections')}"
        ),
    )
    assert recovered is not None, (
        f"no reconnect within {STARTUP_SECONDS} s of the lock's release ({outcome}); the failed"
        " attempt's connection still holds the queues it re-declared"
    )


@pytest.mark.timeout(200)
def test_an_error_answer_during_a_reconnect_does_not_end_it(
    cluster_urls: tuple[str, ...], fleet: Fleet
) -> None:
    """Another task's refused declare, half-way through a reconnect, only delays it."""
    user = fleet.user
    target = cluster_urls[0]
    queues = [QueueSpec(f"runlet.{user}.bug.q{n}", "exclusive", ("k",)) for n in range(3)]
    bad = QueueSpec(f"runlet.{user}.bug.bad", "exclusive", ("k",), f"runlet.{user}.none")
    outcome: dict[str, Any] = {}

    async def ignore(incoming: Incoming) -> None:
        await incoming.ack()

    async def scenario(proxy: Proxy) -> None:
        broker = Broker([proxy.url()], user, name="bug-supervisor", heartbeat=10)
        await broker.connect()
        try:
            for spec in queues:
                await broker.consume(spec, ignore)
            generation = broker.generation
            proxy.delay(0.3)  # every answer takes 0.6 s: a reconnect's restore takes seconds
            proxy.cut()
            if not await _until(lambda: broker.generation > generation, EVENT_SECONDS, 0.01):
                raise SetupFailed(
                    f"the adapter did not start a new connection within {EVENT_SECONDS} s"
                )
            # the new connection is restoring its queues: another task's declare is refused
            # (NOT_FOUND: no such exchange), which closes the channel the restore is using
            with contextlib.suppress(BrokerUnavailable, RuntimeError):
                await broker.declare(bad)
            await broker.forget(bad.name)
            proxy.heal()
            started = time.monotonic()
            try:
                # a healthy one takes a second or two; one whose supervisor died never is
                await broker.wait_ready(EVENT_SECONDS)
                outcome["recovered"] = time.monotonic() - started
            except BrokerUnavailable:
                outcome["recovered"] = None
            supervisor = broker._supervisor  # the task that reconnects
            if supervisor is not None and supervisor.done() and not supervisor.cancelled():
                outcome["supervisor_error"] = repr(supervisor.exception())
        finally:
            try:
                await broker.close()
            except Exception as exc:  # close() re-raises what ended the supervisor
                outcome["close_error"] = repr(exc)

    with Proxy(urllib.parse.urlsplit(target).port or 5672) as proxy:
        try:
            run(scenario(proxy), timeout=150)
        finally:
            if urllib.parse.urlsplit(target).port in CLUSTER_PORTS:
                _delete_cluster_resources(user)
    recovered = outcome.get("recovered")
    record(
        "error answer during a reconnect",
        "3 exclusive queues restored over a slow link; another task's declare refused meanwhile",
        lost=0,
        duplicated=0,
        recovery_s=recovered,
        note=f"supervisor: {outcome.get('supervisor_error', 'alive')}; "
        f"{BUG_RECONNECT_DIES[:60]}...",
    )
    assert recovered is not None, (
        f"the adapter did not reconnect within {EVENT_SECONDS} s; its supervisor ended with "
        f"{outcome.get('supervisor_error')}"
    )


@pytest.mark.timeout(240)
def test_a_job_that_starts_during_a_reconnect_announces_running(
    cluster_urls: tuple[str, ...],
    fleet: Fleet,
    in_process: Callable[[Path], Daemon],
    tmp_path: Path,
) -> None:
    """A job that starts while its daemon is cut off still has `running` published later."""
    target = cluster_urls[0]
    trace = tmp_path / "trace.txt"
    gate = tmp_path / "first-may-end"  # `first` runs until the test makes this file
    first, second = (Job(new_job_id(), "node:edge-1", streams=False) for _ in range(2))
    seen: list[str] = []
    with Proxy(urllib.parse.urlsplit(target).port or 5672) as proxy:
        in_process(_config(fleet, "edge-1", (proxy.url(),), max_parallel=1))
        client_config = _config(fleet, "client", (target,), role="client")

        async def scenario() -> None:
            async with _client(client_config, fleet) as client:
                await _wait_consumers(client, addresses.dispatch_queue(fleet.user, "edge-1"), 1)
                w_first, w_second = (
                    await client.watch(first.job_id),
                    await client.watch(second.job_id),
                )
                # `first` holds the only slot until the test lets it end (after the cut), so
                # `second` starts while the daemon is away, however slow the machine
                wait_gate = f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done"
                blocker = JobSpec((f"{wait_gate}; {_command(first, trace).argv[0]}",))
                await client.submit(blocker, first.target, job_id=first.job_id)
                await client.submit(_command(second, trace), second.target, job_id=second.job_id)
                await wait_state(w_first, first.job_id, "running")
                await wait_state(w_second, second.job_id, "queued")  # it waits for its slot
                proxy.refuse()
                proxy.cut()  # the daemon is cut off
                gate.touch()  # `first` ends now, and `second` starts
                if await _wait_trace(trace, [second.job_id], STARTUP_SECONDS) is None:
                    raise SetupFailed(
                        f"the second job did not run within {STARTUP_SECONDS} s while the daemon"
                        " was away"
                    )
                proxy.heal()  # the daemon comes back and sends what it kept
                # collect its states until `running` (a bound: the daemon reconnects first);
                # after `exited`, a while longer in case `running` comes late
                end = time.monotonic() + STARTUP_SECONDS
                while "running" not in seen and time.monotonic() < end:
                    try:
                        msg = await asyncio.wait_for(w_second.inbox.get(), 0.5)
                    except TimeoutError:
                        continue
                    if isinstance(msg, JobStateChanged) and msg.job_id == second.job_id:
                        seen.append(msg.state)
                        if msg.state == "exited":
                            end = min(end, time.monotonic() + EVENT_SECONDS / 2)

        run(scenario(), timeout=200)
    record(
        "state changes while a daemon reconnects",
        "1 job starting while its daemon is cut off from the broker",
        lost=0 if "running" in seen else 1,
        duplicated=0,
        recovery_s=None,
        note=f"states seen after `queued`: {seen}; {BUG_ERRORS_ESCAPE[:60]}...",
    )
    assert "running" in seen, f"`running` was never published (seen after queued: {seen})"


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=BUG_ANY_TWICE)
@pytest.mark.timeout(260)
def test_an_any_job_whose_ack_is_lost_runs_once(
    cluster_urls: tuple[str, ...],
    fleet: Fleet,
    in_process: Callable[[Path], Daemon],
    tmp_path: Path,
) -> None:
    """edge-a journals an `any` job, its ack is cut off; edge-b must not run the job again."""
    target = cluster_urls[0]
    trace = tmp_path / "trace.txt"
    job = Job(new_job_id(), "any", streams=False)
    outcome: dict[str, Any] = {}
    with Proxy(urllib.parse.urlsplit(target).port or 5672) as proxy:
        # edge-a talks through the proxy; a long heartbeat, so only the cut ends its connection
        in_process(_config(fleet, "edge-a", (proxy.url(),), heartbeat=60))
        client_config = _config(fleet, "client", (target,), role="client")

        async def scenario() -> None:
            async with _client(client_config, fleet) as client:
                any_queue = addresses.any_queue(fleet.user)
                await _wait_consumers(client, any_queue, 1)
                # what edge-a sends (its ack) reaches the broker ACK_DELAY s late: long enough
                # to start edge-b and cut edge-a off before it does, on a busy machine too
                proxy.delay(ACK_DELAY)
                await client.submit(_command(job, trace), job.target, job_id=job.job_id)
                ran = await _wait_trace(trace, [job.job_id], ACK_DELAY + STARTUP_SECONDS)
                if ran is None:
                    raise SetupFailed("edge-a did not run the job")
                in_process(_config(fleet, "edge-b", (target,)))
                await _wait_consumers(client, any_queue, 2)
                if time.monotonic() - ran > ACK_DELAY - 5:
                    raise SetupFailed("too slow: edge-a's ack may have got through")
                proxy.refuse()
                proxy.cut()  # edge-a's ack, still held by the proxy, is gone
                # a bound: with the limit, edge-b runs it again within a second or two
                await _until(lambda: _trace(trace).count(job.job_id) >= 2, STARTUP_SECONDS, 0.1)
                outcome["runs"] = _trace(trace).count(job.job_id)

        run(scenario(), timeout=220)
    runs = outcome["runs"]
    record(
        "known limit: any job after a lost ack",
        "1 `any` job journaled by edge-a, its ack cut off, edge-b online",
        lost=0 if runs else 1,
        duplicated=max(0, runs - 1),
        recovery_s=None,
        note=f"runs: {runs}; {BUG_ANY_TWICE[:60]}...",
    )
    assert runs == 1, f"the job ran {runs} times"


@pytest.mark.timeout(150)
def test_a_lost_connection_is_closed_when_the_broker_reconnects(
    cluster_urls: tuple[str, ...], fleet: Fleet
) -> None:
    """After a reconnect, the connection that was lost has been closed (not left to the GC).

    (A regression test: it used to be dropped unclosed, for aio-pika's __del__ to finalise.)
    """
    user = fleet.user
    target = cluster_urls[0]
    outcome: dict[str, Any] = {}

    async def scenario(proxy: Proxy) -> None:
        broker = Broker([proxy.url()], user, name="bug-lost", heartbeat=5)
        await broker.connect()
        try:
            lost = broker._connection  # the object the adapter must close
            assert lost is not None
            started = time.monotonic()
            proxy.cut()
            if await _until(lambda: broker.stats.reconnects > 0, STARTUP_SECONDS, 0.02):
                outcome["recovery"] = time.monotonic() - started
            outcome["closed"] = lost.is_closed
        finally:
            await broker.close()

    with Proxy(urllib.parse.urlsplit(target).port or 5672) as proxy:
        try:
            run(scenario(proxy), timeout=100)
        finally:
            if urllib.parse.urlsplit(target).port in CLUSTER_PORTS:
                _delete_cluster_resources(user)
    record(
        "lost connection closed on reconnect",
        "1 connection cut by the proxy",
        lost=0,
        duplicated=0,
        recovery_s=outcome.get("recovery"),
        note=f"recovery = cut until reconnected; old connection closed: {outcome.get('closed')}",
    )
    assert outcome.get("recovery") is not None, f"no reconnect within {STARTUP_SECONDS} s"
    assert outcome.get("closed") is True, "the lost connection was left open for the GC"
