"""`runlet user add|list|remove`: the server admin's accounts, in PostgreSQL and RabbitMQ at once.

`user add NAME` creates the user in the ledger and a broker account whose permissions cover
only `runlet.NAME` and `runlet.NAME.*`, then prints a ready config for that user's devices
(it holds the new broker password: hand it over like a key). Run with the server's config.
`device add USER NODE [--run-only]` does the same for one device, with an account of its own
(`device revoke` shuts that one out; `device list`). The config reaches the broker where
devices can (`device_urls`: ``--broker-url``, else
``server.public_broker_urls``), never at the server's own loopback address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from runlet.adapters.broker_port import safe_url
from runlet.adapters.rabbitmq_admin import Account, BrokerAdmin
from runlet.config import Config, ServerConfig
from runlet.config.checks import AMQP_URL_CHECK, Invalid
from runlet.protocol.addresses import valid_name

if TYPE_CHECKING:
    from runlet.adapters.ledger_db import LedgerDb
from runlet.errors import ConfigError, UsageError
from runlet.files import read_password


def _admin(config: Config) -> BrokerAdmin:
    server = _server(config)
    password = "guest"  # noqa: S105 - RabbitMQ's development default, documented
    if server.management_password_file is not None:
        password = read_password(server.management_password_file, "server.management_password_file")
    return BrokerAdmin(server.management_url, server.management_user, password)


def _server(config: Config) -> ServerConfig:
    if config.server is None:
        raise ConfigError(
            "server",
            "`runlet user` needs the server's config ([server] section)",
            source=config.source,
        )
    return config.server


async def _ledger(config: Config) -> LedgerDb:
    from runlet.adapters.ledger_db import connect
    from runlet.adapters.ledger_dsn import server_dsn

    server = _server(config)
    dsn = server_dsn(server.database_url, server.database_password_file)
    ledger = await connect(dsn, schema=server.database_schema)
    await ledger.migrate()
    return ledger


async def add_user(config: Config, name: str, *, rotate: bool = False) -> Account:
    admin = _admin(config)
    await admin.check()
    account = await admin.create(name, rotate=rotate)
    ledger = await _ledger(config)
    try:
        await ledger.add_user(name)
    finally:
        await ledger.close()
    return account


async def remove_user(config: Config, name: str) -> bool:
    admin = _admin(config)
    await admin.check()
    removed = await admin.remove(name)
    ledger = await _ledger(config)
    try:
        return await ledger.remove_user(name) or removed
    finally:
        await ledger.close()


async def list_users(config: Config) -> list[tuple[str, bool]]:
    """(name, has a broker account) for every user in the ledger or on the broker."""
    admin = _admin(config)
    on_broker = set(await admin.list())
    ledger = await _ledger(config)
    try:
        in_ledger = {row.name for row in await ledger.users()}
    finally:
        await ledger.close()
    return [(name, name in on_broker) for name in sorted(in_ledger | on_broker)]


async def add_device(
    config: Config, user: str, node: str, *, run_only: bool = False, rotate: bool = False
) -> Account:
    """A broker account for one device of an existing user (`runlet device add`)."""
    admin = _admin(config)
    await admin.check()
    if user not in await admin.list():
        raise UsageError(f"no user {user!r} on the broker: run `runlet user add {user}` first")
    return await admin.create_device(user, node, run_only=run_only, rotate=rotate)


async def revoke_device(config: Config, user: str, node: str) -> bool:
    """Delete a device's broker account and close its connections (`runlet device revoke`)."""
    admin = _admin(config)
    await admin.check()
    return await admin.remove_device(user, node)


async def list_devices(config: Config, user: str) -> list[tuple[str, bool]]:
    """(node, run-only) of every device account of `user`."""
    return await _admin(config).devices(user)


def device_urls(config: Config, given: Sequence[str] = ()) -> tuple[str, ...]:
    """The broker URLs devices should use, without a login: `given` (``--broker-url``), else
    ``server.public_broker_urls``, else the server's own ``broker.urls`` unless those name a
    loopback address, which no other machine could reach. Checked before any account is made.
    """
    server = _server(config)
    for index, url in enumerate(given):
        try:
            AMQP_URL_CHECK(url)
        except Invalid as exc:
            raise UsageError(f"--broker-url #{index + 1} {exc.problem}") from None
        if "@" in urlsplit(url).netloc:  # never echo it: that part is a login
            raise UsageError(
                f"--broker-url #{index + 1} must not hold a login: each user gets their own"
            )
    urls = tuple(given) or server.public_broker_urls
    if not urls:
        urls = config.broker.urls
        local = [u for u in urls if _loopback(urlsplit(u).hostname or "")]
        if local:
            raise UsageError(
                f"the server reaches the broker at {safe_url(local[0])}, a loopback address no"
                " device can use: pass --broker-url amqps://HOST:PORT/ (the address devices"
                " reach) or set server.public_broker_urls"
            )
    if len({urlsplit(u).scheme for u in urls}) > 1:
        raise UsageError("the broker URLs mix amqp:// and amqps://: use one or the other")
    return tuple(_without_login(url) for url in urls)


def device_config(
    config: Config, account: Account, node: str = "CHANGE-ME", urls: Sequence[str] = ()
) -> str:
    """A ready daemon config for the new user's devices, reaching the broker at `urls`
    (`device_urls`; by default the server's own first broker URL)."""
    for what, name in (("node", node), ("user", account.name)):
        if not valid_name(name):
            raise ValueError(f"invalid {what} name {name[:80]!r}")
    user, secret = quote(account.broker_user, safe=""), quote(account.password, safe="")
    chosen = tuple(urls) or (_without_login(config.broker.urls[0]),)
    listed = ", ".join(f'"{_with_login(url, user, secret)}"' for url in chosen)
    tls = urlsplit(chosen[0]).scheme == "amqps"
    ca = (
        "# The CA that signed the broker's certificate, if not one the system trusts:\n"
        '# ca_file = "/etc/runlet/broker-ca.pem"\n'
        if tls
        else ""
    )
    return (
        f"# Runlet config for user {account.name!r}. Simplest, on the first device:\n"
        f"#   runlet init --broker '{_with_login(chosen[0], user, secret)}' --user {account.name}\n"
        "# and on each other one the same with --join, then `runlet pair` (README: Add a device).\n"
        "# Or copy this file to each device, set node, `runlet -c THIS key init` on the first\n"
        "# device; on each other, `key device`, then `key seal LINE` on a device that has the\n"
        "# key, and `key import` of what it printed.\n"
        '# The broker password below is a secret: keep this file mode 600.\nrole = "daemon"\n'
        f'user = "{account.name}"\nnode = "{node}"\ndata_dir = "/var/lib/runlet"\n\n'
        f"[broker]\nurls = [{listed}]\n{ca}\n"
        '[crypto]\nkey_file = "/etc/runlet/fleet.key"\n'
    )


def _without_login(url: str) -> str:
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2] or "127.0.0.1"  # keeps [IPv6] brackets and port
    return urlunsplit((parts.scheme, hostport, parts.path or "/", parts.query, ""))


def _with_login(url: str, user: str, secret: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(
        (parts.scheme, f"{user}:{secret}@{parts.netloc}", parts.path, parts.query, "")
    )


def _loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
