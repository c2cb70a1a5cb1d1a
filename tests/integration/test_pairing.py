"""Pairing through the real broker (runlet.client.pairing): the right code moves the fleet key,
a wrong one fails on both sides, three failures make a new code, a code expires, and a spy
bound to `#` on the user's exchange sees nothing of the key or the code's words."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runlet.adapters.broker import Broker, Incoming, QueueSpec
from runlet.client.pairing import Board, send_key
from runlet.errors import PairingFailed
from runlet.protocol.crypto import FleetKey
from runlet.protocol.pairing import PairingCode
from tests.integration.test_accounts import Accounts, amqp_url
from tests.integration.test_accounts import accounts as accounts  # noqa: PLC0414 - a fixture
from tests.support import BROKER_URL, EVENT_SECONDS, Fleet, run
from tests.unit.fakes import FakeClock


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()


class Said:
    """What one side printed, to wait on."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    async def until(self, check: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + EVENT_SECONDS
        while time.monotonic() < deadline:
            found = [line for line in self.lines if check(line)]
            if found:
                return found[-1]
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}; said: {self.lines}")

    async def code(self, after: int = 0) -> str:
        """The newest code shown, once at least `after` + 1 codes were."""

        def shown() -> list[str]:
            return [line for line in self.lines if line.startswith("on a device")]

        await self.until(lambda _: len(shown()) > after, f"code number {after + 1}")
        return shown()[-1].rsplit(" ", 1)[1]


def wrong(code: str) -> str:
    """The same nameplate, other words: a typo'd code."""
    plate, first, number, second = code.split("-")
    other = "zebra" if first != "zebra" else "apple"
    return f"{plate}-{other}-{number}-{second}"


async def spy(user: str, seen: list[bytes]) -> Broker:
    """A queue bound to `#` on the user's exchange: every message anyone publishes there."""
    broker = Broker([BROKER_URL], user, name="runlet-test-spy")
    await broker.connect()

    async def on_message(incoming: Incoming) -> None:
        seen.append(incoming.body)
        await incoming.ack()

    await broker.consume(
        QueueSpec(f"runlet.{user}.spy", "exclusive", ("#",), dead_letter=False), on_message
    )
    return broker


def yes(board: str, check: str) -> bool:
    return True


def test_the_right_code_moves_the_key_and_a_spy_sees_nothing_of_it(fleet: Fleet) -> None:
    """The board stores the holder's fleet key; both print the fingerprint; every message on
    the exchange (a `#` spy) holds neither the key, in any encoding, nor the code's words."""
    board_key = fleet.root / "board" / "fleet.key"
    said, holder_said = Said(), Said()
    seen: list[bytes] = []

    async def scenario() -> tuple[FleetKey, str, str]:
        watcher = await spy(fleet.user, seen)
        board = Board(fleet.client_config("pi-1"), board_key, said)
        task = asyncio.create_task(board.run())
        code = await said.code()
        name = await send_key(fleet.client_config("laptop"), fleet.key, code, yes, holder_said)
        key = await task
        await watcher.close()
        return key, name, code

    key, name, code = run(scenario())
    assert key == fleet.key == FleetKey.load(board_key)
    assert name == "pi-1"
    assert any(fleet.key.fingerprint() in line for line in holder_said.lines)
    raw = base64.urlsafe_b64decode(fleet.key.export_text().split(":", 1)[1] + "=")
    secrets = [raw, fleet.key.export_text().encode(), base64.b64encode(raw), raw.hex().encode()]
    secrets += [word.encode() for word in code.split("-")[1:] if not word.isdigit()]
    assert len(seen) >= 4  # request, answer, confirmation, end
    for body in seen:
        for secret in secrets:
            assert secret not in body


