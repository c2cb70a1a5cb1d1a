"""Shared fakes for the actor unit tests: a real runtime, recording fake actors, fake sessions.

A test builds a real `Context` (real `Router`, real `LoopThread`) with `running_context`, then
registers fake actors under the names the real ones talk to. A fake records every message it
gets into an `Inbox`, which a test waits on with a deadline: nothing here sleeps to wait for
something to happen, except `wait_for`, which polls a condition until its deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pykka
from prometheus_client import REGISTRY

from runlet.protocol.crypto import FleetKey, JobKey
from runlet.protocol.states import ExitStatus
from runlet.runtime.actor import Context, Router
from runlet.runtime.local_messages import ForgetChild, SessionEnded, SessionStarted, StartSession
from runlet.runtime.loop import LoopThread
from runlet.runtime.names import SUPERVISOR

T = TypeVar("T")

DEADLINE = 10.0  # seconds; generous for a loaded 2-core machine
POLL = 0.005


def wait_for(predicate: Callable[[], bool], timeout: float = DEADLINE, what: str = "it") -> None:
    """Poll `predicate` until it holds; fail the test naming `what` when the deadline passes."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


def sample(name: str, **labels: str) -> float:
    """The current value of a Prometheus sample (0 when it was never touched)."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


class Inbox:
    """A thread-safe, ordered record of messages, with waiting on a condition."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[object] = []

    def put(self, item: object) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def all(self) -> list[object]:
        with self._cond:
            return list(self._items)

    def of(self, cls: type[T]) -> list[T]:
        """The recorded messages of class `cls`, in arrival order."""
        return [m for m in self.all() if isinstance(m, cls)]

    def wait(
        self, predicate: Callable[[list[object]], bool], timeout: float = DEADLINE, what: str = ""
    ) -> list[object]:
        """Block until `predicate(messages)` holds; returns the messages then."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self._items), timeout):
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what or 'messages'};"
                    f" got {self._items!r}"
                )
            return list(self._items)

    def wait_of(self, cls: type[T], count: int = 1, timeout: float = DEADLINE) -> list[T]:
        """Block until at least `count` messages of class `cls` arrived; returns them all."""
        self.wait(
            lambda items: sum(isinstance(m, cls) for m in items) >= count,
            timeout,
            f"{count} x {cls.__name__}",
        )
        return self.of(cls)


class _Barrier:
    """Asked of a fake, it returns once the fake handled everything told to it before."""


BARRIER = _Barrier()


def sync(*refs: pykka.ActorRef[Any]) -> None:
    """Return once each fake recorded every message sent to it before this call.

    A fake that has stopped is skipped: it handled its whole mailbox before it stopped.
    """
    for ref in refs:
        with suppress(pykka.ActorDeadError):
            ref.ask(BARRIER, timeout=DEADLINE)


class FakeActor(pykka.ThreadingActor):
    """Records every message into `inbox`; `react(message)` runs first, in the actor's thread."""

    use_daemon_thread = True

    def __init__(self, inbox: Inbox, react: Callable[[object], None] | None = None) -> None:
        super().__init__()
        self.inbox = inbox
        self.react = react

    def on_receive(self, message: Any) -> Any:
        if message is BARRIER:
            return None
        if self.react is not None:
            self.react(message)
        self.inbox.put(message)
        return None


@dataclass(frozen=True)
class JobSettings:
    max_parallel: int = 2
    max_load: float | None = None
    grace_seconds: float = 3.0
    shell: str = "/bin/sh"


@dataclass(frozen=True)
class BrokerSettings:
    urls: tuple[str, ...] = ("amqp://guest:guest@127.0.0.1:1/",)
    heartbeat: int = 5
    presence_seconds: float = 10.0


@dataclass(frozen=True)
class Settings:
    """The fields of `runlet.config.Config` the actors under test read."""

    data_dir: Path
    node: str = "node1"
    user: str = "alice"
    tags: tuple[str, ...] = ()
    jobs: JobSettings = field(default_factory=JobSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)


