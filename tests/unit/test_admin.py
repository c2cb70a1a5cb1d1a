"""The server admin's user commands (runlet.roots.admin): the device config they print, and the
config checks made before any broker or database is contacted.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from runlet.adapters.rabbitmq_admin import Account
from runlet.config import Config, parse_config
from runlet.errors import ConfigError, RunletError, UsageError
from runlet.roots import admin

HIDDEN = "adm1n-TOP-s3cret"


def server_config(
    tmp_path: Path,
    *,
    url: str = f"amqp://admin:{HIDDEN}@mq.example.net:5672/",
    extra: str = "",
) -> Config:
    text = (
        'role = "server"\nuser = "admin"\nnode = "server-1"\ndata_dir = "data"\n'
        f'[broker]\nurls = ["{url}"]\n[server]\n{extra}'
    )
    return parse_config(text, source="server.toml", base_dir=tmp_path, env={})


def client_config(tmp_path: Path) -> Config:
    text = 'role = "client"\nuser = "alice"\nnode = "laptop"\n[crypto]\nkey_file = "fleet.key"\n'
    return parse_config(text, source="client.toml", base_dir=tmp_path, env={})


def account(phrase: str = "pw-123_ABC", name: str = "alice") -> Account:
    """An account as BrokerAdmin.create returns it, with `phrase` as its broker password."""
    return Account(name, f"runlet-{name}", phrase)


def as_daemon(text: str) -> Config:
    """The printed config, checked exactly as a daemon would check it."""
    return parse_config(text, source="device.toml", base_dir=Path("/"), env={})


def broker_url(text: str) -> str:
    urls = tomllib.loads(text)["broker"]["urls"]
    assert isinstance(urls, list)
    assert len(urls) == 1
    return str(urls[0])


# --- device_config -----------------------------------------------------------------------------


def test_device_config_is_a_valid_daemon_config(tmp_path: Path) -> None:
    """The printed config is TOML a daemon accepts: its user, a node to set, a key file."""
    text = admin.device_config(server_config(tmp_path), account())
    config = as_daemon(text)
    assert config.role == "daemon"
    assert config.user == "alice"
    assert config.node == "CHANGE-ME"
    assert config.key_file == Path("/etc/runlet/fleet.key")
    assert config.data_dir == Path("/var/lib/runlet")
    assert config.server is None


def test_device_config_node(tmp_path: Path) -> None:
    """The node given is the node the config names."""
    text = admin.device_config(server_config(tmp_path), account(), "edge-7")
    assert as_daemon(text).node == "edge-7"


def test_device_config_carries_the_new_login(tmp_path: Path) -> None:
    """The broker URL logs in as the new account, on the server's broker host and port."""
    url = urlsplit(broker_url(admin.device_config(server_config(tmp_path), account("s3cr3t"))))
    assert (url.scheme, url.hostname, url.port) == ("amqp", "mq.example.net", 5672)
    assert (url.username, url.password) == ("runlet-alice", "s3cr3t")


def test_device_config_says_the_init_line_with_the_same_login(tmp_path: Path) -> None:
    """The comment names the `runlet init` line for a first device, with the URL the
    config holds, so setting a device up needs no file copied by hand."""
    text = admin.device_config(server_config(tmp_path), account("s3cr3t"))
    url = broker_url(text)
    assert f"#   runlet init --broker '{url}' --user alice\n" in text
    assert "--join" in text


def test_device_config_never_leaks_the_admin_login(tmp_path: Path) -> None:
    """The server's own broker login appears nowhere in what is handed to the user."""
    text = admin.device_config(server_config(tmp_path), account())
    assert HIDDEN not in text
    assert "admin:" not in text


def test_device_urls_prefer_the_command_line_then_the_public_ones(tmp_path: Path) -> None:
    """--broker-url wins over server.public_broker_urls, which wins over broker.urls."""
    public = 'public_broker_urls = ["amqps://mq.example.net:5671/", "amqps://mq2.example.net/"]'
    config = server_config(tmp_path, url="amqp://admin@127.0.0.1:5672/", extra=public)
    assert admin.device_urls(config) == (
        "amqps://mq.example.net:5671/",
        "amqps://mq2.example.net/",
    )
    assert admin.device_urls(config, ["amqp://10.0.0.5:5672"]) == ("amqp://10.0.0.5:5672/",)
    assert admin.device_urls(server_config(tmp_path)) == ("amqp://mq.example.net:5672/",)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "mq.localhost", "[::1]"]
)
def test_device_urls_never_fall_back_to_a_loopback_address(tmp_path: Path, host: str) -> None:
    """The server's own loopback URL is no address for a device: a usage error saying what
    to pass, without the server's password."""
    config = server_config(tmp_path, url=f"amqp://admin:{HIDDEN}@{host}:5672/")
    with pytest.raises(UsageError, match="loopback address no device can use") as info:
        admin.device_urls(config)
    assert HIDDEN not in str(info.value)
    assert "--broker-url" in str(info.value)


