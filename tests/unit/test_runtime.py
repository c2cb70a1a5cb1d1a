"""The runtime: router, actor base and supervisor — restarts, held messages, crash limits."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pykka
import pytest
from structlog.testing import capture_logs

from runlet.runtime.actor import (
    Actor,
    Context,
    Supervisor,
    start_supervisor,
    supervise,
)
from runlet.runtime.local_messages import ChildDied, ForgetChild, Publish
from runlet.runtime.names import GATEWAY, SUPERVISOR
from tests.unit.fakes import (
    DEADLINE,
    FakeActor,
    Inbox,
    add_fake,
    running_context,
    sample,
    wait_for,
)

RESTARTS = "runlet_actor_restarts_total"
UNEXPECTED = "runlet_unexpected_messages_total"
RACE = 0.3  # seconds a racing thread gets to finish; with the router's lock held it cannot


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    with running_context(tmp_path) as context:
        yield context


def unique(prefix: str) -> str:
    """A fresh actor name, so each test's metrics labels start at zero."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


class Worker(Actor):
    """A test actor: records what it handles with its generation, crashes on "boom"."""

    def __init__(
        self, ctx: Context, name: str, inbox: Inbox, generation: int, fail_start: bool
    ) -> None:
        super().__init__(ctx, name)
        self.inbox = inbox
        self.generation = generation
        self.fail_start = fail_start

    def started(self) -> None:
        if self.fail_start:
            raise RuntimeError(f"generation {self.generation} cannot start")
        self.inbox.put(("started", self.generation))

    def handle(self, message: object) -> None:
        match message:
            case "boom":
                raise RuntimeError("boom")
            case ("msg", str(text)):
                self.inbox.put((self.generation, text))
            case _:
                self.unexpected(message)


class EagerWorker(Worker):
    """Tells itself, by name, from started(): as an actor whose request is answered at once."""

    def started(self) -> None:
        accepted = self.ctx.router.tell(self.name, ("msg", "early"))
        self.inbox.put(("told", accepted))


