"""A fake fleet for the desktop manager's handlers, and a test client around the real app.

The app, its guard and its handlers are the real ones, served by aiohttp's test server on
loopback; only the fleet behind them is a fake (`FakeFleet`), which answers queries from
lists, records the jobs it is asked to start and hands out views whose inbox the test fills
with sealed output, exactly as a node would send it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from runlet.adapters.logfile import seal_output
from runlet.client.session import Submitted
from runlet.errors import BlobStoreUnavailable, NoSuchTarget, RunletError, ServerUnavailable
from runlet.protocol.crypto import FleetKey
from runlet.protocol.messages import JobStateChanged, OutputChunk, Query
from runlet.protocol.payloads import Control, JobSpec
from runlet.ui.app import make_app
from runlet.ui.guard import Guard

JOB = "0123456789abcdef0123456789abcdef"
NODE_ROW = {
    "name": "edge-1",
    "platform": "Linux-aarch64",
    "version": "0.1.0",
    "tags": ["pi"],
    "last_seen": 1.0,
    "running": 1,
    "queued": 0,
    "online": True,
}


class FakeView:
    """A tab's watch: the test puts messages in `inbox` and reads what the tab asked for."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.replays: list[int] = []
        self.sent: list[bytes] = []
        self.controls: list[Control] = []
        self.closed = asyncio.Event()
        self.changed = asyncio.Event()  # set whenever the tab asked for something

    async def replay(self, from_seq: int) -> None:
        self.replays.append(from_seq)
        self.changed.set()

    async def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.changed.set()

    async def control(self, control: Control) -> None:
        self.controls.append(control)
        self.changed.set()

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        """Until the tab's requests so far make `predicate` true."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def close(self) -> None:
        self.closed.set()


@dataclass
class FakeFleet:
    """Answers from lists; `down` makes every query fail as with no server running."""

    key: FleetKey = field(default_factory=FleetKey.generate)
    node: str = "laptop"
    nodes: list[dict[str, Any]] = field(default_factory=lambda: [dict(NODE_ROW)])
    jobs: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False
    queries: list[Query] = field(default_factory=list)
    started: list[tuple[JobSpec, str, float | None, int, int]] = field(default_factory=list)
    views: list[FakeView] = field(default_factory=list)
    viewed: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: list[str] = field(default_factory=list)
    log_path: Path | None = None  # what stored_log finds
    store_down: bool = False

    async def ask(self, query: Query) -> list[dict[str, Any]]:
        self.queries.append(query)
        if self.down:
            raise ServerUnavailable("no Runlet server is running for this user")
        if query.kind == "nodes":
            return self.nodes
        if query.kind == "job":
            for row in self.jobs:
                if row["job_id"] == query.job_id:
                    return [{"job": row, "history": []}]
            raise RunletError(f"no job {query.job_id} in the ledger")
        return self.jobs

    def heard(self, query: Query) -> list[dict[str, Any]]:
        """What was heard: the same node, no jobs."""
        self.queries.append(query)
        return [dict(NODE_ROW, online=False)] if query.kind == "nodes" else []

    async def submit(
        self, spec: JobSpec, target: str, *, deadline: float | None, rows: int, cols: int
    ) -> Submitted:
        if target == "node:ghost":
            raise NoSuchTarget(target)
        self.started.append((spec, target, deadline, rows, cols))
        return Submitted(JOB, target, fans_out=target in ("all",), offline=False)

    async def cancel(self, job_id: str) -> None:
        if job_id.startswith("f"):
            raise NoSuchTarget(job_id)
        self.cancelled.append(job_id)

    async def children(self, submitted: Submitted) -> list[str]:
        return [f"{submitted.job_id}.edge-1", f"{submitted.job_id}.edge-2"]

    async def view(self, job_id: str) -> FakeView:
        view = FakeView()
        self.views.append(view)
        self.viewed.set()
        return view

    async def stored_log(self, job_id: str) -> Path | None:
        if self.store_down:
            raise BlobStoreUnavailable("the object store did not answer")
        return self.log_path

    def chunk(self, seq: int, data: bytes, *, final: bool = False) -> OutputChunk:
        """Output chunk `seq` of JOB, sealed as the node seals it."""
        flags, sealed = seal_output(self.key.job_key(JOB), seq, time.time(), data, final=final)
        return OutputChunk(JOB, seq, flags, sealed)


def state(name: str, seq: int, **extra: Any) -> JobStateChanged:
    return JobStateChanged(JOB, "edge-1", name, seq, time.time(), "node:edge-1", **extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Page:
    """A test client of the real app, and what it needs to pass the guard."""

    client: TestClient[Any, Any]
    guard: Guard
    fleet: FakeFleet

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.guard.port}"

    @property
    def origin(self) -> str:
        return f"http://{self.host}"

    def headers(self, **extra: str) -> dict[str, str]:
        """Host and cookie as the browser sends them after the first visit."""
        return {
            "Host": self.host,
            "Cookie": f"{self.guard.cookie}={self.guard.token}",
            **extra,
        }


@asynccontextmanager
async def page(fleet: FakeFleet | None = None) -> AsyncIterator[Page]:
    fleet = fleet or FakeFleet()
    guard = Guard(free_port())
    server = TestServer(make_app(fleet, guard), host="127.0.0.1", port=guard.port)
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield Page(client, guard, fleet)
    finally:
        await client.close()
