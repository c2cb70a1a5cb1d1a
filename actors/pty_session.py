"""PTY Session: one running job's child in a pseudo-terminal.

The actor owns the child: it spawns it, resizes and signals it, and ends it (SIGTERM, a
grace period, then SIGKILL). The bytes do not pass through its mailbox: they stay on the I/O
loop (DESIGN §1, "The data plane").

- Input: the session lends the loop an input sink (`runlet.runtime.plane`), so the Gateway's
  consumer hands it each keystroke delivery; the sink drops a repeated (viewer, seq), opens
  the seal, writes the bytes into the PTY and answers, and the Gateway acks, all in one loop
  callback. A delivery that reaches the mailbox instead (no sink yet) is handled the same way.
- Output: a small pump reads the PTY on the loop and coalesces reads by size and time — a
  lone keystroke's echo leaves at once, a flood leaves in 64 KiB chunks — and the session,
  still on the loop, seals each chunk and hands its publish to the Gateway's output sink; the
  Log Vault is told to store it once it has left (see `_store`). The pump stops reading
  while too many bytes are unstored by the vault or unsent by the Gateway (backpressure), so
  mailboxes and buffers stay small.
- Exit: watched, not polled, where the PTY gives an exit fd (a pidfd on Linux).

The child's PTY comes from the `spawn` service when there is one (a test's fake PTY), else from
`ptys.spawn`; the pump is `runlet.adapters.ptys.pump`. Chunks are stamped by the context's
clock.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from functools import partial

from runlet import metrics
from runlet.adapters import ptys
from runlet.adapters.logfile import seal_output
from runlet.adapters.ptys.pump import Pump
from runlet.errors import ClosedError, CryptoError, SpawnFailed
from runlet.protocol import addresses, wire
from runlet.protocol.messages import InputSent, OutputChunk, StartJob
from runlet.protocol.payloads import JobSpec, open_input
from runlet.protocol.states import ExitStatus
from runlet.runtime.actor import Actor, Context
from runlet.runtime.local_messages import (
    Delivered,
    ForgetChild,
    GraceExpired,
    OpenLog,
    OutputSealed,
    OutputStored,
    ProcessExited,
    Publish,
    ResizeSession,
    SessionEnded,
    SessionStarted,
    Settle,
    SignalSession,
    StartSession,
    StopSession,
    Terminate,
)
from runlet.runtime.loop import LoopTimer
from runlet.runtime.names import GATEWAY, JOB_QUEUE, SUPERVISOR, VAULT

STORE_WITHIN = 0.02  # seconds: a chunk is handed to the vault this soon at the latest


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
        self.seen_input: dict[str, int] = {}  # on the loop only
        self.output_topic = addresses.output_key(self.job_id)
        self.timers: list[LoopTimer] = []
        self.unstored: list[OutputSealed] = []  # emitted, not yet told to the vault (loop only)
        self.store_timer: asyncio.TimerHandle | None = None
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
        # before SessionStarted: the input queue, opened after it, finds the sink in place
        self.ctx.loop.call(self._plug, self.pump)
        self.ctx.router.tell(JOB_QUEUE, SessionStarted(self.job_id, self.pty.pid))
        self.log.info("job_started", pid=self.pty.pid)
        if spec.timeout is not None:
            grace = self.ctx.settings.jobs.grace_seconds
            self._later(spec.timeout, Terminate(self.job_id, grace, "timed_out"))

    def on_stop(self) -> None:
        for timer in self.timers:
            timer.cancel()
        if self.pump is not None:
            self.ctx.loop.call(self._unplug, self.pump)
        elif self.pty is not None:
            self.pty.close()
        self.ctx.router.unregister(self.name, self.actor_ref)
        self.ctx.router.tell(SUPERVISOR, ForgetChild(self.name))

    def handle(self, message: object) -> None:
        match message:
            case Delivered(message=InputSent() as sent):
                self.ctx.loop.call(self._input_by_mailbox, message.token, sent)
            case OutputStored(size=size) if self.pump is not None:
                self.ctx.loop.call(self.pump.credit, size)
            case ResizeSession(rows=rows, cols=cols) if self.pump is not None:
                self.ctx.loop.call(self._resize, rows, cols)
            case SignalSession(signal=sig) if self.pty is not None:
                self.ctx.loop.call(self.pty.signal, sig)  # in order with resizes
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

    def _terminate(self, grace: float, reason: str) -> None:
        if self.pty is None or self.done or self.ending is not None:
            return
        self.ending, self.ended_by = reason, "SIGTERM"
        self.log.info("job_terminating", reason=reason, grace=grace)
        self.pty.signal(signal.SIGTERM)
        self._later(grace, GraceExpired(self.job_id))

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

    def _later(self, delay: float, message: object) -> None:
        self.timers = [t for t in self.timers if not t.cancelled]
        self.timers.append(self.tell_self_later(delay, message))

    # -- on the loop: the data plane ---------------------------------------------------------

    def _plug(self, pump: Pump) -> None:
        pump.start()
        self.ctx.plane.attach_input(self.job_id, self._input)
        self.ctx.plane.attach_store(self.job_id, self._store)

    def _unplug(self, pump: Pump) -> None:
        self.ctx.plane.detach_input(self.job_id, self._input)
        self.ctx.plane.detach_store(self.job_id, self._store)
        pump.close()
        self._store()

    def _input(self, sent: InputSent) -> str | None:
        """The input sink: type a keystroke delivery once; None when accepted, else why not."""
        if sent.seq <= self.seen_input.get(sent.viewer, -1):
            return None  # a redelivered keystroke: already typed
        try:
            data = open_input(self.output_key, sent.viewer, sent.seq, sent.sealed)
        except CryptoError as exc:
            return str(exc)
        self.seen_input[sent.viewer] = sent.seq
        if self.pump is not None and data:
            metrics.INPUT_BYTES.inc(len(data))
            self.pump.write(data)
        return None

    def _input_by_mailbox(self, token: int, sent: InputSent) -> None:
        refused = self._input(sent)
        self.ctx.router.tell(GATEWAY, Settle(token, refused is None, refused or ""))

    def _emit(self, seq: int, data: bytes, final: bool) -> None:
        """Seal a chunk and publish it; the vault stores it once it has left (or soon)."""
        assert self.pump is not None
        flags, sealed = seal_output(self.output_key, seq, self.ctx.clock(), data, final=final)
        chunk = wire.encode(OutputChunk(self.job_id, seq, flags, sealed))
        publish = Publish(
            self.output_topic,
            chunk,
            message_id=f"{self.job_id}:o{seq}",
            job_id=self.job_id,
            after_start=True,
        )
        self.unstored.append(OutputSealed(self.job_id, seq, flags, sealed, len(data), final))
        if self.ctx.plane.publish_output(publish, partial(self._sent, len(data))):
            if self.store_timer is None:
                self.store_timer = self.ctx.loop.loop.call_later(STORE_WITHIN, self._store)
        else:  # no output sink (the Gateway is restarting): its mailbox comes after the vault's
            self._store()
            self.ctx.router.publish(publish)
            self.pump.sent(len(data))

    def _sent(self, size: int) -> None:
        assert self.pump is not None
        self._store()
        self.pump.sent(size)

    def _store(self) -> None:
        """Hand the vault every chunk emitted so far, in order.

        It runs once a chunk has left (so the vault's thread is not woken while an echo is on
        its way), after STORE_WITHIN at the latest (a publish held up by an outage or by the
        job's order), when the session ends, and before any replay is asked of the vault (the
        Gateway flushes every session first): a viewer that missed a chunk live asks for its
        replay only after it was published, and finds it in the vault's mailbox ahead of its
        request.
        """
        if self.store_timer is not None:
            self.store_timer.cancel()
            self.store_timer = None
        pending, self.unstored = self.unstored, []
        for sealed in pending:
            self.ctx.router.tell(VAULT, sealed)

    def _resize(self, rows: int, cols: int) -> None:
        assert self.pty is not None
        try:
            self.pty.resize(rows, cols)
        except (OSError, ValueError, ClosedError) as exc:
            self.log.warning("job_resize_failed", rows=rows, cols=cols, error=str(exc))


def _tell(ref: object, message: object) -> None:
    try:
        ref.tell(message)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the session is already gone; nothing to tell
        return
