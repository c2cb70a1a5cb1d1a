"""Job Queue: accepts jobs into the durable journal, in FIFO order, and drives their states.

The rule that makes a dispatch safe: the dispatch message is acked only after the job is
committed to the journal. A redelivered dispatch finds its id there and is acked and dropped,
so a job never runs twice. On start it resumes `queued` jobs in their order and reports the
ones the previous process was running as `interrupted` (DESIGN.md §4).

Every state change is journaled first, then published on `job.<id>.state` (durable). The
journal syncs by group commit: a change is committed at once, and what must wait until it is
durable (acks, states: all for the Gateway, in order) waits for one fsync shared with others.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from runlet import metrics
from runlet.adapters.group_commit import GroupCommit
from runlet.adapters.journal import Journal
from runlet.adapters.vitals import VitalsProbe, heartbeat
from runlet.errors import CryptoError, ProtocolError, StorageError
from runlet.protocol import addresses, wire
from runlet.protocol.messages import (
    ControlSent,
    JobStateChanged,
    ReplayRequested,
    SendHeartbeat,
    StartJob,
)
from runlet.protocol.payloads import Control, JobSpec
from runlet.protocol.states import LIVE, recorded_exit
from runlet.runtime.actor import Actor, Context, supervise
from runlet.runtime.local_messages import (
    ChildDied,
    CloseJobQueues,
    Delivered,
    HeartbeatDue,
    LogFailed,
    OpenJobQueues,
    OpenLog,
    Publish,
    ReleaseSlot,
    Replay,
    RequestSlot,
    ResizeSession,
    RetryJournal,
    SessionEnded,
    SessionStarted,
    Settle,
    SignalSession,
    SlotGranted,
    StartSession,
    Terminate,
)
from runlet.runtime.names import GATEWAY, GOVERNOR, VAULT, session_job, session_name

JOURNAL_RETENTION = 7 * 86400.0  # a finished job stays this long: a late redelivery is dropped
JOURNAL_SWEEP_SECONDS = 3600.0  # how often finished jobs past the retention are forgotten
GROUP_COMMIT_MAX = 256  # effects waiting before a sync is asked for even with a busy mailbox


class JobQueue(Actor):
    """Owns the journal; the only actor that changes a job's state."""

    def __init__(self, ctx: Context, name: str = "job_queue") -> None:
        super().__init__(ctx, name)
        settings = ctx.settings
        self.node: str = settings.node
        self.user: str = settings.user
        self.grace: float = settings.jobs.grace_seconds
        self.fleet_key = ctx.services["fleet_key"]
        self.session_factory = ctx.services["session_factory"]
        self.journal_path = settings.data_dir / "journal.sqlite3"
        self.journal: Journal | None = None
        self.commits: GroupCommit | None = None  # effects that wait for the journal's sync
        self.starting: set[str] = set()  # sessions asked for and not yet reported
        self.log_problems: dict[str, str] = {}  # jobs whose log is incomplete, and why
        self.swept_at = float("-inf")  # when finished jobs were last forgotten
        self.vitals: VitalsProbe = ctx.services.get("vitals") or VitalsProbe()

    # -- lifecycle ---------------------------------------------------------------------------

    def started(self) -> None:
        self.journal = Journal(self.journal_path, group_commit=True)
        self.commits = GroupCommit(self.journal.sync, name=f"journal-sync-{self.node}")
        now = self.ctx.clock()
        for entry in self.journal.running():
            if self.ctx.router.has(session_name(entry.job_id)):
                continue  # only this actor restarted: the session (and its child) lives on
            self.log.warning("job_interrupted", job=entry.job_id)
            self._finish(entry.job_id, "interrupted", detail="the daemon stopped while it ran")
            self.ctx.router.tell(VAULT, OpenLog(entry.job_id, finalise=True))
        for entry in self.journal.queued():
            self.log.info(
                "job_resumed",
                job=entry.job_id,
                queued_for=round(now - (entry.accepted_at or now), 1),
            )
            self._queue(entry.job_id, announce=False)
        metrics.JOBS_RUNNING.set(len(self.journal.running()))
        self._heartbeat()
        self.commits.commit()

    def on_stop(self) -> None:
        if self.commits is not None:
            self.commits.close()  # what waits for the last changes is synced and let go
        if self.journal is not None:
            self.journal.close()

    def on_receive(self, message: Any) -> Any:
        result = super().on_receive(message)
        # group commit: sync once the mailbox holds nothing more (or much is waiting)
        if self.actor_inbox.empty() or self._commits.pending >= GROUP_COMMIT_MAX:
            self._commits.commit()
        return result

    def on_failure(self, *exc_info: Any) -> None:
        self.on_stop()
        super().on_failure(*exc_info)

    @property
    def _journal(self) -> Journal:
        assert self.journal is not None
        return self.journal

    def handle(self, message: object) -> None:  # noqa: PLR0912 - one case per message type
        match message:
            case Delivered(message=StartJob() as request):
                self._accept(message, request)
            case Delivered(message=ControlSent() as control):
                self._control(message, control)
            case Delivered(message=ReplayRequested() as ask):
                self._replay(message, ask)
            case Delivered(message=SendHeartbeat()):
                self._settle(message, True)
                self._send_heartbeat()  # the timer of the regular beats is left as it is
            case SlotGranted(job_id=job_id):
                self._start(job_id)
            case SessionStarted(job_id=job_id):
                self.starting.discard(job_id)
                self._running(job_id)
            case SessionEnded():
                self.starting.discard(message.job_id)
                self._ended(message)
            case LogFailed(job_id=job_id, seq=seq, reason=reason):
                self.log_problems[job_id] = f"its log is incomplete from chunk {seq}: {reason}"
            case HeartbeatDue():
                self._heartbeat()
                self._sweep_journal()
            case RetryJournal(job_id=job_id, state=state, target=target, details=details):
                entry = self._journal.get(job_id)
                if entry is not None and entry.state != state:
                    self._change(job_id, state, target=target, **details)
            case ChildDied(name=name, error=error) if (crashed := session_job(name)) is not None:
                self.starting.discard(crashed)
                self._session_crashed(crashed, error)
            case _:
                self.unexpected(message)

    # -- accepting ---------------------------------------------------------------------------

    def _accept(self, delivery: Delivered, request: StartJob) -> None:
        job_id = request.job_id
        if request.fans_out:
            job_id = addresses.child_job_id(job_id, self.node)
        ok, reason = self._check(request)
        now = self.ctx.clock()
        if not self._journal.accept(job_id, wire.encode(request), now):
            self._settle(delivery, ok, reason)  # a redelivery of a job we already hold
            return
        if not ok:
            self.log.warning("job_refused", job=job_id, reason=reason)
            self._settle(delivery, False, reason)
            self._change(job_id, "rejected", target=request.target, detail=reason)
            return
        self._settle(delivery, True)
        if request.deadline is not None and request.deadline < now:
            self._change(job_id, "queued", target=request.target)
            self._change(job_id, "expired", detail="its deadline passed before the node got it")
            return
        self._queue(job_id, target=request.target)

    def _check(self, request: StartJob) -> tuple[bool, str]:
        if request.user != self.user:
            return False, f"job for user {request.user!r} on a queue of {self.user!r}"
        try:
            JobSpec.open(self.fleet_key.job_key(request.job_id), request.sealed_command)
        except (CryptoError, ProtocolError) as exc:
            return False, str(exc)
        return True, ""

    def _queue(self, job_id: str, *, target: str = "", announce: bool = True) -> None:
        # the control queue exists before anyone hears "queued", so a cancel always lands
        state = self._change(job_id, "queued", target=target, send=False) if announce else None
        opening = OpenJobQueues(job_id, input=False, control=True, announce=state)
        self._to_gateway(opening)
        # after it: the Gateway must know the job before its session's output comes
        self._commits.after(partial(self.ctx.router.tell, GOVERNOR, RequestSlot(job_id)))

    # -- running -----------------------------------------------------------------------------

    def _start(self, job_id: str) -> None:
        entry = self._journal.get(job_id)
        if job_id in self.starting or self.ctx.router.has(session_name(job_id)):
            return  # a repeated grant: its session exists already, or is being made
        if entry is None or entry.state != "queued":
            self.ctx.router.tell(GOVERNOR, ReleaseSlot(job_id))
            return
        request = wire.decode_as(entry.request, StartJob)
        if request.deadline is not None and request.deadline < self.ctx.clock():
            self._finish(job_id, "expired", detail="its deadline passed while it waited")
            return
        name = session_name(job_id)
        self.starting.add(job_id)
        factory = self.session_factory
        supervise(
            self.ctx,
            name,
            lambda: factory(self.ctx, name, StartSession(job_id, entry.request)),
            permanent=False,
            notify=self.name,
        )

    def _running(self, job_id: str) -> None:
        # "running" invites keystrokes: it is announced once the input queue exists
        announce = self._change(job_id, "running", send=False)
        if announce is None:  # cancelled while its session started: end that session now
            self.ctx.router.tell(session_name(job_id), Terminate(job_id, self.grace, "cancelled"))
            return
        opening = OpenJobQueues(job_id, input=True, control=False, announce=announce)
        self._to_gateway(opening)
        entry = self._journal.get(job_id)
        if entry is None or announce is None:
            return
        request = wire.decode_as(entry.request, StartJob)
        metrics.DISPATCH_TO_START.observe(max(0.0, self.ctx.clock() - request.submitted_at))
        metrics.JOBS_RUNNING.inc()

    def _ended(self, ended: SessionEnded) -> None:
        entry = self._journal.get(ended.job_id)
        if entry is None:
            return
        if entry.state == "running":
            metrics.JOBS_RUNNING.dec()
        if ended.how == "failed":
            state = "rejected" if entry.state == "queued" else "interrupted"
            self._finish(ended.job_id, state, detail=ended.detail)
            return
        code, sig, detail = recorded_exit(ended.status, ended.detail)
        if (problem := self.log_problems.pop(ended.job_id, None)) is not None:
            detail = f"{detail}; {problem}" if detail else problem
        self._finish(ended.job_id, ended.how, exit_code=code, signal=sig, detail=detail)
        self.log.info("job_finished", job=ended.job_id, state=ended.how, exit_code=code, signal=sig)

    def _session_crashed(self, job_id: str, error: str) -> None:
        entry = self._journal.get(job_id)
        if entry is None or entry.state not in LIVE:
            return
        if entry.state == "running":
            metrics.JOBS_RUNNING.dec()
        self._finish(job_id, "interrupted", detail=f"its session crashed: {error}")
        self.ctx.router.tell(VAULT, OpenLog(job_id, finalise=True))

    def _finish(self, job_id: str, state: str, **details: Any) -> None:
        self._change(job_id, state, **details)
        self.ctx.router.tell(GOVERNOR, ReleaseSlot(job_id))
        self._to_gateway(CloseJobQueues(job_id))

    # -- control and replay ------------------------------------------------------------------

    def _control(self, delivery: Delivered, sent: ControlSent) -> None:
        job_id = sent.job_id
        try:
            control = Control.open(
                self.fleet_key.job_key(job_id), sent.viewer, sent.seq, sent.sealed
            )
        except (CryptoError, ProtocolError) as exc:
            self._settle(delivery, False, str(exc))
            return
        self._settle(delivery, True)
        entry = self._journal.get(job_id)
        if entry is None:
            return
        session = session_name(job_id)
        match control.op:
            case "cancel" if entry.state == "queued" and self.ctx.router.has(session):
                # its session is starting: ending it reports the job cancelled
                self.ctx.router.tell(session, Terminate(job_id, self.grace, "cancelled"))
            case "cancel" if entry.state == "queued":
                self._finish(job_id, "cancelled", detail="cancelled before it started")
            case "cancel" if entry.state == "running":
                self.ctx.router.tell(session, Terminate(job_id, self.grace, "cancelled"))
            case "resize" if entry.state == "running":
                self.ctx.router.tell(session, ResizeSession(job_id, control.rows, control.cols))
            case "signal" if entry.state == "running":
                self.ctx.router.tell(session, SignalSession(job_id, control.signal))
            case _:
                self.log.info("control_ignored", job=job_id, op=control.op, state=entry.state)

    def _replay(self, delivery: Delivered, ask: ReplayRequested) -> None:
        self._settle(delivery, True)
        entry = self._journal.get(ask.job_id)
        if entry is None or delivery.reply_to is None:
            return  # not ours: the node holding it answers
        if not addresses.valid_reply_key(delivery.reply_to):
            self.log.warning("replay_refused", job=ask.job_id, reason="bad reply key")
            return
        self.ctx.router.tell(
            VAULT,
            Replay(
                ask.job_id,
                ask.from_seq,
                delivery.reply_to,
                delivery.correlation_id,
                entry.state,
                entry.exit_code,
                entry.signal,
            ),
        )

    def _sweep_journal(self) -> None:
        """Forget jobs that ended long ago, so the journal of a small board does not grow."""
        now = self.ctx.clock()
        if now - self.swept_at < JOURNAL_SWEEP_SECONDS:
            return
        self.swept_at = now
        try:
            forgotten = self._journal.forget_finished(older_than=now - JOURNAL_RETENTION)
        except StorageError as exc:
            self.log.warning("journal_sweep_failed", error=str(exc))
            return
        if forgotten:
            self.log.info("journal_swept", jobs=forgotten)

    def _heartbeat(self) -> None:
        """Tell the server this node is alive and what it holds; again and again."""
        self._send_heartbeat()
        self.tell_self_later(self.ctx.settings.broker.presence_seconds, HeartbeatDue())

    def _send_heartbeat(self) -> None:
        counts = self._journal.statistics()
        beat = heartbeat(
            self.node, self.ctx.clock(), self.ctx.settings.tags, counts, self.vitals.sample()
        )
        self._to_gateway(
            Publish(
                addresses.presence_key(self.node),
                wire.encode(beat),
                message_id=f"{self.node}:beat:{beat.at}",
            )
        )

    # -- helpers -----------------------------------------------------------------------------

    def _change(
        self, job_id: str, state: str, *, target: str = "", send: bool = True, **details: Any
    ) -> Publish | None:
        try:
            entry = (
                self._journal.mark(job_id, state, self.ctx.clock(), **details)
                if state != "queued"
                else self._journal.get(job_id)
            )
        except ValueError as exc:
            self.log.error("job_state_refused", job=job_id, state=state, error=str(exc))
            return None
        except StorageError as exc:
            return self._unjournaled(
                job_id, state, target=target, send=send, details=details, error=str(exc)
            )
        if entry is None:
            return None
        metrics.JOBS.labels(state=state).inc()
        event = JobStateChanged(
            job_id,
            self.node,
            state,
            entry.state_seq,
            self.ctx.clock(),
            target,
            entry.exit_code,
            entry.signal,
            entry.detail,
        )
        return self._state_message(event, send=send)

    def _unjournaled(
        self,
        job_id: str,
        state: str,
        *,
        target: str,
        send: bool,
        details: dict[str, Any],
        error: str,
    ) -> Publish | None:
        """The journal cannot take the change (disk full): tell the world now, journal later.

        The event carries the seq the journal will give it, so the retry's publish is the
        same message (same id, same seq) and the ledger drops it as a duplicate.
        """
        entry = self._journal.get(job_id)
        if entry is None:
            return None
        self.log.error("job_state_not_journaled", job=job_id, state=state, error=error)
        self.tell_self_later(1.0, RetryJournal(job_id, state, target, details))
        event = JobStateChanged(
            job_id,
            self.node,
            state,
            entry.state_seq + 1,
            self.ctx.clock(),
            target,
            details.get("exit_code"),
            details.get("signal"),
            details.get("detail"),
        )
        return self._state_message(event, send=send)

    def _state_message(self, event: JobStateChanged, *, send: bool) -> Publish:
        """The durable publish of a state change (sent now unless the caller sends it later)."""
        publish = Publish(
            addresses.state_key(event.job_id),
            wire.encode(event),
            message_id=f"{event.job_id}:{event.seq}",
            durable=True,
            mandatory=True,
            job_id=event.job_id,
        )
        if send:
            self._to_gateway(publish)
        return publish

    def _settle(self, delivery: Delivered, ok: bool, reason: str = "") -> None:
        self._to_gateway(Settle(delivery.token, ok, reason))

    @property
    def _commits(self) -> GroupCommit:
        assert self.commits is not None
        return self.commits

    def _to_gateway(self, message: object) -> None:
        """Everything for the Gateway (acks, states, queue operations) leaves, in order, once
        the journal changes made before it are durable."""
        self._commits.after(partial(_tell_gateway, self.ctx.router, message))


def _tell_gateway(router: Any, message: object) -> None:
    _ = router.publish(message) if isinstance(message, Publish) else router.tell(GATEWAY, message)
