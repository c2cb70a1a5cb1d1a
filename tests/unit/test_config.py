"""Unit tests for runlet.config: good files load, every bad one names the key to fix."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import pytest

from runlet.config import (
    DEFAULT_BROKER_URL,
    DEFAULT_SHELL,
    MAX_CONFIG_BYTES,
    BrokerConfig,
    Config,
    CryptoConfig,
    JobsConfig,
    LogConfig,
    MetricsConfig,
    ServerConfig,
    StorageConfig,
    VaultConfig,
    describe_keys,
    load_config,
    parse_config,
    resolve_config_path,
)
from runlet.errors import EXIT_CONFIG, ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "config"
BASE_DIR = Path("/etc/runlet")
BASE = {"role": '"daemon"', "user": '"demo"', "crypto.key_file": '"keys/node.key"'}
MINIMAL = 'role = "daemon"\nuser = "demo"\n\n[crypto]\nkey_file = "keys/node.key"\n'
FULL = """\
role = "client"
user = "alice"
node = "laptop_2"
data_dir = "/srv/runlet"
tags = ["gpu", "arm-64"]

[broker]
urls = ["amqps://u:p@mq1.example.net:5671/prod", "amqps://u:p@mq2"]
heartbeat = 30
publish_timeout = 2.5
prefetch = 128

[jobs]
max_parallel = 16
shell = "/bin/bash"
grace_seconds = 3
max_load = 7.5

[crypto]
key_file = "/etc/runlet/alice.key"

[log]
level = "debug"
format = "json"
"""


@pytest.fixture(autouse=True)
def fixed_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Pin the host name and home folder the defaults come from."""
    monkeypatch.setattr(socket, "gethostname", lambda: "testhost.example.com")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def render(overrides: Mapping[str, str | None]) -> str:
    """A TOML file from BASE with dotted keys replaced (a TOML literal) or removed (None)."""
    values = {**BASE, **overrides}
    top = [f"{key} = {value}" for key, value in values.items() if "." not in key and value]
    sections: dict[str, list[str]] = {}
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        if key and value is not None:
            sections.setdefault(section, []).append(f"{key} = {value}")
    tables = [f"[{name}]\n" + "\n".join(lines) for name, lines in sections.items()]
    return "\n".join([*top, "", *tables]) + "\n"


def parse(text: str, env: Mapping[str, str] | None = None) -> Config:
    return parse_config(text, source="test.toml", base_dir=BASE_DIR, env=env or {})


