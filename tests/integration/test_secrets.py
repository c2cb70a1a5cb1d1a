"""The broker password from `broker.password_file`, end to end, and nowhere else.

A real broker account with a random password (made through the management API, as
`runlet user add` does) is used by a real daemon process and real `runlet` client commands
whose configs name the password file only. Then every place a password could leak is read:
the daemon's log, the commands' output and errors, `check-config --json`, and what `ps`
shows of the process (its command line, its name) and its environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from runlet.adapters.rabbitmq_admin import Account, BrokerAdmin
from tests.support import (
    BROKER_URL,
    MANAGEMENT_URL,
    REPO,
    STARTUP_SECONDS,
    DaemonProcess,
    Fleet,
    run,
    unique_user,
    wait_for,
)

_BROKER = urllib.parse.urlsplit(BROKER_URL)
HOSTPORT = _BROKER.netloc.rpartition("@")[2]
CONNECTIONS = ("runlet-daemon-edge", "runlet-keys-edge")  # the Gateway's, the Key Keeper's


@pytest.fixture
def account() -> Iterator[Account]:
    """A fresh user's broker account with a random password; removed afterwards."""
    admin = BrokerAdmin(MANAGEMENT_URL, _BROKER.username or "guest", _BROKER.password or "guest")
    made = run(admin.create(unique_user("pw")))
    try:
        yield made
    finally:
        run(admin.remove(made.name))


def password_file(folder: Path, password: str) -> Path:
    path = folder / "broker_password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def runlet(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
    return subprocess.run(
        [sys.executable, "-m", "runlet", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=STARTUP_SECONDS,
        env=env,
        cwd=REPO,
        check=False,
    )


def shown_by_ps(pid: int) -> str:
    """What other processes can read of `pid`: its command line, name and environment."""
    proc = Path(f"/proc/{pid}")
    parts = [(proc / name).read_bytes() for name in ("cmdline", "comm", "environ")]
    return b"\n".join(parts).decode(errors="replace")


def test_password_file_login_leaks_nowhere(tmp_path: Path, account: Account) -> None:
    """A daemon and a client log in with the password from its file and run a job; the
    password is in no log line, output, error, JSON view, command line or environment."""
    secret = account.password
    fleet = Fleet(tmp_path, account.name)
    url = f"amqp://{account.broker_user}@{HOSTPORT}/"
    broker = f'password_file = "{password_file(tmp_path, secret)}"\n'
    try:
        daemon = fleet.start_process("edge", urls=(url,), broker=broker)
        assert secret not in shown_by_ps(daemon.pid)
        client = fleet.config_file("laptop", role="client", urls=(url,), broker=broker)
        done = runlet(client, "run", "--on", "edge", "--", "echo", "hello from edge")
        assert (done.returncode, done.stdout) == (0, "hello from edge\n"), done.stderr
        shown = runlet(client, "check-config", "--json", str(client))
        assert json.loads(shown.stdout)["broker"]["password_file"] == str(
            tmp_path / "broker_password"
        )
        outputs = [done.stdout, done.stderr, shown.stdout, shown.stderr]
    finally:
        fleet.close()
    log = daemon.log()
    assert "broker_connected" in log
    for text in [log, *outputs]:
        assert secret not in text
        assert urllib.parse.quote(secret, safe="") not in text


def test_a_refused_password_is_named_not_shown(tmp_path: Path, account: Account) -> None:
    """A wrong password in the file: the client fails with 69 saying the login was refused,
    and a waiting daemon logs why once; neither shows the password it tried."""
    wrong = "Wr0ng-" + account.password[::-1]
    fleet = Fleet(tmp_path, account.name)
    url = f"amqp://{account.broker_user}@{HOSTPORT}/"
    broker = f'password_file = "{password_file(tmp_path, wrong)}"\n'
    daemon = DaemonProcess(
        fleet.config_file("edge", urls=(url,), broker=broker), tmp_path / "e.log"
    )
    try:
        client = fleet.config_file("laptop", role="client", urls=(url,), broker=broker)
        failed = runlet(client, "run", "--on", "edge", "--", "true")
        assert failed.returncode == 69
        assert "the broker refused the login: ACCESS_REFUSED" in failed.stderr
        assert "(broker.password_file)" in failed.stderr
        daemon.start()
        wait_for(
            lambda: all(f'"connection": "{name}"' in daemon.log() for name in CONNECTIONS),
            STARTUP_SECONDS,
            "both of the daemon's connections to log why they cannot connect",
            seen=lambda: daemon.log()[-2000:],
        )
        assert shown_by_ps(daemon.pid).count(wrong) == 0
    finally:
        daemon.stop()
        fleet.close()
    log = daemon.log()
    assert "the broker refused the login: ACCESS_REFUSED" in log
    said = [json.loads(line) for line in log.splitlines() if "broker_connect_failed" in line]
    # each connection says why once, not at every retry
    assert sorted(line["connection"] for line in said) == sorted(CONNECTIONS)
    for text in (log, failed.stdout, failed.stderr):
        assert wrong not in text
        assert account.password not in text


def test_an_unreachable_broker_error_hides_the_password(tmp_path: Path, account: Account) -> None:
    """Nothing listens at the URL: the error names the URL without the password, whether the
    password is in the file or (the old way) in the URL itself."""
    fleet = Fleet(tmp_path, account.name)
    secret = account.password
    in_file = fleet.config_file(
        "a",
        role="client",
        urls=(f"amqp://{account.broker_user}@127.0.0.1:9/",),
        broker=f'password_file = "{password_file(tmp_path, secret)}"\n',
    )
    quoted = urllib.parse.quote(secret, safe="")
    in_url = fleet.config_file(
        "b", role="client", urls=(f"amqp://{account.broker_user}:{quoted}@127.0.0.1:9/",)
    )
    for config, shown in (
        (in_file, f"amqp://{account.broker_user}:***@127.0.0.1:9/"),  # *** either way
        (in_url, f"amqp://{account.broker_user}:***@127.0.0.1:9/"),
    ):
        failed = runlet(config, "jobs")
        assert failed.returncode == 69
        assert f"cannot reach RabbitMQ at {shown}" in failed.stderr
        assert secret not in failed.stderr + failed.stdout
        assert quoted not in failed.stderr + failed.stdout
