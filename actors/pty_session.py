"""PTY Session: one running job's child in a pseudo-terminal.

The actor owns the child: it spawns it, writes keystrokes into it, resizes and signals it,
and ends it (SIGTERM, a grace period, then SIGKILL). Output is read on the I/O loop by a
small pump that coalesces reads by size and time — a lone keystroke's echo leaves at once,
a flood leaves in 64 KiB chunks — numbers them and hands them to the Log Vault. The pump stops
reading while too many bytes are owed by the vault (backpressure), so mailboxes stay small.

The child's PTY comes from the `spawn` service when there is one (a test's fake PTY), else from
`ptys.spawn`. The pump keeps time by its loop's clock (`loop.time()`), so a test's loop decides
when its coalescing and exit-polling timers are due; chunks are stamped by the context's clock.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

from runlet import metrics
from runlet.adapters import ptys
from runlet.errors import CryptoError, SpawnFailed
from runlet.protocol import wire
from runlet.protocol.messages import MAX_CHUNK, InputSent, StartJob
from runlet.protocol.payloads import JobSpec, open_input
from runlet.protocol.states import ExitStatus
from runlet.runtime.actor import Actor, Context
from runlet.runtime.local_messages import (
    Delivered,
    ForgetChild,
    GraceExpired,
    OpenLog,
    OutputProduced,
    OutputStored,
    ProcessExited,
    ResizeSession,
    SessionEnded,
    SessionStarted,
    Settle,
    SignalSession,
    StartSession,
    StopSession,
    Terminate,
)
from runlet.runtime.names import GATEWAY, JOB_QUEUE, SUPERVISOR, VAULT

COALESCE_SECONDS = 0.002  # wait this long for more output once a burst has started
IDLE_SECONDS = 0.005  # output after this much quiet is sent at once (keystroke echo)
HIGH_WATER = 4 * 1024 * 1024  # bytes owed by the vault before the pump stops reading
LOW_WATER = 1024 * 1024
EXIT_POLL_SECONDS = 0.05


class PtySession(Actor):
    """One job's child process and terminal."""

    def __init__(self, ctx: Context, name: str, start: StartSession) -> None:
        super().__init__(ctx, name)
        self.job_id = start.job_id
        self.request = wire.decode_as(start.request, StartJob)
        self.job_key = ctx.services["fleet_key"].job_key(self.request.job_id)
        self.output_key = ctx.services["fleet_key"].job_key(self.job_id)
        self.shell: str = ctx.settings.jobs.shell
        self.spawn: Callable[..., ptys.Pty] = ctx.services.get("spawn", ptys.spawn)
        self.pty: ptys.Pty | None = None
        self.pump: Pump | None = None
        self.seen_input: dict[str, int] = {}
        self.ending: str | None = None
        self.ended_by: str | None = None
        self.done = False
        self.log = self.log.bind(job=self.job_id)

    def started(self) -> None:
        spec = JobSpec.open(self.job_key, self.request.sealed_command)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
        env.update(spec.env)
        env.update({"RUNLET_JOB_ID": self.job_id, "TERM": env.get("TERM", "xterm-256color")})
        try:
            self.pty = self.spawn(
                spec.argv_for(self.shell),
                env=env,
                cwd=spec.cwd,
                rows=self.request.rows,
                cols=self.request.cols,
            )
        except SpawnFailed as exc:
            self.log.warning("job_spawn_failed", error=str(exc))
            self.ctx.router.tell(JOB_QUEUE, SessionEnded(self.job_id, "failed", detail=str(exc)))
            self.done = True
            self.actor_ref.tell(StopSession())
            return
        self.ctx.router.tell(VAULT, OpenLog(self.job_id))
        ref = self.actor_ref
        self.pump = Pump(
            self.ctx.loop.loop,
            self.pty,
            emit=self._emit,
            exited=lambda status: _tell(ref, ProcessExited(status)),
        )
        self.ctx.loop.call(self.pump.start)
        self.ctx.router.tell(JOB_QUEUE, SessionStarted(self.job_id, self.pty.pid))
        self.log.info("job_started", pid=self.pty.pid)
        if spec.timeout is not None:
            grace = self.ctx.settings.jobs.grace_seconds
            self.tell_self_later(spec.timeout, Terminate(self.job_id, grace, "timed_out"))

    def _emit(self, seq: int, data: bytes, final: bool) -> None:
        """Runs on the I/O loop: hand a chunk to the vault (the router is thread-safe)."""
        at = self.ctx.clock()
        self.ctx.router.tell(VAULT, OutputProduced(self.job_id, seq, at, data, final))

    def on_stop(self) -> None:
        if self.pump is not None:
            self.ctx.loop.call(self.pump.close)
        elif self.pty is not None:
            self.pty.close()
        self.ctx.router.unregister(self.name, self.actor_ref)
        self.ctx.router.tell(SUPERVISOR, ForgetChild(self.name))

    def handle(self, message: object) -> None:
        match message:
            case Delivered(message=InputSent() as sent):
                self._input(message, sent)
            case OutputStored(size=size) if self.pump is not None:
                self.ctx.loop.call(self.pump.credit, size)
            case ResizeSession(rows=rows, cols=cols) if self.pty is not None:
                self.pty.resize(rows, cols)
            case SignalSession(signal=sig) if self.pty is not None:
                self.pty.signal(sig)
            case Terminate(grace=grace, reason=reason):
                self._terminate(grace, reason)
            case GraceExpired() if self.pty is not None and not self.done:
                self.ended_by = "SIGKILL"
                self.log.info("job_killed_after_grace")
                self.pty.signal(signal.SIGKILL)
            case ProcessExited(status=status):
                self._exited(status)
            case StopSession():
                self.stop()
            case _:
                self.unexpected(message)

    def _input(self, delivery: Delivered, sent: InputSent) -> None:
        if sent.seq <= self.seen_input.get(sent.viewer, -1):
            self._settle(delivery, True)  # a redelivered keystroke: already typed
            return
        try:
            data = open_input(self.output_key, sent.viewer, sent.seq, sent.sealed)
        except CryptoError as exc:
            self._settle(delivery, False, str(exc))
            return
        self.seen_input[sent.viewer] = sent.seq
        self._settle(delivery, True)
        if self.pump is not None and data:
            metrics.INPUT_BYTES.inc(len(data))
            self.ctx.loop.call(self.pump.write, data)

    def _terminate(self, grace: float, reason: str) -> None:
        if self.pty is None or self.done or self.ending is not None:
            return
        self.ending, self.ended_by = reason, "SIGTERM"
        self.log.info("job_terminating", reason=reason, grace=grace)
        self.pty.signal(signal.SIGTERM)
        self.tell_self_later(grace, GraceExpired(self.job_id))

    def _exited(self, status: ExitStatus) -> None:
        if self.done:
            return
        self.done = True
        if self.ending is not None:
            how = self.ending
            detail = f"ended by {self.ended_by}"
        else:
            how = "killed" if status.signal is not None else "exited"
            detail = None
        self.ctx.router.tell(JOB_QUEUE, SessionEnded(self.job_id, how, status, detail))
        self.stop()

    def _settle(self, delivery: Delivered, ok: bool, reason: str = "") -> None:
        self.ctx.router.tell(GATEWAY, Settle(delivery.token, ok, reason))


