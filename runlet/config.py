"""Runlet's settings: one TOML file, overridden by ``RUNLET_*`` environment variables.

`load_config` reads the file, applies the environment, checks every value and returns a
frozen `Config`. Any problem is a `ConfigError` naming the offending key by its dotted path
(``broker.urls[1]``, ``jobs.max_parallel``; ``config`` for the file itself), so the program
can say which setting to fix and stop.

This module must never fall back silently on a bad value, never hold key material (secrets
are referenced by path, like ``crypto.key_file``), and never open the files those paths
name: the code that uses a file checks it.

Environment overrides win over the file. ``RUNLET_<SECTION>__<KEY>`` sets a section key
(``RUNLET_JOBS__MAX_PARALLEL=8``); ``RUNLET_ROLE``, ``RUNLET_USER``, ``RUNLET_NODE``,
``RUNLET_DATA_DIR`` and ``RUNLET_TAGS`` set the top-level keys; ``RUNLET_CONFIG`` names the
file. A value is read as TOML when it parses as one (``8``, ``["a", "b"]``), else as plain
text. List keys split plain text on commas (``RUNLET_TAGS=gpu,arm``); string and path keys
take the text as written unless it is a quoted TOML string (``RUNLET_USER=42`` is the user
``"42"``). An unknown ``RUNLET_<SECTION>__<KEY>`` is an error; other ``RUNLET_*`` names are
left to whoever uses them.

An optional section (``[storage]``) that neither the file nor the environment mentions is
None in `Config`: the feature is off. Naming any of its keys turns it on, and then its
required keys must be set too.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import socket
import stat
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit

from runlet.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_SHELL = "cmd.exe" if sys.platform == "win32" else "/bin/sh"
DEFAULT_DATA_DIR = "~/.local/share/runlet"
CONFIG_ENV = "RUNLET_CONFIG"

_ENV_PREFIX = "RUNLET_"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
# Reserved by AWS for its own bucket kinds (access points, directory and table buckets).
_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_PREVIEW_CHARS = 60


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """How to reach RabbitMQ: section ``[broker]``."""

    # repr=False: a URL may carry the broker password, and configs end up in logs.
    urls: tuple[str, ...] = field(default=(DEFAULT_BROKER_URL,), repr=False)
    heartbeat: int = 10
    publish_timeout: float = 10.0
    prefetch: int = 64
    presence_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """How a daemon runs jobs: section ``[jobs]``."""

    max_parallel: int = 4
    shell: str = DEFAULT_SHELL
    grace_seconds: float = 10.0
    max_load: float | None = None


@dataclass(frozen=True, slots=True)
class CryptoConfig:
    """Where the sealing key lives: section ``[crypto]`` (a path, never the key)."""

    key_file: Path


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How much to log and in which form: section ``[log]``."""

    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where finished logs go: section ``[storage]``, an S3-compatible store (MinIO, AWS).

    Absent, `Config.storage` is None and logs stay on the device that wrote them. The access
    keys live in `credentials_file`, never here; without one, the AWS default chain is used.
    """

    bucket: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    credentials_file: Path | None = None
    path_style: bool = True
    checkpoint_seconds: float = 60.0
    timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class VaultConfig:
    """How much the local log vault may hold: section ``[vault]``."""

    max_bytes: int = 0  # 0: unbounded; only logs already uploaded are ever evicted


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What the server role needs: section ``[server]`` (passwords by file path only)."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    database_password_file: Path | None = None
    database_schema: str | None = None
    presence_timeout: float = 45.0
    management_url: str = "http://127.0.0.1:15672"
    management_user: str = "guest"
    management_password_file: Path | None = None


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where Prometheus scrapes this process: section ``[metrics]``."""

    listen: str = "127.0.0.1:9464"

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole checked configuration of one daemon, client or server."""

    role: str
    user: str
    node: str
    data_dir: Path
    crypto: CryptoConfig | None = None
    tags: tuple[str, ...] = ()
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    storage: StorageConfig | None = None
    vault: VaultConfig = field(default_factory=VaultConfig)
    server: ServerConfig | None = None
    metrics: MetricsConfig | None = None
    source: str | None = None

    @property
    def key_file(self) -> Path:
        """The fleet key's path; a ConfigError if this config has no [crypto] section."""
        if self.crypto is None:
            raise ConfigError("crypto.key_file", "is required for this command", source=self.source)
        return self.crypto.key_file