def error_of(text: str, env: Mapping[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return info.value


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return info.value


# --- good files ----------------------------------------------------------------------------


def test_minimal_file_takes_every_default(tmp_path: Path) -> None:
    """A file with only the required keys gets the documented defaults."""
    config = parse(MINIMAL)
    assert config == Config(
        role="daemon",
        user="demo",
        node="testhost",
        data_dir=tmp_path / "home" / ".local" / "share" / "runlet",
        crypto=CryptoConfig(key_file=BASE_DIR / "keys" / "node.key"),
        tags=(),
        broker=BrokerConfig(
            urls=(DEFAULT_BROKER_URL,), heartbeat=10, publish_timeout=10.0, prefetch=64
        ),
        jobs=JobsConfig(max_parallel=4, shell=DEFAULT_SHELL, grace_seconds=10.0, max_load=None),
        log=LogConfig(level="info", format="auto"),
        storage=None,
        vault=VaultConfig(max_bytes=0),
        source="test.toml",
    )


def test_full_file_sets_every_key() -> None:
    """Every key in the file lands in its field, with ints widened where floats are due."""
    config = parse(FULL)
    assert (config.role, config.user, config.node) == ("client", "alice", "laptop_2")
    assert config.data_dir == Path("/srv/runlet")
    assert config.tags == ("gpu", "arm-64")
    assert config.broker == BrokerConfig(
        urls=("amqps://u:p@mq1.example.net:5671/prod", "amqps://u:p@mq2"),
        heartbeat=30,
        publish_timeout=2.5,
        prefetch=128,
    )
    jobs = config.jobs
    assert (jobs.max_parallel, jobs.shell, jobs.grace_seconds, jobs.max_load) == (
        16,
        "/bin/bash",
        3.0,
        7.5,
    )
    assert isinstance(config.jobs.grace_seconds, float)
    assert config.key_file == Path("/etc/runlet/alice.key")
    assert config.log == LogConfig(level="debug", format="json")


def test_config_is_frozen() -> None:
    """A loaded config cannot be changed afterwards."""
    config = parse(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.user = "mallory"  # type: ignore[misc]


def test_repr_hides_broker_urls() -> None:
    """The broker login in a URL never shows up in a logged config."""
    config = parse(render({"broker.urls": '["amqp://bob:s3cret@mq/"]'}))
    assert "s3cret" not in repr(config)
    assert config.broker.urls == ("amqp://bob:s3cret@mq/",)


@pytest.mark.parametrize(
    ("key", "literal"),
    [
        ("broker.heartbeat", "1"),
        ("broker.heartbeat", "600"),
        ("broker.publish_timeout", "3600"),
        ("broker.publish_timeout", "0.001"),
        ("broker.prefetch", "1"),
        ("broker.prefetch", "65535"),
        ("jobs.max_parallel", "1"),
        ("jobs.max_parallel", "1024"),
        ("jobs.grace_seconds", "3600"),
        ("jobs.max_load", "0.01"),
        ("user", '"' + "x" * 64 + '"'),
        ("node", '"A_b-9"'),
        ("tags", "[]"),
        ("broker.urls", '["amqps://[::1]:5671/"]'),
        ("broker.urls", '["AMQP://host"]'),
    ],
)
def test_boundary_values_are_accepted(key: str, literal: str) -> None:
    """Values at the edge of each allowed range load."""
    parse(render({key: literal}))


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    """A file saved with a UTF-8 byte-order mark (Windows editors) loads."""
    path = tmp_path / "runlet.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(path, env={}).user == "demo"


def test_file_of_exactly_the_size_limit_loads(tmp_path: Path) -> None:
    """A file of exactly 1 MiB is still accepted."""
    path = tmp_path / "runlet.toml"
    padding = MAX_CONFIG_BYTES - len(MINIMAL) - 2
    path.write_text(MINIMAL + "#" + "x" * padding + "\n")
    assert path.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(path, env={}).role == "daemon"


# --- defaults and paths --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "node"),
    [
        ("testhost.example.com", "testhost"),
        ("My Host.lan", "My-Host"),
        ("büro-pc", "b-ro-pc"),
        ("x" * 80, "x" * 64),
    ],
)
def test_default_node_is_sanitised_host_label(
    monkeypatch: pytest.MonkeyPatch, host: str, node: str
) -> None:
    """Without node, the host name's first label, made a valid name, is used."""
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    assert parse(MINIMAL).node == node


@pytest.mark.parametrize("host", ["", ".example.com", "名前", "..."])
def test_unusable_host_name_needs_node(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    """A host name with nothing usable in it is an error on node, not a made-up name."""
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    assert error_of(MINIMAL).key == "node"
    assert parse(render({"node": '"edge-1"'})).node == "edge-1"


def test_relative_paths_resolve_against_base_dir() -> None:
    """Relative data_dir and key_file are joined to the config file's folder."""
    config = parse(render({"data_dir": '"state"', "crypto.key_file": '"../keys/k"'}))
    assert config.data_dir == BASE_DIR / "state"
    assert config.key_file == BASE_DIR / "../keys/k"


def test_absolute_and_home_paths_are_kept(tmp_path: Path) -> None:
    """Absolute paths stay as written and ~ means the home folder."""
    config = parse(render({"data_dir": '"/var/lib/runlet"', "crypto.key_file": '"~/k"'}))
    assert config.data_dir == Path("/var/lib/runlet")
    assert config.key_file == tmp_path / "home" / "k"


def test_load_resolves_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative config path still gives absolute paths rooted at the file's folder."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "runlet.toml").write_text(MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/runlet.toml", env={})
    assert config.key_file == tmp_path / "etc" / "keys" / "node.key"
    assert config.source == os.path.join("etc", "runlet.toml")


def test_config_path_comes_from_runlet_config(tmp_path: Path) -> None:
    """Without a path argument the file named by RUNLET_CONFIG is loaded."""
    path = tmp_path / "runlet.toml"
    path.write_text(MINIMAL)
    assert load_config(env={"RUNLET_CONFIG": str(path)}).source == str(path)


def test_explicit_path_wins_over_runlet_config(tmp_path: Path) -> None:
    """-c/--config beats RUNLET_CONFIG."""
    assert resolve_config_path(tmp_path / "a", {"RUNLET_CONFIG": "b"}) == tmp_path / "a"


@pytest.mark.parametrize("env", [{}, {"RUNLET_CONFIG": ""}])
def test_no_config_path_says_how_to_give_one(env: dict[str, str]) -> None:
    """With no path and no RUNLET_CONFIG the error names both ways to give one."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert info.value.key == "config"
    assert "--config" in info.value.problem
    assert "RUNLET_CONFIG" in info.value.problem
    assert info.value.exit_code == EXIT_CONFIG


# --- environment overrides -----------------------------------------------------------------


def test_env_int_overrides_file() -> None:
    """RUNLET_JOBS__MAX_PARALLEL=8 beats the file's value, as an integer."""
    config = parse(render({"jobs.max_parallel": "2"}), {"RUNLET_JOBS__MAX_PARALLEL": "8"})
    assert config.jobs.max_parallel == 8


def test_env_float_and_int_for_float() -> None:
    """Number keys take TOML floats and integers from the environment."""
    env = {"RUNLET_BROKER__PUBLISH_TIMEOUT": "2.5", "RUNLET_JOBS__MAX_LOAD": "3"}
    config = parse(MINIMAL, env)
    assert config.broker.publish_timeout == 2.5
    assert config.jobs.max_load == 3.0


def test_env_toml_list() -> None:
    """A TOML array in RUNLET_BROKER__URLS replaces the URL list."""
    env = {"RUNLET_BROKER__URLS": '["amqp://a/", "amqp://b:5671/"]'}
    assert parse(MINIMAL, env).broker.urls == ("amqp://a/", "amqp://b:5671/")


def test_env_comma_list() -> None:
    """Plain text for a list key is split on commas, spaces trimmed."""
    env = {"RUNLET_BROKER__URLS": "amqp://a/, amqp://b/", "RUNLET_TAGS": "gpu,arm"}
    config = parse(MINIMAL, env)
    assert config.broker.urls == ("amqp://a/", "amqp://b/")
    assert config.tags == ("gpu", "arm")


def test_env_empty_list() -> None:
    """An empty RUNLET_TAGS clears the tags; an empty URL list is still an error."""
    assert parse(render({"tags": '["a"]'}), {"RUNLET_TAGS": ""}).tags == ()
    assert error_of(MINIMAL, {"RUNLET_BROKER__URLS": ""}).key == "broker.urls"


def test_env_strings() -> None:
    """String keys take text as written, numbers included, or a quoted TOML string."""
    config = parse(MINIMAL, {"RUNLET_USER": "42", "RUNLET_NODE": '"edge-9"'})
    assert (config.user, config.node) == ("42", "edge-9")
    env = {"RUNLET_ROLE": "client", "RUNLET_JOBS__SHELL": "/bin/bash -e", "RUNLET_DATA_DIR": "s"}
    config = parse(MINIMAL, env)
    assert (config.role, config.jobs.shell, config.data_dir) == (
        "client",
        "/bin/bash -e",
        BASE_DIR / "s",
    )


def test_env_supplies_a_required_key() -> None:
    """A required key missing from the file may come from the environment."""
    text = render({"crypto.key_file": None})
    config = parse(text, {"RUNLET_CRYPTO__KEY_FILE": "/k"})
    assert config.key_file == Path("/k")


def test_env_unknown_key_is_an_error() -> None:
    """A misspelt RUNLET_<SECTION>__<KEY> fails, names the variable and suggests the key."""
    error = error_of(MINIMAL, {"RUNLET_JOBS__MAX_PARALEL": "8"})
    assert error.key == "jobs.max_paralel"
    assert "max_parallel" in error.problem
    assert error.source == "environment variable RUNLET_JOBS__MAX_PARALEL"


def test_env_unknown_section_is_an_error() -> None:
    """RUNLET_BROKR__URLS names no section, so it fails."""
    error = error_of(MINIMAL, {"RUNLET_BROKR__URLS": "amqp://h/"})
    assert error.key == "brokr"
    assert "broker" in error.problem


def test_env_bad_value_names_the_variable() -> None:
    """A bad value from the environment is blamed on its variable, not on the file."""
    error = error_of(MINIMAL, {"RUNLET_BROKER__HEARTBEAT": "often"})
    assert error.key == "broker.heartbeat"
    assert error.source == "environment variable RUNLET_BROKER__HEARTBEAT"
    assert "RUNLET_BROKER__HEARTBEAT" in str(error)


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("RUNLET_BROKER__HEARTBEAT", "true", "broker.heartbeat"),
        ("RUNLET_JOBS__MAX_PARALLEL", "4\nuser = 'x'", "jobs.max_parallel"),
        ("RUNLET_TAGS", "ok,bad.tag", "tags[1]"),
        ("RUNLET_TAGS", "a,,b", "tags[1]"),
        ("RUNLET_LOG__LEVEL", "loud", "log.level"),
        ("RUNLET_BROKER__URLS", "http://h/", "broker.urls[0]"),
    ],
)
def test_env_bad_values(variable: str, value: str, key: str) -> None:
    """Bad values from the environment fail like bad values in the file."""
    assert error_of(MINIMAL, {variable: value}).key == key


def test_other_runlet_variables_are_left_alone() -> None:
    """RUNLET_CONFIG and RUNLET_* names without '__' that are not keys are ignored."""
    env = {"RUNLET_CONFIG": "/x.toml", "RUNLET_LOG_LEVEL": "x", "RUNLETX": "y", "HOME": "/"}
    assert parse(MINIMAL, env).user == "demo"


# --- the file itself -----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    """A config path that does not exist is an error on 'config' naming the path."""
    error = load_error(tmp_path / "nope.toml")
    assert (error.key, error.source) == ("config", str(tmp_path / "nope.toml"))
    assert "not found" in error.problem


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    """A directory given as the config file is rejected."""
    assert "directory" in load_error(tmp_path).problem


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX only")
def test_fifo_is_not_read(tmp_path: Path) -> None:
    """A named pipe is refused instead of blocking the program."""
    os.mkfifo(tmp_path / "fifo")
    assert "regular file" in load_error(tmp_path / "fifo").problem


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file we may not read is an error on 'config', not an OSError."""
    path = tmp_path / "runlet.toml"
    path.write_text(MINIMAL)

    def deny(self: Path, *args: object, **kwargs: object) -> NoReturn:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", deny)
    error = load_error(path)
    assert (error.key, error.problem) == ("config", "permission denied")


def test_oversize_file(tmp_path: Path) -> None:
    """A file over 1 MiB is refused before it is parsed."""
    path = tmp_path / "runlet.toml"
    path.write_text(MINIMAL + "#" + "x" * MAX_CONFIG_BYTES + "\n")
    error = load_error(path)
    assert error.key == "config"
    assert "larger" in error.problem


def test_oversize_text() -> None:
    """parse_config refuses oversize text too."""
    assert "larger" in error_of(MINIMAL + "#" * MAX_CONFIG_BYTES).problem


@pytest.mark.parametrize(
    "data",
    [
        MINIMAL.encode() + b"\x00",
        b"\x00" * 64,
        MINIMAL.replace('"demo"', '"de\x00mo"').encode(),
    ],
)
def test_nul_bytes(tmp_path: Path, data: bytes) -> None:
    """A file with NUL bytes is refused as binary."""
    path = tmp_path / "runlet.toml"
    path.write_bytes(data)
    error = load_error(path)
    assert error.key == "config"
    assert "NUL" in error.problem


@pytest.mark.parametrize(
    "data",
    [
        'user = "d\xe9mo"\n'.encode("latin-1"),
        bytes(range(256)),
        b"\xff\xfe" + MINIMAL.encode("utf-16-le"),
    ],
)
def test_not_utf8(tmp_path: Path, data: bytes) -> None:
    """Bytes that are not UTF-8 are an error on 'config' giving the offset."""
    path = tmp_path / "runlet.toml"
    path.write_bytes(data)
    error = load_error(path)
    assert error.key == "config"
    assert "UTF-8" in error.problem


@pytest.mark.parametrize(
    "text",
    [
        "\x01\x02\x7f garbage",
        "role = \n",
        'role = "daemon"\nrole = "client"\n',
        "[crypto\nkey_file = 'k'\n",
        'user = "demo\n',
        "= 1\n",
    ],
)
def test_invalid_toml(text: str) -> None:
    """TOML syntax errors are errors on 'config' with tomllib's line and column."""
    error = error_of(text)
    assert error.key == "config"
    assert re.search(r"line \d+, column \d+", error.problem)


@pytest.mark.parametrize("name", ["daemon.toml", "client.toml", "server.toml"])
def test_truncated_file_never_escapes_as_another_exception(name: str) -> None:
    """Every prefix of a valid file either loads or raises ConfigError."""
    text = (EXAMPLES / name).read_text()
    outcomes = set()
    for end in range(len(text)):
        try:
            parse(text[:end])
            outcomes.add("ok")
        except ConfigError as error:
            outcomes.add(error.key)
    assert {"config", "role", "ok"} <= outcomes


@pytest.mark.parametrize(
    "text",
    [
        "tags = " + "{a = " * 5000 + "1" + "}" * 5000,
        "tags = " + "[" * 5000 + "]" * 5000,
        "user = " + "9" * 5000,
    ],
)
def test_deeply_nested_or_huge_values(text: str) -> None:
    """Values too deep or too long for the parser are errors on 'config'."""
    assert error_of(text).key == "config"


def test_deeply_nested_tables() -> None:
    """Thousands of nested table headers end in an unknown-key error, not a crash."""
    deep = ".".join(["a"] * 3000)
    assert error_of(f"[{deep}]\n").key == "a"
    assert error_of(MINIMAL + f"[broker.{deep}]\n").key == "broker.a"
    assert error_of(MINIMAL + f"[tags.{deep}]\n").key == "tags"


# --- layout: unknown and missing keys ------------------------------------------------------


def test_unknown_top_level_key_suggests() -> None:
    """A misspelt top-level key is named and the closest key suggested."""
    error = error_of(MINIMAL.replace("role", "rol"))
    assert error.key == "rol"
    assert "'role'" in error.problem


def test_unknown_key_without_a_close_match_lists_known_ones() -> None:
    """With nothing close, the error lists the keys that do exist."""
    error = error_of("zzzzzz = 1\n" + MINIMAL)
    assert error.key == "zzzzzz"
    assert "data_dir" in error.problem


def test_unknown_section() -> None:
    """An unknown [section] is named as one, with a suggestion."""
    error = error_of(MINIMAL + "[brokr]\nurls = []\n")
    assert error.key == "brokr"
    assert "section" in error.problem
    assert "'broker'" in error.problem


def test_unknown_key_in_section() -> None:
    """A misspelt key inside a section is named by its dotted path."""
    error = error_of(MINIMAL + "[broker]\nhartbeat = 5\n")
    assert error.key == "broker.hartbeat"
    assert "'heartbeat'" in error.problem


def test_inline_key_material_is_not_a_key() -> None:
    """There is no key for key material itself: only crypto.key_file."""
    error = error_of(render({"crypto.key": '"c2VjcmV0"'}))
    assert error.key == "crypto.key"
    assert "key_file" in error.problem


def test_odd_key_names_are_quoted() -> None:
    """Keys with control characters are shown escaped, never raw."""
    error = error_of('"bad\\u001b[2Jkey" = 1\n' + MINIMAL)
    assert error.key == '"bad\\u001b[2Jkey"'
    assert "\x1b" not in str(error)


@pytest.mark.parametrize("text", ["broker = 1\n", "[[jobs]]\nmax_parallel = 1\n"])
def test_section_must_be_a_table(text: str) -> None:
    """A section given as a value or an array of tables is an error on the section."""
    assert error_of(text + MINIMAL).key in {"broker", "jobs"}


@pytest.mark.parametrize("key", ["role", "user", "crypto.key_file"])
def test_required_keys(key: str) -> None:
    """Leaving out a required key names it and the variable that could set it."""
    error = error_of(render({key: None}))
    assert error.key == key
    assert "RUNLET_" + key.upper().replace(".", "__") in error.problem


# --- values --------------------------------------------------------------------------------


WRONG_TYPES = [
    ("role", "1"),
    ("role", "true"),
    ("user", "7"),
    ("user", '["demo"]'),
    ("node", "1.5"),
    ("node", "{ a = 1 }"),
    ("data_dir", "1"),
    ("data_dir", "[]"),
    ("tags", '"gpu"'),
    ("broker.urls", '"amqp://h/"'),
    ("broker.heartbeat", '"10"'),
    ("broker.heartbeat", "10.0"),
    ("broker.publish_timeout", '"10"'),
    ("broker.publish_timeout", "1979-05-27"),
    ("broker.prefetch", "64.0"),
    ("jobs.max_parallel", '"4"'),
    ("jobs.shell", "1"),
    ("jobs.shell", '["/bin/sh"]'),
    ("jobs.grace_seconds", '"10"'),
    ("jobs.max_load", '"high"'),
    ("crypto.key_file", "1"),
    ("crypto.key_file", "1979-05-27T07:32:00Z"),
    ("log.level", "1"),
    ("log.format", "[]"),
    ("storage.bucket", "1"),
    ("storage.bucket", '["logs"]'),
    ("storage.endpoint_url", "9000"),
    ("storage.region", "1"),
    ("storage.credentials_file", "[]"),
    ("storage.path_style", "1"),
    ("storage.path_style", '"true"'),
    ("storage.checkpoint_seconds", '"60"'),
    ("storage.timeout_seconds", "1979-05-27"),
    ("vault.max_bytes", "1.5"),
    ("vault.max_bytes", '"10GB"'),
]


@pytest.mark.parametrize(("key", "literal"), WRONG_TYPES)
def test_wrong_types(key: str, literal: str) -> None:
    """A value of the wrong TOML type is an error on its key."""
    error = error_of(render({"storage.bucket": '"logs"', key: literal}))
    assert error.key == key
    assert "must be" in error.problem


@pytest.mark.parametrize(
    "key",
    [
        "broker.heartbeat",
        "broker.prefetch",
        "broker.publish_timeout",
        "jobs.max_parallel",
        "jobs.grace_seconds",
        "jobs.max_load",
        "storage.checkpoint_seconds",
        "storage.timeout_seconds",
        "vault.max_bytes",
    ],
)
@pytest.mark.parametrize("literal", ["true", "false"])
def test_bool_is_not_a_number(key: str, literal: str) -> None:
    """true and false are refused where a number is due, though Python calls them ints."""
    error = error_of(render({"storage.bucket": '"logs"', key: literal}))
    assert error.key == key
    assert "boolean" in error.problem


@pytest.mark.parametrize(
    ("key", "literal"),
    [
        ("broker.heartbeat", "0"),
        ("broker.heartbeat", "601"),
        ("broker.heartbeat", "-1"),
        ("broker.publish_timeout", "0"),
        ("broker.publish_timeout", "-1.5"),
        ("broker.publish_timeout", "3600.5"),
        ("broker.publish_timeout", "nan"),
        ("broker.publish_timeout", "inf"),
        ("broker.prefetch", "0"),
        ("broker.prefetch", "65536"),
        ("jobs.max_parallel", "0"),
        ("jobs.max_parallel", "1025"),
        ("jobs.max_parallel", "99999999999999999999"),
        ("jobs.grace_seconds", "0"),
        ("jobs.grace_seconds", "3601"),
        ("jobs.max_load", "0"),
        ("jobs.max_load", "-1"),
        ("jobs.max_load", "+inf"),
        ("jobs.max_load", "1" + "0" * 400),
        ("jobs.shell", '""'),
        ("jobs.shell", '"/bin/sh\\u0000"'),
        ("crypto.key_file", '""'),
        ("data_dir", '""'),
        ("role", '"ledger"'),
        ("role", '"Daemon"'),
        ("log.level", '"verbose"'),
        ("log.level", '"INFO"'),
        ("log.format", '"xml"'),
    ],
)
def test_out_of_range(key: str, literal: str) -> None:
    """Values of the right type but outside the allowed set are errors on their key."""
    assert error_of(render({key: literal})).key == key


BAD_NAMES = [
    '"a.b"',
    '"a b"',
    '"ü"',
    '"名前"',
    '"' + "x" * 65 + '"',
    '""',
    '"a\\n"',
    '"a\\u0000"',
    '"a/b"',
    '"*"',
    '"#"',
]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("key", ["user", "node"])
def test_bad_names(key: str, name: str) -> None:
    """user and node must be routing-key words: no dots, spaces, unicode, or length > 64."""
    assert error_of(render({key: name})).key == key


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_tag_names(name: str) -> None:
    """A bad tag is named by its index."""
    assert error_of(render({"tags": f'["ok", {name}]'})).key == "tags[1]"


def test_empty_url_list() -> None:
    """broker.urls needs at least one URL."""
    error = error_of(render({"broker.urls": "[]"}))
    assert error.key == "broker.urls"
    assert "empty" in error.problem


@pytest.mark.parametrize(
    "url",
    [
        "http://h/",
        "amqp:///",
        "amqp://u:p@:5672/",
        "amqp://h:99999/",
        "amqp://h:port/",
        "amqp://h /",
        "amqp://h/\\n",
        "h:5672",
        "",
        "amqp://[::1/",
    ],
)
def test_bad_urls(url: str) -> None:
    """A URL that is not amqp(s):// with a host and valid port is named by index."""
    error = error_of(render({"broker.urls": f'["amqp://ok/", "{url}"]'}))
    assert error.key == "broker.urls[1]"


@pytest.mark.parametrize(
    "url",
    [
        "amqp://bob:s3cret@mq:99999/",
        "amqp://bob:s3cret/@mq/",
        "s3cret:x@mq",
        "amqp://bob:s3cret@[mq/",
        "amqp://bob:s3cret@mq /",
    ],
)
def test_url_error_does_not_echo_the_password(url: str) -> None:
    """An error about a URL never repeats the password in it."""
    error = error_of(render({"broker.urls": f'["{url}"]'}))
    assert error.key == "broker.urls[0]"
    assert "s3cret" not in str(error)


def test_long_bad_value_is_cut_short() -> None:
    """A huge bad value is not echoed whole into the message."""
    error = error_of(render({"user": '"' + "." * 100_000 + '"'}))
    assert len(str(error)) < 300


# --- storage and vault ---------------------------------------------------------------------

STORAGE = 'role = "daemon"\nuser = "demo"\n\n[crypto]\nkey_file = "k"\n\n[storage]\n'


def test_storage_is_off_unless_mentioned() -> None:
    """Without a [storage] section or RUNLET_STORAGE__* variable, storage is None."""
    config = parse(MINIMAL, {"RUNLET_VAULT__MAX_BYTES": "5"})
    assert config.storage is None
    assert config.vault == VaultConfig(max_bytes=5)


def test_storage_with_only_a_bucket_takes_the_defaults() -> None:
    """A [storage] section with just a bucket gets the documented defaults."""
    assert parse(STORAGE + 'bucket = "logs"\n').storage == StorageConfig(
        bucket="logs",
        endpoint_url=None,
        region="us-east-1",
        credentials_file=None,
        path_style=True,
        checkpoint_seconds=60.0,
        timeout_seconds=30.0,
    )


def test_full_storage_and_vault_sections() -> None:
    """Every storage and vault key lands in its field; the credentials path is resolved."""
    text = STORAGE + (
        'endpoint_url = "https://minio.example.net:9000"\nbucket = "runlet-logs.eu"\n'
        'region = "eu-central-1"\ncredentials_file = "keys/s3.toml"\npath_style = false\n'
        "checkpoint_seconds = 15\ntimeout_seconds = 2.5\n\n[vault]\nmax_bytes = 1073741824\n"
    )
    config = parse(text)
    assert config.storage == StorageConfig(
        bucket="runlet-logs.eu",
        endpoint_url="https://minio.example.net:9000",
        region="eu-central-1",
        credentials_file=BASE_DIR / "keys" / "s3.toml",
        path_style=False,
        checkpoint_seconds=15.0,
        timeout_seconds=2.5,
    )
    assert isinstance(config.storage.checkpoint_seconds, float)
    assert config.vault.max_bytes == 1 << 30


def test_empty_storage_section_needs_a_bucket() -> None:
    """An empty [storage] turns storage on, so its bucket is required."""
    error = error_of(STORAGE)
    assert error.key == "storage.bucket"
    assert "RUNLET_STORAGE__BUCKET" in error.problem


def test_env_turns_storage_on() -> None:
    """RUNLET_STORAGE__* variables alone configure storage, booleans read as TOML."""
    env = {
        "RUNLET_STORAGE__BUCKET": "logs",
        "RUNLET_STORAGE__ENDPOINT_URL": "http://127.0.0.1:9000",
        "RUNLET_STORAGE__PATH_STYLE": "false",
        "RUNLET_STORAGE__CREDENTIALS_FILE": "s3.toml",
    }
    storage = parse(MINIMAL, env).storage
    assert storage is not None
    assert (storage.bucket, storage.endpoint_url, storage.path_style) == (
        "logs",
        "http://127.0.0.1:9000",
        False,
    )
    assert storage.credentials_file == BASE_DIR / "s3.toml"


def test_env_storage_key_without_bucket_is_an_error() -> None:
    """Setting one storage variable but no bucket names the missing bucket."""
    assert error_of(MINIMAL, {"RUNLET_STORAGE__REGION": "eu-west-1"}).key == "storage.bucket"


@pytest.mark.parametrize("value", ["yes", "1", "True", ""])
def test_env_path_style_must_be_a_boolean(value: str) -> None:
    """path_style from the environment takes only true or false."""
    env = {"RUNLET_STORAGE__BUCKET": "logs", "RUNLET_STORAGE__PATH_STYLE": value}
    error = error_of(MINIMAL, env)
    assert error.key == "storage.path_style"
    assert error.source == "environment variable RUNLET_STORAGE__PATH_STYLE"


def test_inline_storage_secret_is_not_a_key() -> None:
    """Access keys cannot be written into the config: there is no key for them."""
    error = error_of(STORAGE + 'bucket = "logs"\nsecret_access_key = "s3cret"\n')
    assert error.key == "storage.secret_access_key"
    assert "s3cret" not in str(error)


@pytest.mark.parametrize(
    ("key", "literal"),
    [
        ("storage.bucket", '"abc"'),
        ("storage.bucket", '"' + "a" * 63 + '"'),
        ("storage.bucket", '"my.bucket-1"'),
        ("storage.bucket", '"1logs"'),
        ("storage.endpoint_url", '"http://127.0.0.1:9000"'),
        ("storage.endpoint_url", '"HTTPS://[::1]:9000/"'),
        ("storage.endpoint_url", '"https://s3.example.net/minio"'),
        ("storage.region", '"garage"'),
        ("storage.region", '"' + "r" * 64 + '"'),
        ("storage.checkpoint_seconds", "0.001"),
        ("storage.checkpoint_seconds", "86400"),
        ("storage.timeout_seconds", "3600"),
        ("vault.max_bytes", "0"),
        ("vault.max_bytes", "9223372036854775807"),
    ],
)
def test_storage_boundary_values_are_accepted(key: str, literal: str) -> None:
    """Storage and vault values at the edge of their allowed ranges load."""
    parse(render({"storage.bucket": '"logs"', key: literal}))


@pytest.mark.parametrize(
    "bucket",
    [
        "ab",
        "a" * 64,
        "Logs",
        "my_bucket",
        "-logs",
        "logs-",
        ".logs",
        "logs.",
        "my..bucket",
        "192.168.1.1",
        "xn--logs",
        "sthree-logs",
        "logs-s3alias",
        "logs--ol-s3",
        "a/b",
        "a b",
        "ü-logs",
        "",
        "logs\\u0000",
        "logs\\n",
    ],
)
def test_bad_bucket_names(bucket: str) -> None:
    """A bucket name breaking S3's naming rules is an error on storage.bucket."""
    assert error_of(render({"storage.bucket": f'"{bucket}"'})).key == "storage.bucket"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/",
        "minio:9000",
        "127.0.0.1:9000",
        "http://",
        "http://:9000/",
        "http://h:99999/",
        "http://h:0/",
        "http://h:port/",
        "http://h /",
        "http://h/\\n",
        "http://h/?x=1",
        "http://h/#top",
        "http://[::1/",
        "",
    ],
)
def test_bad_endpoint_urls(url: str) -> None:
    """An endpoint that is not an http(s) URL with a host and valid port is refused."""
    error = error_of(render({"storage.bucket": '"logs"', "storage.endpoint_url": f'"{url}"'}))
    assert error.key == "storage.endpoint_url"


