"""The config's schema: one frozen class per section, every key a field that documents itself.

Each key is declared once, as a `setting` field: its check, its default, its meaning. The
loader's known keys (`TOP_KEYS`, `SECTIONS`), ``runlet config-keys``, README's configuration
table and ``runlet check-config --json`` are all read from these fields; there is no other
list of keys. A `Config` field whose type is one of the section classes is a section, and
one that may be None is an optional section (absent: the feature is off).

This module must never hold key material: secrets are referenced by path.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from runlet.config.checks import (
    AMQP_URL_CHECK,
    HOST_NAME_CHECK,
    HTTP_URL_CHECK,
    NAME,
    NAME_CHECK,
    REGION_CHECK,
    Bool,
    Bucket,
    Choice,
    Conflict,
    HostPort,
    Int,
    Invalid,
    ListOf,
    PathValue,
    Positive,
    Text,
    expand,
    preview,
)
from runlet.config.setting import Key, Section, keys_of, schema, sections_of, setting
from runlet.errors import ConfigError

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_SHELL = "cmd.exe" if sys.platform == "win32" else "/bin/sh"
DEFAULT_DATA_DIR = "~/.local/share/runlet"

_SECONDS = Positive(3600)


@schema
class BrokerConfig:
    """How to reach RabbitMQ: section ``[broker]`` (the password by file, TLS files by path).

    The keys must agree (`_check_broker`): TLS keys need amqps:// URLs, all of them; a
    password file needs URLs that name a user and hold no password; a certificate login
    needs a client certificate and no password at all.
    """

    urls: tuple[str, ...] = setting(
        ListOf(AMQP_URL_CHECK, non_empty=True),
        "RabbitMQ nodes, tried in order; several for a cluster (failover); all amqp:// or all"
        " amqps://",
        default=(DEFAULT_BROKER_URL,),
        masked=True,
        repr=False,  # a URL may carry the broker password, and configs end up in logs
    )
    password_file: Path | None = setting(
        PathValue(),
        "file holding the password of the user the URLs name (amqps://USER@host/), mode 600;"
        " unset: the URL's own password",
        default=None,
    )
    ca_file: Path | None = setting(
        PathValue(),
        "PEM CA certificates the broker's certificate must chain to (amqps://); unset: the"
        " system's trusted CAs",
        default=None,
    )
    cert_file: Path | None = setting(
        PathValue(),
        "PEM client certificate this process shows the broker (amqps://), with key_file",
        default=None,
    )
    key_file: Path | None = setting(
        PathValue(), "cert_file's private key, unencrypted PEM, mode 600", default=None
    )
    server_name: str | None = setting(
        HOST_NAME_CHECK,
        "host name the broker's certificate must be valid for (and TLS SNI); unset: each"
        " URL's host",
        default=None,
    )
    verify: bool = setting(
        Bool(),
        "check the broker's certificate and host name (amqps://); false is for tests only and"
        " logs a warning at every start",
        default=True,
    )
    login: str = setting(
        Choice(("password", "certificate")),
        "certificate: log in as cert_file's common name (SASL EXTERNAL, RabbitMQ plugin"
        " rabbitmq_auth_mechanism_ssl), no password",
        default="password",
    )
    heartbeat: int = setting(Int(1, 600), "AMQP heartbeat, seconds", default=10)
    publish_timeout: float = setting(
        _SECONDS, "how long a publish waits for its confirm", default=10.0
    )
    prefetch: int = setting(Int(1, 65535), "unacknowledged deliveries per consumer", default=64)
    presence_seconds: float = setting(
        _SECONDS, "seconds between a daemon's heartbeats to the server", default=10.0
    )

    def __post_init__(self) -> None:
        _check_broker(self)

    @property
    def tls(self) -> bool:
        """Whether the URLs are amqps:// (they are all one or the other)."""
        return self.urls[0].lower().startswith("amqps:")


def _check_broker(broker: BrokerConfig) -> None:
    """Raise `Conflict` on the first keys of `broker` that do not go together."""
    parts = [urlsplit(url) for url in broker.urls]
    _check_schemes([part.scheme for part in parts])
    if (broker.cert_file is None) != (broker.key_file is None):
        missing, given = (
            ("key_file", "cert_file") if broker.key_file is None else ("cert_file", "key_file")
        )
        raise Conflict(f"broker.{missing}", f"is required with broker.{given}")
    if parts[0].scheme != "amqps":
        _check_no_tls_keys(broker)
    if broker.login == "certificate":
        if broker.cert_file is None:
            raise Conflict("broker.cert_file", 'is required with broker.login = "certificate"')
        if broker.password_file is not None:
            raise Conflict(
                "broker.password_file",
                'must be unset with broker.login = "certificate": the certificate is the login',
            )
    _check_logins(broker, parts)


