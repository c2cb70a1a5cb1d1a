"""#6 Fleet: 50 daemons and a server on this machine, 500 jobs spread over them.

The daemons are real `runlet start` processes (50 in one process would share one GIL and
~400 threads, which says little about a fleet; as processes they cost their RSS each, which is
measured and reported). The server runs in this process, as tests/integration/test_server.py
runs it, on PostgreSQL 127.0.0.1:5432 in a schema of its own that is dropped at the end.

Each round submits the jobs (`true`, round-robin `node:edge-N`, up to 64 submits in flight)
and measures:
- the time until every job's final state is recorded in the ledger (PostgreSQL);
- ledger events/s: state events recorded for the round's jobs over the span between the
  first and the last being recorded;
- the time until the client has heard every job's `exited`.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import asyncpg

from runlet.adapters.broker import Incoming, QueueSpec
from runlet.adapters.ledger_db import connect
from runlet.client.session import Client
from runlet.config import load_config
from runlet.protocol import addresses, wire
from runlet.protocol.addresses import new_job_id
from runlet.protocol.messages import JobStateChanged
from runlet.protocol.payloads import JobSpec
from runlet.protocol.states import TERMINAL
from runlet.roots.server import Server
from tests.bench.common import DSN, Bench, vm_rss_kib
from tests.bench.report import Figure, Row, Section
from tests.support import DaemonProcess, Fleet, queue_info, wait_for

SUBMITS_IN_FLIGHT = 64


def run(bench: Bench) -> Section:
    daemons = bench.pick(50, 5)
    jobs = bench.pick(500, 50)
    rounds = bench.pick(2, 2)  # starting 50 daemons takes a minute or more on 2 cores
    fleet = bench.fleet("fleet")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    bench.stack.callback(drop_schema, schema)
    start_server(bench, fleet, schema)

    nodes = [f"edge-{n}" for n in range(1, daemons + 1)]
    began = time.monotonic()
    procs = start_daemons(bench, fleet, nodes)
    for node in nodes:
        fleet.wait_online(node, timeout=300)
    startup = time.monotonic() - began
    wait_for(
        lambda: (queue_info(fleet.user, addresses.ledger_queue(fleet.user)) or (0, 0))[1] > 0,
        60,
        "the server to consume the ledger queue",
    )
    time.sleep(2.0)
    rss = [vm_rss_kib(p.pid) for p in procs]
    outcomes = [asyncio.run(one_round(fleet, schema, nodes, jobs)) for _ in range(rounds)]

    def fig(key: str) -> Figure:
        return Figure.of([float(o[key]) for o in outcomes])

    note = (
        f"{daemons} daemons as processes + 1 server in-process; {jobs} x `true` per round "
        f"round-robin over the nodes; {rounds} rounds"
    )
    rows = [
        Row(6, "ledger events/s", "events/s", fig("events_per_s"), note=note),
        Row(6, "time until every job is recorded", "s", fig("recorded_s"),
            note="from the first submit to the last job's final state in PostgreSQL"),
        Row(6, "(info) time until the client heard every exit", "s", fig("heard_s")),
        Row(6, "(info) state events in the ledger, of 3 per job", "%", fig("events_pct"),
            note="queued + running + exited, counted once late events settled; < 100: lost"),
        Row(6, "(info) fleet start-up, all daemons online", "s", Figure.of([startup])),
        Row(6, "(info) fleet RSS, all daemons idle", "MiB", Figure.of([sum(rss) / 1024]),
            note=f"{sum(rss) / 1024 / len(rss):.1f} MiB per daemon"),
    ]  # fmt: skip
    details: dict[str, Any] = {
        "daemons": daemons,
        "jobs_per_round": jobs,
        "startup_s": round(startup, 2),
        "daemon_rss_kib": {"total": sum(rss), "min": min(rss), "max": max(rss)},
        "rounds": outcomes,
    }
    return Section(rows, details)


def start_server(bench: Bench, fleet: Fleet, schema: str) -> Server:
    path = fleet.root / "server.toml"
    path.write_text(
        f'role = "server"\nuser = "{fleet.user}"\nnode = "server-1"\n'
        f'data_dir = "{fleet.root / "server"}"\n'
        f'[server]\ndatabase_url = "{DSN}"\ndatabase_schema = "{schema}"\n'
        f'[log]\nformat = "json"\nlevel = "warning"\n'
    )
    config = load_config(path, env={})

    async def add_user() -> None:
        ledger = await connect(DSN, schema=schema)
        try:
            await ledger.migrate()
            await ledger.add_user(fleet.user)
        finally:
            await ledger.close()

    asyncio.run(add_user())
    server = Server(config)
    server.start()
    bench.stack.callback(server.stop)
    return server


def start_daemons(bench: Bench, fleet: Fleet, nodes: list[str]) -> list[DaemonProcess]:
    """Start every daemon at once; on the way out, stop them all at once too."""
    procs: list[DaemonProcess] = []
    for node in nodes:
        proc = DaemonProcess(fleet.config_file(node), fleet.root / f"{node}.log")
        fleet.processes.append(proc)
        proc.start()
        procs.append(proc)

    def stop_all() -> None:  # runs before fleet.close(), which then finds them ended
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.stop()

    bench.stack.callback(stop_all)
    return procs


async def one_round(fleet: Fleet, schema: str, nodes: list[str], count: int) -> dict[str, Any]:
    ids = [new_job_id() for _ in range(count)]
    wanted = set(ids)
    heard: set[str] = set()
    all_heard = asyncio.Event()
    async with Client(fleet.client_config(), fleet.key) as client:

        async def on_state(incoming: Incoming) -> None:
            await incoming.ack()
            msg = wire.decode(incoming.body)
            if isinstance(msg, JobStateChanged) and msg.job_id in wanted and msg.terminal:
                heard.add(msg.job_id)
                if len(heard) == count:
                    all_heard.set()

        name = addresses.job_queue(fleet.user, "0" * 32, "bench", client.viewer)
        spec = QueueSpec(name, "exclusive", (addresses.state_key("*"),), dead_letter=False)
        await client.broker.consume(spec, on_state)
        gate = asyncio.Semaphore(SUBMITS_IN_FLIGHT)
        job = JobSpec(("true",))

        async def submit(n: int, job_id: str) -> None:
            async with gate:
                await client.submit(job, f"node:{nodes[n % len(nodes)]}", job_id=job_id)

        began = time.time()
        await asyncio.gather(*(submit(n, j) for n, j in enumerate(ids)))
        submitted = time.time()
        await asyncio.wait_for(all_heard.wait(), timeout=max(300, count))
        heard_at = time.time()
        await client.broker.forget(name, delete=True)
    recorded = await wait_recorded(schema, fleet.user, ids, timeout=max(300, count))
    events, first, last, final = recorded
    return {
        "jobs": count,
        "submit_s": round(submitted - began, 3),
        "heard_s": round(heard_at - began, 3),
        "recorded_s": round(final - began, 3),
        "all_events_recorded_s": round(last - began, 3),
        "events": events,
        "events_expected": 3 * count,  # queued, running, exited
        "events_per_s": round(events / max(last - first, 1e-6), 2),
        "events_pct": round(100 * events / (3 * count), 1),
    }


async def wait_recorded(
    schema: str, user: str, ids: list[str], timeout: float
) -> tuple[int, float, float, float]:
    """Wait until every job's final state is in the ledger, then for late events to settle.

    Returns (events recorded, first recorded, last recorded, last final state recorded), the
    times being PostgreSQL's `recorded_at` as unix seconds.
    """
    conn = await asyncpg.connect(DSN, server_settings={"search_path": schema})
    try:
        async with asyncio.timeout(timeout):
            while True:
                done = await conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE user_name = $1 AND job_id = ANY($2)"
                    " AND state = ANY($3)",
                    user,
                    ids,
                    list(TERMINAL),
                )
                if done == len(ids):
                    break
                await asyncio.sleep(0.1)
        # A job's `running` may be published after its `exited` (see #4's details): wait
        # until every event is in, or nothing more came for 2 s.
        events, still = -1, 0.0
        while events < 3 * len(ids) and still < 2.0:
            count = await conn.fetchval(
                "SELECT count(*) FROM job_states WHERE user_name = $1 AND job_id = ANY($2)",
                user,
                ids,
            )
            still = still + 0.2 if count == events else 0.0
            events = int(count)
            await asyncio.sleep(0.2)
        row = await conn.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM min(recorded_at)) AS first,"
            " extract(epoch FROM max(recorded_at)) AS last,"
            " extract(epoch FROM max(recorded_at) FILTER (WHERE state = ANY($3))) AS final"
            " FROM job_states WHERE user_name = $1 AND job_id = ANY($2)",
            user,
            ids,
            list(TERMINAL),
        )
        assert row is not None
        return int(row["n"]), float(row["first"]), float(row["last"]), float(row["final"])
    finally:
        await conn.close()


def drop_schema(schema: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