@pytest.mark.parametrize(
    "url",
    [
        "http://AKIAEXAMPLE:s3cret@minio:9000/",
        "https://s3cret@minio/",
        "http://minio/?X-Amz-Signature=s3cret",
    ],
)
def test_endpoint_login_is_refused_and_not_echoed(url: str) -> None:
    """A login or signature in the endpoint URL is an error that never repeats it."""
    error = error_of(render({"storage.bucket": '"logs"', "storage.endpoint_url": f'"{url}"'}))
    assert error.key == "storage.endpoint_url"
    assert "s3cret" not in str(error)


@pytest.mark.parametrize("region", ["us.east.1", "us east", "", "r" * 65, "ü", "../x", "-eu"])
def test_bad_regions(region: str) -> None:
    """A region that cannot go into a host name or signature is refused."""
    error = error_of(render({"storage.bucket": '"logs"', "storage.region": f'"{region}"'}))
    assert error.key == "storage.region"


@pytest.mark.parametrize(
    ("key", "literal"),
    [
        ("storage.checkpoint_seconds", "0"),
        ("storage.checkpoint_seconds", "-1"),
        ("storage.checkpoint_seconds", "nan"),
        ("storage.checkpoint_seconds", "inf"),
        ("storage.checkpoint_seconds", "86401"),
        ("storage.timeout_seconds", "0"),
        ("storage.timeout_seconds", "-0.5"),
        ("storage.timeout_seconds", "3601"),
        ("storage.credentials_file", '""'),
        ("vault.max_bytes", "-1"),
        ("vault.max_bytes", "9223372036854775808"),
        ("vault.max_bytes", "99999999999999999999999"),
    ],
)
def test_storage_out_of_range(key: str, literal: str) -> None:
    """Storage and vault numbers outside their range, and empty paths, name their key."""
    assert error_of(render({"storage.bucket": '"logs"', key: literal})).key == key


