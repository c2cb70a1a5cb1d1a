"""The server role on the real PostgreSQL and RabbitMQ: ledger, queries, lost/found, metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from runlet.adapters.ledger_db import connect
from runlet.client import queries
from runlet.client.session import Client
from runlet.config import load_config
from runlet.errors import ServerUnavailable
from runlet.protocol.addresses import new_job_id
from runlet.protocol.messages import Query
from runlet.protocol.payloads import JobSpec
from runlet.roots.server import Server
from tests.support import (
    EVENT_SECONDS,
    STARTUP_SECONDS,
    Fleet,
    follow_to_end,
    run,
    wait_for,
    wait_state,
)

DSN = os.environ.get("RUNLET_TEST_DATABASE", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name

    async def drop() -> None:
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


class ServerUnderTest:
    """An in-process server for one test's user, in its own schema."""

    def __init__(self, fleet: Fleet, schema: str, *, presence_timeout: float = 30.0) -> None:
        self.port = free_port()
        path = fleet.root / "server.toml"
        path.write_text(
            f'role = "server"\nuser = "{fleet.user}"\nnode = "server-1"\n'
            f'data_dir = "{fleet.root / "server"}"\n'
            f'[server]\ndatabase_url = "{DSN}"\ndatabase_schema = "{schema}"\n'
            f"presence_timeout = {presence_timeout}\n"
            f'[metrics]\nlisten = "127.0.0.1:{self.port}"\n[log]\nformat = "json"\n'
        )
        self.config = load_config(path, env={})
        self.schema = schema
        self.user = fleet.user
        run(self._add_user())
        self.server: Server | None = None

    async def _add_user(self) -> None:
        ledger = await connect(DSN, schema=self.schema)
        try:
            await ledger.migrate()
            await ledger.add_user(self.user)
        finally:
            await ledger.close()

    def start(self) -> None:
        self.server = Server(self.config)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            body: bytes = r.read()
            return body.decode()


@pytest.fixture
def server(fleet: Fleet, schema: str) -> Iterator[ServerUnderTest]:
    under_test = ServerUnderTest(fleet, schema)
    under_test.start()
    try:
        yield under_test
    finally:
        under_test.stop()


def ask(fleet: Fleet, query: Query) -> list[dict[str, Any]]:
    return run(queries.ask(fleet.client_config("asker"), query))


def answer_eventually(
    fleet: Fleet,
    query: Query,
    check: Callable[[list[dict[str, Any]]], bool],
    timeout: float = EVENT_SECONDS,
) -> list[dict[str, Any]]:
    """Ask until the answer passes `check`; on timeout, say what the last answer was."""
    found: list[list[dict[str, Any]]] = []
    errors: list[str] = []

    def ok() -> bool:
        try:
            rows = ask(fleet, query)
        except Exception as exc:  # the server may not be up yet: ask again
            errors.append(repr(exc))
            return False
        found.append(rows)
        return bool(check(rows))

    def last() -> str:
        if found:
            return f"the last answer {found[-1]}"
        return f"no answer, the last error {errors[-1] if errors else None}"

    wait_for(ok, timeout, f"the server to answer {query.kind} as expected", seen=last, interval=0.1)
    return found[-1]


def run_job(fleet: Fleet, command: str, node: str = "edge-1") -> str:
    async def scenario() -> str:
        async with Client(fleet.client_config(), fleet.key) as client:
            job_id = new_job_id()
            watch = await client.watch(job_id)
            await client.submit(JobSpec((command,)), f"node:{node}", job_id=job_id)
            await follow_to_end(client, watch, job_id)
            return job_id

    return run(scenario())


