"""TLS to a real RabbitMQ node (tests/integration/tls_broker.py): who is trusted, who logs in.

Each test loads a real config file with the `[broker]` TLS keys, builds `BrokerSecurity` from
it as a daemon or client does, and connects the real adapter. A refused connection is checked
by the very sentence a user would read.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from runlet.adapters.broker import Broker, BrokerSecurity, Incoming, QueueSpec
from runlet.config import Config, load_config
from runlet.errors import BrokerUnavailable
from runlet.protocol import addresses
from tests.integration.tls_broker import EXPIRED_NAME, TlsBroker
from tests.support import EVENT_SECONDS, REPO, STARTUP_SECONDS, Fleet, run, unique_user

PASSWORD = "guest"  # noqa: S105 - the TLS node's guest account, which may log in from anywhere there


def config(tmp_path: Path, user: str, broker: str) -> Config:
    """A client config for `user` whose `[broker]` section is `broker`."""
    path = tmp_path / f"{user}.toml"
    path.write_text(
        f'role = "client"\nuser = "{user}"\nnode = "laptop"\n'
        f'[crypto]\nkey_file = "{tmp_path / "fleet.key"}"\n[broker]\n{broker}\n'
    )
    return load_config(path, env={})


def password_file(tmp_path: Path, text: str = PASSWORD) -> Path:
    path = tmp_path / "broker_password"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def adapter(settings: Config) -> Broker:
    return Broker(
        settings.broker.urls,
        settings.user,
        name="runlet-test-tls",
        security=BrokerSecurity.of(settings.broker),
    )


async def round_trip(broker: Broker, user: str) -> bytes:
    """Connect, publish one message to the user's own queue and read it back."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(incoming: Incoming) -> None:
        await incoming.ack()
        got.put_nowait(incoming.body)

    await broker.connect()
    try:
        name = addresses.job_queue(user, "0" * 32, "tls", "probe")
        await broker.consume(QueueSpec(name, "exclusive", ("tls.probe",)), on_message)
        await broker.publish("tls.probe", b"over tls", message_id="m1")
        return await asyncio.wait_for(got.get(), EVENT_SECONDS)
    finally:
        await broker.close()


def refusal(settings: Config) -> str:
    """The message of the BrokerUnavailable that connecting with `settings` raises."""

    async def attempt() -> None:
        broker = adapter(settings)
        try:
            await broker.connect()
        finally:
            await broker.close()

    with pytest.raises(BrokerUnavailable) as info:
        run(attempt())
    return str(info.value)