@pytest.mark.parametrize("text", ["storage = 1\n", "[[storage]]\nbucket = 'logs'\n"])
def test_storage_must_be_a_table(text: str) -> None:
    """storage given as a value or an array of tables is an error on the section."""
    assert error_of(text + MINIMAL).key == "storage"


# --- documentation and examples ------------------------------------------------------------


SECTION_CLASSES: dict[str, type] = {
    "broker": BrokerConfig,
    "jobs": JobsConfig,
    "crypto": CryptoConfig,
    "log": LogConfig,
    "storage": StorageConfig,
    "vault": VaultConfig,
    "server": ServerConfig,
    "metrics": MetricsConfig,
}


def dotted_fields() -> set[str]:
    keys = {spec.name for spec in dataclasses.fields(Config)} - {"source"}
    for section, cls in SECTION_CLASSES.items():
        keys.remove(section)
        keys |= {f"{section}.{spec.name}" for spec in dataclasses.fields(cls)}
    return keys


def test_describe_keys_covers_every_field() -> None:
    """describe_keys lists each config field once, with a type, default and meaning."""
    rows = describe_keys()
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert set(keys) == dotted_fields()
    assert all(kind and meaning for _, kind, meaning in rows)
    described = {key: kind for key, kind, _ in rows}
    assert "default 4" in described["jobs.max_parallel"]
    assert "required" in described["crypto.key_file"]
    assert "default unset" in described["jobs.max_load"]
    assert "required" in described["storage.bucket"]
    assert "default true" in described["storage.path_style"]
    assert "default unset" in described["storage.endpoint_url"]
    assert "default 0" in described["vault.max_bytes"]


