"""`runlet user add|list|remove`: the server admin's accounts, in PostgreSQL and RabbitMQ at once.

`user add NAME` creates the user in the ledger and a broker account whose permissions cover
only `runlet.NAME` and `runlet.NAME.*`, then prints a ready config for that user's devices
(it holds the new broker password: hand it over like a key). Run with the server's config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from runlet.adapters.rabbitmq_admin import Account, BrokerAdmin
from runlet.config import Config, ServerConfig
from runlet.protocol.addresses import valid_name

if TYPE_CHECKING:
    from runlet.adapters.ledger_db import LedgerDb
from runlet.errors import ConfigError
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


def device_config(config: Config, account: Account, node: str = "CHANGE-ME") -> str:
    """A ready daemon config for the new user's devices."""
    for what, name in (("node", node), ("user", account.name)):
        if not valid_name(name):
            raise ValueError(f"invalid {what} name {name[:80]!r}")
    parts = urlsplit(config.broker.urls[0])
    hostport = parts.netloc.rpartition("@")[2] or "127.0.0.1"  # keeps [IPv6] brackets and port
    user, secret = quote(account.broker_user, safe=""), quote(account.password, safe="")
    url = f"{parts.scheme}://{user}:{secret}@{hostport}/"
    return (
        f"# Runlet config for user {account.name!r}. Simplest, on the first device:\n"
        f"#   runlet init --broker '{url}' --user {account.name}\n"
        "# and on each other one the same with --join, then `runlet pair` (README: Add a device).\n"
        "# Or copy this file to each device, set node, `runlet -c THIS key init` on one device\n"
        "# and `key export | key import` to the others.\n"
        '# The broker password below is a secret: keep this file mode 600.\nrole = "daemon"\n'
        f'user = "{account.name}"\nnode = "{node}"\ndata_dir = "/var/lib/runlet"\n\n'
        f'[broker]\nurls = ["{url}"]\n\n[crypto]\nkey_file = "/etc/runlet/fleet.key"\n'
    )