def test_a_wrong_code_fails_on_both_sides_and_three_make_a_new_code(fleet: Fleet) -> None:
    """A typo'd code: the holder is told it is wrong and sends nothing, the board counts it;
    the third makes the board show a new code, which then works."""
    board_key = fleet.root / "board" / "fleet.key"
    said = Said()

    async def scenario() -> None:
        board = Board(fleet.client_config("pi-1"), board_key, said)
        task = asyncio.create_task(board.run())
        code = await said.code()
        for n in range(1, 4):
            with pytest.raises(PairingFailed, match="wrong code"):
                await send_key(fleet.client_config("laptop"), fleet.key, wrong(code), yes, Said())
            await said.until(lambda line, n=n: f"({n} of 3)" in line, f"failure {n}")  # type: ignore[misc]
            assert not board_key.exists()
        new = await said.code(after=1)
        assert new != code
        with pytest.raises(PairingFailed, match="no device waits"):
            await send_key(fleet.client_config("laptop"), fleet.key, code, yes, Said())
        await send_key(fleet.client_config("laptop"), fleet.key, new, yes, Said())
        assert await task == fleet.key

    run(scenario())
    assert any(line.startswith("3 failed attempts; new code") for line in said.lines)


def test_a_code_expires_after_ten_minutes(fleet: Fleet) -> None:
    """Ten minutes later by the board's clock the code is replaced; the old one finds no one."""
    clock = FakeClock(1000.0)
    said = Said()
    board_key = fleet.root / "board" / "fleet.key"

    async def scenario() -> None:
        board = Board(fleet.client_config("pi-1"), board_key, said, clock=clock)
        task = asyncio.create_task(board.run())
        code = await said.code()
        clock.advance(600.0)
        await said.until(lambda line: line.startswith("the code expired"), "the expiry")
        with pytest.raises(PairingFailed, match="no device waits"):
            await send_key(fleet.client_config("laptop"), fleet.key, code, yes, Said())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert not board_key.exists()


def test_declining_on_the_holder_sends_nothing_and_ends_the_board(fleet: Fleet) -> None:
    """Answering no to "send the key to pi-1?": the holder fails, the board says declined."""
    said = Said()
    board_key = fleet.root / "board" / "fleet.key"
    asked: list[tuple[str, str]] = []

    def no(board: str, check: str) -> bool:
        asked.append((board, check))
        return False

    async def scenario() -> None:
        task = asyncio.create_task(Board(fleet.client_config("pi-1"), board_key, said).run())
        code = await said.code()
        with pytest.raises(PairingFailed, match="declined"):
            await send_key(fleet.client_config("laptop"), fleet.key, code, no, Said())
        with pytest.raises(PairingFailed, match="declined"):
            await task

    run(scenario())
    ((board, check),) = asked
    assert board == "pi-1"
    assert any(check in line for line in said.lines)  # the same check words on both sides
    assert not board_key.exists()


def test_a_board_with_a_key_already_refuses(fleet: Fleet) -> None:
    """`runlet pair` on a device that has a key does not wait: it says to use `pair CODE`."""
    with pytest.raises(PairingFailed, match="pair CODE"):
        run(Board(fleet.client_config("pi-1"), fleet.key_file, Said()).run())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "4",
        "4-river-7",
        "4-river-7-cactus-9",
        "0-river-7-cactus",
        "4-xyzzy-7-cactus",
        "4-river-100-cactus",
        "4-river-7-cactus" + " " * 50 + "x",
        "४-river-7-cactus",
    ],
)
def test_a_malformed_code_is_refused_before_anything_is_sent(fleet: Fleet, text: str) -> None:
    """Broken, truncated, oversize or foreign-digit codes fail at once with the code's shape."""
    with pytest.raises(PairingFailed, match=r"4-river-7-cactus|pairing code"):
        run(send_key(fleet.client_config("laptop"), fleet.key, text, yes, Said()))
    assert PairingCode.parse(" 4-River-7-Cactus ") == PairingCode(4, "river", 7, "cactus")


def test_pairing_works_within_a_users_own_broker_permissions(
    tmp_path: Path, accounts: Accounts
) -> None:
    """With the broker account `runlet user add` makes (its own names only), both sides'
    queues and keys are allowed: the pairing goes through."""
    account = accounts.create()
    fleet = Fleet(tmp_path, account.name)
    urls = (amqp_url(account),)
    said = Said()
    board_key = tmp_path / "board" / "fleet.key"

    async def scenario() -> FleetKey:
        board = Board(fleet.config("pi-1", role="client", urls=urls), board_key, said)
        task = asyncio.create_task(board.run())
        code = await said.code()
        holder = fleet.config("laptop", role="client", urls=urls)
        await send_key(holder, fleet.key, code, yes, Said())
        return await task

    try:
        assert run(scenario()) == fleet.key
    finally:
        fleet.close()
