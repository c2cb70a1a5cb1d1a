"""One broker account per device, against the real RabbitMQ: run-only devices and revocation.

Accounts are made through `BrokerAdmin` as the test broker's administrator; what a device
tries is done with raw aio-pika, so the refusals seen are the broker's own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractConnection

from runlet.adapters.rabbitmq_admin import Account, BrokerAdmin, device_user
from runlet.config import parse_config
from runlet.errors import UsageError
from runlet.protocol import addresses
from runlet.protocol.crypto import FleetKey
from runlet.roots import admin as roots_admin
from tests.support import (
    BROKER_URL,
    EVENT_SECONDS,
    MANAGEMENT_URL,
    REPO,
    STARTUP_SECONDS,
    DaemonProcess,
    Fleet,
    delete_user_resources,
    queue_info,
    run,
    unique_user,
    wait_for,
    wait_ready,
)

_BROKER = urllib.parse.urlsplit(BROKER_URL)
HOSTPORT = _BROKER.netloc.rpartition("@")[2]
JOB = "0123456789abcdef0123456789abcdef"


def _admin() -> BrokerAdmin:
    return BrokerAdmin(MANAGEMENT_URL, _BROKER.username or "guest", _BROKER.password or "guest")


@pytest.fixture
def user() -> Iterator[Account]:
    """A fresh user's account; the user (with every device) is removed afterwards."""
    made = run(_admin().create(unique_user("dev")))
    try:
        yield made
    finally:
        run(_admin().remove(made.name))
        delete_user_resources(made.name)


def url_of(account: Account) -> str:
    secret = urllib.parse.quote(account.password, safe="")
    return f"amqp://{urllib.parse.quote(account.broker_user, safe='')}:{secret}@{HOSTPORT}/"


async def publish(connection: AbstractConnection, user: str, key: str) -> None:
    """A confirmed publish on the user's exchange, on a channel of its own."""
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        addresses.exchange(user), aio_pika.ExchangeType.TOPIC, durable=True
    )
    await exchange.publish(aio_pika.Message(b"x"), key, mandatory=False)
    await channel.close()


def test_run_only_device_cannot_start_a_job(user: Account) -> None:
    """The broker itself refuses a run-only device's dispatch, input, control and questions,
    and takes what a daemon sends for the jobs it runs."""
    device = run(_admin().create_device(user.name, "pi-1", run_only=True))
    assert device.broker_user == f"runlet-{user.name}.pi-1"

    async def scenario() -> list[str]:
        connection = await aio_pika.connect(url_of(device))
        refused = []
        try:
            for key in (
                addresses.state_key(JOB),
                addresses.output_key(f"{JOB}.pi-1"),
                addresses.log_key(JOB),
                addresses.presence_key("pi-1"),
                addresses.reply_key("viewer-1", JOB),
            ):
                await publish(connection, user.name, key)  # accepted: no exception
            for key in (
                addresses.dispatch_node_key("other"),
                addresses.DISPATCH_ANY,
                addresses.DISPATCH_ALL,
                addresses.dispatch_tag_key("gpu"),
                addresses.input_key(JOB),
                addresses.control_key(JOB),
                addresses.rpc_key("other"),
                addresses.presence_key("other"),
                addresses.state_key(f"{JOB}.other"),
                addresses.SERVER_RPC,
            ):
                with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as info:
                    await publish(connection, user.name, key)
                refused.append(str(info.value))
        finally:
            await connection.close()
        return refused

    refused = run(scenario())
    assert len(refused) == 10
    assert refused[0].startswith(
        "ACCESS_REFUSED - access to topic 'dispatch.node.other' in exchange"
    )


def test_full_device_may_dispatch(user: Account) -> None:
    """A device made without --run-only may start jobs, as its user may."""
    device = run(_admin().create_device(user.name, "laptop"))

    async def scenario() -> None:
        connection = await aio_pika.connect(url_of(device))
        try:
            await publish(connection, user.name, addresses.dispatch_node_key("other"))
        finally:
            await connection.close()

    run(scenario())


def test_rotating_a_run_only_device_to_full_lifts_the_limit(user: Account) -> None:
    """`--rotate` without --run-only gives a new password and drops the topic limit."""
    run(_admin().create_device(user.name, "pi-2", run_only=True))
    assert run(_admin().devices(user.name)) == [("pi-2", True)]
    device = run(_admin().create_device(user.name, "pi-2", rotate=True))
    assert run(_admin().devices(user.name)) == [("pi-2", False)]

    async def scenario() -> None:
        connection = await aio_pika.connect(url_of(device))
        try:
            await publish(connection, user.name, addresses.DISPATCH_ANY)
        finally:
            await connection.close()

    run(scenario())


