"""The PTY Session through its mailbox and its data plane: start, input, control, exit, output
and backpressure.

The session takes its PTY from the `spawn` service: here a `FakePty` (tests/unit/fake_pty.py),
whose output the test writes and whose exit it decides. The last tests use the real
`ptys.spawn` (no service given) to check what the fake would hide: EIO at the end of output,
output still in the terminal when the exit is seen, a real echo, terminal size and signals.
The Pump's timing is tested on its own in test_pty_pump.py.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pykka
import pytest

from actors import pty_session
from actors.pty_session import PtySession
from runlet.adapters.logfile import FLAG_FINAL, open_output
from runlet.adapters.ptys import DEFAULT_TERM
from runlet.adapters.ptys.pump import HIGH_WATER, LOW_WATER
from runlet.errors import SpawnFailed
from runlet.protocol import addresses, wire
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import MAX_CHUNK, InputSent, OutputChunk, StartJob
from runlet.protocol.payloads import JobSpec, seal_input
from runlet.protocol.states import ExitStatus
from runlet.runtime.actor import Context
from runlet.runtime.local_messages import (
    Delivered,
    ForgetChild,
    GraceExpired,
    OpenLog,
    OutputSealed,
    OutputStored,
    Publish,
    ResizeSession,
    SessionEnded,
    SessionStarted,
    Settle,
    SignalSession,
    StartSession,
    Terminate,
)
from runlet.runtime.names import GATEWAY, JOB_QUEUE, SUPERVISOR, VAULT, session_name
from tests.unit.fake_pty import FakePty
from tests.unit.fakes import DEADLINE, add_fake, running_context, sample, sync, wait_for

T = TypeVar("T")
NOW = 1_000_000.0  # what the context's FakeClock says: the stamp on every chunk
VIEWER = "laptop"
EXITED_3 = ExitStatus(code=3, signal=None)


@dataclass
class Spawned:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    rows: int
    cols: int


class Spawner:
    """The `spawn` service: records each call and returns `pty`, or raises `error`."""

    def __init__(self) -> None:
        self.pty = FakePty()
        self.error: Exception | None = None
        self.calls: list[Spawned] = []

    def __call__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        rows: int = 24,
        cols: int = 80,
    ) -> FakePty:
        self.calls.append(Spawned(list(argv), dict(env or {}), cwd, rows, cols))
        if self.error is not None:
            raise self.error
        return self.pty


class Rig:
    """A PTY Session among fakes (job queue, vault, gateway, supervisor); its PTY a FakePty
    unless `real`, when the session uses the real `ptys.spawn`."""

    def __init__(self, ctx: Context, *, real: bool = False) -> None:
        self.ctx = ctx
        self.key = FleetKey.generate()
        self.spawner = Spawner()
        ctx.services["fleet_key"] = self.key
        if not real:
            ctx.services["spawn"] = self.spawner
        self.job_queue, _ = add_fake(ctx, JOB_QUEUE)
        self.vault, self.vault_ref = add_fake(ctx, VAULT)
        self.gateway, self.gateway_ref = add_fake(ctx, GATEWAY)
        self.supervisor, _ = add_fake(ctx, SUPERVISOR)
        self.job_id = addresses.new_job_id()
        self.session: pykka.ActorRef[Any] | None = None
        self.tokens = 0

    @property
    def pty(self) -> FakePty:
        return self.spawner.pty

    def start(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        rows: int = 24,
        cols: int = 80,
        child_of: str | None = None,
    ) -> object:
        """Start the session for `argv` (`cat` by default); returns its first report."""
        request_id = child_of or self.job_id
        spec = JobSpec(argv or ("cat",), env or {}, cwd, timeout)
        sealed = spec.seal(self.key.job_key(request_id))
        request = StartJob(
            request_id, "alice", "node:node1", VIEWER, sealed, NOW, rows=rows, cols=cols
        )
        start = StartSession(self.job_id, wire.encode(request))
        self.session = PtySession.start(self.ctx, session_name(self.job_id), start)
        return self.job_queue.wait(lambda items: len(items) >= 1, what="the first report")[0]

    def tell(self, message: object) -> None:
        assert self.session is not None
        self.session.tell(message)

    def ask(self, message: object) -> None:
        """Tell the session `message` and return once it has handled it."""
        assert self.session is not None
        self.session.ask(message, timeout=DEADLINE)

    def type(self, data: bytes, seq: int, *, viewer: str = VIEWER, sealed: bytes = b"") -> int:
        """Deliver keystrokes from `viewer` as the gateway does; returns the delivery's token."""
        self.tokens += 1
        sealed = sealed or seal_input(self.key.job_key(self.job_id), viewer, seq, data)
        self.tell(Delivered(self.tokens, InputSent(self.job_id, viewer, seq, sealed)))
        return self.tokens

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Call `fn` on the I/O loop, as the Gateway's consumer would; returns its result."""

        async def run() -> T:
            return fn()

        return self.ctx.loop.run_sync(run(), timeout=DEADLINE)

    def sink_type(self, data: bytes, seq: int, *, sealed: bytes = b"") -> str | None:
        """Hand keystrokes to the session's input sink on the loop; returns its answer."""
        sealed = sealed or seal_input(self.key.job_key(self.job_id), VIEWER, seq, data)
        sent = InputSent(self.job_id, VIEWER, seq, sealed)

        def call() -> str | None:
            sink = self.ctx.plane.input_sink(self.job_id)
            assert sink is not None, "the session lent no input sink"
            return sink(sent)

        return self.on_loop(call)

    def settled(self, token: int) -> Settle:
        self.gateway.wait(
            lambda items: any(isinstance(m, Settle) and m.token == token for m in items),
            what=f"settle {token}",
        )
        return next(m for m in self.gateway.of(Settle) if m.token == token)

    def ended(self) -> SessionEnded:
        [ended] = self.job_queue.wait_of(SessionEnded)
        return ended

    def opened(self, chunk: OutputSealed) -> tuple[float, bytes]:
        """(stamp, plaintext) of a chunk the session sealed."""
        return open_output(self.key.job_key(self.job_id), chunk.seq, chunk.flags, chunk.sealed)

    def output(self) -> bytes:
        return b"".join(self.opened(chunk)[1] for chunk in self.vault.of(OutputSealed))

    def wait_output(self, expected: bytes) -> None:
        self.vault.wait(lambda _: expected in self.output(), what=f"output {expected!r}")

    def loop_rounds(self, count: int = 3) -> None:
        """Return once the I/O loop has gone round `count` times after everything told it."""

        async def one_round() -> None:
            await asyncio.sleep(0)

        for _ in range(count):
            self.ctx.loop.run_sync(one_round(), timeout=DEADLINE)


