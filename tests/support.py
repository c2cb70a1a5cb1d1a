"""Test helpers: configs, daemons (in this process or as real processes), broker clean-up.

Every test gets its own Runlet user, so its exchange and queues (`runlet.<user>.*`) are its own
and are deleted afterwards through the RabbitMQ management API. A missing broker fails the
test; nothing here skips.

Nothing here waits for "long enough": every wait is for an event (a state change, a pong, a
condition on disk or on the broker) with a generous bound, because the tests also run on a busy
2-core machine. A bound that runs out fails with what was waited for and what was seen.
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

from runlet.adapters.broker import Broker, BrokerSecurity, Incoming, QueueSpec
from runlet.config import Config, load_config
from runlet.errors import ProtocolError
from runlet.protocol import addresses, wire
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import Ping, Pong
from runlet.roots.daemon import Daemon

T = TypeVar("T")
BROKER_URL = os.environ.get("RUNLET_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672/")
MANAGEMENT_URL = os.environ.get("RUNLET_TEST_MANAGEMENT", "http://127.0.0.1:15672")
REPO = Path(__file__).resolve().parent.parent
# Bounds, not expectations: on a quiet machine each of these takes well under a second.
EVENT_SECONDS = 30.0  # one event: a state change, a job's end, a dead letter, an upload
STARTUP_SECONDS = 60.0  # a daemon (a whole Python process, on a busy machine) ready to work
SCENARIO_SECONDS = 100.0  # a whole `run(...)` scenario; below pytest's 120 s per test


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


def run(coro: Coroutine[Any, Any, T], timeout: float = SCENARIO_SECONDS) -> T:
    """Run an async scenario to completion with an overall time limit.

    The waits inside a scenario have bounds of their own that say what they waited for; this
    one only catches a scenario stuck elsewhere (its traceback shows where).
    """
    name = getattr(coro, "__qualname__", "the scenario")

    async def limited() -> T:
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                return await coro
        except TimeoutError as exc:
            if not limit.expired():
                raise  # a wait inside gave up, and says so itself
            raise TimeoutError(f"{name} did not finish within {timeout} s") from exc

    return asyncio.run(limited())


def wait_for(
    predicate: Callable[[], bool],
    timeout: float = EVENT_SECONDS,
    what: str = "condition",
    *,
    seen: Callable[[], object] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll `predicate` until it holds; fail the test with `what` when it never does.

    `seen` describes what there was instead (called once, on failure).
    """
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > end:
            break
        time.sleep(interval)
    found = "" if seen is None else f"; saw {seen()}"
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{found}")


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
        presence: float | None = None,
        broker: str = "",
        extra: str = "",
    ) -> Path:
        """Write `<node>.toml`; `presence` sets `[broker] presence_seconds` (heartbeats), and
        `broker` is more lines for that section (TLS, a password file)."""
        path = self.root / f"{node}.toml"
        url_list = ", ".join(json.dumps(u) for u in urls)
        beats = "" if presence is None else f"presence_seconds = {presence}\n"
        path.write_text(
            f'role = "{role}"\nuser = "{self.user}"\nnode = "{node}"\n'
            f'data_dir = "{self.root / node}"\ntags = {json.dumps(list(tags))}\n'
            f"[broker]\nurls = [{url_list}]\nheartbeat = 5\n{beats}{broker}"
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
        """A daemon in this process; returns once it answers on every queue it consumes."""
        config = self.config(node, **options)
        daemon = Daemon(config, self.key)
        daemon.start()
        self.daemons.append(daemon)
        wait_ready(self.user, node, config.broker.urls, security=BrokerSecurity.of(config.broker))
        return daemon

    def start_process(self, node: str, **options: Any) -> DaemonProcess:
        """A daemon as a real `runlet start` process; returns once it answers (see wait_ready)."""
        path = self.config_file(node, **options)
        config = load_config(path, env={})
        proc = DaemonProcess(path, self.root / f"{node}.log")
        self.processes.append(proc)
        proc.start()
        security = BrokerSecurity.of(config.broker)
        wait_ready(self.user, node, config.broker.urls, process=proc, security=security)
        return proc

    def wait_online(self, node: str, timeout: float = STARTUP_SECONDS) -> None:
        """Until the node's dispatch queue has a consumer (its other queues may still come)."""
        queue = addresses.dispatch_queue(self.user, node)
        wait_for(
            lambda: (queue_info(self.user, queue) or (0, 0))[1] > 0,
            timeout,
            f"{node} online (a consumer on {queue})",
            seen=lambda: f"(messages, consumers) = {queue_info(self.user, queue)}",
            interval=0.1,
        )

    def wait_offline(self, node: str, timeout: float = STARTUP_SECONDS) -> None:
        queue = addresses.dispatch_queue(self.user, node)
        wait_for(
            lambda: (queue_info(self.user, queue) or (0, 1))[1] == 0,
            timeout,
            f"{node} offline (no consumer on {queue})",
            seen=lambda: f"(messages, consumers) = {queue_info(self.user, queue)}",
            interval=0.1,
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


def wait_ready(
    user: str,
    node: str,
    urls: tuple[str, ...] = (BROKER_URL,),
    *,
    process: DaemonProcess | None = None,
    timeout: float = STARTUP_SECONDS,
    security: BrokerSecurity | None = None,
) -> None:
    """Until the node's daemon answers a ping on its rpc queue.

    The daemon consumes its queues in a fixed order (dispatch, `any`, then rpc) and only then
    says `broker_ready`; a pong proves all of them are consumed, where a consumer on the
    dispatch queue alone does not (a replay request or a ping sent then would be dropped).
    A `process` that ends meanwhile fails the wait at once, with its log.
    """
    run(_ping_until_pong(user, node, urls, process, timeout, security=security), timeout + 30)


async def _ping_until_pong(
    user: str,
    node: str,
    urls: tuple[str, ...],
    process: DaemonProcess | None,
    timeout: float,
    *,
    security: BrokerSecurity | None = None,
) -> None:
    viewer = f"ready-{uuid.uuid4().hex[:8]}"
    reply = addresses.reply_key(viewer, "0" * 32)
    pongs: asyncio.Queue[Pong] = asyncio.Queue()

    async def on_pong(incoming: Incoming) -> None:
        await incoming.ack()
        try:
            msg = wire.decode(incoming.body)
        except ProtocolError:
            return
        if isinstance(msg, Pong) and msg.node == node:
            pongs.put_nowait(msg)

    broker = Broker(list(urls), user, name="runlet-test-ready", security=security)
    await broker.connect(wait=timeout)
    try:
        name = addresses.job_queue(user, "0" * 32, "ready", viewer)
        await broker.consume(QueueSpec(name, "exclusive", (reply,), dead_letter=False), on_pong)
        end = time.monotonic() + timeout
        seq = 0
        while True:
            if process is not None and process.proc is not None:
                status = process.proc.poll()
                if status is not None:
                    raise AssertionError(
                        f"{node} ended with status {status} before it was ready; its log:\n"
                        f"{process.log()[-3000:]}"
                    )
            seq += 1
            await broker.publish(
                addresses.rpc_key(node),
                wire.encode(Ping(seq, time.time())),
                message_id=f"{viewer}:ping:{seq}",
                durable=False,
                mandatory=False,  # no rpc queue yet: dropped, and we ask again
                reply_to=reply,
            )
            try:
                await asyncio.wait_for(pongs.get(), 0.5)
            except TimeoutError:
                if time.monotonic() > end:
                    tail = "" if process is None else f"; its log:\n{process.log()[-3000:]}"
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {node} to answer a ping"
                        f" (its queues consumed); {seq} pings unanswered{tail}"
                    ) from None
                continue
            return
    finally:
        await broker.close()


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
        """Send `sig` and wait for the process to end (a SIGTERM lets it stop cleanly)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(STARTUP_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.config.stem} still runs {STARTUP_SECONDS} s after signal {sig}; its log:"
                f"\n{self.log()[-3000:]}"
            ) from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STARTUP_SECONDS)
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


def queue_names(prefix: str) -> list[str]:
    """Names of the broker's queues that start with `prefix` (management API)."""
    return sorted(
        q["name"]
        for q in _management("GET", "/api/queues/%2F?columns=name")
        if q["name"].startswith(prefix)
    )


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


async def next_message(watch: Any, timeout: float = EVENT_SECONDS) -> object:
    try:
        return await asyncio.wait_for(watch.inbox.get(), timeout)
    except TimeoutError:
        raise TimeoutError(f"no message on {watch.queue} for {timeout} s") from None


class Follower:
    """What one watch sees of a job: its output put back in order, its states, its end.

    Messages are taken from the watch's inbox one at a time; when nothing comes for a second
    the node is asked to replay what is missing (duplicates are dropped by seq), so a watcher
    that skipped messages (`wait_state`) or joined late still gets everything.
    """

    def __init__(self, client: Any, watch: Any, job_id: str, start: int = 0) -> None:
        from runlet.client.session import Reassembler

        self.client = client
        self.watch = watch
        self.job_id = job_id
        self.reasm = Reassembler(client.key, job_id, start)
        self.out = bytearray()
        self.states: list[str] = []  # the job's state changes, in order of arrival
        self.final: Any = None  # its terminal JobStateChanged, once seen

    def ended(self) -> bool:
        """The final state is in, and so is the FINAL chunk (when the job has output at all)."""
        final = self.final
        if final is None:
            return False
        return (
            final.state in ("expired", "rejected")
            or self.reasm.finished
            or (final.state == "cancelled" and self.reasm.next_seq == 0)
        )

    def describe(self) -> str:
        final = "none" if self.final is None else self.final.state
        return (
            f"job {self.job_id}: states seen {self.states}, final state {final}, "
            f"{len(self.out)} bytes of output in order (next chunk {self.reasm.next_seq}, FINAL "
            f"{'in' if self.reasm.finished else 'not in'}), ending {bytes(self.out[-200:])!r}"
        )

    async def until(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        """Take messages until `check()` holds; TimeoutError saying what was seen otherwise."""
        end = time.monotonic() + timeout
        while not check():
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"timed out after {timeout} s waiting for {what}; {self.describe()}"
                )
            try:
                msg = await asyncio.wait_for(self.watch.inbox.get(), min(1.0, left))
            except TimeoutError:
                # a stall: ask the node for what we miss (duplicates are dropped by seq)
                await self.client.request_replay(self.job_id, self.watch, self.reasm.next_seq)
                continue
            self.take(msg)

    def take(self, msg: object) -> None:
        from runlet.protocol.messages import JobStateChanged, OutputChunk, ReplayFinished
        from runlet.protocol.states import TERMINAL

        match msg:
            case OutputChunk(job_id=jid) if jid == self.job_id:
                for piece in self.reasm.feed(msg):
                    self.out += piece
            case JobStateChanged(job_id=jid) if jid == self.job_id:
                self.states.append(msg.state)
                if msg.terminal:
                    self.final = msg
            case ReplayFinished(job_id=jid) if jid == self.job_id and self.final is None:
                if msg.state in TERMINAL:
                    self.final = JobStateChanged(
                        jid, msg.node, msg.state, 0, 0.0, "", msg.exit_code, msg.signal
                    )

    async def reached(self, state: str, timeout: float = EVENT_SECONDS) -> None:
        """Until the job's `state` event has come."""
        await self.until(lambda: state in self.states, f"the state {state!r}", timeout)

    async def output(self, text: bytes, timeout: float = EVENT_SECONDS) -> None:
        """Until `text` is in the job's output."""
        await self.until(lambda: text in self.out, f"{text!r} in the output", timeout)

    async def to_end(self, timeout: float = EVENT_SECONDS) -> tuple[bytes, Any]:
        """Until the job's end (see `ended`); its whole output and its final state."""
        await self.until(self.ended, "the job's end and its FINAL chunk", timeout)
        return bytes(self.out), self.final


async def follow_to_end(
    client: Any, watch: Any, job_id: str, timeout: float = EVENT_SECONDS, start: int = 0
) -> tuple[bytes, Any]:
    """Collect a job's output in order until its final state and its FINAL chunk are in."""
    return await Follower(client, watch, job_id, start).to_end(timeout)


async def wait_state(watch: Any, job_id: str, state: str, timeout: float = EVENT_SECONDS) -> Any:
    """Skip messages until `job_id` reaches `state`; returns that event.

    TimeoutError, naming the states that did come, when it does not within `timeout` s.
    """
    from runlet.protocol.messages import JobStateChanged

    seen: list[str] = []
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            msg = await asyncio.wait_for(watch.inbox.get(), left)
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {timeout} s waiting for job {job_id} to be {state!r};"
                f" its states seen meanwhile: {seen}"
            ) from None
        if isinstance(msg, JobStateChanged) and msg.job_id == job_id:
            if msg.state == state:
                return msg
            seen.append(msg.state)