def _check_schemes(schemes: list[str]) -> None:
    if len(set(schemes)) > 1:
        odd = next(index for index, scheme in enumerate(schemes) if scheme != schemes[0])
        raise Conflict(
            f"broker.urls[{odd}]",
            f"is {schemes[odd]}:// but broker.urls[0] is {schemes[0]}://: a failover must"
            " never change whether the connection is encrypted",
        )


def _check_no_tls_keys(broker: BrokerConfig) -> None:
    tls_keys = {
        "ca_file": broker.ca_file is not None,
        "cert_file": broker.cert_file is not None,
        "server_name": broker.server_name is not None,
        "verify": not broker.verify,
        "login": broker.login == "certificate",
    }
    for name, is_set in tls_keys.items():
        if is_set:
            raise Conflict(
                f"broker.{name}", "applies to amqps:// URLs only, and broker.urls are amqp://"
            )


def _check_logins(broker: BrokerConfig, parts: list[SplitResult]) -> None:
    """No URL holds a password the file or the certificate replaces; each names its user."""
    for index, part in enumerate(parts):
        if part.password is not None and (broker.password_file or broker.login == "certificate"):
            why = (
                "broker.password_file is set" if broker.password_file else "login is by certificate"
            )
            raise Conflict(f"broker.urls[{index}]", f"holds a password, but {why}: remove it")
        if broker.password_file is not None and not part.username:
            raise Conflict(
                f"broker.urls[{index}]",
                "must name the broker user (amqps://USER@host/) whose password is in"
                " broker.password_file",
            )


@schema
class JobsConfig:
    """How a daemon runs jobs: section ``[jobs]``."""

    max_parallel: int = setting(
        Int(1, 1024), "jobs running at once; the rest wait, first in first out", default=4
    )
    shell: str = setting(
        Text(),
        "runs single-string command lines",
        default=DEFAULT_SHELL,
        default_doc='"/bin/sh" ("cmd.exe" on Windows)',
    )
    grace_seconds: float = setting(
        _SECONDS, "seconds between SIGTERM and SIGKILL on cancel or timeout", default=10.0
    )
    max_load: float | None = setting(
        Positive(), "also hold new jobs while the 1-minute load average is above this", default=None
    )


@schema
class CryptoConfig:
    """Where the sealing key lives: section ``[crypto]`` (a path, never the key)."""

    key_file: Path = setting(PathValue(), "the fleet key (mode 0600), made by `runlet key init`")


@schema
class LogConfig:
    """How much to log and in which form: section ``[log]``."""

    level: str = setting(
        Choice(("debug", "info", "warning", "error")), "least severe message logged", default="info"
    )
    format: str = setting(
        Choice(("auto", "json", "console")),
        "auto: readable on a terminal, JSON otherwise",
        default="auto",
    )


@schema
class StorageConfig:
    """Where finished logs go: section ``[storage]``, an S3-compatible store (MinIO, AWS).

    Absent, `Config.storage` is None and logs stay on the device that wrote them. The access
    keys live in `credentials_file`, never here; without one, the AWS default chain is used.
    """

    endpoint_url: str | None = setting(
        HTTP_URL_CHECK,
        "S3-compatible store logs are uploaded to (no `[storage]`: logs stay local); unset:"
        " AWS's own endpoint",
        default=None,
    )
    # kw_only: a required key after one with a default, the order its problems are found in
    bucket: str = setting(
        Bucket(), "bucket holding every log, at `<user>/<node>/<job>.rlog`", kw_only=True
    )
    region: str = setting(REGION_CHECK, "region the requests are signed for", default="us-east-1")
    credentials_file: Path | None = setting(
        PathValue(),
        "TOML file with access_key_id and secret_access_key, mode 600; unset: AWS's default chain",
        default=None,
    )
    path_style: bool = setting(
        Bool(), "bucket in the URL path, as MinIO wants, not the host", default=True
    )
    checkpoint_seconds: float = setting(
        Positive(86400), "seconds between uploads of a running job's log so far", default=60.0
    )
    timeout_seconds: float = setting(
        _SECONDS, "seconds to connect, and between reads", default=30.0
    )