@pytest.mark.parametrize(("name", "role"), [("daemon.toml", "daemon"), ("client.toml", "client")])
def test_example_configs_load(name: str, role: str) -> None:
    """The shipped example configs load as they are."""
    config = load_config(EXAMPLES / name, env={})
    assert config.role == role
    assert config.user == "demo"
    assert config.storage is None  # the [storage] section ships commented out
    assert config.vault == VaultConfig()


def test_daemon_example_values() -> None:
    """The daemon example sets the node, data folder and key file it shows."""
    config = load_config(EXAMPLES / "daemon.toml", env={})
    assert (config.node, config.data_dir) == ("edge-1", Path("/var/lib/runlet"))
    assert config.key_file == Path("/etc/runlet/node.key")


def documented_keys(text: str) -> set[str]:
    """Dotted keys shown in a file, set or commented out, under their (maybe commented) section."""
    section, found = "", set()
    for line in text.splitlines():
        bare = line.lstrip("# ").strip()
        if header := re.fullmatch(r"\[(\w+)\]", bare):
            section = header[1] + "."
        elif assignment := re.match(r"(\w+) = ", bare):
            found.add(section + assignment[1])
    return found


@pytest.mark.parametrize("name", ["daemon.toml", "client.toml"])
def test_examples_document_every_key(name: str) -> None:
    """Every key appears in each example file, in its section."""
    assert documented_keys((EXAMPLES / name).read_text()) == dotted_fields()
