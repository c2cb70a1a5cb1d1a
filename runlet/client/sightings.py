"""The fleet as one client hears it on the broker: node heartbeats and job state changes.

With no server, there is no ledger to ask; but every daemon's heartbeat and every job's state
change cross the user's own exchange, and a client may bind a queue of its own to them. This
is what `runlet ui` shows when no server answers: the nodes heard from (online while their
heartbeats keep coming), and the jobs whose states changed since the UI started, newest first,
each with the states heard. The rows have the ledger's shape, so the page shows both alike.

What it cannot know: a node not heard since the UI started, and a job that changed before.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runlet.adapters.broker import Broker, BrokerSecurity
from runlet.adapters.broker_port import BrokerPort, Incoming, QueueSpec
from runlet.config import Config
from runlet.errors import ProtocolError
from runlet.protocol import addresses, wire
from runlet.protocol.messages import JobStateChanged, NodeHeartbeat, Query
from runlet.protocol.states import TERMINAL

STATE_PATTERNS = ("job.*.state", "job.*.*.state")
MAX_JOBS = 5000  # the oldest heard of are forgotten past this
MAX_HISTORY = 64  # states kept per job


@dataclass(slots=True)
class _Job:
    row: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


class Sightings:
    """Heartbeats and state changes heard on one exclusive queue, kept as ledger-like rows."""

    def __init__(
        self,
        broker: BrokerPort,
        user: str,
        node: str,
        *,
        online_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.user = user
        self.queue = addresses.job_queue(
            user, "0" * 32, "sightings", f"{node[:40]}-s{secrets.token_hex(4)}"
        )
        self.online_seconds = online_seconds
        self.clock = clock
        self.since = clock()
        self._nodes: dict[str, tuple[NodeHeartbeat, float]] = {}
        self._jobs: dict[str, _Job] = {}
        self.rejected = 0

    async def start(self) -> None:
        patterns = (addresses.PRESENCE_PATTERN, *STATE_PATTERNS)
        spec = QueueSpec(self.queue, "exclusive", patterns, dead_letter=False)
        await self.broker.consume(spec, self._on_message)

    async def _on_message(self, incoming: Incoming) -> None:
        await incoming.ack()
        try:
            msg = wire.decode(incoming.body)
        except ProtocolError:
            self.rejected += 1
            return
        match msg:
            case NodeHeartbeat():
                self._nodes[msg.node] = (msg, self.clock())
            case JobStateChanged():
                self._job(msg)

    def _job(self, event: JobStateChanged) -> None:
        job = self._jobs.get(event.job_id)
        if job is None:
            job = self._jobs[event.job_id] = _Job(_row(event))
            if len(self._jobs) > MAX_JOBS:
                oldest = min(self._jobs, key=lambda j: self._jobs[j].row["updated_at"])
                del self._jobs[oldest]
        if len(job.history) < MAX_HISTORY and all(h["seq"] != event.seq for h in job.history):
            job.history.append(
                {
                    "seq": event.seq,
                    "state": event.state,
                    "at": event.at,
                    "node": event.node,
                    "exit_code": event.exit_code,
                    "signal": event.signal,
                    "detail": event.detail,
                }
            )
            job.history.sort(key=lambda h: h["seq"])
        row = job.row
        milestone = {"queued": "queued_at", "running": "started_at"}.get(event.state)
        if event.state in TERMINAL:
            milestone = "ended_at"
        if milestone is not None and row[milestone] is None:
            row[milestone] = event.at
        if event.seq >= row["state_seq"]:
            row.update(
                node=event.node,
                state=event.state,
                state_seq=event.seq,
                exit_code=event.exit_code,
                signal=event.signal,
                detail=event.detail,
                updated_at=event.at,
                target=event.target or row["target"],
            )

    # -- answers in the ledger's shape -------------------------------------------------------

    def answer(self, query: Query) -> list[dict[str, Any]]:
        """What the server would answer, from what was heard; RunletError-free."""
        match query.kind:
            case "nodes":
                return self.nodes()
            case "job":
                job = self._jobs.get(query.job_id or "")
                if job is None:
                    return []
                return [{"job": dict(job.row), "history": list(job.history)}]
        return self.jobs(query)

    def nodes(self) -> list[dict[str, Any]]:
        now = self.clock()
        rows = []
        for name in sorted(self._nodes):
            beat, seen = self._nodes[name]
            rows.append(
                {
                    "name": name,
                    "platform": beat.platform,
                    "version": beat.version,
                    "tags": list(beat.tags),
                    "last_seen": seen,
                    "running": beat.running,
                    "queued": beat.queued,
                    "online": now - seen <= self.online_seconds,
                    "cpu_percent": beat.cpu_percent,
                    "mem_used": beat.mem_used,
                    "mem_total": beat.mem_total,
                    "load1": beat.load1,
                    "uptime": beat.uptime,
                    "temperature": beat.temperature,
                }
            )
        return rows

    def jobs(self, query: Query) -> list[dict[str, Any]]:
        rows = [
            dict(job.row)
            for job in self._jobs.values()
            if query.node in (None, job.row["node"])
            and query.state in (None, job.row["state"])
            and (query.since is None or job.row["updated_at"] >= query.since)
        ]
        rows.sort(key=lambda r: (r["updated_at"], r["job_id"]), reverse=True)
        return rows[: query.limit]


def listening_seconds(config: Config) -> float:
    """How long to listen to hear every live node once: a heartbeat interval and a half."""
    return config.broker.presence_seconds * 1.5 + 0.5


async def listen_for_nodes(config: Config, seconds: float) -> list[dict[str, Any]]:
    """The nodes heard within `seconds` (`runlet nodes` with no server), as the ledger's rows."""
    broker = Broker(
        config.broker.urls,
        config.user,
        name=f"runlet-listen-{config.node}",
        security=BrokerSecurity.of(config.broker),
    )
    await broker.connect()
    try:
        sightings = Sightings(broker, config.user, config.node, online_seconds=seconds)
        await sightings.start()
        await asyncio.sleep(seconds)  # listening is the point: there is nobody to ask
        return sightings.nodes()
    finally:
        await broker.close()


def _row(event: JobStateChanged) -> dict[str, Any]:
    return {
        "user": "",
        "job_id": event.job_id,
        "node": event.node,
        "target": event.target,
        "state": event.state,
        "state_seq": -1,
        "queued_at": None,
        "started_at": None,
        "ended_at": None,
        "exit_code": None,
        "signal": None,
        "detail": None,
        "log_key": None,
        "log_hash": None,
        "updated_at": event.at,
    }
