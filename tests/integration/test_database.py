"""The ledger store (adapters.ledger_db) against PostgreSQL ($RUNLET_TEST_DATABASE, 127.0.0.1:5432).

Every test works in its own schema `t_<uuid>`, dropped afterwards, so tests never see each
other's rows. A missing PostgreSQL fails the test; nothing here skips, and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from runlet.adapters.ledger_db import LedgerDb, connect
from runlet.adapters.ledger_migrations import load_migrations
from runlet.adapters.ledger_port import NodeRow, StateRow
from runlet.errors import ClosedError, DatabaseUnavailable, MigrationError, ProtocolError
from runlet.protocol.messages import JobStateChanged, NodeHeartbeat, StartJob
from runlet.protocol.states import STATES
from tests.ledger_contract import SCENARIOS, Scenario, scenario_id
from tests.support import run

DSN = os.environ.get("RUNLET_TEST_DATABASE", "postgresql://postgres@127.0.0.1:5432/postgres")
HOST, PORT = urlsplit(DSN).hostname or "127.0.0.1", urlsplit(DSN).port or 5432
T0 = 1_700_000_000.0  # event times are whole or binary fractions: exact as microseconds
USER = "alice"
# Words that would mean a column is there for the user's business; none may exist.
FORBIDDEN_WORDS = {
    "command",
    "argv",
    "args",
    "env",
    "environment",
    "input",
    "output",
    "payload",
    "stdin",
    "stdout",
    "stderr",
    "sealed",
    "script",
}


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name for this test; the schema is dropped afterwards."""
    name = f"t_{uuid.uuid4().hex}"
    yield name
    run(_drop(name))


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@asynccontextmanager
async def migrated(schema: str, **options: Any) -> AsyncIterator[LedgerDb]:
    """A ledger on `schema`, migrated, closed afterwards."""
    ledger = await connect(DSN, schema=schema, **options)
    try:
        await ledger.migrate()
        yield ledger
    finally:
        await ledger.close()


