"""Broker accounts against the real RabbitMQ: each user is walled into its own names.

Every account is made through `BrokerAdmin` as the test broker's administrator and removed
afterwards (with its queues and exchanges). The other account's attempts use raw aio-pika, so
what the test sees is the broker's own answer, not the adapter's translation.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from runlet.adapters.broker import Broker, Incoming, QueueSpec
from runlet.adapters.rabbitmq_admin import Account, BrokerAdmin, broker_user
from runlet.errors import AccountExists, BrokerUnavailable
from runlet.protocol import addresses
from tests.support import (
    BROKER_URL,
    EVENT_SECONDS,
    MANAGEMENT_URL,
    delete_user_resources,
    run,
    unique_user,
)

_BROKER = urllib.parse.urlsplit(BROKER_URL)
ADMIN_USER = _BROKER.username or "guest"
ADMIN_PASSWORD = _BROKER.password or "guest"
KEY = "job.k.state"


def _admin(vhost: str = "/") -> BrokerAdmin:
    return BrokerAdmin(MANAGEMENT_URL, ADMIN_USER, ADMIN_PASSWORD, vhost=vhost)


def amqp_url(account: Account, password: str | None = None) -> str:
    """The test broker's URL with an account's own login."""
    secret = account.password if password is None else password
    return f"amqp://{account.broker_user}:{secret}@{_BROKER.netloc.rpartition('@')[2]}/"


class Accounts:
    """Accounts made for one test; `close` removes each with its queues and exchanges."""

    def __init__(self) -> None:
        self.admin = _admin()
        self.names: list[str] = []

    def create(self, name: str | None = None) -> Account:
        name = name or unique_user()
        self.names.append(name)
        return run(self.admin.create(name))

    def close(self) -> None:
        for name in self.names:
            run(self.admin.remove(name))
            delete_user_resources(name)


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    made = Accounts()
    try:
        yield made
    finally:
        made.close()


async def _connect_as(account: Account) -> Broker:
    """The account's own adapter: declares its exchange, dead-letter exchange and queue."""
    broker = Broker([amqp_url(account)], account.name, name="runlet-test-accounts")
    await broker.connect()
    return broker