def wait_call(pty: FakePty, call: tuple[object, ...]) -> None:
    pty.calls.wait(lambda items: call in items, what=repr(call))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with running_context(tmp_path, grace_seconds=3600.0) as ctx:
        rig = Rig(ctx)
        yield rig
    rig.pty.dispose()  # after the session and the loop have stopped


@pytest.fixture
def real_rig(tmp_path: Path) -> Iterator[Rig]:
    with running_context(tmp_path, grace_seconds=3600.0) as ctx:
        rig = Rig(ctx, real=True)
        yield rig
    rig.pty.dispose()


# -- start ------------------------------------------------------------------------------------


def test_start_spawns_the_command_and_reports_it(rig: Rig) -> None:
    """A started session tells the vault OpenLog and the job queue SessionStarted with the pid."""
    first = rig.start("cat", "-u")
    assert first == SessionStarted(rig.job_id, 4242)
    rig.vault.wait_of(OpenLog)
    sync(rig.vault_ref)
    assert rig.vault.all() == [OpenLog(rig.job_id)]
    assert rig.spawner.calls[0].argv == ["cat", "-u"]


def test_the_child_gets_the_jobs_command_environment_and_terminal(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell line runs through the shell, with the job's env, cwd and size, and no RUNLET_*."""
    monkeypatch.setenv("RUNLET_SECRET_SETTING", "not for jobs")
    monkeypatch.setenv("SOME_PLAIN_VARIABLE", "inherited")
    monkeypatch.delenv("TERM", raising=False)
    rig.start("echo hi; exit 3", env={"FOO": "bar"}, cwd="/tmp", rows=40, cols=100)
    [spawned] = rig.spawner.calls
    assert spawned.argv == ["/bin/sh", "-c", "echo hi; exit 3"]
    assert (spawned.cwd, spawned.rows, spawned.cols) == ("/tmp", 40, 100)
    assert spawned.env["FOO"] == "bar"
    assert spawned.env["SOME_PLAIN_VARIABLE"] == "inherited"
    assert spawned.env["RUNLET_JOB_ID"] == rig.job_id
    assert spawned.env["TERM"] == DEFAULT_TERM
    assert "RUNLET_SECRET_SETTING" not in spawned.env


def test_a_command_that_cannot_start_is_reported_failed(rig: Rig) -> None:
    """SpawnFailed ends the session at once as "failed", saying why; no log is opened."""
    why = "cannot start 'nope': command not found"
    rig.spawner.error = SpawnFailed(why)
    assert rig.start("nope") == SessionEnded(rig.job_id, "failed", None, why)
    rig.supervisor.wait_of(ForgetChild)
    assert rig.session is not None
    assert rig.session.actor_stopped.wait(DEADLINE)
    sync(rig.vault_ref)
    assert rig.vault.all() == []


# -- input ------------------------------------------------------------------------------------


def test_keystrokes_are_opened_written_and_settled(rig: Rig) -> None:
    """Input sealed with the job's key is acked and its bytes are written into the PTY."""
    rig.start()
    token = rig.type(b"ls -l\r", 0)
    assert rig.settled(token) == Settle(token, True, "")
    wait_call(rig.pty, ("write", b"ls -l\r"))


def test_repeated_keystrokes_are_acked_but_typed_once(rig: Rig) -> None:
    """A redelivered (viewer, seq) or an older seq is acked and dropped; viewers count apart."""
    rig.start()
    tokens = [
        rig.type(b"a", 0),
        rig.type(b"a", 0),  # redelivered
        rig.type(b"b", 1),
        rig.type(b"a", 0),  # older than the last one seen
        rig.type(b"c", 0, viewer="phone"),  # another viewer's own numbering
    ]
    wait_call(rig.pty, ("write", b"c"))
    assert rig.pty.writes() == [b"a", b"b", b"c"]
    assert all(rig.settled(token).ok for token in tokens)


@pytest.mark.parametrize("wrong", ["key", "seq", "viewer"])
def test_keystrokes_with_a_bad_seal_are_refused(rig: Rig, wrong: str) -> None:
    """Input sealed with another key, or for another seq or viewer, is refused and not typed."""
    rig.start()
    key = FleetKey.generate() if wrong == "key" else rig.key
    seq = 5 if wrong == "seq" else 0
    viewer = "phone" if wrong == "viewer" else VIEWER
    sealed = seal_input(key.job_key(rig.job_id), viewer, seq, b"rm -rf ~\r")
    refused = rig.settled(rig.type(b"", 0, sealed=sealed))
    assert not refused.ok
    assert refused.reason
    good = rig.type(b"ok\r", 0)  # the refused one did not use up seq 0
    wait_call(rig.pty, ("write", b"ok\r"))
    assert rig.settled(good).ok
    assert rig.pty.writes() == [b"ok\r"]


def test_a_fan_out_child_reads_its_command_and_input_under_their_own_keys(rig: Rig) -> None:
    """A fan-out child opens the command with the parent job's key, keystrokes with its own."""
    parent = rig.job_id
    rig.job_id = addresses.child_job_id(parent, "node1")
    assert rig.start("cat", child_of=parent) == SessionStarted(rig.job_id, 4242)
    token = rig.type(b"x", 0)  # sealed with the child's key
    wait_call(rig.pty, ("write", b"x"))
    assert rig.settled(token).ok


def test_keystrokes_through_the_input_sink_are_typed_within_the_loops_call(rig: Rig) -> None:
    """The input sink opens, dedupes and writes on the loop and answers; no mailbox, no Settle."""
    rig.start()
    assert rig.sink_type(b"ls\r", 0) is None
    assert rig.pty.writes() == [b"ls\r"]  # written before the sink returned
    assert rig.sink_type(b"ls\r", 0) is None  # redelivered: accepted, not typed again
    forged = seal_input(FleetKey.generate().job_key(rig.job_id), VIEWER, 1, b"rm -rf ~\r")
    refused = rig.sink_type(b"", 1, sealed=forged)
    assert refused
    assert rig.sink_type(b"pwd\r", 1) is None  # the refused one did not use up seq 1
    assert rig.pty.writes() == [b"ls\r", b"pwd\r"]
    sync(rig.gateway_ref)
    assert rig.gateway.of(Settle) == []


def test_the_input_sink_goes_with_the_session(rig: Rig) -> None:
    """Once the job has ended its sink is withdrawn: later input takes the mailbox path."""
    rig.start()
    rig.pty.exit(EXITED_3)
    rig.ended()
    rig.supervisor.wait_of(ForgetChild)
    wait_for(
        lambda: rig.on_loop(lambda: rig.ctx.plane.input_sink(rig.job_id)) is None,
        what="the input sink withdrawn",
    )


def test_output_goes_to_the_gateways_output_sink_when_it_lends_one(rig: Rig) -> None:
    """With an output sink on the loop, chunks are published through it, not the mailbox."""
    taken: list[Publish] = []

    def sink(message: Publish, on_sent: Callable[[], None] | None) -> None:
        taken.append(message)
        if on_sent is not None:
            on_sent()

    rig.on_loop(lambda: rig.ctx.plane.serve_output(sink))
    rig.start()
    rig.pty.output(b"hi")
    rig.vault.wait_of(OutputSealed)
    wait_for(lambda: len(taken) == 1, what="the chunk at the output sink")
    assert taken[0].message_id == f"{rig.job_id}:o0"
    sync(rig.gateway_ref)
    assert rig.gateway.of(Publish) == []


def test_a_chunk_is_stored_once_it_has_left_or_before_a_replay(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an output sink, the vault hears of a chunk only after its publish has left (so
    no vault work races an echo), or when the Gateway flushes before passing on a replay."""
    monkeypatch.setattr(pty_session, "STORE_WITHIN", 3600.0)  # only the events below
    held: list[Callable[[], None]] = []

    def sink(message: Publish, on_sent: Callable[[], None] | None) -> None:
        assert on_sent is not None
        held.append(on_sent)

    rig.on_loop(lambda: rig.ctx.plane.serve_output(sink))
    rig.start()
    rig.pty.output(b"one")
    wait_for(lambda: len(held) == 1, what="the first chunk at the sink")
    sync(rig.vault_ref)
    assert rig.vault.of(OutputSealed) == []
    rig.on_loop(held[0])  # it has left
    assert [c.seq for c in rig.vault.wait_of(OutputSealed)] == [0]
    rig.pty.output(b"two")
    wait_for(lambda: len(held) == 2, what="the second chunk at the sink")
    rig.on_loop(rig.ctx.plane.flush_stores)  # a replay is about to be asked
    assert [c.seq for c in rig.vault.wait_of(OutputSealed, 2)] == [0, 1]
    assert rig.output() == b"onetwo"


# -- control ----------------------------------------------------------------------------------


def test_resize_and_signal_reach_the_pty(rig: Rig) -> None:
    """ResizeSession sets the terminal size; SignalSession signals the job's process group."""
    rig.start()
    rig.tell(ResizeSession(rig.job_id, 50, 132))
    rig.tell(SignalSession(rig.job_id, signal.SIGINT))
    wait_call(rig.pty, ("signal", signal.SIGINT))
    assert rig.pty.calls.all() == [("resize", 50, 132), ("signal", signal.SIGINT)]


def test_terminate_sends_sigterm_then_sigkill_when_the_grace_is_over(rig: Rig) -> None:
    """Terminate sends SIGTERM once; GraceExpired sends SIGKILL; the end names SIGKILL."""
    rig.start()
    rig.tell(Terminate(rig.job_id, 3600.0, "cancelled"))
    rig.tell(Terminate(rig.job_id, 3600.0, "cancelled"))  # a second cancel changes nothing
    rig.ask(GraceExpired(rig.job_id))
    assert rig.pty.calls.all() == [("signal", signal.SIGTERM), ("signal", signal.SIGKILL)]
    killed = ExitStatus(code=None, signal=signal.SIGKILL)
    rig.pty.exit(killed)
    assert rig.ended() == SessionEnded(rig.job_id, "cancelled", killed, "ended by SIGKILL")


def test_a_job_that_ends_within_the_grace_was_ended_by_sigterm(rig: Rig) -> None:
    """A job that exits after SIGTERM is reported with how it was asked to end, by SIGTERM."""
    rig.start()
    rig.ask(Terminate(rig.job_id, 3600.0, "cancelled"))
    status = ExitStatus(code=None, signal=signal.SIGTERM)
    rig.pty.exit(status)
    assert rig.ended() == SessionEnded(rig.job_id, "cancelled", status, "ended by SIGTERM")
    assert ("signal", signal.SIGKILL) not in rig.pty.calls.all()


def test_the_grace_period_runs_out_by_itself(rig: Rig) -> None:
    """After Terminate's grace period the session sends SIGKILL without being told again."""
    rig.start()
    rig.tell(Terminate(rig.job_id, 0.01, "cancelled"))
    wait_call(rig.pty, ("signal", signal.SIGKILL))
    assert rig.pty.calls.all()[0] == ("signal", signal.SIGTERM)


def test_the_jobs_timeout_terminates_it_as_timed_out(rig: Rig) -> None:
    """A job's own timeout sends SIGTERM by itself, and its end is reported as timed_out."""
    rig.start("sleep 1000", timeout=0.01)
    wait_call(rig.pty, ("signal", signal.SIGTERM))
    status = ExitStatus(code=None, signal=signal.SIGTERM)
    rig.pty.exit(status)
    assert rig.ended() == SessionEnded(rig.job_id, "timed_out", status, "ended by SIGTERM")


# -- exit -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "how"),
    [(EXITED_3, "exited"), (ExitStatus(code=None, signal=signal.SIGSEGV), "killed")],
)
def test_the_end_is_reported_with_its_status_and_the_session_goes(
    rig: Rig, status: ExitStatus, how: str
) -> None:
    """An exit is SessionEnded with the status; the PTY is closed and the session forgotten."""
    rig.start()
    rig.pty.exit(status)
    assert rig.ended() == SessionEnded(rig.job_id, how, status, None)
    assert rig.supervisor.wait_of(ForgetChild) == [ForgetChild(session_name(rig.job_id))]
    wait_call(rig.pty, ("close",))
    assert not rig.ctx.router.has(session_name(rig.job_id))


def test_an_unexpected_message_is_counted_and_the_session_goes_on(rig: Rig) -> None:
    """A message the session has no case for is counted; the session keeps working."""
    rig.start()
    before = sample("runlet_unexpected_messages_total", actor="pty")
    rig.ask("nonsense")
    assert sample("runlet_unexpected_messages_total", actor="pty") == before + 1
    rig.type(b"still here", 0)
    wait_call(rig.pty, ("write", b"still here"))


# -- output through the session ---------------------------------------------------------------


def test_output_is_sealed_stored_and_published_numbered_and_stamped_then_final(rig: Rig) -> None:
    """Each chunk reaches the vault sealed, after OpenLog, numbered from 0 and stamped; the
    same sealed bytes are published (here through the gateway's mailbox); the last is FINAL."""
    rig.start()
    rig.pty.output(b"hello")
    rig.vault.wait_of(OutputSealed)
    rig.pty.exit(EXITED_3)
    rig.ended()
    sync(rig.vault_ref)
    opening, *chunks = rig.vault.all()
    assert opening == OpenLog(rig.job_id)
    assert all(isinstance(chunk, OutputSealed) for chunk in chunks)
    sealed = [chunk for chunk in chunks if isinstance(chunk, OutputSealed)]
    assert [(c.seq, c.flags, c.size, c.final) for c in sealed] == [
        (0, 0, 5, False),
        (1, FLAG_FINAL, 0, True),
    ]
    assert [rig.opened(chunk) for chunk in sealed] == [(NOW, b"hello"), (NOW, b"")]
    published = rig.gateway.wait_of(Publish, 2)
    assert [(p.message_id, p.job_id, p.after_start) for p in published] == [
        (f"{rig.job_id}:o0", rig.job_id, True),
        (f"{rig.job_id}:o1", rig.job_id, True),
    ]
    assert [wire.decode(p.body) for p in published] == [
        OutputChunk(rig.job_id, c.seq, c.flags, c.sealed) for c in sealed
    ]


def test_reading_stops_while_the_vault_owes_too_much_and_resumes_on_credit(rig: Rig) -> None:
    """Past HIGH_WATER bytes unstored the PTY is not read; OutputStored below LOW_WATER resumes."""
    chunks = 80
    flood = bytes(range(256)) * (chunks * MAX_CHUNK // 256)
    stop_after = HIGH_WATER // MAX_CHUNK + 1  # the first chunk that puts the owed sum over
    rig.start()
    rig.pty.output(flood)  # each read takes MAX_CHUNK and is sent at once
    rig.vault.wait_of(OutputSealed, stop_after)
    rig.loop_rounds()
    reads = rig.pty.reads
    rig.loop_rounds()
    sync(rig.vault_ref)
    assert (len(rig.vault.of(OutputSealed)), rig.pty.reads) == (stop_after, reads)
    assert rig.pty.pending == (chunks - stop_after) * MAX_CHUNK
    still_owed = LOW_WATER // MAX_CHUNK  # credit down to exactly LOW_WATER: not enough
    for seq in range(stop_after - still_owed):
        rig.ask(OutputStored(rig.job_id, seq, MAX_CHUNK))
    rig.loop_rounds()
    assert rig.pty.reads == reads
    rig.ask(OutputStored(rig.job_id, stop_after - still_owed, MAX_CHUNK))
    produced = rig.vault.wait_of(OutputSealed, chunks)
    assert [chunk.seq for chunk in produced] == list(range(chunks))
    assert rig.output() == flood


# -- a real PTY -------------------------------------------------------------------------------


def test_a_real_pty_flood_arrives_whole_in_order_then_the_exit(real_rig: Rig) -> None:
    """300 kB from a real child arrive whole and in order, in chunks of at most MAX_CHUNK."""
    real_rig.start("head -c 300000 /dev/zero; exit 3")
    assert real_rig.ended() == SessionEnded(real_rig.job_id, "exited", EXITED_3, None)
    sync(real_rig.vault_ref)
    chunks = real_rig.vault.of(OutputSealed)
    assert [chunk.seq for chunk in chunks] == list(range(len(chunks)))
    assert [chunk.final for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(chunk.size <= MAX_CHUNK for chunk in chunks)
    assert real_rig.output() == bytes(300000)


def test_keystrokes_reach_a_real_pty_and_its_echo_comes_back(real_rig: Rig) -> None:
    """Typed input is echoed by the terminal and answered by `cat`; Ctrl-D ends it."""
    real_rig.start("cat")
    real_rig.type(b"hello\r", 0)
    real_rig.wait_output(b"hello\r\nhello\r\n")  # the terminal's echo, then cat's copy
    real_rig.type(b"\x04", 1)
    assert real_rig.ended() == SessionEnded(
        real_rig.job_id, "exited", ExitStatus(code=0, signal=None), None
    )


def test_a_real_pty_is_resized_and_cancelled(real_rig: Rig) -> None:
    """The job sees a resize as its terminal size; cancelling ends it by SIGTERM."""
    real_rig.start("read line; stty size; exec sleep 1000", rows=24, cols=80)
    real_rig.tell(ResizeSession(real_rig.job_id, 40, 100))
    real_rig.type(b"\r", 0)
    real_rig.wait_output(b"40 100")
    real_rig.tell(Terminate(real_rig.job_id, 3600.0, "cancelled"))
    status = ExitStatus(code=None, signal=signal.SIGTERM)
    assert real_rig.ended() == SessionEnded(
        real_rig.job_id, "cancelled", status, "ended by SIGTERM"
    )