@asynccontextmanager
async def raw(schema: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection looking at `schema`, to inspect or tamper behind the ledger."""
    conn = await asyncpg.connect(DSN, server_settings={"search_path": schema})
    try:
        yield conn
    finally:
        await conn.close()


def new_job() -> str:
    return uuid.uuid4().hex


def event(job: str, state: str, seq: int, *, node: str = "n1", **fields: Any) -> JobStateChanged:
    """A state change of `job` at T0 + seq (unless `at` is given)."""
    at = fields.pop("at", T0 + seq)
    return JobStateChanged(job_id=job, node=node, state=state, seq=seq, at=at, **fields)


def life(job: str, *, node: str = "n1", code: int = 3) -> list[JobStateChanged]:
    """queued → running → exited(code), in order."""
    return [
        event(job, "queued", 0, node=node, target=f"node:{node}"),
        event(job, "running", 1, node=node, target=f"node:{node}"),
        event(job, "exited", 2, node=node, target=f"node:{node}", exit_code=code, detail="done"),
    ]


def beat(node: str, *, running: int = 0, tags: tuple[str, ...] = ()) -> NodeHeartbeat:
    """A heartbeat; its own clock (`at`) is far off on purpose: the ledger must not use it."""
    return NodeHeartbeat(node, 1.0, "0.1.0", "linux-aarch64", tags, running=running, queued=2)


async def record(ledger: LedgerDb, events: list[JobStateChanged], user: str = USER) -> list[bool]:
    return [await ledger.record_state(user, e) for e in events]


# --- the contract the in-memory fake keeps too (tests/ledger_contract.py) -------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
def test_postgres_keeps_the_contract(schema: str, scenario: Scenario) -> None:
    """Each scenario of the ledger contract passes on PostgreSQL, as it does on the fake."""

    async def scenario_run() -> None:
        async with migrated(schema) as ledger:
            await scenario(ledger)

    run(scenario_run())


# --- migrations ---------------------------------------------------------------------------------


def test_migrations_apply_once(schema: str) -> None:
    """The first migrate applies every file and records it; a second one applies nothing."""
    files = load_migrations()

    async def scenario() -> None:
        async with await connect(DSN, schema=schema) as ledger:
            assert await ledger.migrate() == [m.version for m in files]
            assert await ledger.migrate() == []
        async with raw(schema) as conn:
            rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        assert sorted(tuple(r) for r in rows) == [(m.version, m.name, m.checksum) for m in files]

    run(scenario())


def test_concurrent_migrations_apply_each_file_once(schema: str) -> None:
    """Two servers migrating at once apply each file exactly once, thanks to the lock."""
    versions = [m.version for m in load_migrations()]

    async def scenario() -> None:
        first, second = await asyncio.gather(
            connect(DSN, schema=schema), connect(DSN, schema=schema)
        )
        async with first, second:
            applied = await asyncio.gather(first.migrate(), second.migrate())
        assert sorted(applied[0] + applied[1]) == versions
        assert [] in applied
        async with raw(schema) as conn:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(versions)

    run(scenario())


def test_changed_migration_is_refused(schema: str) -> None:
    """An applied migration whose checksum no longer matches stops migrate with its version."""

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            async with raw(schema) as conn:
                await conn.execute(
                    "UPDATE schema_migrations SET checksum = 'x' WHERE version = '0001'"
                )
            with pytest.raises(MigrationError, match="changed after it was applied") as caught:
                await ledger.migrate()
            assert caught.value.version == "0001"

    run(scenario())


def test_database_newer_than_the_code_is_refused(schema: str) -> None:
    """A migration recorded in the database but unknown to this code stops migrate."""

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            async with raw(schema) as conn:
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) "
                    "VALUES ('9999', 'future', 'x')"
                )
            with pytest.raises(MigrationError, match="does not know") as caught:
                await ledger.migrate()
            assert caught.value.version == "9999"

    run(scenario())


# --- a job's life -------------------------------------------------------------------------------


def test_a_whole_life_is_recorded(schema: str) -> None:
    """queued → running → exited(3): the job row, its times and its history in seq order."""
    job = new_job()

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            assert await record(ledger, life(job)) == [True, True, True]
            found = await ledger.job(USER, job)
        assert found is not None
        row, history = found
        assert (row.user, row.job_id, row.node, row.target) == (USER, job, "n1", "node:n1")
        assert (row.state, row.state_seq, row.exit_code, row.signal) == ("exited", 2, 3, None)
        assert (row.queued_at, row.started_at, row.ended_at) == (T0, T0 + 1, T0 + 2)
        assert (row.detail, row.updated_at, row.log_key, row.log_hash) == (
            "done",
            T0 + 2,
            None,
            None,
        )
        assert history == [
            StateRow(0, "queued", T0, "n1", None, None, None),
            StateRow(1, "running", T0 + 1, "n1", None, None, None),
            StateRow(2, "exited", T0 + 2, "n1", 3, None, "done"),
        ]

    run(scenario())


def test_redelivered_events_change_nothing(schema: str) -> None:
    """The same seq twice, or the whole life twice, is answered False and changes nothing."""
    job = new_job()

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            await record(ledger, life(job))
            before = await ledger.job(USER, job)
            assert await ledger.record_state(USER, life(job)[1]) is False
            assert await record(ledger, life(job)) == [False, False, False]
            # a redelivery with other content is still the same (user, job, seq): ignored
            changed = event(job, "exited", 2, exit_code=99, detail="other")
            assert await ledger.record_state(USER, changed) is False
            assert await ledger.job(USER, job) == before

    run(scenario())


def test_out_of_order_events_end_in_the_latest_state(schema: str) -> None:
    """exited, then running, then queued: the job ends exited, with every time and event."""
    job = new_job()

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            assert await record(ledger, life(job)[::-1]) == [True, True, True]
            found = await ledger.job(USER, job)
        assert found is not None
        row, history = found
        assert (row.state, row.state_seq, row.exit_code, row.detail) == ("exited", 2, 3, "done")
        assert (row.queued_at, row.started_at, row.ended_at) == (T0, T0 + 1, T0 + 2)
        assert [(s.seq, s.state) for s in history] == [(0, "queued"), (1, "running"), (2, "exited")]

    run(scenario())


def test_lost_job_is_corrected_by_a_later_event(schema: str) -> None:
    """A stale node's running job becomes lost; the node's `interrupted` (seq+1) corrects it."""
    running, waiting = new_job(), new_job()

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            await ledger.record_presence(USER, beat("n1", running=1), received_at=T0)
            await record(ledger, [*life(running)[:2], event(waiting, "queued", 0)])
            assert await ledger.stale_nodes(T0 + 60) == [(USER, "n1")]
            lost = await ledger.mark_lost(USER, "n1", T0 + 100, "presence expired")
            assert lost == [running]
            assert await ledger.stale_nodes(T0 + 60) == []
            assert [n.online for n in await ledger.nodes(USER)] == [False]
            found = await ledger.job(USER, running)
            assert found is not None
            row, history = found
            assert (row.state, row.state_seq, row.ended_at) == ("lost", 1, T0 + 100)
            assert (row.detail, row.updated_at) == ("presence expired", T0 + 100)
            assert [(s.seq, s.state) for s in history] == [
                (0, "queued"),
                (1, "running"),
                (1, "lost"),
            ]
            waiting_row = await ledger.job(USER, waiting)
            assert waiting_row is not None
            assert waiting_row[0].state == "queued"

            back = event(running, "interrupted", 2, at=T0 + 200, detail="daemon restarted")
            assert await ledger.record_state(USER, back) is True
            found = await ledger.job(USER, running)
        assert found is not None
        row, history = found
        assert (row.state, row.state_seq, row.ended_at) == ("interrupted", 2, T0 + 200)
        assert row.detail == "daemon restarted"
        assert [s.state for s in history] == ["queued", "running", "lost", "interrupted"]

    run(scenario())


def test_lost_job_stays_lost_on_an_older_event(schema: str) -> None:
    """After `lost`, a late older event is kept in the history but does not revive the job."""
    job = new_job()

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            await ledger.record_state(USER, life(job)[1])  # running, seq 1; queued is late
            assert await ledger.mark_lost(USER, "n1", T0 + 100, "presence expired") == [job]
            assert await ledger.record_state(USER, life(job)[1]) is False
            assert await ledger.record_state(USER, life(job)[0]) is True
            found = await ledger.job(USER, job)
        assert found is not None
        row, history = found
        assert (row.state, row.state_seq, row.queued_at, row.started_at) == ("lost", 1, T0, T0 + 1)
        assert [(s.seq, s.state) for s in history] == [(0, "queued"), (1, "running"), (1, "lost")]

    run(scenario())


def test_mark_lost_spares_a_node_seen_since(schema: str) -> None:
    """With `seen_before`, a heartbeat that came after the staleness check wins."""
    job = new_job()

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            await ledger.record_state(USER, life(job)[1])
            await ledger.record_presence(USER, beat("n1"), received_at=T0 + 50)
            lost = await ledger.mark_lost(USER, "n1", T0 + 60, "expired", seen_before=T0 + 10)
            assert lost == []
            found = await ledger.job(USER, job)
            assert found is not None
            assert found[0].state == "running"
            assert [n.online for n in await ledger.nodes(USER)] == [True]

    run(scenario())


def test_unrepresentable_event_time_is_a_protocol_error(schema: str) -> None:
    """An event whose time is not a real time is refused as invalid, and nothing is stored."""
    job = new_job()

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            with pytest.raises(ProtocolError, match=job):
                await ledger.record_state(USER, event(job, "queued", 0, at=float("inf")))
            assert await ledger.job(USER, job) is None

    run(scenario())


def test_detail_is_made_storable(schema: str) -> None:
    """A NUL in a detail (PostgreSQL text cannot hold one) is replaced, and long text is cut."""
    job = new_job()

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            await ledger.record_state(USER, event(job, "rejected", 0, detail="a\x00b" + "x" * 5000))
            found = await ledger.job(USER, job)
        assert found is not None
        assert found[0].detail == "a\ufffdb" + "x" * 997

    run(scenario())


# --- queries ------------------------------------------------------------------------------------


def test_job_queries_filter_and_order(schema: str) -> None:
    """jobs() is newest first, filters by node, state and since, honours limit, sees one user."""
    a, b, c, d = (new_job() for _ in range(4))

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            await record(ledger, [event(a, "queued", 0, at=T0 + 10)])
            await record(ledger, [event(b, "running", 1, at=T0 + 30, node="n2")])
            await record(ledger, [event(c, "exited", 2, at=T0 + 20, exit_code=0)])
            await record(ledger, [event(d, "queued", 0, at=T0 + 40)], user="bob")

            async def ids(**filters: Any) -> list[str]:
                return [row.job_id for row in await ledger.jobs(USER, **filters)]

            assert await ids() == [b, c, a]
            assert await ids(node="n1") == [c, a]
            assert await ids(state="exited") == [c]
            assert await ids(since=T0 + 20) == [b, c]
            assert await ids(limit=2) == [b, c]
            assert await ids(node="n2", state="queued") == []
            assert [r.job_id for r in await ledger.jobs("bob")] == [d]
            assert await ledger.job("bob", a) is None
            with pytest.raises(ValueError, match="unknown state"):
                await ledger.jobs(USER, state="sleeping")
            with pytest.raises(ValueError, match="limit"):
                await ledger.jobs(USER, limit=0)

    run(scenario())


def test_log_location_is_joined_to_the_job(schema: str) -> None:
    """set_log may come before the job's first event; the latest location and hash win."""
    job = new_job()

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            await ledger.set_log(USER, job, f"{USER}/n1/{job}.rlog", "a" * 64)
            await record(ledger, life(job))
            await ledger.set_log(USER, job, f"{USER}/n1/{job}.rlog", "b" * 64)
            with pytest.raises(ValueError, match="hash"):
                await ledger.set_log(USER, job, "k", "not hex")
            [row] = await ledger.jobs(USER)
        assert (row.log_key, row.log_hash) == (f"{USER}/n1/{job}.rlog", "b" * 64)

    run(scenario())


def test_nodes_after_presence(schema: str) -> None:
    """nodes() shows what the last heartbeat said, by name, and only the user's own nodes."""

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            await ledger.record_presence(USER, beat("n2"), received_at=T0)
            await ledger.record_presence(USER, beat("n1", tags=("gpu",)), received_at=T0)
            later = beat("n1", running=2, tags=("gpu", "arm"))
            await ledger.record_presence(USER, later, received_at=T0 + 5)
            await ledger.record_presence("bob", beat("n9"), received_at=T0)
            assert await ledger.nodes(USER) == [
                NodeRow("n1", "linux-aarch64", "0.1.0", ("gpu", "arm"), T0 + 5, 2, 2, True),
                NodeRow("n2", "linux-aarch64", "0.1.0", (), T0, 0, 2, True),
            ]

    run(scenario())


def test_stale_nodes(schema: str) -> None:
    """stale_nodes lists online nodes of every user last seen before the time given."""

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            await ledger.record_presence(USER, beat("old"), received_at=T0)
            await ledger.record_presence(USER, beat("new"), received_at=T0 + 100)
            await ledger.record_presence("bob", beat("old"), received_at=T0)
            assert await ledger.stale_nodes(T0 + 50) == [(USER, "old"), ("bob", "old")]
            assert await ledger.stale_nodes(T0) == []
            await ledger.mark_lost("bob", "old", T0 + 60, "expired")
            assert await ledger.stale_nodes(T0 + 50) == [(USER, "old")]
            await ledger.record_presence("bob", beat("old"), received_at=T0 + 70)
            everyone = [(USER, "new"), (USER, "old"), ("bob", "old")]
            assert await ledger.stale_nodes(T0 + 200) == everyone

    run(scenario())


def test_users_are_added_listed_and_removed(schema: str) -> None:
    """add_user and remove_user say whether they changed anything; users() lists by name."""

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            assert await ledger.add_user("bob") is True
            assert await ledger.add_user("alice") is True
            assert await ledger.add_user("bob") is False
            users = await ledger.users()
            assert [u.name for u in users] == ["alice", "bob"]
            assert all(abs(u.created_at - time.time()) < 600 for u in users)
            assert await ledger.remove_user("bob") is True
            assert await ledger.remove_user("bob") is False
            assert [u.name for u in await ledger.users()] == ["alice"]
            with pytest.raises(ValueError, match="user"):
                await ledger.add_user("no.dots")

    run(scenario())


def test_statistics_count_jobs_by_state(schema: str) -> None:
    """statistics() counts jobs in every state, with zeros for the states no job is in."""

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            assert await ledger.statistics() == dict.fromkeys(STATES, 0)
            await record(ledger, life(new_job()) + life(new_job()) + life(new_job())[:2])
            await record(ledger, [event(new_job(), "queued", 0)], user="bob")
            stats = await ledger.statistics()
        assert stats == {**dict.fromkeys(STATES, 0), "exited": 2, "running": 1, "queued": 1}

    run(scenario())


# --- privacy ------------------------------------------------------------------------------------


def test_no_command_or_output_lands_in_the_database(schema: str) -> None:
    """No column is meant for commands or output, and a job's command text is nowhere stored."""
    job, marker = new_job(), f"MARKER{uuid.uuid4().hex}"
    # What a client sends: the command (here not even sealed) never reaches the ledger's API.
    StartJob(job, USER, "node:n1", "laptop", f"echo {marker}".encode(), T0)

    async def scenario() -> None:
        async with migrated(schema) as ledger:
            await ledger.add_user(USER)
            await ledger.record_presence(USER, beat("n1", tags=("gpu",)), received_at=T0)
            await record(ledger, life(job))
            await ledger.set_log(USER, job, f"{USER}/n1/{job}.rlog", "c" * 64)
            await ledger.mark_lost(USER, "n1", T0 + 9, "presence expired")
        async with raw(schema) as conn:
            columns = await conn.fetch(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = $1",
                schema,
            )
            assert {c["table_name"] for c in columns} >= {"jobs", "job_states", "nodes", "users"}
            for column in columns:
                words = set(column["column_name"].split("_"))
                assert not words & FORBIDDEN_WORDS, (
                    f"{column['table_name']}.{column['column_name']}"
                )
                assert column["data_type"] not in ("bytea", "json", "jsonb")
            holders: dict[str, set[str]] = {marker: set(), "done": set()}
            for column in columns:
                # Identifiers come from the catalogue, quoted; the needle is a parameter.
                table, name = column["table_name"], column["column_name"]
                sql = f'SELECT count(*) FROM "{table}" WHERE strpos("{name}"::text, $1) > 0'  # noqa: S608
                for needle, found in holders.items():
                    if await conn.fetchval(sql, needle):
                        found.add(f"{table}.{name}")
        assert holders[marker] == set()
        assert holders["done"] == {"jobs.detail", "job_states.detail"}  # the scan does see data

    run(scenario())


# --- failures -----------------------------------------------------------------------------------


def test_unreachable_database_is_unavailable() -> None:
    """Nothing listening: DatabaseUnavailable at once, naming the server, not the password."""

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match=re.escape("127.0.0.1:1/postgres")) as caught:
            await connect("postgresql://postgres:s3cret-pw@127.0.0.1:1/postgres", timeout=5)
        assert time.monotonic() - started < 5
        assert "s3cret-pw" not in str(caught.value)
        assert isinstance(caught.value.__cause__, OSError)

    run(scenario(), timeout=10)


