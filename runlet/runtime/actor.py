"""Actor base, local router and supervisor: the runtime every actor lives in.

- `Router` maps names (`runtime.names`: `JOB_QUEUE`, `session_name(job)`) to actor refs, so
  an actor addresses a local receiver by name and a remote one through the gateway
  (`router.publish`) the same way: it never holds another actor's class or ref. Messages for
  an actor that is being restarted are held and handed to its new instance.
- `Actor` is a pykka thread actor whose handler dispatches with `match`. An exception in a
  handler kills the instance (pykka cannot restart one); its `on_failure` tells the
  supervisor, which starts a new instance with backoff and logs the crash.
- `Supervisor` restarts `permanent` children; a `temporary` child (a PTY session) is not
  restarted, its death is reported to whoever asked. Too many crashes in a short time stop
  the whole process with a log line saying why: it never dies silently, and never spins.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pykka
import structlog

from runlet import metrics
from runlet.runtime.local_messages import ChildDied, ForgetChild, Publish, RestartChild, StartChild
from runlet.runtime.loop import LoopThread, LoopTimer
from runlet.runtime.names import GATEWAY, SUPERVISOR
from runlet.runtime.plane import DataPlane

log = structlog.get_logger(__name__)


class Router:
    """Thread-safe name → actor ref table with holding for restarting actors.

    Every delivery happens under one lock, so a sender's messages keep their order even
    while the receiver is being replaced, and held messages are handed over before any
    newer one. A pykka `tell` only puts into a queue, so holding the lock for it is cheap.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._held: dict[str, list[object]] = defaultdict(list)
        self._restarting: set[str] = set()
        self._dead: dict[str, pykka.ActorRef[Any]] = {}  # found dead: crashed, or stopping

    def register(self, name: str, ref: pykka.ActorRef[Any]) -> None:
        """Make `ref` the receiver for `name` and hand it what was held, in order."""
        with self._lock:
            self._refs[name] = ref
            self._restarting.discard(name)
            self._dead.pop(name, None)
            for message in self._held.pop(name, []):
                self._deliver(name, ref, message)

    def unregister(self, name: str, ref: pykka.ActorRef[Any] | None = None) -> None:
        """Forget `name` (only if it is still `ref`) and drop anything held for it."""
        with self._lock:
            if ref is None or self._refs.get(name) is ref or self._dead.get(name) is ref:
                self._refs.pop(name, None)
                self._restarting.discard(name)
                self._held.pop(name, None)
                self._dead.pop(name, None)

    def restarting(self, name: str, ref: pykka.ActorRef[Any] | None = None) -> None:
        """Hold messages for `name` until its next instance registers."""
        with self._lock:
            if ref is None or self._refs.get(name) in (ref, None):
                self._refs.pop(name, None)
                self._restarting.add(name)

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._refs or name in self._restarting

    def tell(self, name: str, message: object) -> bool:
        """Deliver to a local actor; False when nobody of that name exists."""
        with self._lock:
            ref = self._refs.get(name)
            if ref is None:
                if name in self._restarting:
                    self._held[name].append(message)
                    return True
                return False
            return self._deliver(name, ref, message)

    def _deliver(self, name: str, ref: pykka.ActorRef[Any], message: object) -> bool:
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            # it died (and has not told its supervisor yet) or is stopping (and has not
            # unregistered yet): hold for a next instance; `unregister(name, ref)` still works
            self._refs.pop(name, None)
            self._dead[name] = ref
            self._restarting.add(name)
            self._held[name].append(message)
        return True

    def publish(self, message: Publish) -> None:
        """Hand an outbound message to the broker gateway."""
        if not self.tell(GATEWAY, message):
            log.error("gateway_missing", routing_key=message.routing_key)

    def stop_all(self, timeout: float = 10.0) -> None:
        with self._lock:
            refs = list(self._refs.values())
            self._refs.clear()
            self._restarting.clear()
        for ref in reversed(refs):
            try:
                ref.stop(block=True, timeout=timeout)
            except (pykka.ActorDeadError, pykka.Timeout):
                continue


@dataclass
class Context:
    """What every actor of a process shares: the router, the I/O loop, the clock, the config."""

    router: Router
    loop: LoopThread
    settings: Any
    clock: Callable[[], float] = time.time
    plane: DataPlane = field(default_factory=DataPlane)
    services: dict[str, Any] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    exit_code: list[int] = field(default_factory=list)