def test_an_explicit_loopback_address_is_taken(tmp_path: Path) -> None:
    """On one machine the admin may say loopback on purpose, with --broker-url."""
    config = server_config(tmp_path, url="amqp://admin@127.0.0.1:5672/")
    assert admin.device_urls(config, ["amqp://127.0.0.1:5672/"]) == ("amqp://127.0.0.1:5672/",)


def test_device_config_lists_every_url_with_the_login(tmp_path: Path) -> None:
    """A cluster's URLs all carry the new login; TLS adds a ca_file hint; it loads."""
    urls = ("amqps://mq1.example.net:5671/", "amqps://[2001:db8::1]:5671/vhost")
    text = admin.device_config(server_config(tmp_path), account("pw"), "edge-1", urls)
    config = as_daemon(text)
    assert config.broker.urls == (
        "amqps://runlet-alice:pw@mq1.example.net:5671/",
        "amqps://runlet-alice:pw@[2001:db8::1]:5671/vhost",
    )
    assert '# ca_file = "/etc/runlet/broker-ca.pem"' in text
    assert "ca_file" not in admin.device_config(server_config(tmp_path), account())


@pytest.mark.parametrize(
    ("urls", "key", "text"),
    [
        ('["amqp://u:p@mq/"]', "server.public_broker_urls[0]", "must not hold a login"),
        ('["amqp://a/", "amqp://u@b/"]', "server.public_broker_urls[1]", "must not hold a login"),
        ('["amqp://a/", "amqps://b/"]', "server.public_broker_urls", "mixes amqp:// and amqps://"),
        ('["http://a/"]', "server.public_broker_urls[0]", "must start with amqp://"),
        ('"amqp://a/"', "server.public_broker_urls", "must be an array"),
    ],
)
def test_bad_public_broker_urls(tmp_path: Path, urls: str, key: str, text: str) -> None:
    """public_broker_urls hold addresses only, of one scheme."""
    with pytest.raises(ConfigError) as info:
        server_config(tmp_path, extra=f"public_broker_urls = {urls}\n")
    assert (info.value.key, text in info.value.problem) == (key, True)
    assert ":p@" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "scheme", "port"),
    [
        ("amqps://mq.example.net:5671/", "amqps", 5671),
        ("amqp://mq.example.net/", "amqp", None),
        ("amqps://guest@mq.example.net/vhost", "amqps", None),
    ],
)
def test_device_config_keeps_scheme_and_port(
    tmp_path: Path, url: str, scheme: str, port: int | None
) -> None:
    """TLS and an explicit port are kept; no port stays no port."""
    text = admin.device_config(server_config(tmp_path, url=url), account())
    parts = urlsplit(broker_url(text))
    assert (parts.scheme, parts.hostname, parts.port) == (scheme, "mq.example.net", port)
    as_daemon(text)


@pytest.mark.parametrize(
    "password",
    [
        "a:b",
        "a@b",
        "p#q?r",
        "100%",
        "%41",
        "sp ace",
        'quo"te',
        "back\\slash",
        "semi;colon&amp=",
        "[brackets]",
        "ünïcødé-密码",
        "-_~.",
        "x" * 512,
    ],
)
def test_device_config_quotes_the_password(tmp_path: Path, password: str) -> None:
    """Any password survives the URL: percent-encoded, it decodes back to itself."""
    text = admin.device_config(server_config(tmp_path), account(password))
    config = as_daemon(text)
    parts = urlsplit(config.broker.urls[0])
    assert parts.hostname == "mq.example.net"
    assert parts.port == 5672
    assert unquote(parts.password or "") == password


@pytest.mark.parametrize("password", ["a/b", "/", "x//y"])
def test_device_config_quotes_a_slash(tmp_path: Path, password: str) -> None:
    """A '/' in the password is encoded too, so the printed config stays valid."""
    text = admin.device_config(server_config(tmp_path), account(password))
    parts = urlsplit(as_daemon(text).broker.urls[0])
    assert unquote(parts.password or "") == password