def _tell(ref: object, message: object) -> None:
    try:
        ref.tell(message)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the session is already gone; nothing to tell
        return


class Pump:
    """Moves bytes between the PTY and the rest of the daemon; lives on the I/O loop only."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pty: ptys.Pty,
        *,
        emit: Callable[[int, bytes, bool], None],
        exited: Callable[[ExitStatus], None],
    ) -> None:
        self.loop = loop
        self.pty = pty
        self.emit = emit
        self.exited = exited
        self.seq = 0
        self.buf = bytearray()
        self.pending_writes = bytearray()
        self.owed = 0
        self.reading = False
        self.eof = False
        self.closed = False
        self.last_flush = 0.0
        self.flush_timer: asyncio.TimerHandle | None = None
        self.exit_timer: asyncio.TimerHandle | None = None
        self.typed_at: float | None = None  # when the last keystrokes went in, until echoed

    def start(self) -> None:
        self._resume()
        self.exit_timer = self.loop.call_later(EXIT_POLL_SECONDS, self._poll_exit)

    def _resume(self) -> None:
        if not self.reading and not self.eof and not self.closed:
            self.loop.add_reader(self.pty.fd, self._readable)
            self.reading = True

    def _pause(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.pty.fd)
            self.reading = False

    def _readable(self) -> None:
        try:
            data = self.pty.read(MAX_CHUNK)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            self._pause()
            self._flush()
            return
        self.buf += data
        if len(self.buf) >= MAX_CHUNK:
            self._flush()
        elif self.flush_timer is None:
            if self.loop.time() - self.last_flush > IDLE_SECONDS:
                self._flush()
            else:
                self.flush_timer = self.loop.call_later(COALESCE_SECONDS, self._flush)

    def _flush(self, *, final: bool = False) -> None:
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
        self.last_flush = self.loop.time()
        if self.typed_at is not None and self.buf:
            metrics.INPUT_ROUNDTRIP.observe(self.last_flush - self.typed_at)
            self.typed_at = None
        while self.buf or final:
            piece = bytes(self.buf[:MAX_CHUNK])
            del self.buf[:MAX_CHUNK]
            last = final and not self.buf
            self.emit(self.seq, piece, last)
            metrics.OUTPUT_BYTES.inc(len(piece))
            self.seq += 1
            self.owed += len(piece)
            if last:
                break
        if self.owed > HIGH_WATER:
            self._pause()

    def credit(self, size: int) -> None:
        self.owed -= size
        if self.owed < LOW_WATER:
            self._resume()

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        was_idle = not self.pending_writes
        self.pending_writes += data
        self.typed_at = self.loop.time()
        if was_idle:
            self._drain()

    def _drain(self) -> None:
        while self.pending_writes:
            try:
                n = self.pty.write(bytes(self.pending_writes))
            except BlockingIOError:
                self.loop.add_writer(self.pty.fd, self._writable)
                return
            except OSError:
                self.pending_writes.clear()  # the child is gone; its exit is reported
                return
            del self.pending_writes[:n]

    def _writable(self) -> None:
        self.loop.remove_writer(self.pty.fd)
        self._drain()

    def _poll_exit(self) -> None:
        self.exit_timer = None
        if self.closed:
            return
        status = self.pty.poll()
        if status is None:
            self.exit_timer = self.loop.call_later(EXIT_POLL_SECONDS, self._poll_exit)
            return
        self._drain_output()
        self._pause()
        self._flush(final=True)
        self.exited(status)

    def _drain_output(self) -> None:
        while not self.eof:
            try:
                data = self.pty.read(MAX_CHUNK)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self.buf += data

    def close(self) -> None:
        if self.closed:
            return
        self._pause()
        self.loop.remove_writer(self.pty.fd)
        self.closed = True
        for timer in (self.flush_timer, self.exit_timer):
            if timer is not None:
                timer.cancel()
        self.pty.close()