async def _exists(kind: str, name: str) -> bool:
    """Whether a queue or exchange exists, asked as the administrator."""
    conn = await aio_pika.connect(BROKER_URL)
    try:
        channel = await conn.channel()
        if kind == "queue":
            await channel.declare_queue(name, passive=True)
        else:
            await channel.declare_exchange(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await conn.close()
    return True


def test_account_works_on_its_own_names(accounts: Accounts) -> None:
    """An account connects, declares its exchanges and queues, publishes, consumes, dead-letters."""
    a = accounts.create()
    queue = f"runlet.{a.name}.q"

    async def scenario() -> None:
        broker = await _connect_as(a)
        try:
            got: asyncio.Queue[bytes] = asyncio.Queue()
            dead: asyncio.Queue[bytes] = asyncio.Queue()

            async def handler(msg: Incoming) -> None:
                await got.put(msg.body)
                await msg.reject()  # to the dead-letter exchange

            async def on_dead(msg: Incoming) -> None:
                await dead.put(msg.body)
                await msg.ack()

            await broker.consume(QueueSpec(queue, "quorum", (KEY,)), handler)
            dead_spec = QueueSpec(addresses.dead_letter_queue(a.name), "quorum", dead_letter=False)
            await broker.consume(dead_spec, on_dead)
            await broker.publish(KEY, b"mine", message_id="m1")
            assert await asyncio.wait_for(got.get(), EVENT_SECONDS) == b"mine"
            assert await asyncio.wait_for(dead.get(), EVENT_SECONDS) == b"mine"
        finally:
            await broker.close()

    run(scenario())


Attempt = Callable[[AbstractChannel, str, str], Awaitable[object]]


async def _consume(ch: AbstractChannel, a: str, b: str) -> object:
    async def steal(msg: AbstractIncomingMessage) -> None:
        raise AssertionError(f"B received A's message {msg.body!r}")

    queue = await ch.get_queue(f"runlet.{a}.q", ensure=False)
    return await queue.consume(steal)


async def _get(ch: AbstractChannel, a: str, b: str) -> object:
    queue = await ch.get_queue(f"runlet.{a}.q", ensure=False)
    return await queue.get(fail=False)


async def _publish(ch: AbstractChannel, a: str, b: str) -> object:
    exchange = await ch.get_exchange(f"runlet.{a}", ensure=False)
    return await exchange.publish(aio_pika.Message(b"evil"), KEY)


async def _publish_default(ch: AbstractChannel, a: str, b: str) -> object:
    return await ch.default_exchange.publish(aio_pika.Message(b"evil"), f"runlet.{a}.q")


async def _bind_own_queue(ch: AbstractChannel, a: str, b: str) -> object:
    queue = await ch.get_queue(f"runlet.{b}.q", ensure=False)
    return await queue.bind(f"runlet.{a}", "#")


async def _declare_queue(ch: AbstractChannel, a: str, b: str) -> object:
    return await ch.declare_queue(f"runlet.{a}.evil")


async def _declare_exchange(ch: AbstractChannel, a: str, b: str) -> object:
    return await ch.declare_exchange(f"runlet.{a}", aio_pika.ExchangeType.TOPIC, durable=True)


async def _delete_queue(ch: AbstractChannel, a: str, b: str) -> object:
    return await ch.queue_delete(f"runlet.{a}.q")


async def _purge(ch: AbstractChannel, a: str, b: str) -> object:
    queue = await ch.get_queue(f"runlet.{a}.q", ensure=False)
    return await queue.purge()


async def _unbind(ch: AbstractChannel, a: str, b: str) -> object:
    queue = await ch.get_queue(f"runlet.{a}.q", ensure=False)
    return await queue.unbind(f"runlet.{a}", KEY)


async def _delete_exchange(ch: AbstractChannel, a: str, b: str) -> object:
    return await ch.exchange_delete(f"runlet.{a}")


async def _exchange_into_theirs(ch: AbstractChannel, a: str, b: str) -> object:
    theirs = await ch.get_exchange(f"runlet.{a}", ensure=False)
    return await theirs.bind(f"runlet.{b}", "#")  # B's exchange → A's exchange


async def _exchange_from_theirs(ch: AbstractChannel, a: str, b: str) -> object:
    mine = await ch.get_exchange(f"runlet.{b}", ensure=False)
    return await mine.bind(f"runlet.{a}", "#")  # A's exchange → B's exchange


async def _dead_letter_into_theirs(ch: AbstractChannel, a: str, b: str) -> object:
    return await ch.declare_queue(
        f"runlet.{b}.dl", arguments={"x-dead-letter-exchange": f"runlet.{a}.dlx"}
    )


async def _alternate_into_theirs(ch: AbstractChannel, a: str, b: str) -> object:
    return await ch.declare_exchange(
        f"runlet.{b}.ae", arguments={"alternate-exchange": f"runlet.{a}"}
    )


# attempt, and the resource the broker names in its refusal ({a}: the other user)
ATTEMPTS: dict[str, tuple[Attempt, str]] = {
    "consume": (_consume, "queue 'runlet.{a}.q'"),
    "basic.get": (_get, "queue 'runlet.{a}.q'"),
    "publish": (_publish, "exchange 'runlet.{a}'"),
    "publish via default exchange": (_publish_default, "exchange 'amq.default'"),
    "bind own queue to their exchange": (_bind_own_queue, "exchange 'runlet.{a}'"),
    "declare queue in their names": (_declare_queue, "queue 'runlet.{a}.evil'"),
    "declare their exchange": (_declare_exchange, "exchange 'runlet.{a}'"),
    "delete their queue": (_delete_queue, "queue 'runlet.{a}.q'"),
    "purge their queue": (_purge, "queue 'runlet.{a}.q'"),
    "unbind their queue": (_unbind, "queue 'runlet.{a}.q'"),
    "delete their exchange": (_delete_exchange, "exchange 'runlet.{a}'"),
    "bind their exchange to own": (_exchange_into_theirs, "exchange 'runlet.{a}'"),
    "bind own exchange to theirs": (_exchange_from_theirs, "exchange 'runlet.{a}'"),
    "dead-letter into theirs": (_dead_letter_into_theirs, "exchange 'runlet.{a}.dlx'"),
    "alternate exchange into theirs": (_alternate_into_theirs, "exchange 'runlet.{a}'"),
}


@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_other_account_is_refused(accounts: Accounts, attempt: str) -> None:
    """B's attempt on A's names is refused with ACCESS_REFUSED and leaves A's queue untouched."""
    a, b = accounts.create(), accounts.create()
    action, refused = ATTEMPTS[attempt]
    queue = f"runlet.{a.name}.q"

    async def scenario() -> None:
        owner, other = await _connect_as(a), await _connect_as(b)
        conn = await aio_pika.connect(amqp_url(b))
        try:
            await owner.declare(QueueSpec(queue, "quorum", (KEY,)))
            await other.declare(QueueSpec(f"runlet.{b.name}.q", "quorum", (KEY,)))
            await owner.publish(KEY, b"secret", message_id="s1")
            channel = await conn.channel(publisher_confirms=True)
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as caught:
                await asyncio.wait_for(action(channel, a.name, b.name), EVENT_SECONDS)
            assert f"access to {refused.format(a=a.name)} in vhost '/' refused" in str(caught.value)
            assert f"for user '{b.broker_user}'" in str(caught.value)
            assert channel.is_closed
            assert await owner.queue_info(queue) == (1, 0)
        finally:
            await conn.close()
            await other.close()
            await owner.close()

    run(scenario())


def _version(conn: AbstractConnection) -> tuple[int, ...]:
    assert conn.transport is not None
    raw = conn.transport.connection.server_properties["version"]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return tuple(int(part) for part in text.split(".")[:3])


def test_passive_declare_shows_counts_before_rabbitmq_4_2_6(accounts: Accounts) -> None:
    """A passive declare of A's queue by B: refused from RabbitMQ 4.2.6, counts leak before."""
    a, b = accounts.create(), accounts.create()
    queue = f"runlet.{a.name}.q"

    async def scenario() -> None:
        owner = await _connect_as(a)
        conn = await aio_pika.connect(amqp_url(b))
        try:
            await owner.declare(QueueSpec(queue, "quorum", (KEY,)))
            await owner.publish(KEY, b"secret", message_id="s1")
            channel = await conn.channel()
            if _version(conn) >= (4, 2, 6):
                with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                    await channel.declare_queue(queue, passive=True)
                return
            seen = await channel.declare_queue(queue, passive=True)
            assert seen.declaration_result.message_count == 1
            await channel.declare_exchange(f"runlet.{a.name}", passive=True)
        finally:
            await conn.close()
            await owner.close()

    run(scenario())


def test_removed_account_is_cut_off(accounts: Accounts) -> None:
    """Removing an account closes its connection, refuses its login and deletes its names."""
    a = accounts.create()

    async def scenario() -> None:
        broker = await _connect_as(a)
        await broker.close()
        conn = await aio_pika.connect(amqp_url(a))
        closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def on_close(_: object, exc: BaseException | None) -> None:
            if not closed.done():
                closed.set_result(exc)

        conn.close_callbacks.add(on_close)
        try:
            assert await accounts.admin.remove(a.name) is True
            reason = await asyncio.wait_for(closed, EVENT_SECONDS)
            assert "CONNECTION_FORCED" in str(reason)
            assert "is deleted" in str(reason)
        finally:
            await conn.close()
        with pytest.raises(aiormq.exceptions.ProbableAuthenticationError, match="ACCESS_REFUSED"):
            await aio_pika.connect(amqp_url(a))
        with pytest.raises(BrokerUnavailable, match="Login was refused") as caught:
            await Broker([amqp_url(a)], a.name).connect()
        assert a.password not in str(caught.value)
        assert not await _exists("exchange", addresses.exchange(a.name))
        assert not await _exists("queue", addresses.dead_letter_queue(a.name))
        assert a.name not in await accounts.admin.list()
        assert await accounts.admin.remove(a.name) is False

    run(scenario())


def test_remove_spares_a_user_whose_name_extends_it(accounts: Accounts) -> None:
    """Removing `alice` leaves `alice-x`'s exchange and queues alone."""
    a = accounts.create()
    neighbour = accounts.create(f"{a.name}-x")

    async def scenario() -> None:
        for account in (a, neighbour):
            await (await _connect_as(account)).close()
        assert await accounts.admin.remove(a.name) is True
        assert not await _exists("exchange", addresses.exchange(a.name))
        assert await _exists("exchange", addresses.exchange(neighbour.name))
        assert await _exists("queue", addresses.dead_letter_queue(neighbour.name))

    run(scenario())


def test_list_create_twice_and_rotate(accounts: Accounts) -> None:
    """Accounts are listed; a second create raises; rotate swaps the password."""
    a, b = accounts.create(), accounts.create()

    async def scenario() -> None:
        listed = await accounts.admin.list()
        assert {a.name, b.name} <= set(listed)
        assert listed == sorted(listed)
        with pytest.raises(AccountExists) as caught:
            await accounts.admin.create(a.name)
        assert caught.value.name == a.name
        rotated = await accounts.admin.create(a.name, rotate=True)
        assert rotated.password != a.password
        assert rotated.broker_user == broker_user(a.name)
        with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(amqp_url(a))
        await (await _connect_as(rotated)).close()

    run(scenario())


def test_wrong_admin_password_is_broker_unavailable() -> None:
    """A refused admin login is BrokerUnavailable naming the URL, never the password."""
    admin = BrokerAdmin(MANAGEMENT_URL, ADMIN_USER, "not-the-password")
    name = unique_user()
    for call in (admin.check(), admin.create(name), admin.list()):
        with pytest.raises(BrokerUnavailable, match="refused the credentials") as caught:
            run(call)
        assert MANAGEMENT_URL in str(caught.value)
        assert "not-the-password" not in str(caught.value)
    assert name not in run(_admin().list())


def test_unreachable_api_is_broker_unavailable_at_once() -> None:
    """Nothing listening on the port: BrokerUnavailable naming the URL at once, not after the
    request's timeout."""
    admin = BrokerAdmin("http://127.0.0.1:1", ADMIN_USER, ADMIN_PASSWORD, timeout=60.0)

    async def check() -> float:
        start = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=r"http://127\.0\.0\.1:1\b"):
            await admin.check()
        return time.monotonic() - start

    # a refused connection takes milliseconds; the bound is far below the 60 s timeout it
    # must not wait for, and far above what a busy machine adds to a thread's start
    assert run(check()) < 10.0


def test_admin_check_passes_for_the_administrator() -> None:
    """`check` is quiet when the API answers and the login is an administrator."""
    run(_admin().check())


def test_failed_permissions_leave_no_account() -> None:
    """When the permissions cannot be set (no such vhost), the new account is deleted again."""
    name = unique_user()
    with pytest.raises(BrokerUnavailable, match="400"):
        run(_admin(vhost=f"no-such-{name}").create(name))
    assert name not in run(_admin().list())
