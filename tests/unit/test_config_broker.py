"""The `[broker]` keys for TLS and secrets: each checked alone, and checked together."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from runlet.config import BrokerConfig, Config, parse_config
from runlet.config.checks import Conflict
from runlet.errors import ConfigError

HEAD = 'role = "daemon"\nuser = "alice"\n[crypto]\nkey_file = "k"\n'
TLS_URL = '"amqps://runlet-alice@mq.example.net:5671/"'
SECRET = "hunter2-s3cr3t"  # noqa: S105 - a made-up password that must never be echoed


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RUNLET_* variable leaks in; the host name is fixed."""
    for name in list(os.environ):
        if name.startswith("RUNLET_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(socket, "gethostname", lambda: "testhost")


def parse(broker: str, env: dict[str, str] | None = None) -> Config:
    text = f"{HEAD}[broker]\n{broker}\n"
    return parse_config(text, source="t.toml", base_dir=Path("/etc/runlet"), env=env or {})


def problem(broker: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(broker, env)
    return info.value


def test_defaults_are_plain_password_login_with_verification_on() -> None:
    """Without the new keys nothing changes: no files, verification on, password login."""
    broker = parse("").broker
    assert (broker.password_file, broker.ca_file, broker.cert_file, broker.key_file) == (
        None,
        None,
        None,
        None,
    )
    assert (broker.server_name, broker.verify, broker.login, broker.tls) == (
        None,
        True,
        "password",
        False,
    )


def test_full_tls_section_loads_with_paths_resolved() -> None:
    """Every TLS key lands in its field; relative paths resolve against the file's folder."""
    broker = parse(
        f"urls = [{TLS_URL}]\npassword_file = 'pw'\nca_file = 'ca.pem'\ncert_file = 'c.pem'\n"
        "key_file = '/k/c.key'\nserver_name = 'mq.example.net'\nverify = true\n"
    ).broker
    assert broker.password_file == Path("/etc/runlet/pw")
    assert broker.ca_file == Path("/etc/runlet/ca.pem")
    assert (broker.cert_file, broker.key_file) == (Path("/etc/runlet/c.pem"), Path("/k/c.key"))
    assert (broker.server_name, broker.tls) == ("mq.example.net", True)


def test_certificate_login_loads() -> None:
    """login = "certificate" with a client certificate and a URL without a password."""
    broker = parse(
        "urls = ['amqps://mq.example.net/']\ncert_file = 'c.pem'\nkey_file = 'c.key'\n"
        "login = 'certificate'\n"
    ).broker
    assert broker.login == "certificate"


def test_env_sets_the_password_file() -> None:
    """RUNLET_BROKER__PASSWORD_FILE names the file, as any key's variable does."""
    env = {"RUNLET_BROKER__PASSWORD_FILE": "/run/secrets/mq"}
    assert parse(f"urls = [{TLS_URL}]", env).broker.password_file == Path("/run/secrets/mq")


@pytest.mark.parametrize(
    ("broker", "key", "text"),
    [
        (
            "urls = ['amqps://a/', 'amqp://b/']",
            "broker.urls[1]",
            "is amqp:// but broker.urls[0] is amqps://",
        ),
        (
            "urls = ['amqp://a/', 'amqp://b/', 'AMQPS://c/']",
            "broker.urls[2]",
            "a failover must never change whether the connection is encrypted",
        ),
        (f"urls = [{TLS_URL}]\ncert_file = 'c.pem'", "broker.key_file", "required with"),
        (f"urls = [{TLS_URL}]\nkey_file = 'c.key'", "broker.cert_file", "required with"),
        ("ca_file = 'ca.pem'", "broker.ca_file", "applies to amqps:// URLs only"),
        ("cert_file = 'c'\nkey_file = 'k'", "broker.cert_file", "amqps:// URLs only"),
        ("server_name = 'mq'", "broker.server_name", "amqps:// URLs only"),
        ("verify = false", "broker.verify", "amqps:// URLs only"),
        ("login = 'certificate'", "broker.login", "amqps:// URLs only"),
        (
            "urls = ['amqps://mq/']\nlogin = 'certificate'",
            "broker.cert_file",
            'required with broker.login = "certificate"',
        ),
        (
            "urls = ['amqps://mq/']\nlogin = 'certificate'\ncert_file = 'c'\nkey_file = 'k'\n"
            "password_file = 'p'",
            "broker.password_file",
            "the certificate is the login",
        ),
        (
            f"urls = ['amqps://u:{SECRET}@mq/']\nlogin = 'certificate'\ncert_file = 'c'\n"
            "key_file = 'k'",
            "broker.urls[0]",
            "holds a password, but login is by certificate",
        ),
        (
            f"urls = ['amqp://u@a/', 'amqp://u:{SECRET}@b/']\npassword_file = 'p'",
            "broker.urls[1]",
            "holds a password, but broker.password_file is set",
        ),
        (
            "urls = ['amqp://u:@a/']\npassword_file = 'p'",
            "broker.urls[0]",
            "holds a password",
        ),
        (
            "urls = ['amqps://mq.example.net/']\npassword_file = 'p'",
            "broker.urls[0]",
            "must name the broker user",
        ),
    ],
)
def test_keys_that_do_not_go_together(broker: str, key: str, text: str) -> None:
    """Each mismatch names the key to fix and never echoes a password."""
    error = problem(broker)
    assert error.key == key
    assert text in error.problem
    assert SECRET not in str(error)


def test_a_conflict_from_the_environment_names_the_variable() -> None:
    """A mismatch caused by an override points at the environment variable."""
    error = problem("", {"RUNLET_BROKER__VERIFY": "false"})
    assert (error.key, error.source) == (
        "broker.verify",
        "environment variable RUNLET_BROKER__VERIFY",
    )


@pytest.mark.parametrize(
    ("literal", "text"),
    [
        ("''", "must not be empty"),
        ("'mq example'", "must be a DNS host name"),
        ("'mq.example.net.'", "must be a DNS host name"),
        ("'-mq'", "must be a DNS host name"),
        ("'mq..x'", "must be a DNS host name"),
        ('"mq\\n"', "must be a DNS host name"),
        ('"m\\u00fcnchen.de"', "must be a DNS host name"),
        ("'" + "a" * 64 + "'", "must be a DNS host name"),
        ("'" + ".".join(["a" * 63] * 5) + "'", "must be a DNS host name"),
        ('"mq\\u0000x"', "NUL"),
        ("5671", "must be a string"),
        ("['mq']", "must be a string"),
    ],
)
def test_bad_server_names(literal: str, text: str) -> None:
    """A server name is a DNS name: no spaces, control characters, empty or long labels."""
    error = problem(f"urls = [{TLS_URL}]\nserver_name = {literal}")
    assert error.key == "broker.server_name"
    assert text in error.problem


def test_longest_server_name_is_accepted() -> None:
    """253 characters of 63-character labels is the limit, and it loads."""
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert parse(f"urls = [{TLS_URL}]\nserver_name = '{name}'").broker.server_name == name


@pytest.mark.parametrize(
    ("key", "literal", "text"),
    [
        ("verify", "'no'", "must be true or false"),
        ("verify", "0", "must be true or false"),
        ("login", "'external'", "must be one of 'password', 'certificate'"),
        ("login", "true", "must be a string"),
        ("ca_file", "''", "must not be empty"),
        ("cert_file", "1", "must be a string"),
        ("ca_file", '"a\\u0000b"', "NUL"),
        ("password_file", "['p']", "must be a string"),
    ],
)
def test_bad_values(key: str, literal: str, text: str) -> None:
    """Wrong types and values of the new keys are refused by name."""
    error = problem(f"urls = [{TLS_URL}]\n{key} = {literal}")
    assert error.key == f"broker.{key}"
    assert text in error.problem


@pytest.mark.parametrize(
    ("query", "instead"),
    [
        ("cafile=/x", "broker.ca_file"),
        ("CAFILE=/x", "broker.ca_file"),
        ("capath=/x", "broker.ca_file"),
        ("cadata=QUJD", "broker.ca_file"),
        ("certfile=/c", "broker.cert_file"),
        ("keyfile=/k", "broker.key_file"),
        ("no_verify_ssl=1", "broker.verify"),
        ("heartbeat=5&auth=external", "broker.login"),
        ("auth=", "broker.login"),
    ],
)
def test_url_query_cannot_do_what_a_key_does(query: str, instead: str) -> None:
    """The library's own URL options for TLS and login are refused, pointing at the key."""
    error = problem(f"urls = ['amqps://mq.example.net/?{query}']")
    assert error.key == "broker.urls[0]"
    assert instead in error.problem


def test_other_url_query_options_are_kept() -> None:
    """A harmless query option (a connection name) still loads."""
    assert parse("urls = ['amqp://mq/?name=x']").broker.urls == ("amqp://mq/?name=x",)


def test_built_directly_the_section_checks_itself() -> None:
    """BrokerConfig refuses a bad combination whoever builds it, not only the loader."""
    with pytest.raises(Conflict, match="applies to amqps://") as info:
        BrokerConfig(verify=False)
    assert info.value.key == "broker.verify"