@schema
class VaultConfig:
    """How much the local log vault may hold: section ``[vault]``."""

    max_bytes: int = setting(
        Int(0, 2**63 - 1),
        "bytes of logs kept on this device, 0 for no bound; only uploaded logs are evicted,"
        " oldest first",
        default=0,
    )


@schema
class ServerConfig:
    """What the server role needs: section ``[server]`` (passwords by file path only)."""

    database_url: str = setting(
        Text(),
        "the ledger's PostgreSQL DSN (postgresql://user@host:port/db); role server only",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        masked=True,
    )
    database_password_file: Path | None = setting(
        PathValue(),
        "file holding the database password, mode 600; unset: none (trust or .pgpass)",
        default=None,
    )
    database_schema: str | None = setting(
        NAME_CHECK,
        "PostgreSQL schema for the ledger's tables; unset: the server's search_path",
        default=None,
    )
    presence_timeout: float = setting(
        _SECONDS,
        "seconds without a heartbeat before a node's running jobs are marked lost",
        default=45.0,
    )
    management_url: str = setting(
        HTTP_URL_CHECK,
        "RabbitMQ management API, for `runlet user`",
        default="http://127.0.0.1:15672",
    )
    management_user: str = setting(
        Text(), "RabbitMQ administrator for `runlet user`", default="guest"
    )
    management_password_file: Path | None = setting(
        PathValue(), 'file holding that administrator\'s password; unset: "guest"', default=None
    )
    public_broker_urls: tuple[str, ...] = setting(
        ListOf(AMQP_URL_CHECK),
        "broker URLs, without a login, that `runlet user add` writes into device configs;"
        " unset: its --broker-url",
        default=(),
    )

    def __post_init__(self) -> None:
        for index, url in enumerate(self.public_broker_urls):
            if "@" in urlsplit(url).netloc:  # never echo it: that part is a login
                raise Conflict(
                    f"server.public_broker_urls[{index}]",
                    "must not hold a login: `runlet user add` puts each user's own in",
                )
        schemes = {urlsplit(url).scheme for url in self.public_broker_urls}
        if len(schemes) > 1:
            raise Conflict(
                "server.public_broker_urls", "mixes amqp:// and amqps://: use one or the other"
            )


@schema
class MetricsConfig:
    """Where Prometheus scrapes this process: section ``[metrics]``."""

    listen: str = setting(
        HostPort(),
        "address of the Prometheus `/metrics` endpoint; no `[metrics]`: none",
        default="127.0.0.1:9464",
    )

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def _default_node() -> str:
    host = socket.gethostname()
    node = re.sub(r"[^A-Za-z0-9_-]+", "-", host.partition(".")[0]).strip("-")[:64]
    if not NAME.fullmatch(node):
        raise Invalid(f"cannot make a node name from host name {preview(host)}")
    return node


def _default_data_dir() -> Path:
    return expand(DEFAULT_DATA_DIR)


@schema
class Config:
    """The whole checked configuration of one daemon, client or server."""

    role: str = setting(Choice(("daemon", "client", "server")), "which program reads this file")
    user: str = setting(NAME_CHECK, "whose fleet this is: the broker exchange `runlet.<user>`")
    node: str = setting(
        NAME_CHECK,
        "this device's name, a job target",
        default_doc="first label of the host name, other characters turned into '-'",
        fallback=_default_node,
    )
    data_dir: Path = setting(
        PathValue(),
        "journal and encrypted logs; relative to the config file's folder",
        default_doc=f'"{DEFAULT_DATA_DIR}"',
        fallback=_default_data_dir,
    )
    tags: tuple[str, ...] = setting(
        ListOf(NAME_CHECK), "more names this node answers to (`--on tag:T`)", default=()
    )
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    # Optional here, but required for daemons and clients: a server never holds the key.
    crypto: CryptoConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)
    storage: StorageConfig | None = None
    vault: VaultConfig = field(default_factory=VaultConfig)
    server: ServerConfig | None = None
    metrics: MetricsConfig | None = None
    source: str | None = None  # not a key: the file this came from

    @property
    def key_file(self) -> Path:
        """The fleet key's path; a ConfigError if this config has no [crypto] section."""
        if self.crypto is None:
            raise ConfigError("crypto.key_file", "is required for this command", source=self.source)
        return self.crypto.key_file


TOP_KEYS: Mapping[str, Key] = keys_of(Config)
SECTIONS: Mapping[str, Section] = sections_of(Config)


def all_keys() -> list[Key]:
    """Every key: the top-level ones, then each section's, in the classes' order."""
    return [*TOP_KEYS.values(), *(key for s in SECTIONS.values() for key in s.keys.values())]