def test_refused_login_is_unavailable() -> None:
    """A role the server does not know: DatabaseUnavailable with PostgreSQL's reason."""

    role = f"no_such_role_{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        with pytest.raises(DatabaseUnavailable, match=role) as caught:
            await connect(f"postgresql://{role}@{HOST}:{PORT}/postgres")
        assert isinstance(caught.value.__cause__, asyncpg.PostgresError)

    run(scenario())


def test_malformed_dsn_is_a_value_error() -> None:
    """A DSN asyncpg cannot read is a ValueError that does not echo the password."""

    async def scenario() -> None:
        with pytest.raises(ValueError, match="invalid PostgreSQL DSN") as caught:
            await connect("mysql://root:hunter2@127.0.0.1/db")
        assert "hunter2" not in str(caught.value)

    run(scenario())


class Proxy:
    """A TCP proxy in front of PostgreSQL that a test can cut and restore, on one port."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and drop every connection, as a vanished server would."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, PORT)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


def test_server_gone_is_unavailable_and_recovers(schema: str) -> None:
    """A server that vanishes mid-life: DatabaseUnavailable; when it is back, calls work again."""

    async def scenario() -> None:
        proxy = Proxy()
        await proxy.start()
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        try:
            async with await connect(dsn, schema=schema, max_size=1, timeout=5) as ledger:
                await ledger.migrate()
                assert await ledger.add_user(USER) is True
                await proxy.cut()
                with pytest.raises(
                    DatabaseUnavailable, match=re.escape(f"127.0.0.1:{proxy.port}/")
                ):
                    await ledger.users()
                await proxy.start()
                assert [u.name for u in await ledger.users()] == [USER]
        finally:
            await proxy.cut()

    run(scenario())


def test_closed_ledger_refuses_calls(schema: str) -> None:
    """close() is idempotent; a call on a closed ledger raises ClosedError."""

    async def scenario() -> None:
        ledger = await connect(DSN, schema=schema)
        await ledger.close()
        await ledger.close()
        with pytest.raises(ClosedError):
            await ledger.users()

    run(scenario())