def test_ledger_records_a_jobs_whole_life_and_answers_queries(
    fleet: Fleet, server: ServerUnderTest
) -> None:
    """queued → running → exited lands in PostgreSQL; jobs/job/nodes answer with filters."""
    fleet.start_daemon("edge-1")
    fleet.start_daemon("edge-2", tags=("arm",))
    ok_job = run_job(fleet, "exit 0")
    bad_job = run_job(fleet, "exit 9", node="edge-2")
    job = answer_eventually(
        fleet, Query("job", job_id=ok_job), lambda rows: rows[0]["job"]["state"] == "exited"
    )[0]
    assert [h["state"] for h in job["history"]] == ["queued", "running", "exited"]
    assert job["job"]["node"] == "edge-1"
    answer_eventually(
        fleet, Query("job", job_id=bad_job), lambda rows: rows[0]["job"]["exit_code"] == 9
    )
    by_node = ask(fleet, Query("jobs", node="edge-2"))
    assert [r["job_id"] for r in by_node] == [bad_job]
    exited = ask(fleet, Query("jobs", state="exited"))
    assert {r["job_id"] for r in exited} == {ok_job, bad_job}
    assert ask(fleet, Query("jobs", since=time.time() + 60)) == []
    assert len(ask(fleet, Query("jobs", limit=1))) == 1
    nodes = answer_eventually(fleet, Query("nodes"), lambda rows: len(rows) == 2)
    assert {n["name"]: n["online"] for n in nodes} == {"edge-1": True, "edge-2": True}
    assert next(n for n in nodes if n["name"] == "edge-2")["tags"] == ["arm"]
    for node in nodes:  # this Linux machine's vitals, as each daemon's heartbeat gave them
        assert 0 < node["mem_used"] <= node["mem_total"]
        assert node["uptime"] > 0
        assert node["load1"] >= 0


def test_a_server_that_does_not_know_the_user_says_user_add(
    fleet: Fleet, server: ServerUnderTest, tmp_path: Path
) -> None:
    """A running server, asked by a user it does not know: the error says `runlet user add`;
    once it knew the user and stopped, the error says to start it."""
    stranger = Fleet(tmp_path / "stranger")
    try:
        with pytest.raises(ServerUnavailable) as info:
            run(queries.ask(stranger.client_config("asker"), Query("nodes")))
        assert f"runlet user add {stranger.user}" in str(info.value)
    finally:
        stranger.close()
    answer_eventually(fleet, Query("nodes"), lambda rows: rows == [])
    server.stop()
    with pytest.raises(ServerUnavailable) as info:
        ask(fleet, Query("nodes"))
    assert "no Runlet server is running" in str(info.value)


def test_a_freshly_started_server_lists_online_nodes_at_once(fleet: Fleet, schema: str) -> None:
    """A daemon beating once an hour is online in `nodes` right after the server starts: the
    server asks the fleet for a heartbeat (the daemon's first beat found no presence queue)."""
    fleet.start_daemon("edge-1", presence=3600.0)
    under_test = ServerUnderTest(fleet, schema)
    under_test.start()
    try:
        nodes = answer_eventually(fleet, Query("nodes"), lambda rows: len(rows) == 1)
        assert (nodes[0]["name"], nodes[0]["online"]) == ("edge-1", True)
    finally:
        under_test.stop()


def test_server_down_devices_keep_working_and_states_are_recorded_later(
    fleet: Fleet, schema: str
) -> None:
    """With the server stopped jobs still run; once it starts, every state change is recorded."""
    under_test = ServerUnderTest(fleet, schema)
    under_test.start()
    fleet.start_daemon("edge-1")
    answer_eventually(fleet, Query("nodes"), lambda rows: len(rows) == 1)
    under_test.stop()
    ids = [run_job(fleet, f"echo offline-{n}") for n in range(3)]
    under_test.start()
    try:
        rows = answer_eventually(
            fleet,
            Query("jobs", state="exited"),
            lambda rows: {r["job_id"] for r in rows} >= set(ids),
        )
        assert len(rows) == 3
    finally:
        under_test.stop()


def test_silent_node_jobs_become_lost_then_are_corrected(fleet: Fleet, schema: str) -> None:
    """kill -9 a daemon mid-job: the ledger marks it lost; the daemon comes back: interrupted."""
    # heartbeats every 0.5 s against a 5 s timeout: a live node is never taken for a silent
    # one, however busy the machine (with the default 10 s between heartbeats, a 2 s timeout
    # marked the job lost before the kill, a couple of seconds after each heartbeat)
    under_test = ServerUnderTest(fleet, schema, presence_timeout=5.0)
    under_test.start()
    proc = fleet.start_process("edge-1", presence=0.5)
    try:

        async def start_long_job() -> str:
            async with Client(fleet.client_config(), fleet.key) as client:
                job_id = new_job_id()
                watch = await client.watch(job_id)
                # still running at the kill however slow the machine (the hangup ends it then)
                await client.submit(JobSpec(("sleep 600",)), "node:edge-1", job_id=job_id)
                await wait_state(watch, job_id, "running")
                return job_id

        job_id = run(start_long_job())
        answer_eventually(
            fleet, Query("job", job_id=job_id), lambda r: r[0]["job"]["state"] == "running"
        )
        proc.kill(signal.SIGKILL)
        lost = answer_eventually(
            fleet, Query("job", job_id=job_id), lambda r: r[0]["job"]["state"] == "lost"
        )[0]
        assert lost["history"][-1]["state"] == "lost"
        proc.start()
        fixed = answer_eventually(
            fleet,
            Query("job", job_id=job_id),
            lambda r: r[0]["job"]["state"] == "interrupted",
            STARTUP_SECONDS,  # a whole daemon process starts first
        )[0]
        assert [h["state"] for h in fixed["history"]][-1] == "interrupted"
    finally:
        under_test.stop()


