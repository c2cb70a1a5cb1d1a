"""The client side of the fleet: submit jobs, watch them, type into them, cancel them.

A client is a short-lived process with the same config as a daemon; it talks to the broker
itself, so a laptop needs no daemon to drive the fleet. Everything here runs on one asyncio
loop (no actors: a client owns no long-lived state).

How a target is checked before anything is sent (a job for nobody is an error at once):
- `node:N` — N's dispatch queue must exist (N has run at least once); with no consumer, N is
  offline and the job waits in its queue, up to the deadline;
- `any` — the shared queue must exist; `all` / `tag:T` — the mandatory publish must route.

A check holds for TARGET_CACHE_SECONDS on one client, so a batch of submits costs one look-up.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runlet.adapters.broker import Broker, BrokerSecurity, Incoming, QueueSpec
from runlet.adapters.logfile import FLAG_FINAL, open_output
from runlet.config import Config
from runlet.errors import CryptoError, NoSuchTarget, ProtocolError
from runlet.protocol import addresses, wire
from runlet.protocol.crypto import FleetKey, JobKey
from runlet.protocol.messages import (
    ControlSent,
    InputSent,
    JobStateChanged,
    OutputChunk,
    ReplayRequested,
    StartJob,
    parse_target,
)
from runlet.protocol.payloads import Control, JobSpec, seal_input
from runlet.protocol.states import shell_status

Say = Callable[[str], None]

TARGET_CACHE_SECONDS = 1.0  # how long a target's check holds for the next submits


@dataclass(frozen=True, slots=True)
class Submitted:
    """What `submit` sent, and what it learned about the target."""

    job_id: str
    target: str
    fans_out: bool
    offline: bool


@dataclass(slots=True)
class Watch:
    """A viewer's exclusive queue: states, output and replies for one job (or its children)."""

    queue: str
    reply_key: str = ""
    inbox: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    rejected: int = 0
    # with a limit, output chunks past it are dropped (the viewer fills the gap by a replay
    # when it can take more); states and replies always go in
    limit: int = 0
    dropped: int = 0


def target_of(spec: str, own_node: str) -> str:
    """Normalise a `--on` value: a bare node name means `node:NAME`; empty means this node."""
    if not spec:
        return f"node:{own_node}"
    if spec in ("any", "all") or spec.startswith(("tag:", "node:")):
        parse_target(spec)
        return spec
    parse_target(f"node:{spec}")
    return f"node:{spec}"


def exit_status(event: JobStateChanged) -> int:
    """The shell-style exit status a client reports for a job's final state."""
    return shell_status(event.state, event.exit_code, event.signal)