def test_revoke_closes_the_device_and_spares_the_others(user: Account) -> None:
    """Revoking one device closes its open connection and bars it from logging in again;
    another device of the same user goes on publishing."""
    lost = run(_admin().create_device(user.name, "lost", run_only=True))
    kept = run(_admin().create_device(user.name, "kept", run_only=True))

    async def scenario() -> None:
        gone = await aio_pika.connect(url_of(lost))
        closed = asyncio.Event()
        gone.close_callbacks.add(lambda *_: closed.set())  # the broker closed it
        stays = await aio_pika.connect(url_of(kept))
        try:
            assert await _admin().remove_device(user.name, "lost")
            await asyncio.wait_for(closed.wait(), EVENT_SECONDS)
            with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
                await aio_pika.connect(url_of(lost))
            await publish(stays, user.name, addresses.presence_key("kept"))
        finally:
            await stays.close()
            await gone.close()

    run(scenario())
    assert run(_admin().devices(user.name)) == [("kept", True)]
    assert not run(_admin().remove_device(user.name, "lost"))  # a second revoke: nothing left


def test_removing_the_user_removes_its_devices(user: Account) -> None:
    """`user remove` leaves no device account behind."""
    run(_admin().create_device(user.name, "a"))
    run(_admin().create_device(user.name, "b", run_only=True))
    assert [node for node, _ in run(_admin().devices(user.name))] == ["a", "b"]
    run(_admin().remove(user.name))
    assert run(_admin().devices(user.name)) == []
    names = [row["name"] for row in run(_admin()._call("GET", "/api/users?columns=name"))]
    assert device_user(user.name, "a") not in names


def test_device_add_needs_an_existing_user(tmp_path: Path) -> None:
    """`device add` for a user the broker does not know is a usage error; nothing is made."""
    config = parse_config(
        'role = "server"\nuser = "admin"\nnode = "s"\ndata_dir = "d"\n[server]\n'
        f'management_url = "{MANAGEMENT_URL}"\n',
        source="server.toml",
        base_dir=tmp_path,
        env={},
    )
    ghost = unique_user("ghost")
    with pytest.raises(UsageError, match=f"no user '{ghost}' on the broker"):
        run(roots_admin.add_device(config, ghost, "pi"))
    assert run(_admin().devices(ghost)) == []


def test_a_run_only_device_runs_jobs(tmp_path: Path, user: Account) -> None:
    """A real daemon logged in as a run-only device runs a job its user starts: the limit
    leaves it everything a daemon publishes."""
    device = run(_admin().create_device(user.name, "edge", run_only=True))
    fleet = Fleet(tmp_path, user.name)
    try:
        daemon = DaemonProcess(
            fleet.config_file("edge", urls=(url_of(device),)), tmp_path / "e.log"
        )
        fleet.processes.append(daemon)
        daemon.start()
        # pinged as the user: the device itself may not publish to node.edge.rpc
        wait_ready(user.name, "edge", (url_of(user),), process=daemon)
        client = fleet.config_file("laptop", role="client", urls=(url_of(user),))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
        command = ["--", "sh", "-c", "echo ran on edge"]
        done = subprocess.run(
            [sys.executable, "-m", "runlet", "-c", str(client), "run", "--on", "edge", *command],
            capture_output=True,
            text=True,
            timeout=STARTUP_SECONDS,
            env=env,
            cwd=REPO,
            check=False,
        )
    finally:
        fleet.close()
    assert (done.returncode, done.stdout) == (0, "ran on edge\n"), done.stderr
    log = daemon.log()
    assert "broker_ready" in log
    for trouble in ("ACCESS_REFUSED", "broker_connection_lost", "publish_failed"):
        assert trouble not in log  # nothing it sent was refused


def test_a_run_only_device_cannot_run_a_job_elsewhere(tmp_path: Path, user: Account) -> None:
    """`runlet run` with a run-only device's account stops at once with exit 77: the broker
    refused the dispatch, and the message says so (no retries until a timeout)."""
    device = run(_admin().create_device(user.name, "pi-3", run_only=True))
    fleet = Fleet(tmp_path, user.name)
    try:
        fleet.start_process("edge", urls=(url_of(user),))  # a node that would run it
        client = fleet.config_file("pi-3", role="client", urls=(url_of(device),))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
        failed = subprocess.run(
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
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=STARTUP_SECONDS,
            env=env,
            cwd=REPO,
            check=False,
        )
    finally:
        fleet.close()
    assert failed.returncode == 77, failed.stderr
    assert (
        "the broker refused this account publishing to dispatch.node.edge: ACCESS_REFUSED -"
        " access to topic 'dispatch.node.edge' in exchange"
    ) in failed.stderr
    assert "run-only device's account may run jobs but not start or steer them" in failed.stderr
    assert device.password not in failed.stderr


def own_key_config(fleet: Fleet, node: str, url: str) -> Path:
    """A daemon config whose key file is a copy of the fleet's, the node's own."""
    key = fleet.root / f"{node}.key"
    key.write_bytes(fleet.key_file.read_bytes())
    key.chmod(0o600)
    config = fleet.config_file(node, urls=(url,))
    config.write_text(config.read_text().replace(str(fleet.key_file), str(key)))
    return config