class DoomedWorker(Worker):
    """Says it is starting, then fails in started() once the test sets `doom`."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        inbox: Inbox,
        generation: int,
        fail_start: bool,
        *,
        doom: threading.Event,
    ) -> None:
        super().__init__(ctx, name, inbox, generation, fail_start)
        self.doom = doom

    def started(self) -> None:
        self.inbox.put(("starting", self.generation))
        assert self.doom.wait(DEADLINE)
        raise RuntimeError(f"generation {self.generation} cannot start")


class Spawner:
    """A supervisor factory for Workers: numbers the instances it makes, scripts each one.

    `fail_starts`: generations whose started() raises; `gates`: generations whose creation
    waits (in the supervisor's thread) until the test releases it.
    """

    def __init__(
        self,
        ctx: Context,
        name: str,
        *,
        fail_starts: frozenset[int] | None = None,
        always_fail: bool = False,
        doomed: frozenset[int] = frozenset(),
        eager: bool = False,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.inbox = Inbox()
        self.fail_starts = fail_starts or frozenset()
        self.always_fail = always_fail
        self.doomed = doomed
        self.eager = eager
        self.doom = threading.Event()  # set: the doomed generations' started() fails now
        self.gates: dict[int, tuple[threading.Event, threading.Event]] = {}
        self.refs: list[pykka.ActorRef[Any]] = []
        self._lock = threading.Lock()

    def gate(self, generation: int) -> tuple[threading.Event, threading.Event]:
        """Hold the making of `generation`; returns (entered, release)."""
        events = (threading.Event(), threading.Event())
        self.gates[generation] = events
        return events

    @property
    def made(self) -> int:
        with self._lock:
            return len(self.refs)

    def ref(self, generation: int) -> pykka.ActorRef[Any]:
        with self._lock:
            return self.refs[generation - 1]

    def __call__(self) -> pykka.ActorRef[Any]:
        with self._lock:
            generation = len(self.refs) + 1
        if generation in self.gates:
            entered, release = self.gates[generation]
            entered.set()
            assert release.wait(DEADLINE)
        fails = self.always_fail or generation in self.fail_starts
        ref: pykka.ActorRef[Any]
        if generation in self.doomed:
            ref = DoomedWorker.start(
                self.ctx, self.name, self.inbox, generation, fails, doom=self.doom
            )
        else:
            kind = EagerWorker if self.eager else Worker
            ref = kind.start(self.ctx, self.name, self.inbox, generation, fails)
        if self.eager:  # the supervisor's thread is descheduled until started() is over
            self.inbox.wait(
                lambda items: any(m[0] == "told" for m in items if isinstance(m, tuple))
            )
        with self._lock:
            self.refs.append(ref)
        return ref

    def wait_started(self, generation: int) -> None:
        """Wait until instance `generation` ran started() and its name takes messages."""
        self.inbox.wait(lambda items: ("started", generation) in items, what=f"gen {generation}")
        # the actor registers itself in its own thread, right after started() returned, and
        # may do so before the factory (in the supervisor's thread) has recorded its ref
        wait_for(lambda: self.ctx.router.has(self.name), what=f"{self.name} registered")
        wait_for(lambda: self.made >= generation, what=f"gen {generation} recorded")

    def got(self, generation: int) -> list[str]:
        """The texts instance `generation` handled, in order."""
        return [
            m[1]
            for m in self.inbox.all()
            if isinstance(m, tuple) and m[0] == generation and isinstance(m[1], str)
        ]


def barrier(ref: pykka.ActorRef[Any]) -> None:
    """Return once the supervisor handled everything told to it before."""
    ref.ask(ForgetChild("-nobody-"), timeout=DEADLINE)


# -- router ----------------------------------------------------------------------------------


def test_router_tell_delivers_to_a_registered_actor(ctx: Context) -> None:
    """A message told by name reaches the actor registered under that name."""
    inbox, _ = add_fake(ctx, "alpha")
    assert ctx.router.tell("alpha", "hello")
    assert inbox.wait(lambda items: items == ["hello"])
    assert ctx.router.has("alpha")


def test_router_tell_to_an_unknown_name_says_false(ctx: Context) -> None:
    """Telling a name nobody holds returns False and delivers nothing anywhere."""
    inbox, _ = add_fake(ctx, "alpha")
    assert not ctx.router.tell("beta", "hello")
    assert not ctx.router.has("beta")
    assert ctx.router.tell("alpha", "marker")
    assert inbox.wait(lambda items: items == ["marker"])


def test_router_holds_messages_while_restarting_and_hands_them_over_in_order(
    ctx: Context,
) -> None:
    """While a name restarts, messages are held; the next instance gets them first, in order."""
    old_inbox, old = add_fake(ctx, "worker")
    ctx.router.restarting("worker")
    assert ctx.router.has("worker")
    for n in range(5):
        assert ctx.router.tell("worker", f"m{n}")
    new_inbox, _ = add_fake(ctx, "worker")
    assert ctx.router.tell("worker", "after")
    expected = [f"m{n}" for n in range(5)] + ["after"]
    assert new_inbox.wait(lambda items: len(items) == 6) == expected
    assert old.is_alive()
    assert old_inbox.all() == []


def test_router_unregister_leaves_a_newer_instance_alone(ctx: Context) -> None:
    """An old instance unregistering itself does not remove its replacement."""
    _, old = add_fake(ctx, "worker")
    inbox, _ = add_fake(ctx, "worker")
    ctx.router.unregister("worker", old)
    assert ctx.router.tell("worker", "still here")
    assert inbox.wait(lambda items: items == ["still here"])
    ctx.router.unregister("worker")
    assert not ctx.router.has("worker")


def test_publish_goes_to_the_gateway(ctx: Context) -> None:
    """router.publish hands the Publish to the actor named "gateway"."""
    inbox, _ = add_fake(ctx, GATEWAY)
    message = Publish("job.x.state", b"body", message_id="x:1", durable=True)
    ctx.router.publish(message)
    assert inbox.wait(lambda items: len(items) == 1) == [message]


def test_publish_without_a_gateway_is_logged(ctx: Context) -> None:
    """Publishing with no gateway registered logs gateway_missing with the routing key."""
    with capture_logs() as logs:
        ctx.router.publish(Publish("job.x.state", b"body", message_id="x:1"))
    assert [(e["event"], e["routing_key"]) for e in logs] == [("gateway_missing", "job.x.state")]


# -- actor and supervisor --------------------------------------------------------------------


def test_a_crashed_actor_is_restarted_under_its_name_logged_and_counted(ctx: Context) -> None:
    """A handler exception kills the instance; a new one takes the name; the crash is logged."""
    start_supervisor(ctx)
    name = unique("worker")
    spawner = Spawner(ctx, name)
    with capture_logs() as logs:
        supervise(ctx, name, spawner)
        spawner.wait_started(1)
        assert ctx.router.tell(name, "boom")
        spawner.wait_started(2)
        assert ctx.router.tell(name, ("msg", "hi"))
        spawner.inbox.wait(lambda items: (2, "hi") in items)
    assert not spawner.ref(1).is_alive()
    assert spawner.ref(2).is_alive()
    assert spawner.made == 2
    crashed = [e for e in logs if e["event"] == "actor_crashed"]
    assert [(e["actor"], e["log_level"]) for e in crashed] == [(name, "error")]
    assert "boom" in crashed[0]["error"]
    restarting = [e for e in logs if e["event"] == "actor_restarting"]
    assert [e["actor"] for e in restarting] == [name]
    assert sample(RESTARTS, actor=name) == 1.0


def test_messages_sent_during_the_restart_reach_the_new_instance(ctx: Context) -> None:
    """Messages told while the next instance is being made are delivered to it, in order."""
    start_supervisor(ctx)
    name = unique("worker")
    spawner = Spawner(ctx, name)
    entered, release = spawner.gate(2)
    supervise(ctx, name, spawner)
    spawner.wait_started(1)
    assert ctx.router.tell(name, "boom")
    assert entered.wait(DEADLINE)  # the supervisor is making instance 2 now
    for text in ("a", "b", "c"):
        assert ctx.router.tell(name, ("msg", text))
    release.set()
    spawner.inbox.wait(lambda items: (2, "c") in items)
    assert spawner.got(2) == ["a", "b", "c"]
    assert spawner.got(1) == []


def test_a_failure_in_started_is_reported_and_restarted(ctx: Context) -> None:
    """An exception in started() is logged and counted, and the actor is started again."""
    start_supervisor(ctx)
    name = unique("worker")
    spawner = Spawner(ctx, name, fail_starts=frozenset({1}))
    with capture_logs() as logs:
        supervise(ctx, name, spawner)
        spawner.wait_started(2)
        assert ctx.router.tell(name, ("msg", "hello"))
        spawner.inbox.wait(lambda items: (2, "hello") in items)
    assert not spawner.ref(1).is_alive()
    failed = [e for e in logs if e["event"] == "actor_start_failed"]
    assert [(e["actor"], e["log_level"]) for e in failed] == [(name, "error")]
    assert [e["actor"] for e in logs if e["event"] == "actor_restarting"] == [name]
    assert sample(RESTARTS, actor=name) == 1.0


def test_a_temporary_child_is_not_restarted_and_its_owner_hears(ctx: Context) -> None:
    """A temporary child's crash is reported to its notify target as ChildDied; no restart."""
    supervisor = start_supervisor(ctx)
    owner, _ = add_fake(ctx, "owner")
    name = "pty:" + uuid.uuid4().hex
    spawner = Spawner(ctx, name)
    supervise(ctx, name, spawner, permanent=False, notify="owner")
    spawner.wait_started(1)
    assert ctx.router.tell(name, "boom")
    died = owner.wait_of(ChildDied)
    assert [d.name for d in died] == [name]
    assert "boom" in died[0].error
    barrier(supervisor)
    assert spawner.made == 1
    assert not ctx.router.has(name)
    assert not ctx.router.tell(name, ("msg", "anyone?"))


class QuickSupervisor(Supervisor):
    """The real supervisor with a small crash limit, so the limit is reached quickly."""

    max_crashes = 2


def test_too_many_crashes_stop_the_process_with_exit_code_70(ctx: Context) -> None:
    """Past max_crashes within the window the supervisor stops the process, loudly, at once."""
    ctx.router.register(SUPERVISOR, QuickSupervisor.start(ctx))
    name = unique("crashy")
    spawner = Spawner(ctx, name, always_fail=True)
    with capture_logs() as logs:
        supervise(ctx, name, spawner)
        assert ctx.stopping.wait(DEADLINE)
    assert ctx.exit_code == [70]
    assert spawner.made == QuickSupervisor.max_crashes + 1
    limit = [e for e in logs if e["event"] == "actor_restart_limit"]
    assert [(e["actor"], e["log_level"], e["crashes"]) for e in limit] == [(name, "critical", 3)]


def test_an_unexpected_message_is_logged_and_counted_but_not_fatal(ctx: Context) -> None:
    """unexpected() logs the message type and counts it; the actor handles what comes next."""
    name = unique("worker")
    inbox = Inbox()
    ctx.router.register(name, Worker.start(ctx, name, inbox, 1, False))
    with capture_logs() as logs:
        assert ctx.router.tell(name, 3.5)
        assert ctx.router.tell(name, ("msg", "still alive"))
        inbox.wait(lambda items: (1, "still alive") in items)
    assert [(e["event"], e["type"], e["actor"]) for e in logs] == [
        ("message_unexpected", "float", name)
    ]
    assert sample(UNEXPECTED, actor=name) == 1.0


def test_tell_self_later_delivers_the_message_to_the_actor(ctx: Context) -> None:
    """tell_self_later makes the message arrive in the actor's own mailbox after the delay."""
    name = unique("worker")
    inbox = Inbox()
    ref = Worker.start(ctx, name, inbox, 1, False)
    ref.proxy().tell_self_later(0.01, ("msg", "later")).get(timeout=DEADLINE)
    inbox.wait(lambda items: (1, "later") in items)


def test_supervise_without_a_supervisor_raises(ctx: Context) -> None:
    """Asking for supervision with no supervisor registered fails loudly, not silently."""
    spawner = Spawner(ctx, unique("worker"))
    with pytest.raises(RuntimeError, match="no supervisor"):
        supervise(ctx, spawner.name, spawner)
    assert spawner.made == 0


# -- bugs: each test shows a defect and passes once it is fixed ------------------------------


def test_a_message_told_before_the_supervisor_hears_of_a_crash_is_not_lost(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message told after the crash but before the supervisor reacts reaches the new one."""
    supervisor = start_supervisor(ctx)
    name = unique("worker")
    spawner = Spawner(ctx, name)
    supervise(ctx, name, spawner)
    spawner.wait_started(1)
    reported = threading.Event()
    mark_restarting = ctx.router.restarting

    def spy(target: str, ref: pykka.ActorRef[Any] | None = None) -> None:
        mark_restarting(target, ref)
        if target == name and ref is not None:  # the crashed instance reports itself
            reported.set()

    monkeypatch.setattr(ctx.router, "restarting", spy)
    busy, free = threading.Event(), threading.Event()

    def slow_factory() -> pykka.ActorRef[Any]:  # keeps the supervisor busy, as a slow start does
        busy.set()
        free.wait(DEADLINE)
        return add_fake(ctx, "other")[1]

    supervise(ctx, "slow", slow_factory)
    try:
        assert busy.wait(DEADLINE)
        assert ctx.router.tell(name, "boom")
        assert reported.wait(DEADLINE)  # the crash is reported; ChildDied waits in the mailbox
        assert ctx.router.has(name)
        accepted = ctx.router.tell(name, ("msg", "in the gap"))
        assert spawner.made == 1  # the supervisor has not got to the restart yet
    finally:
        free.set()
    spawner.wait_started(2)
    barrier(supervisor)
    assert ctx.router.tell(name, ("msg", "after"))
    spawner.inbox.wait(lambda items: (2, "after") in items)
    assert accepted
    assert spawner.got(2) == ["in the gap", "after"]


def test_held_messages_survive_an_instance_that_fails_to_start(ctx: Context) -> None:
    """Messages held across a restart reach the first instance that actually starts."""
    supervisor = start_supervisor(ctx)
    name = unique("worker")
    spawner = Spawner(ctx, name, doomed=frozenset({2}))
    entered, release = spawner.gate(2)
    supervise(ctx, name, spawner)
    spawner.wait_started(1)
    assert ctx.router.tell(name, "boom")
    assert entered.wait(DEADLINE)  # instance 2 is being made
    assert ctx.router.tell(name, ("msg", "early"))
    release.set()
    spawner.inbox.wait(lambda items: ("starting", 2) in items)  # inside its started() now
    barrier(supervisor)  # and the supervisor is done with making it
    assert ctx.router.tell(name, ("msg", "held"))
    spawner.doom.set()  # instance 2 fails to start, with nothing in its mailbox
    spawner.wait_started(3)
    assert ctx.router.tell(name, ("msg", "after"))
    spawner.inbox.wait(lambda items: (3, "after") in items)
    assert spawner.got(3) == ["early", "held", "after"]
    assert spawner.got(2) == []


def test_a_factory_that_raises_does_not_kill_supervision_silently(ctx: Context) -> None:
    """A child whose factory raises counts as a crash: it is made again, with backoff."""
    supervisor = start_supervisor(ctx)
    name = unique("broken")
    spawner = Spawner(ctx, name)
    attempts: list[int] = []

    def broken_once() -> pykka.ActorRef[Any]:
        attempts.append(1)
        if len(attempts) == 1:
            raise KeyError("fleet_key")
        return spawner()

    with capture_logs() as logs:
        supervise(ctx, name, broken_once)
        barrier(supervisor)  # the first attempt raised: the name is held for the next
        assert ctx.router.tell(name, ("msg", "held"))  # held until an instance starts
        spawner.wait_started(1)
    assert ctx.router.tell(name, ("msg", "after"))
    spawner.inbox.wait(lambda items: (1, "after") in items)
    assert spawner.got(1) == ["held", "after"]
    assert supervisor.is_alive()
    assert not ctx.stopping.is_set()
    assert [e["actor"] for e in logs if e["event"] == "actor_build_failed"] == [name]
    assert [e["actor"] for e in logs if e["event"] == "actor_restarting"] == [name]
    assert sample(RESTARTS, actor=name) == 1.0


def test_a_factory_that_always_raises_stops_the_process(ctx: Context) -> None:
    """A factory that keeps raising hits the crash limit: the process stops with code 70."""
    supervisor = QuickSupervisor.start(ctx)
    ctx.router.register(SUPERVISOR, supervisor)
    name = unique("broken")
    attempts: list[int] = []

    def broken() -> pykka.ActorRef[Any]:
        attempts.append(1)
        raise KeyError("fleet_key")

    with capture_logs() as logs:
        supervise(ctx, name, broken)
        assert ctx.stopping.wait(DEADLINE)
    assert ctx.exit_code == [70]
    assert len(attempts) == QuickSupervisor.max_crashes + 1
    assert supervisor.is_alive()
    limit = [e for e in logs if e["event"] == "actor_restart_limit"]
    assert [(e["actor"], e["crashes"]) for e in limit] == [(name, 3)]


class PatientSupervisor(Supervisor):
    max_crashes = 10


def test_the_crash_limit_holds_for_a_limit_of_ten(ctx: Context) -> None:
    """With max_crashes = 10, the eleventh crash in the window stops the process."""
    supervisor = PatientSupervisor.start(ctx)
    ctx.router.register(SUPERVISOR, supervisor)
    name = unique("crashy")
    spawner = Spawner(ctx, name)
    supervise(ctx, name, spawner)
    spawner.wait_started(1)
    for _ in range(PatientSupervisor.max_crashes + 1):
        supervisor.tell(ChildDied(name, "RuntimeError('boom')"))
    barrier(supervisor)
    assert ctx.stopping.is_set()


class DyingRef:
    """A ref whose actor dies at the moment it is told something.

    Meanwhile another thread runs `meanwhile` (the supervisor registering the next instance)
    and gets RACE seconds to finish before the tell fails.
    """

    def __init__(self, meanwhile: Any) -> None:
        self.other = threading.Thread(target=meanwhile)

    def tell(self, message: object) -> None:
        self.other.start()
        self.other.join(RACE)
        raise pykka.ActorDeadError("dead")


def test_a_tell_racing_a_restart_reaches_the_new_instance(ctx: Context) -> None:
    """A message whose target died and was replaced mid-tell is delivered to the replacement."""
    inbox = Inbox()

    def replaced() -> None:  # the supervisor registers the next instance meanwhile
        ctx.router.register("worker", FakeActor.start(inbox))

    dying = DyingRef(replaced)
    ctx.router.register("worker", cast(pykka.ActorRef[Any], dying))
    assert ctx.router.tell("worker", "raced")
    assert ctx.router.tell("worker", "after")
    assert inbox.wait(lambda items: "after" in items) == ["raced", "after"]
    dying.other.join(DEADLINE)


class HandOverRef:
    """A ref through which another thread tells the name while held messages are handed over."""

    def __init__(self, ctx: Context, inbox: Inbox) -> None:
        self.ctx = ctx
        self.inbox = inbox
        self.interleaved = False

    def tell(self, message: object) -> None:
        if not self.interleaved:
            self.interleaved = True
            other = threading.Thread(target=self.ctx.router.tell, args=("worker", "live"))
            other.start()
            other.join(RACE)  # it cannot finish while the hand-over holds the router's lock
        self.inbox.put(message)


def test_held_messages_are_not_overtaken_during_the_hand_over(ctx: Context) -> None:
    """Messages held during a restart arrive before any told after the new instance registered."""
    ctx.router.restarting("worker")
    for text in ("h1", "h2"):
        assert ctx.router.tell("worker", text)
    inbox = Inbox()
    ctx.router.register("worker", cast(pykka.ActorRef[Any], HandOverRef(ctx, inbox)))
    assert inbox.wait(lambda items: len(items) == 3) == ["h1", "h2", "live"]


def test_a_message_to_a_child_from_its_own_started_is_not_lost(ctx: Context) -> None:
    """A message told to a new child while its started() runs is delivered to it."""
    supervisor = start_supervisor(ctx)
    name = unique("eager")
    spawner = Spawner(ctx, name, eager=True)
    supervise(ctx, name, spawner)
    barrier(supervisor)
    assert ctx.router.tell(name, ("msg", "after"))
    spawner.inbox.wait(lambda items: (1, "after") in items)
    assert ("told", True) in spawner.inbox.all()
    assert spawner.got(1) == ["early", "after"]


class SelfUnregistering(pykka.ThreadingActor):
    """Unregisters its own name in on_stop, as PtySession does; on_stop waits for the test."""

    use_daemon_thread = True

    def __init__(
        self, ctx: Context, name: str, entered: threading.Event, go: threading.Event
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.name = name
        self.entered = entered
        self.go = go

    def on_receive(self, message: Any) -> Any:
        return None

    def on_stop(self) -> None:
        self.entered.set()
        assert self.go.wait(DEADLINE)
        self.ctx.router.unregister(self.name, self.actor_ref)


def test_a_message_to_a_stopping_actor_does_not_keep_its_name_alive(ctx: Context) -> None:
    """An actor that stopped and unregistered leaves no name behind, whatever it was told."""
    name = "pty:" + uuid.uuid4().hex
    entered, go = threading.Event(), threading.Event()
    ref = SelfUnregistering.start(ctx, name, entered, go)
    ctx.router.register(name, ref)
    stopped = ref.stop(block=False)
    assert entered.wait(DEADLINE)  # pykka marked it stopped; on_stop has not unregistered
    ctx.router.tell(name, "late")
    go.set()
    stopped.get(timeout=DEADLINE)
    assert not ctx.router.has(name)
    assert not ctx.router.tell(name, "anyone?")