class Client:
    """A connection to the fleet for one config and fleet key."""

    def __init__(self, config: Config, fleet_key: FleetKey) -> None:
        self.config = config
        self.key = fleet_key
        self.viewer = f"{config.node[:40]}-{secrets.token_hex(4)}"
        self.broker = Broker(
            config.broker.urls,
            config.user,
            name=f"runlet-client-{config.node}",
            heartbeat=config.broker.heartbeat,
            publish_timeout=config.broker.publish_timeout,
            prefetch=1000,
            security=BrokerSecurity.of(config.broker),
        )
        self._seq = 0
        self._input_keys: dict[str, JobKey] = {}
        self._targets: dict[str, tuple[float, bool]] = {}  # queue → (when looked up, offline)

    async def __aenter__(self) -> Client:
        await self.broker.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.close()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- watching ----------------------------------------------------------------------------

    async def watch(
        self, job_id: str, *, fans_out: bool = False, viewer: str = "", limit: int = 0
    ) -> Watch:
        """Bind a private queue to the job's state and output before anything can happen.

        `viewer` names the watch when one client holds several on the same job (each of
        `runlet ui`'s terminal tabs); by default it is the client's own name. With `limit`,
        at most that many messages wait: output past it is dropped, for a replay to bring
        back (a slow browser tab must not fill this process's memory).
        """
        viewer = viewer or self.viewer
        if fans_out:
            keys = tuple(addresses.fanout_pattern(job_id, c) for c in ("state", "output"))
        else:
            keys = (addresses.state_key(job_id), addresses.output_key(job_id))
        name = addresses.job_queue(
            self.config.user, addresses.parent_job_id(job_id), "view", viewer
        )
        reply = addresses.reply_key(viewer, job_id)
        keys = (*keys, reply)
        watch = Watch(name, reply, limit=limit)

        async def on_message(incoming: Incoming) -> None:
            await incoming.ack()
            try:
                msg = wire.decode(incoming.body)
            except ProtocolError:
                watch.rejected += 1
                return
            if watch.limit and isinstance(msg, OutputChunk) and watch.inbox.qsize() >= watch.limit:
                watch.dropped += 1
                return
            watch.inbox.put_nowait(msg)

        # exclusive: it dies with the connection, so acks would keep nothing; none are sent
        spec = QueueSpec(name, "exclusive", keys, dead_letter=False, acks=False)
        await self.broker.consume(spec, on_message)
        return watch

    async def unwatch(self, watch: Watch) -> None:
        """Stop a watch and delete its queue (a closed terminal tab)."""
        await self.broker.forget(watch.queue, delete=True)

    # -- submitting --------------------------------------------------------------------------

    async def submit(
        self,
        spec: JobSpec,
        target: str,
        *,
        job_id: str | None = None,
        deadline: float | None = None,
        rows: int = 24,
        cols: int = 80,
    ) -> Submitted:
        """Send a job; raises NoSuchTarget when nothing would ever run it."""
        job_id = job_id or addresses.new_job_id()
        kind, name = parse_target(target)
        offline = await self._target_offline(kind, name, target)
        request = StartJob(
            job_id,
            self.config.user,
            target,
            self.config.node,
            spec.seal(self.key.job_key(job_id)),
            time.time(),
            deadline,
            rows,
            cols,
        )
        await self.broker.publish(
            _dispatch_key(kind, name),
            wire.encode(request),
            message_id=job_id,
            durable=True,
            mandatory=True,
        )
        return Submitted(job_id, target, request.fans_out, offline)

    async def _target_offline(self, kind: str, name: str, target: str) -> bool:
        if kind == "node":
            queue = addresses.dispatch_queue(self.config.user, name)
        elif kind == "any":
            queue = addresses.any_queue(self.config.user)
        else:
            return False  # fan-out: the mandatory publish tells whether any node serves it
        # a batch of submits asks the broker once (the look-up opens a channel), not per job
        cached = self._targets.get(queue)
        if cached is not None and time.monotonic() - cached[0] < TARGET_CACHE_SECONDS:
            return cached[1]
        info = await self.broker.queue_info(queue)
        if info is None:
            self._targets.pop(queue, None)
            raise NoSuchTarget(target)
        offline = info[1] == 0
        self._targets[queue] = (time.monotonic(), offline)
        return offline

    # -- talking to a job --------------------------------------------------------------------

    async def send_input(self, job_id: str, data: bytes, *, confirm: bool = False) -> None:
        """Type `data` into a running job; with `confirm`, fail if no node runs it."""
        seq = self.next_seq()
        key = self._input_keys.get(job_id)
        if key is None:  # derived once per job: a keystroke is a hot path
            key = self._input_keys[job_id] = self.key.job_key(job_id)
        sealed = seal_input(key, self.viewer, seq, data)
        body = wire.encode(InputSent(job_id, self.viewer, seq, sealed))
        await self.broker.publish(
            addresses.input_key(job_id),
            body,
            message_id=f"{self.viewer}:{seq}",
            durable=confirm,
            mandatory=confirm,
        )

    async def control(self, job_id: str, control: Control, *, confirm: bool = False) -> None:
        """Send a resize, signal or cancel; with `confirm`, fail if no node holds the job."""
        seq = self.next_seq()
        sealed = control.seal(self.key.job_key(job_id), self.viewer, seq)
        body = wire.encode(ControlSent(job_id, self.viewer, seq, sealed))
        await self.broker.publish(
            addresses.control_key(job_id),
            body,
            message_id=f"{self.viewer}:{seq}",
            durable=confirm,
            mandatory=confirm,
        )

    async def request_replay(self, job_id: str, watch: Watch, from_seq: int = 0) -> None:
        """Ask every node; the one holding the job replies into our watch queue."""
        await self.broker.publish(
            addresses.RPC_JOBS,
            wire.encode(ReplayRequested(job_id, from_seq)),
            message_id=f"{self.viewer}:replay:{self.next_seq()}",
            durable=False,
            mandatory=False,
            reply_to=watch.reply_key,
            correlation_id=job_id,
        )


def _dispatch_key(kind: str, name: str) -> str:
    match kind:
        case "node":
            return addresses.dispatch_node_key(name)
        case "tag":
            return addresses.dispatch_tag_key(name)
        case "any":
            return addresses.DISPATCH_ANY
    return addresses.DISPATCH_ALL


class Reassembler:
    """Puts a job's output chunks back in order: no gap, no duplicate, whatever the source.

    Live chunks and replayed chunks may arrive interleaved. Each chunk is authenticated as it
    arrives (so a viewer may start anywhere): one that does not open is counted and dropped
    without taking its sequence number, so a forgery can neither end nor block the stream.
    """

    def __init__(self, key: FleetKey, job_id: str, start: int = 0) -> None:
        self.key = key.job_key(job_id)
        self.next_seq = start
        self.pending: dict[int, tuple[bytes, bool]] = {}
        self.finished = False
        self.bad_chunks = 0
        self.gap_since: float | None = None

    def feed(self, chunk: OutputChunk) -> list[bytes]:
        """Take a chunk; return the plaintext pieces now ready to show, in order."""
        if chunk.seq < self.next_seq or chunk.seq in self.pending:
            return []
        try:
            _, data = open_output(self.key, chunk.seq, chunk.flags, chunk.sealed)
        except (CryptoError, ProtocolError):
            self.bad_chunks += 1
            return []
        self.pending[chunk.seq] = (data, bool(chunk.flags & FLAG_FINAL))
        ready: list[bytes] = []
        while self.next_seq in self.pending:
            data, final = self.pending.pop(self.next_seq)
            ready.append(data)
            self.next_seq += 1
            self.finished = self.finished or final
        self.gap_since = (self.gap_since or time.monotonic()) if self.pending else None
        return ready

    def gap_age(self) -> float:
        return 0.0 if self.gap_since is None else time.monotonic() - self.gap_since