def test_a_device_revoked_while_it_streams_is_shut_out(tmp_path: Path, user: Account) -> None:
    """A device revoked in the middle of a job loses its connection and is refused when it
    tries to log in again (and says so); the key is rotated and granted to the device that
    stays, which runs the next job with the new key; the revoked device never gets it."""
    lost = run(_admin().create_device(user.name, "lost", run_only=True))
    kept = run(_admin().create_device(user.name, "kept", run_only=True))
    fleet = Fleet(tmp_path, user.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
    client = fleet.config_file("laptop", role="client", urls=(url_of(user),))
    configs = {
        node: own_key_config(fleet, node, url_of(acct))
        for node, acct in (("lost", lost), ("kept", kept))
    }

    def runlet(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runlet", "-c", str(config), *args],
            capture_output=True,
            text=True,
            timeout=STARTUP_SECONDS,
            env=env,
            cwd=REPO,
            check=False,
        )

    try:
        daemons = {}
        for node, config in configs.items():
            daemon = DaemonProcess(config, tmp_path / f"{node}.log")
            fleet.processes.append(daemon)
            daemon.start()
            wait_ready(user.name, node, (url_of(user),), process=daemon)
            daemons[node] = daemon
        stream = ["sh", "-c", "while :; do echo tick; sleep 0.05; done"]
        started = runlet(client, "run", "--on", "lost", "--detach", "--", *stream)
        assert started.returncode == 0, started.stderr
        wait_for(lambda: "job_started" in daemons["lost"].log(), what="the job to stream")
        assert run(_admin().remove_device(user.name, "lost"))
        wait_for(
            lambda: "the broker refused the login" in daemons["lost"].log(),
            what="the revoked device to be thrown off and refused",
            seen=lambda: daemons["lost"].log()[-1500:],
        )
        assert queue_info(user.name, addresses.dispatch_queue(user.name, "lost")) is None
        assert queue_info(user.name, addresses.dispatch_queue(user.name, "kept")) is not None
        assert runlet(client, "key", "rotate").returncode == 0
        public = runlet(configs["kept"], "key", "device").stdout.strip()
        granted = runlet(client, "key", "grant", "kept", public)
        assert granted.returncode == 0, granted.stderr
        wait_for(lambda: "fleet_key_rotated" in daemons["kept"].log(), what="kept's new key")
        done = runlet(client, "run", "--on", "kept", "--", "echo", "still here")
    finally:
        fleet.close()
    assert (done.returncode, done.stdout) == (0, "still here\n"), done.stderr
    log = daemons["lost"].log()
    assert log.index("broker_connection_lost") < log.index("the broker refused the login")
    assert lost.password not in log
    new_key, old_key = FleetKey.load(fleet.key_file), FleetKey.load(tmp_path / "lost.key")
    assert FleetKey.load(tmp_path / "kept.key") == new_key
    assert new_key.keeps(old_key)
    assert old_key.generations == 1  # the revoked device's copy: the old key alone
    assert "fleet_key_rotated" not in log


def test_a_rotated_key_reaches_a_node_that_was_away(tmp_path: Path, user: Account) -> None:
    """`key rotate` then `key grant` while the node's daemon is stopped: when it comes back its
    Key Keeper takes the sealed key from its queue, replaces its key file, and runs a job
    sealed with the new key."""
    fleet = Fleet(tmp_path, user.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
    edge_config = own_key_config(fleet, "edge", url_of(user))
    edge_key = tmp_path / "edge.key"
    client = fleet.config_file("laptop", role="client", urls=(url_of(user),))

    def runlet(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runlet", "-c", str(config), *args],
            capture_output=True,
            text=True,
            timeout=STARTUP_SECONDS,
            env=env,
            cwd=REPO,
            check=False,
        )

    def start_edge(log: str) -> DaemonProcess:
        daemon = DaemonProcess(edge_config, tmp_path / log)
        fleet.processes.append(daemon)
        daemon.start()
        wait_ready(user.name, "edge", (url_of(user),), process=daemon)
        return daemon

    keys = addresses.keys_queue(user.name, "edge")
    try:
        first = start_edge("edge-1.log")
        wait_for(
            lambda: (queue_info(user.name, keys) or (0, 0))[1] > 0,
            what="the Key Keeper consuming its queue",
        )
        first.stop()
        public = runlet(edge_config, "key", "device").stdout.strip()
        assert runlet(client, "key", "rotate").returncode == 0
        granted = runlet(client, "key", "grant", "edge", public)
        assert granted.returncode == 0, granted.stderr
        assert (queue_info(user.name, keys) or (0, 0))[0] == 1  # waiting for the node
        second = start_edge("edge-2.log")
        wait_for(lambda: "fleet_key_rotated" in second.log(), what="the key taken on")
        done = runlet(client, "run", "--on", "edge", "--", "echo", "new key")
    finally:
        fleet.close()
    assert (done.returncode, done.stdout) == (0, "new key\n"), done.stderr
    rotated = FleetKey.load(fleet.key_file)
    assert rotated.generations == 2
    assert FleetKey.load(edge_key) == rotated
    assert "key_grant_refused" not in second.log()