def test_plaintext_never_reaches_postgres_or_the_broker(
    fleet: Fleet, server: ServerUnderTest
) -> None:
    """A marker typed into and printed by a job is in no broker message and no database row."""
    import aio_pika

    marker = f"SECRET-{uuid.uuid4().hex}"
    fleet.start_daemon("edge-1")
    seen: list[bytes] = []

    async def scenario() -> str:
        conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        channel = await conn.channel()
        spy = await channel.declare_queue(exclusive=True)
        await spy.bind(f"runlet.{fleet.user}", "#")

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            seen.append(message.body)

        await spy.consume(keep, no_ack=True)
        try:
            async with Client(fleet.client_config(), fleet.key) as client:
                job_id = new_job_id()
                watch = await client.watch(job_id)
                await client.submit(
                    JobSpec((f"read x; echo {marker}-$x",), env={"TOKEN": marker}),
                    "node:edge-1",
                    job_id=job_id,
                )
                await wait_state(watch, job_id, "running")
                await client.send_input(job_id, f"{marker}\r".encode(), confirm=True)
                out, _ = await follow_to_end(client, watch, job_id)
                assert marker.encode() in out
                return job_id
        finally:
            await conn.close()

    job_id = run(scenario())
    answer_eventually(
        fleet, Query("job", job_id=job_id), lambda r: r[0]["job"]["state"] == "exited"
    )
    assert len(seen) > 5
    assert not any(marker.encode() in body for body in seen)

    async def dump() -> str:
        conn = await asyncpg.connect(DSN, server_settings={"search_path": server.schema})
        try:
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                server.schema,
            )
            text = []
            for row in tables:
                query = f'SELECT * FROM "{server.schema}"."{row[0]}"'  # noqa: S608 - our own names
                for record in await conn.fetch(query):
                    text.append(repr(tuple(record)))
            return "\n".join(text)
        finally:
            await conn.close()

    everything = run(dump())
    assert job_id in everything  # the scan sees the data
    assert marker not in everything


def test_metrics_of_daemon_and_server_move(fleet: Fleet, server: ServerUnderTest) -> None:
    """/metrics of a running daemon and server are scraped; job and ledger figures go up."""
    port = free_port()
    fleet.start_daemon("edge-1", extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')

    def daemon_metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body: bytes = r.read()
            return body.decode()

    def value(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " ") or (
                line.startswith(name + "{") and line.split(" ")[0] == name
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    exited, recorded = (
        'runlet_jobs_total{state="exited"}',
        'runlet_ledger_events_total{result="recorded"}',
    )
    before_daemon = value(daemon_metrics(), exited)
    before_server = value(server.metrics(), recorded)
    run_job(fleet, "echo metrics; printf typed-")
    wait_for(
        lambda: value(server.metrics(), recorded) >= before_server + 3,
        EVENT_SECONDS,
        "the server's ledger counter",
        seen=lambda: f"{value(server.metrics(), recorded)} recorded, {before_server} before",
        interval=0.1,
    )
    # the count and the published end are two ways out of the daemon: the job's end seen by
    # the client is no promise the count shows yet, so wait for it, then check it is one more
    wait_for(
        lambda: value(daemon_metrics(), exited) > before_daemon,
        EVENT_SECONDS,
        "the daemon's exited counter",
        seen=lambda: f"{value(daemon_metrics(), exited)} exited, {before_daemon} before",
        interval=0.1,
    )
    after = daemon_metrics()
    assert value(after, exited) == before_daemon + 1
    assert value(after, "runlet_output_bytes_total") > 0
    assert "runlet_dispatch_to_start_seconds_count" in after
    assert "runlet_nodes_online" in server.metrics()