def test_good_connection(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """With the broker's CA, a password from its file and the right host name, a message
    makes the trip over TLS."""
    user = unique_user("tls")
    settings = config(
        tmp_path,
        user,
        f'urls = ["{tls_broker.url(login="guest@")}"]\n'
        f'ca_file = "{tls_broker.ca}"\npassword_file = "{password_file(tmp_path)}"',
    )
    assert run(round_trip(adapter(settings), user)) == b"over tls"


def test_wrong_ca_is_refused(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """A broker whose certificate comes from a CA we do not trust is refused, and the user is
    told which key to look at."""
    settings = config(
        tmp_path,
        unique_user("tls"),
        f'urls = ["{tls_broker.url()}"]\nca_file = "{tls_broker.wrong_ca}"',
    )
    message = refusal(settings)
    assert (
        "the broker's TLS certificate was refused: self-signed certificate in certificate chain"
        " (is broker.ca_file the CA that signed the broker's certificate?)"
    ) in message
    assert "amqps://guest:***@localhost:5690/" in message


def test_system_cas_do_not_trust_a_private_ca(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """Without ca_file the system's CAs are the trust: a private CA's broker is refused."""
    settings = config(tmp_path, unique_user("tls"), f'urls = ["{tls_broker.url()}"]')
    assert "the broker's TLS certificate was refused" in refusal(settings)


def test_wrong_host_name_is_refused(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """A certificate for `localhost` does not do for 127.0.0.1, nor for another name."""
    user = unique_user("tls")
    by_ip = config(
        tmp_path, user, f'urls = ["{tls_broker.url("127.0.0.1")}"]\nca_file = "{tls_broker.ca}"'
    )
    assert (
        "the broker's TLS certificate was refused: IP address mismatch, certificate is not"
        " valid for '127.0.0.1'. (connect by a name the certificate holds, or set"
        " broker.server_name to one)"
    ) in refusal(by_ip)
    other = config(
        tmp_path,
        user,
        f'urls = ["{tls_broker.url("127.0.0.1")}"]\nca_file = "{tls_broker.ca}"\n'
        'server_name = "mq.example.net"',
    )
    assert "Hostname mismatch, certificate is not valid for 'mq.example.net'" in refusal(other)


def test_server_name_verifies_an_address_by_name(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """broker.server_name is the name checked (and sent as SNI) when the URL holds an IP."""
    user = unique_user("tls")
    settings = config(
        tmp_path,
        user,
        f'urls = ["{tls_broker.url("127.0.0.1")}"]\nca_file = "{tls_broker.ca}"\n'
        'server_name = "localhost"',
    )
    assert run(round_trip(adapter(settings), user)) == b"over tls"


def test_expired_certificate_is_refused(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """The broker's expired certificate (its SNI name asked for) is refused as expired."""
    settings = config(
        tmp_path,
        unique_user("tls"),
        f'urls = ["{tls_broker.url("127.0.0.1")}"]\nca_file = "{tls_broker.ca}"\n'
        f'server_name = "{EXPIRED_NAME}"',
    )
    assert (
        "the broker's TLS certificate was refused: certificate has expired (the broker's"
        " certificate must be renewed)"
    ) in refusal(settings)


def test_client_certificate_login(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """login = "certificate": the broker takes the certificate's common name as the user
    (SASL EXTERNAL), with no password anywhere, and grants that user's own names."""
    user = tls_broker.cert_user
    settings = config(
        tmp_path,
        user,
        f'urls = ["{tls_broker.url(login="")}"]\nca_file = "{tls_broker.ca}"\n'
        f'cert_file = "{tls_broker.client.cert}"\nkey_file = "{tls_broker.client.key}"\n'
        'login = "certificate"',
    )

    async def scenario() -> tuple[bytes, list[list[str]]]:
        broker = adapter(settings)
        body = await round_trip_open(broker, user)
        try:
            rows = tls_broker.ctl(
                "list_connections", "user", "auth_mechanism", "--formatter", "json"
            )
        finally:
            await broker.close()
        return body, [[row["user"], row["auth_mechanism"]] for row in json.loads(rows)]

    body, connections = run(scenario())
    assert body == b"over tls"
    assert [f"runlet-{user}", "EXTERNAL"] in connections


async def round_trip_open(broker: Broker, user: str) -> bytes:
    """`round_trip` that leaves the connection open for the caller to close."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(incoming: Incoming) -> None:
        await incoming.ack()
        got.put_nowait(incoming.body)

    await broker.connect()
    name = addresses.job_queue(user, "0" * 32, "tls", "cert")
    await broker.consume(QueueSpec(name, "exclusive", ("tls.cert",)), on_message)
    await broker.publish("tls.cert", b"over tls", message_id="m1")
    return await asyncio.wait_for(got.get(), EVENT_SECONDS)


@pytest.mark.parametrize("pair", ["expired_client", "stranger"])
def test_bad_client_certificate_is_refused(
    tls_broker: TlsBroker, tmp_path: Path, pair: str
) -> None:
    """An expired client certificate, or one from a CA the broker does not trust, ends the
    connection in the handshake; the user is told why, or (when the broker's alert comes too
    late to be read, which TLS 1.3 allows) pointed at broker.cert_file all the same."""
    chosen = getattr(tls_broker, pair)
    settings = config(
        tmp_path,
        tls_broker.cert_user,
        f'urls = ["{tls_broker.url(login="")}"]\nca_file = "{tls_broker.ca}"\n'
        f'cert_file = "{chosen.cert}"\nkey_file = "{chosen.key}"\nlogin = "certificate"',
    )
    why = {
        "expired_client": "it has expired (broker.cert_file)",
        "stranger": "it is not from a CA the broker trusts (broker.cert_file)",
    }[pair]
    whole = refusal(settings)
    said = re.sub(
        r"^cannot reach RabbitMQ at amqps://localhost:5690/ \(tried for [0-9.]+ s\): ", "", whole
    )
    assert said != whole, whole
    assert said in (
        f"the broker refused this device's certificate: {why}",
        "the broker closed the TLS connection: it may have refused this device's certificate"
        " (broker.cert_file: expired, or from a CA the broker does not trust)",
    )


def test_certificate_of_no_broker_user_is_refused(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """A good certificate whose name is no broker user is refused at login, saying so."""
    settings = config(
        tmp_path,
        tls_broker.cert_user,
        f'urls = ["{tls_broker.url(login="")}"]\nca_file = "{tls_broker.ca}"\n'
        f'cert_file = "{tls_broker.client.cert}"\nkey_file = "{tls_broker.client.key}"\n'
        'login = "certificate"',
    )
    tls_broker.ctl("delete_user", f"runlet-{tls_broker.cert_user}")
    try:
        message = refusal(settings)
    finally:
        tls_broker.add_cert_user()
    assert (
        "the broker refused the login: ACCESS_REFUSED - Login was refused using authentication"
        " mechanism EXTERNAL; is the client certificate's common name (broker.cert_file) a"
        " broker user?"
    ) in message


def test_wrong_password_is_refused_without_showing_it(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    """A wrong password in the file: the broker refuses the login, the message says where to
    look, and the password appears nowhere in it."""
    wrong = "n0t-the-Passw0rd"
    settings = config(
        tmp_path,
        unique_user("tls"),
        f'urls = ["{tls_broker.url(login="guest@")}"]\nca_file = "{tls_broker.ca}"\n'
        f'password_file = "{password_file(tmp_path, wrong)}"',
    )
    message = refusal(settings)
    assert (
        "the broker refused the login: ACCESS_REFUSED - Login was refused using authentication"
        " mechanism PLAIN; check the user in broker.urls and its password (broker.password_file)"
    ) in message
    assert wrong not in message


def test_verify_false_connects_and_warns(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """verify = false connects to a broker no CA vouches for, and says so at every start."""
    user = unique_user("tls")
    settings = config(
        tmp_path,
        user,
        f'urls = ["{tls_broker.url("127.0.0.1")}"]\nca_file = "{tls_broker.wrong_ca}"\n'
        "verify = false",
    )
    for _ in range(2):
        with structlog.testing.capture_logs() as logs:
            assert run(round_trip(adapter(settings), user)) == b"over tls"
        warnings = [line for line in logs if line["event"] == "broker_tls_unverified"]
        assert len(warnings) == 1
        assert warnings[0]["log_level"] == "warning"


def test_a_job_runs_over_tls(tls_broker: TlsBroker, tmp_path: Path) -> None:
    """A real daemon process and a real `runlet run`, both over TLS with a password file,
    run a job end to end: the roles build their connections from the config's TLS keys."""
    fleet = Fleet(tmp_path)
    broker = f'ca_file = "{tls_broker.ca}"\npassword_file = "{password_file(tmp_path)}"\n'
    urls = (tls_broker.url(login="guest@"),)
    try:
        fleet.start_process("edge", urls=urls, broker=broker)
        client = fleet.config_file("laptop", role="client", urls=urls, broker=broker)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "runlet",
                "-c",
                str(client),
                "run",
                "--on",
                "edge",
                "--",
                "echo",
                "tls",
            ],
            capture_output=True,
            text=True,
            timeout=STARTUP_SECONDS,
            env=env,
            cwd=REPO,
            check=False,
        )
    finally:
        for proc in fleet.processes:
            proc.stop()
    assert (done.returncode, done.stdout) == (0, "tls\n"), done.stderr
    assert "broker_connected" in fleet.processes[0].log()