# --- value checks ------------------------------------------------------------------------

_Shape = Literal["scalar", "text", "list"]


class _Invalid(Exception):
    """A value failed its check; `index` points at the bad item of a list."""

    def __init__(self, problem: str, index: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.index = index


class _Check(Protocol):
    """Checks one raw TOML value and returns the typed value, or raises `_Invalid`."""

    @property
    def shape(self) -> _Shape: ...

    @property
    def doc(self) -> str: ...

    def __call__(self, value: object, /) -> object: ...


@dataclass(frozen=True, slots=True)
class _Int:
    lo: int
    hi: int
    shape: ClassVar[_Shape] = "scalar"

    @property
    def doc(self) -> str:
        return f"integer {self.lo}..{self.hi}"

    def __call__(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(_expected("an integer", value))
        if not self.lo <= value <= self.hi:
            raise _Invalid(f"must be from {self.lo} to {self.hi}, got {_preview(value)}")
        return value


@dataclass(frozen=True, slots=True)
class _Positive:
    hi: float | None = None
    shape: ClassVar[_Shape] = "scalar"

    @property
    def doc(self) -> str:
        return "number > 0" + ("" if self.hi is None else f", at most {self.hi:g}")

    def __call__(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(_expected("a number", value))
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise _Invalid(f"must be a finite number, got {_preview(value)}")
        if number <= 0:
            raise _Invalid(f"must be greater than 0, got {number:g}")
        if self.hi is not None and number > self.hi:
            raise _Invalid(f"must be at most {self.hi:g}, got {number:g}")
        return number


@dataclass(frozen=True, slots=True)
class _Choice:
    options: tuple[str, ...]
    shape: ClassVar[_Shape] = "text"

    @property
    def doc(self) -> str:
        return " | ".join(json.dumps(option) for option in self.options)

    def __call__(self, value: object) -> str:
        if not isinstance(value, str):
            raise _Invalid(_expected("a string", value))
        if value not in self.options:
            allowed = ", ".join(repr(option) for option in self.options)
            raise _Invalid(f"must be one of {allowed}, got {_preview(value)}")
        return value


@dataclass(frozen=True, slots=True)
class _Name:
    shape: ClassVar[_Shape] = "text"
    doc: ClassVar[str] = "name (1-64 of A-Z a-z 0-9 _ -)"

    def __call__(self, value: object) -> str:
        if not isinstance(value, str):
            raise _Invalid(_expected("a string", value))
        if not _NAME.fullmatch(value):
            raise _Invalid(
                "must be 1 to 64 ASCII letters, digits, '_' or '-' (it becomes a routing-key"
                f" word, so no dots or spaces), got {_preview(value)}"
            )
        return value


@dataclass(frozen=True, slots=True)
class _Text:
    shape: ClassVar[_Shape] = "text"
    doc: ClassVar[str] = "non-empty string"

    def __call__(self, value: object) -> str:
        return _text(value)


@dataclass(frozen=True, slots=True)
class _Bool:
    shape: ClassVar[_Shape] = "scalar"
    doc: ClassVar[str] = "true | false"

    def __call__(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(_expected("true or false", value))
        return value


@dataclass(frozen=True, slots=True)
class _Bucket:
    shape: ClassVar[_Shape] = "text"
    doc: ClassVar[str] = "S3 bucket name (3-63 of a-z 0-9 . -)"

    def __call__(self, value: object) -> str:
        name = _text(value)
        if not _BUCKET.fullmatch(name):
            raise _Invalid(
                "must be an S3 bucket name: 3 to 63 lower-case letters, digits, '.' or '-',"
                f" starting and ending with a letter or digit, got {_preview(name)}"
            )
        if ".." in name or _IPV4_LIKE.fullmatch(name):
            raise _Invalid(f"must not hold '..' or look like an IP address, got {_preview(name)}")
        if name.startswith(_BUCKET_PREFIXES) or name.endswith(_BUCKET_SUFFIXES):
            raise _Invalid(f"uses a prefix or suffix S3 reserves, got {_preview(name)}")
        return name


@dataclass(frozen=True, slots=True)
class _Region:
    shape: ClassVar[_Shape] = "text"
    doc: ClassVar[str] = "region name (1-64 of A-Z a-z 0-9 _ -)"

    def __call__(self, value: object) -> str:
        region = _text(value)
        if not _REGION.fullmatch(region):
            # It goes into host names and request signatures: no dots, slashes or spaces.
            raise _Invalid(
                "must be 1 to 64 ASCII letters, digits, '_' or '-' (like us-east-1),"
                f" got {_preview(region)}"
            )
        return region


@dataclass(frozen=True, slots=True)
class _HttpUrl:
    shape: ClassVar[_Shape] = "text"
    doc: ClassVar[str] = "http:// or https:// URL"

    def __call__(self, value: object) -> str:
        url = _text(value)
        if any(char <= " " or char == "\x7f" for char in url):
            raise _Invalid("must not contain spaces or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise _Invalid("is not a valid URL, or has a bad port (1 to 65535)") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise _Invalid("must start with http:// or https://")
        if not parts.hostname:
            raise _Invalid("must name a host (https://host:port)")
        if port == 0:
            raise _Invalid("has a bad port: it must be a number from 1 to 65535")
        if "@" in parts.netloc:  # never echo it: that part is a login
            raise _Invalid("must not hold a login: put the keys in storage.credentials_file")
        if parts.query or parts.fragment:  # not echoed either: a query may hold a signature
            raise _Invalid("must not have a query (?...) or fragment (#...)")
        return url


@dataclass(frozen=True, slots=True)
class _HostPort:
    shape: ClassVar[_Shape] = "text"
    doc: ClassVar[str] = "HOST:PORT"

    def __call__(self, value: object) -> str:
        text = _text(value)
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise _Invalid(f"must be HOST:PORT with a port from 1 to 65535, got {_preview(text)}")
        if any(char <= " " for char in host):
            raise _Invalid("host must not contain spaces or control characters")
        return text


@dataclass(frozen=True, slots=True)
class _PathValue:
    shape: ClassVar[_Shape] = "text"
    doc: ClassVar[str] = "path"

    def __call__(self, value: object) -> Path:
        return _expand(_text(value))


@dataclass(frozen=True, slots=True)
class _AmqpUrl:
    shape: ClassVar[_Shape] = "text"
    doc: ClassVar[str] = "amqp:// or amqps:// URL"

    def __call__(self, value: object) -> str:
        # Never echo the URL itself: it may hold a password.
        url = _text(value)
        if any(char <= " " or char == "\x7f" for char in url):
            raise _Invalid("must not contain spaces or control characters")
        try:
            parts = urlsplit(url)
        except ValueError:
            raise _Invalid("is not a valid URL") from None
        if parts.scheme not in ("amqp", "amqps"):
            raise _Invalid("must start with amqp:// or amqps://")
        if not parts.hostname:
            raise _Invalid("must name a host (amqp://user:password@host:port/vhost)")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise _Invalid("has a bad port: it must be a number from 1 to 65535")
        return url


@dataclass(frozen=True, slots=True)
class _List:
    item: _Check
    non_empty: bool = False
    shape: ClassVar[_Shape] = "list"

    @property
    def doc(self) -> str:
        return f"array, each {self.item.doc}" + (", at least one" if self.non_empty else "")

    def __call__(self, value: object) -> tuple[object, ...]:
        if not isinstance(value, list):
            raise _Invalid(_expected("an array", value))
        if self.non_empty and not value:
            raise _Invalid("must not be empty")
        checked = []
        for index, item in enumerate(value):
            try:
                checked.append(self.item(item))
            except _Invalid as exc:
                raise _Invalid(exc.problem, index) from None
        return tuple(checked)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(_expected("a string", value))
    if not value:
        raise _Invalid("must not be empty")
    if "\x00" in value:
        raise _Invalid("must not contain NUL characters")
    return value


def _expand(text: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError as exc:  # no home directory, or an unknown ~user
        raise _Invalid(f"cannot expand '~': {exc}") from None


_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),  # before int: bool is an int to Python, never to us
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
    (datetime, "a date-time"),  # before date, its base class
    (date, "a date"),
    (time, "a time"),
)


def _type_name(value: object) -> str:
    return next((name for kind, name in _TOML_TYPES if isinstance(value, kind)), "a value")


def _expected(what: str, value: object) -> str:
    return f"must be {what}, got {_type_name(value)}"


def _preview(value: object) -> str:
    """`repr` (which escapes control characters), cut short for messages."""
    text = repr(value)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 3] + "..."


def _label(name: str) -> str:
    """A key from the input as it can be shown: quoted TOML-style unless it is a plain word."""
    return name if _NAME.fullmatch(name) else json.dumps(name)


# --- the schema ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    check: _Check
    meaning: str
    required: bool = False
    default_doc: str | None = None  # for defaults computed at load time


@dataclass(frozen=True, slots=True)
class _Section:
    cls: type[Any]
    keys: Mapping[str, _Key]
    optional: bool = False  # absent from the file and the environment: the field is None


def _keyed(*keys: _Key) -> dict[str, _Key]:
    return {key.name: key for key in keys}


_TOP_KEYS = _keyed(
    _Key(
        "role",
        _Choice(("daemon", "client", "server")),
        "which program reads this file",
        required=True,
    ),
    _Key("user", _Name(), "who this program acts for; a routing-key word", required=True),
    _Key(
        "node",
        _Name(),
        "this device's name; a routing-key word",
        default_doc="first label of the host name, other characters turned into '-'",
    ),
    _Key(
        "data_dir",
        _PathValue(),
        "folder for local state; relative to the config file's folder",
        default_doc=json.dumps(DEFAULT_DATA_DIR),
    ),
    _Key("tags", _List(_Name()), "more names this node answers to as a job target"),
)

_SECTIONS: dict[str, _Section] = {
    "broker": _Section(
        BrokerConfig,
        _keyed(
            _Key("urls", _List(_AmqpUrl(), non_empty=True), "RabbitMQ nodes, tried in order"),
            _Key("heartbeat", _Int(1, 600), "AMQP heartbeat interval, seconds"),
            _Key("publish_timeout", _Positive(3600), "seconds to wait for a publish confirm"),
            _Key("prefetch", _Int(1, 65535), "unacknowledged messages per consumer"),
            _Key(
                "presence_seconds",
                _Positive(3600),
                "seconds between a daemon's heartbeats to the server",
            ),
        ),
    ),
    "jobs": _Section(
        JobsConfig,
        _keyed(
            _Key("max_parallel", _Int(1, 1024), "jobs run at once; more wait their turn"),
            _Key(
                "shell",
                _Text(),
                "program that runs each job's command line",
                default_doc='"/bin/sh" ("cmd.exe" on Windows)',
            ),
            _Key("grace_seconds", _Positive(3600), "seconds from polite stop to kill on cancel"),
            _Key("max_load", _Positive(), "take no new job while 1-minute load is above this"),
        ),
    ),
    "crypto": _Section(
        CryptoConfig,
        _keyed(_Key("key_file", _PathValue(), "file holding the sealing key", required=True)),
        optional=True,  # required for daemons and clients; a server never holds the key
    ),
    "log": _Section(
        LogConfig,
        _keyed(
            _Key("level", _Choice(("debug", "info", "warning", "error")), "least severe logged"),
            _Key(
                "format",
                _Choice(("auto", "json", "console")),
                "auto: readable on a terminal, JSON otherwise",
            ),
        ),
    ),
    "storage": _Section(
        StorageConfig,
        _keyed(
            _Key(
                "endpoint_url",
                _HttpUrl(),
                "S3-compatible store to upload logs to; unset: AWS's own endpoint",
            ),
            _Key("bucket", _Bucket(), "bucket holding every log of this user", required=True),
            _Key("region", _Region(), "region the requests are signed for"),
            _Key(
                "credentials_file",
                _PathValue(),
                "TOML file with access_key_id and secret_access_key, mode 600; unset: AWS's"
                " default chain",
            ),
            _Key("path_style", _Bool(), "bucket in the URL path, as MinIO wants, not the host"),
            _Key(
                "checkpoint_seconds",
                _Positive(86400),
                "seconds between uploads of a running job's log so far",
            ),
            _Key("timeout_seconds", _Positive(3600), "seconds to connect, and between reads"),
        ),
        optional=True,
    ),
    "vault": _Section(
        VaultConfig,
        _keyed(
            _Key(
                "max_bytes",
                _Int(0, 2**63 - 1),
                "bytes of logs kept on this device, 0 for no bound; only uploaded logs are"
                " evicted, oldest first",
            ),
        ),
    ),
    "server": _Section(
        ServerConfig,
        _keyed(
            _Key("database_url", _Text(), "PostgreSQL DSN (postgresql://user@host:port/db)"),
            _Key(
                "database_password_file",
                _PathValue(),
                "file holding the database password, mode 600; unset: none (trust or .pgpass)",
            ),
            _Key(
                "database_schema",
                _Name(),
                "PostgreSQL schema for the ledger's tables; unset: the server's search_path",
            ),
            _Key(
                "presence_timeout",
                _Positive(3600),
                "seconds without a heartbeat before a node's running jobs are marked lost",
            ),
            _Key("management_url", _HttpUrl(), "RabbitMQ management API, for `runlet user`"),
            _Key("management_user", _Text(), "RabbitMQ administrator for `runlet user`"),
            _Key(
                "management_password_file",
                _PathValue(),
                'file holding that administrator\'s password; unset: "guest"',
            ),
        ),
        optional=True,
    ),
    "metrics": _Section(
        MetricsConfig,
        _keyed(
            _Key("listen", _HostPort(), "address of the Prometheus /metrics endpoint"),
        ),
        optional=True,
    ),
}


def describe_keys() -> list[tuple[str, str, str]]:
    """Every key as (dotted key, type and default, one-line meaning), for --help and docs."""
    rows = [_describe(key.name, key, Config) for key in _TOP_KEYS.values()]
    for name, section in _SECTIONS.items():
        rows += [_describe(f"{name}.{key.name}", key, section.cls) for key in section.keys.values()]
    return rows


def _describe(dotted: str, key: _Key, cls: type[Any]) -> tuple[str, str, str]:
    if key.required:
        default = "required"
    elif key.default_doc is not None:
        default = f"default {key.default_doc}"
    else:
        spec = next(spec for spec in dataclasses.fields(cls) if spec.name == key.name)
        default = f"default {_literal(spec.default)}"
    return dotted, f"{key.check.doc}; {default}", key.meaning


def _literal(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


# --- loading -------------------------------------------------------------------------------


def resolve_config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """The config file to read: `path` if given, else ``$RUNLET_CONFIG``."""
    chosen = os.fspath(path) if path is not None else env.get(CONFIG_ENV, "")
    if not chosen:
        raise ConfigError("config", f"no config file given: pass -c/--config or set {CONFIG_ENV}")
    try:
        return _expand(chosen)
    except _Invalid as exc:
        raise ConfigError("config", exc.problem, source=chosen) from None


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Config:
    """Read, override from `env` (default: the process environment) and check a config."""
    environ: Mapping[str, str] = os.environ if env is None else env
    file = resolve_config_path(path, environ)
    text = _read_text(file)
    return parse_config(text, source=str(file), base_dir=file.absolute().parent, env=environ)


def parse_config(
    text: str, *, source: str | None, base_dir: Path, env: Mapping[str, str]
) -> Config:
    """Check TOML `text` with `env` overrides; relative paths resolve against `base_dir`."""
    _check_text(text, source)
    raw = _parse_toml(text, source)
    _check_layout(raw, source)
    origins = _Origins(source)
    return _build(_overlay_env(raw, env, origins), base_dir, origins)


def _read_text(path: Path) -> str:
    data = _read_bytes(path)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("config", _TOO_LARGE, source=str(path))
    try:
        return data.decode("utf-8-sig")  # -sig: editors on Windows may write a BOM
    except UnicodeDecodeError as exc:
        problem = f"is not UTF-8 text (bad byte at offset {exc.start})"
        raise ConfigError("config", problem, source=str(path)) from exc


def _read_bytes(path: Path) -> bytes:
    """At most one byte more than allowed, so an oversize file is never read whole."""
    source = str(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError("config", "is a directory, not a file", source=source)
        if not stat.S_ISREG(mode):  # a FIFO or device could block or never end
            raise ConfigError("config", "is not a regular file", source=source)
        with path.open("rb") as handle:
            return handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError("config", "file not found", source=source) from exc
    except PermissionError as exc:
        raise ConfigError("config", "permission denied", source=source) from exc
    except OSError as exc:
        raise ConfigError("config", f"cannot read: {exc.strerror or exc}", source=source) from exc


_TOO_LARGE = f"is larger than {MAX_CONFIG_BYTES} bytes (1 MiB); is it really a config file?"


def _check_text(text: str, source: str | None) -> None:
    if len(text) > MAX_CONFIG_BYTES or len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise ConfigError("config", _TOO_LARGE, source=source)
    if "\x00" in text:
        raise ConfigError("config", "contains NUL bytes; is it a binary file?", source=source)


def _parse_toml(text: str, source: str | None) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"invalid TOML: {exc}", source=source) from exc
    except RecursionError as exc:
        raise ConfigError("config", "invalid TOML: nested too deeply", source=source) from exc
    except ValueError as exc:  # an integer literal past Python's digit limit
        raise ConfigError(
            "config", f"invalid TOML: a number is too long ({exc})", source=source
        ) from exc


def _check_layout(raw: Mapping[str, Any], source: str | None) -> None:
    """Every top-level name is a known key or section, and every section key is known."""
    for name, value in raw.items():
        if name in _SECTIONS:
            _check_section(name, value, source)
        elif name not in _TOP_KEYS:
            what = "section" if isinstance(value, dict) else "key"
            problem = _unknown(what, name, [*_TOP_KEYS, *_SECTIONS])
            raise ConfigError(_label(name), problem, source=source)


def _check_section(name: str, table: object, source: str | None) -> None:
    if not isinstance(table, dict):
        problem = f"must be a table ([{name}]), got {_type_name(table)}"
        raise ConfigError(name, problem, source=source)
    keys = _SECTIONS[name].keys
    for key, value in table.items():
        if key not in keys:
            what = "table" if isinstance(value, dict) else "key"
            raise ConfigError(f"{name}.{_label(key)}", _unknown(what, key, keys), source=source)


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    choices = sorted(known)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(choices)}"
    return f"unknown {what}; {hint}"


# --- environment overrides -----------------------------------------------------------------


@dataclass(slots=True)
class _Origins:
    """Where each value came from, so an error names the file or the variable to fix."""

    file: str | None
    env: dict[str, str] = field(default_factory=dict)  # dotted key -> variable name

    def of(self, dotted: str) -> str | None:
        variable = self.env.get(dotted.partition("[")[0])
        return f"environment variable {variable}" if variable else self.file


def _env_name(dotted: str) -> str:
    return _ENV_PREFIX + dotted.upper().replace(".", "__")


def _env_target(variable: str) -> tuple[str, _Key] | None:
    """The dotted key and its spec that `variable` sets, or None if it sets none."""
    if not variable.startswith(_ENV_PREFIX) or variable == CONFIG_ENV:
        return None
    section, nested, name = variable.removeprefix(_ENV_PREFIX).lower().partition("__")
    if not nested:
        key = _TOP_KEYS.get(section)
        return None if key is None else (section, key)
    where = f"environment variable {variable}"
    if section not in _SECTIONS:
        raise ConfigError(_label(section), _unknown("section", section, _SECTIONS), source=where)
    keys = _SECTIONS[section].keys
    if name not in keys:
        raise ConfigError(f"{section}.{_label(name)}", _unknown("key", name, keys), source=where)
    return f"{section}.{name}", keys[name]


def _overlay_env(
    raw: Mapping[str, Any], env: Mapping[str, str], origins: _Origins
) -> dict[str, Any]:
    merged = {
        name: dict(value) if isinstance(value, dict) else value for name, value in raw.items()
    }
    for variable in sorted(env):
        target = _env_target(variable)
        if target is None:
            continue
        dotted, key = target
        section = dotted.rpartition(".")[0]
        table = merged.setdefault(section, {}) if section else merged
        table[key.name] = _env_value(key.check.shape, env[variable])
        origins.env[dotted] = variable
    return merged


def _env_value(shape: _Shape, text: str) -> object:
    parsed = _toml_value(text)
    if shape == "scalar":
        return text if parsed is None else parsed
    if shape == "text":
        return parsed if isinstance(parsed, str) else text
    if isinstance(parsed, list):
        return parsed
    words = parsed if isinstance(parsed, str) else text
    return [word.strip() for word in words.split(",")] if words.strip() else []


def _toml_value(text: str) -> object | None:
    """`text` as one TOML value, or None if it is not exactly one (TOML has no null)."""
    try:
        document = tomllib.loads(f"v = {text}")
    except (ValueError, RecursionError):  # TOMLDecodeError is a ValueError
        return None
    return document["v"] if document.keys() == {"v"} else None


# --- building ------------------------------------------------------------------------------


def _build(table: Mapping[str, Any], base_dir: Path, origins: _Origins) -> Config:
    top = _convert_table("", _TOP_KEYS, table, base_dir, origins)
    sections: dict[str, Any] = {
        name: section.cls(
            **_convert_table(f"{name}.", section.keys, table.get(name, {}), base_dir, origins)
        )
        if name in table or not section.optional
        else None
        for name, section in _SECTIONS.items()
    }
    if "node" not in top:
        top["node"] = _default_node(origins)
    if "data_dir" not in top:
        top["data_dir"] = _default_data_dir(origins)
    if sections["crypto"] is None and top["role"] != "server":
        problem = (
            f"is required for role {top['role']!r} (daemons and clients seal with the fleet"
            f" key): set it in the file or with {_env_name('crypto.key_file')}"
        )
        raise ConfigError("crypto.key_file", problem, source=origins.file)
    return Config(**top, **sections, source=origins.file)


def _convert_table(
    prefix: str,
    keys: Mapping[str, _Key],
    table: Mapping[str, Any],
    base_dir: Path,
    origins: _Origins,
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in keys.values():
        dotted = prefix + key.name
        if key.name in table:
            values[key.name] = _convert(key, table[key.name], dotted, base_dir, origins)
        elif key.required:
            problem = f"is required: set it in the file or with {_env_name(dotted)}"
            raise ConfigError(dotted, problem, source=origins.of(dotted))
    return values


def _convert(key: _Key, value: object, dotted: str, base_dir: Path, origins: _Origins) -> object:
    try:
        result = key.check(value)
    except _Invalid as exc:
        where = dotted if exc.index is None else f"{dotted}[{exc.index}]"
        raise ConfigError(where, exc.problem, source=origins.of(dotted)) from None
    if isinstance(result, Path) and not result.is_absolute():
        return base_dir / result
    return result


def _default_node(origins: _Origins) -> str:
    host = socket.gethostname()
    label = re.sub(r"[^A-Za-z0-9_-]+", "-", host.partition(".")[0]).strip("-")[:64]
    if not _NAME.fullmatch(label):
        problem = f"cannot make a node name from host name {_preview(host)}; set node"
        raise ConfigError("node", problem, source=origins.file)
    return label


def _default_data_dir(origins: _Origins) -> Path:
    try:
        return _expand(DEFAULT_DATA_DIR)
    except _Invalid as exc:
        raise ConfigError("data_dir", f"{exc.problem}; set data_dir", source=origins.file) from None