class Actor(pykka.ThreadingActor):
    """Base of Runlet's actors. Subclasses implement `handle(message)` with `match`."""

    use_daemon_thread = True

    def __init__(self, ctx: Context, name: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.name = name
        self.log = log.bind(actor=name)

    def on_start(self) -> None:
        try:
            self.started()
        except Exception as exc:
            self.log.exception("actor_start_failed")
            self._report(exc)
            raise
        # only a started actor receives: what came meanwhile was held for it, in order
        self.ctx.router.register(self.name, self.actor_ref)

    def started(self) -> None:
        """Runs in the actor's thread before its first message."""

    def on_receive(self, message: Any) -> Any:
        return self.handle(message)

    def handle(self, message: object) -> None:
        raise NotImplementedError

    def unexpected(self, message: object) -> None:
        """Log and count a message this actor has no case for; never crash on it."""
        metrics.UNEXPECTED_MESSAGES.labels(actor=self.name.split(":")[0]).inc()
        self.log.warning("message_unexpected", type=type(message).__name__)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.log.error("actor_crashed", error=repr(exception_value))
        self._report(exception_value)

    def _report(self, exc: BaseException | None) -> None:
        self.ctx.router.restarting(self.name, self.actor_ref)
        if not self.ctx.stopping.is_set():
            self.ctx.router.tell(SUPERVISOR, ChildDied(self.name, repr(exc)))

    def tell_self_later(self, delay: float, message: object) -> LoopTimer:
        """Deliver `message` to this actor after `delay` seconds (a timer on the I/O loop)."""
        return self.ctx.loop.call_later(delay, _tell_quietly, self.actor_ref, message)


Factory = Callable[[], pykka.ActorRef[Any]]


@dataclass
class _Child:
    factory: Factory
    permanent: bool
    notify: str | None
    crashes: deque[float] = field(default_factory=deque)


class Supervisor(pykka.ThreadingActor):
    """Starts children, restarts permanent ones with backoff, stops the process past a limit."""

    use_daemon_thread = True
    max_crashes = 5  # within `window` seconds, then give up and stop the process
    window = 60.0

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx
        self._children: dict[str, _Child] = {}

    def on_receive(self, message: Any) -> Any:
        match message:
            case StartChild(name=name, factory=factory, permanent=permanent, notify=notify):
                self._children[name] = _Child(factory, permanent, notify)
                self._start(name)
            case ChildDied(name=name, error=error):
                self._died(name, error)
            case RestartChild(name=name):
                if name in self._children and not self.ctx.stopping.is_set():
                    self._start(name)
            case ForgetChild(name=name):
                self._children.pop(name, None)
            case _:
                log.warning("message_unexpected", actor=SUPERVISOR, type=type(message).__name__)
        return None

    def _start(self, name: str) -> None:
        child = self._children[name]
        self.ctx.router.restarting(name)  # hold messages until the new instance has started
        try:
            ref = child.factory()
        except Exception as exc:  # a child that cannot even be built counts as a crash
            log.exception("actor_build_failed", actor=name)
            self._died(name, repr(exc))
            return
        if not isinstance(ref.actor_class, type) or not issubclass(ref.actor_class, Actor):
            self.ctx.router.register(name, ref)  # plain pykka actors register here

    def _died(self, name: str, error: str) -> None:
        child = self._children.get(name)
        if child is None:
            return
        metrics.ACTOR_RESTARTS.labels(actor=name.split(":", maxsplit=1)[0]).inc()
        if not child.permanent:
            self._children.pop(name, None)
            self.ctx.router.unregister(name)  # not restarted: nothing may wait for it
            if child.notify:
                self.ctx.router.tell(child.notify, ChildDied(name, error))
            return
        now = time.monotonic()
        child.crashes.append(now)
        while child.crashes and now - child.crashes[0] >= self.window:
            child.crashes.popleft()
        recent = list(child.crashes)
        if len(recent) > self.max_crashes:
            log.critical("actor_restart_limit", actor=name, crashes=len(recent), error=error)
            self.ctx.exit_code.append(70)
            self.ctx.stopping.set()
            return
        delay = min(0.05 * 2 ** (len(recent) - 1), 5.0)
        log.error("actor_restarting", actor=name, error=error, delay=delay)
        self.ctx.loop.call_later(delay, _tell_quietly, self.actor_ref, RestartChild(name))


def _tell_quietly(ref: pykka.ActorRef[Any], message: object) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return


def supervise(
    ctx: Context, name: str, factory: Factory, *, permanent: bool = True, notify: str | None = None
) -> None:
    """Ask the supervisor to start (and look after) the actor `factory` makes under `name`."""
    if not ctx.router.tell(SUPERVISOR, StartChild(name, factory, permanent, notify)):
        raise RuntimeError("no supervisor is running")


def start_supervisor(ctx: Context) -> pykka.ActorRef[Any]:
    ref = Supervisor.start(ctx)
    ctx.router.register(SUPERVISOR, ref)
    return ref
