"""The in-memory ledger store (runlet.testing.ledger_db) keeps the real store's contract.

The contract scenarios (tests/ledger_contract.py) are the ones tests/integration/test_database
runs on PostgreSQL; here they run on the fake, plus what only a fake needs: being told to be
down, and being connected again after a close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from runlet.adapters.ledger_port import LedgerDbPort
from runlet.errors import ClosedError, DatabaseUnavailable
from runlet.testing.ledger_db import MemoryLedgerDb
from tests.ledger_contract import SCENARIOS, USER, Scenario, beat, life, record, scenario_id


@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
def test_the_fake_keeps_the_contract(scenario: Scenario) -> None:
    """Each scenario the real store passes on PostgreSQL, the fake passes in memory."""

    async def run() -> None:
        store: LedgerDbPort = MemoryLedgerDb()
        await store.migrate()
        await scenario(store)

    asyncio.run(run())


def test_down_refuses_every_call_and_keeps_the_data() -> None:
    """While down every call and connect is DatabaseUnavailable; back up, the data is there."""

    async def run() -> None:
        db = MemoryLedgerDb()
        store = await db.connect("postgresql://db.invalid/runlet")
        await record(store, life("a" * 32))
        db.down = True
        calls: list[Callable[[], Awaitable[object]]] = [
            store.migrate,
            lambda: store.record_state(USER, life("b" * 32)[0]),
            lambda: store.record_presence(USER, beat("n1"), received_at=1.0),
            lambda: store.mark_lost(USER, "n1", 2.0, "silent"),
            lambda: store.set_log(USER, "a" * 32, "k.rlog", "c" * 64),
            lambda: store.stale_nodes(3.0),
            lambda: store.jobs(USER),
            lambda: store.job(USER, "a" * 32),
            lambda: store.nodes(USER),
            lambda: store.add_user("bob"),
            lambda: store.remove_user("bob"),
            store.users,
            store.statistics,
            lambda: db.connect("postgresql://db.invalid/runlet"),
        ]
        for call in calls:
            with pytest.raises(DatabaseUnavailable):
                await call()
        db.down = False
        assert [row.state for row in await store.jobs(USER)] == ["exited"]
        assert await store.job(USER, "b" * 32) is None

    asyncio.run(run())


def test_closed_refuses_calls_until_connected_again() -> None:
    """close() is idempotent, calls then raise ClosedError; connect opens the same data again."""

    async def run() -> None:
        db = MemoryLedgerDb()
        async with await db.connect("postgresql://db.invalid/runlet") as store:
            await store.add_user(USER)
        await db.close()
        with pytest.raises(ClosedError):
            await db.users()
        again = await db.connect("postgresql://db.invalid/runlet")
        assert [u.name for u in await again.users()] == [USER]
        assert db.connects == 2

    asyncio.run(run())


def test_calls_are_counted_by_name() -> None:
    """`calls` counts each port call that reached the data, so a test can wait for one."""

    async def run() -> None:
        db = MemoryLedgerDb()
        await db.stale_nodes(1.0)
        await db.stale_nodes(2.0)
        with pytest.raises(ValueError, match="user"):
            await db.nodes("not a name")  # refused by its checks before it reached the data
        assert (db.calls["stale_nodes"], db.calls["nodes"]) == (2, 0)

    asyncio.run(run())