@pytest.mark.parametrize("host", ["[::1]", "[2001:db8::7]"])
def test_device_config_ipv6_broker(tmp_path: Path, host: str) -> None:
    """A broker at an IPv6 address gives a config whose URL still names that address."""
    config = server_config(tmp_path, url=f"amqp://guest:guest@{host}:5672/")
    text = admin.device_config(config, account())
    parts = urlsplit(as_daemon(text).broker.urls[0])
    assert parts.hostname == host.strip("[]")
    assert parts.port == 5672


BAD_NAMES = [
    pytest.param("bad.name", id="dot"),
    pytest.param("", id="empty"),
    pytest.param("x" * 65, id="oversize"),
    pytest.param('x"\nrole = "server', id="toml-injection"),
    pytest.param("edge 1", id="space"),
    pytest.param("nœud", id="unicode"),
]


@pytest.mark.parametrize("node", BAD_NAMES)
def test_device_config_bad_node_raises(tmp_path: Path, node: str) -> None:
    """A node that is not a valid name is refused instead of printed."""
    with pytest.raises((ValueError, RunletError)):
        admin.device_config(server_config(tmp_path), account(), node)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_device_config_bad_user_raises(tmp_path: Path, name: str) -> None:
    """An account whose name is not a valid user name is refused instead of printed."""
    with pytest.raises((ValueError, RunletError)):
        admin.device_config(server_config(tmp_path), account(name=name))


# --- config checks before any connection --------------------------------------------------------

Action = Callable[[Config], Coroutine[Any, Any, object]]
ACTIONS: list[tuple[str, Action]] = [
    ("add", lambda c: admin.add_user(c, "alice")),
    ("remove", lambda c: admin.remove_user(c, "alice")),
    ("list", admin.list_users),
]


@pytest.mark.parametrize("action", [a for _, a in ACTIONS], ids=[n for n, _ in ACTIONS])
def test_user_commands_need_server_section(tmp_path: Path, action: Action) -> None:
    """Without a [server] section every user command stops with a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        asyncio.run(action(client_config(tmp_path)))
    assert info.value.key == "server"
    assert info.value.source == "client.toml"
    assert "[server] section" in str(info.value)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_unreadable_management_password_file(tmp_path: Path, kind: str) -> None:
    """A management password file that cannot be read is a ConfigError naming its key."""
    secret = tmp_path / "mgmt.pw"
    if kind == "folder":
        secret.mkdir()
    config = server_config(tmp_path, extra=f'management_password_file = "{secret}"\n')
    with pytest.raises(ConfigError) as info:
        asyncio.run(admin.add_user(config, "alice"))
    assert info.value.key == "server.management_password_file"


# --- device accounts ---------------------------------------------------------------------------


def test_device_user_names_cannot_collide_with_users() -> None:
    """A device account holds a dot, which no user name may: it is nobody else's account."""
    from runlet.adapters.rabbitmq_admin import broker_user, device_user

    assert device_user("alice", "pi-1") == "runlet-alice.pi-1"
    assert device_user("alice", "pi-1") != broker_user("alice-pi-1")
    for bad in ("pi.1", "", "pi 1", "x" * 65):
        with pytest.raises(ValueError, match="not a valid user name"):
            device_user("alice", bad)


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("job.0123456789abcdef0123456789abcdef.state", True),
        ("job.0123456789abcdef0123456789abcdef.output", True),
        ("job.0123456789abcdef0123456789abcdef.log", True),
        ("job.0123456789abcdef0123456789abcdef.pi-1.state", True),
        ("node.pi-1.presence", True),
        ("reply.viewer_2.0123456789abcdef0123456789abcdef", True),
        ("dispatch.node.pi-1", False),
        ("dispatch.any", False),
        ("dispatch.all", False),
        ("dispatch.tag.gpu", False),
        ("job.0123456789abcdef0123456789abcdef.input", False),
        ("job.0123456789abcdef0123456789abcdef.control", False),
        ("job.0123456789abcdef0123456789abcdef.pi-2.state", False),
        ("job.0123456789abcdef0123456789abcdef.state\n", False),
        ("job.0123456789ABCDEF0123456789abcdef.state", False),
        ("node.pi-2.presence", False),
        ("node.pi-1.rpc", False),
        ("rpc.jobs", False),
        ("server.rpc", False),
        ("xjob.0123456789abcdef0123456789abcdef.state", False),
        ("node.pi-1.presence.x", False),
    ],
)
def test_run_only_pattern(key: str, allowed: bool) -> None:
    """A run-only device may publish what a daemon sends for its jobs, nothing that starts,
    steers or asks anything (the same regex the broker applies, read here by Python's re)."""
    import re

    from runlet.adapters.rabbitmq_admin import run_only_pattern

    assert (re.search(run_only_pattern("pi-1"), key) is not None) is allowed
