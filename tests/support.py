"""Test helpers: configs, daemons (in this process or as real processes), broker clean-up.

Every test gets its own Runlet user, so its exchange and queues (`runlet.<user>.*`) are its own
and are deleted afterwards through the RabbitMQ management API. A missing broker fails the
test; nothing here skips.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from runlet.adapters.broker import Broker
from runlet.config import Config, load_config
from runlet.protocol import addresses
from runlet.protocol.crypto import FleetKey
from runlet.roots.daemon import Daemon

T = TypeVar("T")
BROKER_URL = os.environ.get("RUNLET_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672/")
MANAGEMENT_URL = os.environ.get("RUNLET_TEST_MANAGEMENT", "http://127.0.0.1:15672")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def broker_is_up() -> None:
    """Fail (never skip) the whole run when RabbitMQ is not reachable."""
    host_port = BROKER_URL.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    try:
        socket.create_connection((host, int(port or 5672)), timeout=5).close()
    except OSError as exc:
        pytest.fail(f"RabbitMQ is not reachable at {host_port} ({exc}); run `make services`")


def unique_user(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run an async scenario to completion with an overall time limit."""

    async def limited() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(limited())


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail the test with `what` when it never does."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Fleet:
    """One test user's fleet: a key, config files and daemons, all under one folder."""

    def __init__(self, root: Path, user: str | None = None) -> None:
        self.root = root
        self.user = user or unique_user()
        self.key_file = root / "fleet.key"
        self.key = FleetKey.generate()
        self.key.save(self.key_file)
        self.daemons: list[Daemon] = []
        self.processes: list[DaemonProcess] = []

    def config_file(
        self,
        node: str,
        *,
        role: str = "daemon",
        tags: tuple[str, ...] = (),
        max_parallel: int = 4,
        grace: float = 2.0,
        urls: tuple[str, ...] = (BROKER_URL,),
        extra: str = "",
    ) -> Path:
        path = self.root / f"{node}.toml"
        url_list = ", ".join(json.dumps(u) for u in urls)
        path.write_text(
            f'role = "{role}"\nuser = "{self.user}"\nnode = "{node}"\n'
            f'data_dir = "{self.root / node}"\ntags = {json.dumps(list(tags))}\n'
            f"[broker]\nurls = [{url_list}]\nheartbeat = 5\n"
            f"[jobs]\nmax_parallel = {max_parallel}\ngrace_seconds = {grace}\n"
            f'[crypto]\nkey_file = "{self.key_file}"\n[log]\nlevel = "info"\nformat = "json"\n'
            + extra
        )
        return path

    def config(self, node: str, **options: Any) -> Config:
        return load_config(self.config_file(node, **options), env={})

    def client_config(self, node: str = "client") -> Config:
        return self.config(node, role="client")

    def start_daemon(self, node: str, **options: Any) -> Daemon:
        """A daemon in this process; returns once its dispatch queue is consumed."""
        daemon = Daemon(self.config(node, **options), self.key)
        daemon.start()
        self.daemons.append(daemon)
        self.wait_online(node)
        return daemon

    def start_process(self, node: str, **options: Any) -> DaemonProcess:
        """A daemon as a real `runlet start` process."""
        proc = DaemonProcess(self.config_file(node, **options), self.root / f"{node}.log")
        self.processes.append(proc)
        proc.start()
        self.wait_online(node)
        return proc

    def wait_online(self, node: str, timeout: float = 20.0) -> None:
        queue = addresses.dispatch_queue(self.user, node)
        wait_for(lambda: (queue_info(self.user, queue) or (0, 0))[1] > 0, timeout, f"{node} online")

    def wait_offline(self, node: str, timeout: float = 20.0) -> None:
        queue = addresses.dispatch_queue(self.user, node)
        wait_for(
            lambda: (queue_info(self.user, queue) or (0, 1))[1] == 0, timeout, f"{node} offline"
        )

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        for proc in self.processes:
            proc.stop()
        delete_user_resources(self.user)


def queue_info(user: str, name: str) -> tuple[int, int] | None:
    """(messages, consumers) of a queue, through a real AMQP connection."""

    async def probe() -> tuple[int, int] | None:
        broker = Broker([BROKER_URL], user, name="runlet-test-probe")
        await broker.connect()
        try:
            return await broker.queue_info(name)
        finally:
            await broker.close()

    return asyncio.run(probe())


class DaemonProcess:
    """`python -m runlet -c CONFIG start` as a child process, with its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runlet", "-c", str(self.config), "start"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _management(method: str, path: str) -> Any:
    request = urllib.request.Request(f"{MANAGEMENT_URL}{path}", method=method)  # noqa: S310
    token = base64.b64encode(b"guest:guest").decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http to loopback
        body = response.read()
    return json.loads(body) if body else None


def delete_user_resources(user: str) -> None:
    """Delete every queue and exchange of a test user (management API)."""
    prefix = f"runlet.{user}"
    for queue in _management("GET", "/api/queues/%2F?columns=name"):
        if queue["name"].startswith(prefix):
            _management("DELETE", f"/api/queues/%2F/{urllib.parse.quote(queue['name'], safe='')}")
    for exchange in _management("GET", "/api/exchanges/%2F?columns=name"):
        if exchange["name"].startswith(prefix):
            _management(
                "DELETE", f"/api/exchanges/%2F/{urllib.parse.quote(exchange['name'], safe='')}"
            )


@contextmanager
def fleet_in(root: Path) -> Iterator[Fleet]:
    fleet = Fleet(root)
    try:
        yield fleet
    finally:
        fleet.close()


async def next_message(watch: Any, timeout: float = 10.0) -> object:
    return await asyncio.wait_for(watch.inbox.get(), timeout)


async def follow_to_end(
    client: Any, watch: Any, job_id: str, timeout: float = 30.0, start: int = 0
) -> tuple[bytes, Any]:
    """Collect a job's output in order until its final state and its FINAL chunk are in."""
    from runlet.client.session import Reassembler
    from runlet.protocol.messages import JobStateChanged, OutputChunk, ReplayFinished
    from runlet.protocol.states import TERMINAL

    reasm = Reassembler(client.key, job_id, start)
    out = bytearray()
    final: JobStateChanged | None = None
    async with asyncio.timeout(timeout):
        while final is None or (
            final.state not in ("expired", "rejected")
            and not reasm.finished
            and not (final.state == "cancelled" and reasm.next_seq == 0)
        ):
            try:
                msg = await asyncio.wait_for(watch.inbox.get(), 1.0)
            except TimeoutError:
                # a stall: ask the node for what we miss (duplicates are dropped by seq)
                await client.request_replay(job_id, watch, reasm.next_seq)
                continue
            match msg:
                case OutputChunk(job_id=jid) if jid == job_id:
                    for piece in reasm.feed(msg):
                        out += piece
                case JobStateChanged(job_id=jid) if jid == job_id and msg.terminal:
                    final = msg
                case ReplayFinished(job_id=jid) if jid == job_id and final is None:
                    if msg.state in TERMINAL:
                        final = JobStateChanged(
                            jid, msg.node, msg.state, 0, 0.0, "", msg.exit_code, msg.signal
                        )
    assert final is not None
    return bytes(out), final


async def wait_state(watch: Any, job_id: str, state: str, timeout: float = 15.0) -> Any:
    """Skip messages until `job_id` reaches `state`; returns that event."""
    from runlet.protocol.messages import JobStateChanged

    async with asyncio.timeout(timeout):
        while True:
            msg = await watch.inbox.get()
            if isinstance(msg, JobStateChanged) and msg.job_id == job_id and msg.state == state:
                return msg