class FakeClock:
    """A clock the test sets; thread-safe."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = now

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@contextmanager
def running_context(
    data_dir: Path, *, clock: Callable[[], float] | None = None, **jobs: Any
) -> Iterator[Context]:
    """A real Context (router, loop thread); every actor and the loop are stopped afterwards."""
    loop = LoopThread("test-aio")
    ctx = Context(
        router=Router(),
        loop=loop,
        settings=Settings(data_dir=data_dir, jobs=JobSettings(**jobs)),
        clock=clock or FakeClock(),
    )
    try:
        yield ctx
    finally:
        ctx.stopping.set()  # a crash during teardown must not start anything new
        pykka.ActorRegistry.stop_all(block=True, timeout=DEADLINE)
        loop.close()


def add_fake(
    ctx: Context, name: str, react: Callable[[object], None] | None = None
) -> tuple[Inbox, pykka.ActorRef[Any]]:
    """Start a recording fake actor and register it under `name`."""
    inbox = Inbox()
    ref = FakeActor.start(inbox, react)
    ctx.router.register(name, ref)
    return inbox, ref


class TrappedKey:
    """A fleet key whose `job_key` stops for chosen job ids until released (then may raise).

    It lets a test hold an actor inside a handler, deterministically, while it fills the
    actor's mailbox, and make the handler crash when it is released.
    """

    def __init__(self, key: FleetKey) -> None:
        self.key = key
        self._traps: dict[str, tuple[threading.Event, threading.Event, bool]] = {}

    def trap(self, job_id: str, *, crash: bool) -> tuple[threading.Event, threading.Event]:
        """Arm a trap on `job_id`; returns (entered, release) events."""
        entered, release = threading.Event(), threading.Event()
        self._traps[job_id] = (entered, release, crash)
        return entered, release

    def job_key(self, job_id: str) -> JobKey:
        trap = self._traps.pop(job_id, None)
        if trap is not None:
            entered, release, crash = trap
            entered.set()
            release.wait(DEADLINE)
            if crash:
                raise RuntimeError(f"trap sprung on {job_id}")
        return self.key.job_key(job_id)


class FakeSession(pykka.ThreadingActor):
    """Stands in for a PTY session: records what it gets; the test decides when it starts/ends."""

    use_daemon_thread = True

    def __init__(self, ctx: Context, name: str, inbox: Inbox) -> None:
        super().__init__()
        self.ctx = ctx
        self.name = name
        self.inbox = inbox

    def on_receive(self, message: Any) -> Any:
        if message is not BARRIER:
            self.inbox.put(message)
        return None

    def on_stop(self) -> None:  # as PtySession does
        self.ctx.router.unregister(self.name, self.actor_ref)
        self.ctx.router.tell(SUPERVISOR, ForgetChild(self.name))


class Sessions:
    """The `session_factory` service: makes fake sessions, remembers them in start order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.requests: list[StartSession] = []
        self.refs: dict[str, pykka.ActorRef[Any]] = {}
        self.inboxes: dict[str, Inbox] = {}
        self.ctx: Context | None = None

    def __call__(self, ctx: Context, name: str, start: StartSession) -> pykka.ActorRef[Any]:
        inbox = Inbox()
        ref = FakeSession.start(ctx, name, inbox)
        with self._cond:
            self.ctx = ctx
            self.requests.append(start)
            self.refs[start.job_id] = ref
            self.inboxes[start.job_id] = inbox
            self._cond.notify_all()
        return ref

    def all_refs(self) -> list[pykka.ActorRef[Any]]:
        with self._cond:
            return list(self.refs.values())

    def started_ids(self) -> list[str]:
        with self._cond:
            return [r.job_id for r in self.requests]

    def wait_count(self, count: int, timeout: float = DEADLINE) -> list[str]:
        """Block until `count` sessions were made; returns their job ids in start order."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{count} sessions expected, got {len(self.requests)}")
            return [r.job_id for r in self.requests]

    def run(self, job_id: str, pid: int = 4242) -> None:
        """The child started: tell the job queue so, as a session does."""
        assert self.ctx is not None
        self.ctx.router.tell("job_queue", SessionStarted(job_id, pid))

    def end(self, job_id: str, how: str = "exited", status: ExitStatus | None = None) -> None:
        """The child ended: tell the job queue, then stop the session, as a session does."""
        assert self.ctx is not None
        self.ctx.router.tell("job_queue", SessionEnded(job_id, how, status))
        self.refs[job_id].stop(block=True, timeout=DEADLINE)
